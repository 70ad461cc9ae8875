"""The configuration of a pretraining run, as frozen dataclasses that round-trip through JSON."""
from __future__ import annotations

import dataclasses
import typing

from energyformer.checks import check_positive_int
from energyformer.data.text import ByteTokenizer, TextDataConfig
from energyformer.models.gpt import GPTConfig
from energyformer.train.checkpoint import CheckpointConfig
from energyformer.train.mesh import MeshConfig
from energyformer.train.optim import OptimizerConfig
from energyformer.train.step import COMPUTE_DTYPES

# Fields that must match for a checkpoint to continue a run exactly (the mesh and the step budget may change).
RESUME_FIELDS = ("model", "data.corpus", "data.sequence_length", "data.patterns", "data.validation_percent",
                 "data.shuffle_window", "batch_size", "seed")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """A pretraining run: model, data, optimizer, mesh, checkpoints and the step budget.

  ``batch_size`` is global (all processes together; each reads ``batch_size / process_count`` sequences).
  ``compute_dtype="bfloat16"`` computes the forward and backward passes in bfloat16 with float32 parameters and
  optimizer state. Every ``eval_every`` steps the validation loss is the mean over ``eval_batches`` fixed batches
  of the validation split; training metrics are logged every ``log_every`` steps.
  """

  model: GPTConfig
  data: TextDataConfig = TextDataConfig()
  optimizer: OptimizerConfig = OptimizerConfig()
  mesh: MeshConfig = MeshConfig()
  checkpoint: CheckpointConfig = CheckpointConfig()
  steps: int = 1000
  batch_size: int = 32
  seed: int = 0
  compute_dtype: str = "float32"
  eval_every: int = 100
  eval_batches: int = 8
  log_every: int = 10

  def __post_init__(self):
    for name in ("steps", "batch_size", "eval_every", "eval_batches", "log_every"):
      check_positive_int(name, getattr(self, name))
    if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
      raise ValueError(f"seed must be an integer in [0, 2**32), got {self.seed!r}.")
    if self.compute_dtype not in COMPUTE_DTYPES:
      raise ValueError(f"compute_dtype must be one of {tuple(COMPUTE_DTYPES)}, got {self.compute_dtype!r}.")
    if self.model.context_length < self.data.sequence_length:
      raise ValueError(f"the model's context_length ({self.model.context_length}) is shorter than the data's "
                       f"sequence_length ({self.data.sequence_length}); raise context_length or shorten sequences.")
    if self.model.vocab_size < ByteTokenizer().vocab_size:
      raise ValueError(f"the model's vocab_size ({self.model.vocab_size}) is smaller than the byte tokenizer's "
                       f"{ByteTokenizer().vocab_size} tokens; use vocab_size >= {ByteTokenizer().vocab_size}.")
    if self.optimizer.warmup_steps >= self.steps:
      raise ValueError(f"optimizer.warmup_steps ({self.optimizer.warmup_steps}) must be smaller than steps "
                       f"({self.steps}); shorten the warmup or train longer.")

  @property
  def tokens_per_step(self) -> int:
    """Tokens the model is trained on in one step (all processes): ``batch_size · sequence_length``."""
    return self.batch_size * self.data.sequence_length


def to_dict(config) -> dict:
  """``config`` (a dataclass, nested) as a JSON-ready dict."""
  return dataclasses.asdict(config)


def _tuples(value):
  return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def from_dict(cls, data: dict):
  """The dataclass ``cls`` rebuilt from ``to_dict``'s output (JSON lists become tuples again)."""
  hints = typing.get_type_hints(cls)
  fields = {}
  for field in dataclasses.fields(cls):
    if field.name not in data:
      continue
    value, kind = data[field.name], hints[field.name]
    fields[field.name] = from_dict(kind, value) if dataclasses.is_dataclass(kind) else _tuples(value)
  return cls(**fields)


def _lookup(data: dict, dotted: str):
  for key in dotted.split("."):
    data = data.get(key) if isinstance(data, dict) else None
  return data


def resume_mismatches(saved: dict, config: TrainConfig) -> list[str]:
  """The ``RESUME_FIELDS`` in which a saved configuration (``to_dict`` form) differs from ``config``."""
  current = from_dict(TrainConfig, saved)
  return [name for name in RESUME_FIELDS
          if _lookup(to_dict(current), name) != _lookup(to_dict(config), name)]
