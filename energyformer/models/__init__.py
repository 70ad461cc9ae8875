"""Models composed from energy layers."""
from energyformer.models import variants
from energyformer.models.gpt import GPT, MLPS, GPTConfig, attention_hparams, attention_layer, block, mlp_layer
from energyformer.models.decode import generate
from energyformer.models.variants import Variant
from energyformer.models.energy_transformer import MEMORIES, EnergyTransformer, ETConfig, et_energy, et_layer, et_mask
from energyformer.models.graph_nodes import GraphNodeClassifier, edge_mask
from energyformer.models.image_completion import (MASKINGS, ImageCompletion, ImageConfig, Masking, masked_rmse,
                                                  patch_masks, patchify, unpatchify)
from energyformer.models.transformer_encoder import TransformerEncoder, count_params, matched_mlp_hidden
from energyformer.models.hyper_set import HyperSET, HyperSETConfig, HyperSETLayer, iteration_features
from energyformer.models.looped_encoder import LoopedEncoder
