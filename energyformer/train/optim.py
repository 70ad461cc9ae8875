"""The optimiser of every training run: clipped AdamW with linear warmup, cosine decay and a weight-decay mask.

Its hyperparameters are arrays, not Python numbers baked into the trace: one compiled step serves a population
whose members each have their own learning rate, warmup, weight decay, moments' decay rates, ε and clipping bound
(``jax.vmap`` over ``hyperparameters``' arrays). A single run is the population of one.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from energyformer.checks import check_range

FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """AdamW(``b1``, ``b2``, ``eps``, ``weight_decay``) after clipping the global gradient norm to ``clip_norm``,
  at a learning rate that rises linearly from 0 to ``learning_rate`` over ``warmup_steps`` and then decays by a
  half cosine to ``final_fraction · learning_rate`` at the last step. Every field may be swept."""

  learning_rate: float = 3e-4
  warmup_steps: int = 100
  final_fraction: float = 0.1
  weight_decay: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  clip_norm: float = 1.0

  def __post_init__(self):
    check_hyperparameters(dataclasses.asdict(self))


HYPERPARAMETERS = tuple(field.name for field in dataclasses.fields(OptimizerConfig))


def check_hyperparameters(values: dict) -> None:
  """Raises, naming the setting and the fix, unless every optimiser hyperparameter in ``values`` is valid."""
  checks = {
      "learning_rate": dict(low=0.0, high=FLOAT32_MAX, low_open=True,
                            fix="Use a positive learning rate that float32 can hold (e.g. 3e-4)."),
      "warmup_steps": dict(low=0, fix="Use a non-negative number of warmup steps."),
      "final_fraction": dict(low=0.0, high=1.0, fix="Use a fraction of the peak in [0, 1]."),
      "weight_decay": dict(low=0.0, high=FLOAT32_MAX, fix="Use a non-negative weight decay."),
      "b1": dict(low=0.0, high=1.0, high_open=True, fix="Use 0 <= b1 < 1."),
      "b2": dict(low=0.0, high=1.0, high_open=True, fix="Use 0 <= b2 < 1."),
      "eps": dict(low=0.0, high=FLOAT32_MAX, low_open=True, fix="Use a small positive eps (e.g. 1e-8)."),
      "clip_norm": dict(low=0.0, high=FLOAT32_MAX, low_open=True, fix="Use a positive gradient-norm bound."),
  }
  for name, value in values.items():
    if name in checks:
      limits = checks[name]
      check_range(name, value, limits.get("low"), limits.get("high"), fix=limits["fix"],
                  low_open=limits.get("low_open", False), high_open=limits.get("high_open", False))
  warmup = values.get("warmup_steps")
  if warmup is not None and (isinstance(warmup, bool) or float(warmup) != int(warmup)):
    raise ValueError(f"warmup_steps must be a whole number of steps, got {warmup!r}.")


def shorter_warmup(config: OptimizerConfig, steps: int) -> OptimizerConfig:
  """``config`` with its warmup cut to a tenth of ``steps`` when it would not end before the last step (for a
  budget shortened from the command line)."""
  if config.warmup_steps < steps:
    return config
  return dataclasses.replace(config, warmup_steps=steps // 10)


def hyperparameters(config: OptimizerConfig, members: list[dict]) -> dict[str, jax.Array]:
  """Each optimiser hyperparameter as a float32 array over the members: a member's own value where it sets one,
  else ``config``'s."""
  return {name: jnp.asarray([float(member.get(name, getattr(config, name))) for member in members], jnp.float32)
          for name in HYPERPARAMETERS}


def learning_rate(count, hparams: dict, total_steps: int):
  """``η(t) = η·t/w`` for ``t < w``, then ``η_f + (η − η_f)·½(1 + cos(π·min(t − w, T − w)/(T − w)))`` with
  ``η_f = final_fraction · η``, ``w = warmup_steps`` and ``T = total_steps`` (``optax.warmup_cosine_decay_schedule``
  with array-valued peak, warmup and end)."""
  count = jnp.asarray(count, jnp.float32)
  peak, warmup = hparams["learning_rate"], hparams["warmup_steps"]
  final = hparams["final_fraction"] * peak
  decay_steps = jnp.maximum(total_steps - warmup, 1.0)
  progress = jnp.clip(count - warmup, 0.0, decay_steps) / decay_steps
  cosine = final + (peak - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
  return jnp.where(count < warmup, peak * count / jnp.maximum(warmup, 1.0), cosine)


def _is_variable(node) -> bool:
  return isinstance(node, nnx.Variable)


def decay_mask(params):
  """True for the parameters weight decay applies to: matrices, i.e. at least two logical axes besides
  ``"layers"`` (embeddings and projections); False for vectors and scalars (biases, norms, Lagrangian γ, δ)."""

  def is_matrix(variable):
    axes = variable.get_metadata().get("out_sharding") or (None,) * len(variable.shape)
    return variable.replace(sum(axis != "layers" for axis in axes) >= 2)

  return jax.tree.map(is_matrix, params, is_leaf=_is_variable)


def make_optimizer(hparams: dict, total_steps: int) -> optax.GradientTransformation:
  """``clip_by_global_norm(clip_norm)`` then AdamW(``b1``, ``b2``, ``eps``) at ``learning_rate``'s schedule with
  decoupled weight decay on ``decay_mask``; ``hparams`` holds one member's hyperparameters (scalars, traced or not)."""
  return optax.chain(
      optax.clip_by_global_norm(hparams["clip_norm"]),
      optax.adamw(lambda count: learning_rate(count, hparams, total_steps), hparams["b1"], hparams["b2"],
                  hparams["eps"], weight_decay=hparams["weight_decay"], mask=decay_mask))
