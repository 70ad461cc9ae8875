"""Training one model with the Energy Transformer recipe: clipped AdamW with a warmup-cosine schedule.

The step is a pure function of (trainable parameters, the rest of the model state, optimizer state, batch, key)
under ``jax.jit``: ``nnx.split`` once, ``nnx.merge`` inside the step, ``nnx.update`` whenever the model is read.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from energyformer.checks import check_positive_int
from energyformer.train.optim import OptimizerConfig, make_optimizer


def et_optimizer(learning_rate: float, warmup_steps: int, weight_decay: float = 0.05) -> OptimizerConfig:
  """The ET image recipe's optimizer: AdamW(0.9, 0.99) with clip 1.0, warmup then cosine decay to 0."""
  return OptimizerConfig(learning_rate=learning_rate, warmup_steps=warmup_steps, final_fraction=0.0,
                         weight_decay=weight_decay, b1=0.9, b2=0.99, clip_norm=1.0)


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How long and on what batches to train, and the optimizer (``energyformer.train.optim``)."""

  steps: int = 1000
  batch_size: int = 64
  optimizer: OptimizerConfig = et_optimizer(1e-3, 100)

  def __post_init__(self):
    check_positive_int("steps", self.steps)
    check_positive_int("batch_size", self.batch_size)
    if self.optimizer.warmup_steps >= self.steps:
      raise ValueError(f"warmup_steps ({self.optimizer.warmup_steps}) must be smaller than steps ({self.steps}); "
                       "shorten the warmup or train longer.")


LossFn = Callable[[nnx.Module, Any, jax.Array], jax.Array]


def train_step(graphdef, loss_fn: LossFn, optimizer: optax.GradientTransformation):
  """``(params, rest, opt_state, batch, key) → (params', opt_state', loss)``: one jitted AdamW step on
  ``loss_fn(model, batch, key)``."""

  @jax.jit
  def step(params, rest, opt_state, batch, key):
    loss, grads = jax.value_and_grad(lambda p: loss_fn(nnx.merge(graphdef, p, rest), batch, key))(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def fit(model: nnx.Module, loss_fn: LossFn, batches, recipe: Recipe, *, key, evaluate=None, eval_every: int = 0,
        progress=None, writer=None, prefix: str = "") -> dict:
  """Trains ``model`` in place for ``recipe.steps`` steps on ``batches`` (an iterable of dicts of arrays).

  Step ``t`` gets the key ``fold_in(key, t)``. Every ``eval_every`` steps (and at the end) ``evaluate(model)``
  returns scalars that are logged with the training loss to ``writer`` under ``prefix``. Returns the loss curve,
  the evaluations and the wall time.
  """
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  optimizer = make_optimizer(recipe.optimizer, recipe.steps)
  opt_state = optimizer.init(params)
  step = train_step(graphdef, loss_fn, optimizer)
  iterator = iter(batches)
  losses, evaluations = [], []
  start = time.perf_counter()
  for t in range(recipe.steps):
    batch = jax.tree.map(jnp.asarray, next(iterator))
    params, opt_state, loss = step(params, rest, opt_state, batch, jax.random.fold_in(key, t))
    losses.append(loss)
    last = t + 1 == recipe.steps
    if evaluate is not None and ((eval_every and (t + 1) % eval_every == 0) or last):
      nnx.update(model, params)
      scores = {"train_loss": float(loss), **evaluate(model)}
      evaluations.append({"step": t + 1, **scores})
      if writer is not None:
        writer.write(t + 1, scores, prefix)
    if progress is not None:
      progress.update(1)
      if t % 20 == 0 or last:
        progress.set_postfix({f"{prefix} loss" if prefix else "loss": f"{float(loss):.4f}"})
  nnx.update(model, params)
  seconds = time.perf_counter() - start
  return {"loss": [float(v) for v in losses], "evaluations": evaluations, "seconds": seconds,
          "seconds_per_step": seconds / recipe.steps}
