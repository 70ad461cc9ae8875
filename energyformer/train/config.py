"""The configuration of a training run, as frozen dataclasses that round-trip through JSON."""
from __future__ import annotations

import dataclasses
import typing

from energyformer.checks import check_positive_int
from energyformer.train.checkpoint import CheckpointConfig
from energyformer.train.mesh import MeshConfig
from energyformer.train.optim import OptimizerConfig
from energyformer.train.programs import COMPUTE_DTYPES


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
  """What every member of a run shares: the step budget, the batch, the optimiser's defaults, the mesh, the
  checkpoints, the precision and how often to log and evaluate.

  ``batch_size`` is global per member (all processes together; each reads ``batch_size / process_count``
  examples). ``compute_dtype="bfloat16"`` computes the forward and backward passes in bfloat16 with float32
  parameters and optimizer state. Every ``eval_every`` steps (and at the end) the task's evaluation sets are
  evaluated ``eval_batch_size`` examples at a time (default ``batch_size``); training metrics are logged at step 1
  and every ``log_every`` steps. ``steps_per_call`` training steps run per call of the compiled program (a
  ``lax.scan`` over that many batches); calls stop short at every evaluation and checkpoint, so results do not depend
  on it. ``stop_on_non_finite`` stops the run at a NaN or infinite loss, gradient or parameter (a sweep may rather
  let a diverging member run on).
  """

  steps: int = 1000
  batch_size: int = 32
  optimizer: OptimizerConfig = OptimizerConfig()
  mesh: MeshConfig = MeshConfig()
  checkpoint: CheckpointConfig = CheckpointConfig(every=None)
  compute_dtype: str = "float32"
  eval_every: int = 100
  eval_batch_size: int | None = None
  log_every: int = 10
  steps_per_call: int = 1
  stop_on_non_finite: bool = True

  def __post_init__(self):
    for name in ("steps", "batch_size", "eval_every", "log_every", "steps_per_call"):
      check_positive_int(name, getattr(self, name))
    if self.eval_batch_size is not None:
      check_positive_int("eval_batch_size", self.eval_batch_size)
    if self.compute_dtype not in COMPUTE_DTYPES:
      raise ValueError(f"compute_dtype must be one of {tuple(COMPUTE_DTYPES)}, got {self.compute_dtype!r}.")
    check_warmup(self.optimizer.warmup_steps, self.steps)

  @property
  def evaluation_batch_size(self) -> int:
    """Examples per evaluation slice: ``eval_batch_size``, else ``batch_size``."""
    return self.eval_batch_size or self.batch_size


def check_warmup(warmup_steps, steps: int) -> None:
  """Raises unless the warmup ends before the last step."""
  if warmup_steps >= steps:
    raise ValueError(f"warmup_steps ({warmup_steps:g}) must be smaller than steps ({steps}); shorten the warmup or "
                     "train longer.")


def to_dict(config) -> dict:
  """``config`` (a dataclass, nested) as a JSON-ready dict."""
  return dataclasses.asdict(config)


def _tuples(value):
  return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _dataclass_of(kind, value):
  """The dataclass a field of type ``kind`` holding ``value`` (a dict) is: ``kind`` itself, or the member of a
  union of dataclasses whose field names are the dict's keys; ``None`` for other fields."""
  if dataclasses.is_dataclass(kind):
    return kind
  if isinstance(value, dict):
    for member in typing.get_args(kind):
      if dataclasses.is_dataclass(member) and {f.name for f in dataclasses.fields(member)} == set(value):
        return member
  return None


def from_dict(cls, data: dict):
  """The dataclass ``cls`` rebuilt from ``to_dict``'s output (JSON lists become tuples again; a field typed as a
  union of dataclasses is rebuilt as the one whose fields the saved dict has)."""
  hints = typing.get_type_hints(cls)
  fields = {}
  for field in dataclasses.fields(cls):
    if field.name not in data:
      continue
    value = data[field.name]
    kind = _dataclass_of(hints[field.name], value)
    fields[field.name] = from_dict(kind, value) if kind is not None else _tuples(value)
  return cls(**fields)
