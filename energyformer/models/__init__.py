"""Models composed from energy layers."""
from energyformer.models.gpt import GPT, MLPS, VARIANTS, GPTConfig, attention_layer, block, generate
