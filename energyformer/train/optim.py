"""The optimizer of a pretraining run: clipped AdamW with linear warmup and cosine decay."""
from __future__ import annotations

import dataclasses

import jax
import optax
from flax import nnx

from energyformer.checks import check_range


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """AdamW(``b1``, ``b2``, ``eps``, ``weight_decay``) after clipping the global gradient norm to ``clip_norm``,
  at a learning rate that rises linearly from 0 to ``learning_rate`` over ``warmup_steps`` and then decays by a
  half cosine to ``final_fraction · learning_rate`` at the last step."""

  learning_rate: float = 3e-4
  warmup_steps: int = 100
  final_fraction: float = 0.1
  weight_decay: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  clip_norm: float = 1.0

  def __post_init__(self):
    check_range("learning_rate", self.learning_rate, 0.0, low_open=True, fix="Use a positive learning rate.")
    if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
      raise ValueError(f"warmup_steps must be a non-negative integer, got {self.warmup_steps!r}.")
    check_range("final_fraction", self.final_fraction, 0.0, 1.0, fix="Use a fraction of the peak in [0, 1].")
    check_range("weight_decay", self.weight_decay, 0.0, fix="Use a non-negative weight decay.")
    check_range("b1", self.b1, 0.0, 1.0, high_open=True, fix="Use 0 <= b1 < 1.")
    check_range("b2", self.b2, 0.0, 1.0, high_open=True, fix="Use 0 <= b2 < 1.")
    check_range("clip_norm", self.clip_norm, 0.0, low_open=True, fix="Use a positive gradient-norm bound.")


def learning_rate_schedule(config: OptimizerConfig, total_steps: int) -> optax.Schedule:
  """``η(t) = η·t/w`` for ``t < w``, then ``η_f + (η − η_f)·½(1 + cos(π (t − w)/(T − w)))`` with
  ``η_f = final_fraction · η`` and ``T = total_steps``."""
  if config.warmup_steps >= total_steps:
    raise ValueError(f"warmup_steps ({config.warmup_steps}) must be smaller than the number of steps "
                     f"({total_steps}); shorten the warmup or train longer.")
  return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, config.warmup_steps, total_steps,
                                            end_value=config.final_fraction * config.learning_rate)


def _is_variable(node) -> bool:
  return isinstance(node, nnx.Variable)


def decay_mask(params):
  """True for the parameters weight decay applies to: matrices, i.e. at least two logical axes besides
  ``"layers"`` (embeddings and projections); False for vectors and scalars (biases, norms, Lagrangian γ, δ)."""

  def is_matrix(variable):
    axes = variable.get_metadata().get("out_sharding") or (None,) * len(variable.shape)
    return variable.replace(sum(axis != "layers" for axis in axes) >= 2)

  return jax.tree.map(is_matrix, params, is_leaf=_is_variable)


def make_optimizer(config: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
  """``clip_by_global_norm(clip_norm)`` then AdamW at ``learning_rate_schedule``, decaying only ``decay_mask``."""
  return optax.chain(
      optax.clip_by_global_norm(config.clip_norm),
      optax.adamw(learning_rate_schedule(config, total_steps), config.b1, config.b2, config.eps,
                  weight_decay=config.weight_decay, mask=decay_mask))
