"""Depth is optimisation time: ``lax.scan`` of a layer's solver step over layers or recurrent steps.

The carry is ``(x, solver_state)``, so momentum streams cross layers. Parameters and hyperparameters are either
*stacked* (leading axis = depth, one set per step) or *shared* (one set for every step, recurrent depth).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from energyformer.checks import check_positive_int


class Rollout(NamedTuple):
  """Result of a depth unroll: final tokens and solver state, and (optionally) the energy before/after each step;
  an equilibrium rollout also gives the relative size of its last step (``residual``) and its ``steps``."""

  x: jax.Array
  state: Any
  energy_before: jax.Array | None
  energy_after: jax.Array | None
  residual: jax.Array | None = None
  steps: jax.Array | None = None


def check_unroll(scan_unroll) -> None:
  """``scan_unroll`` must be ``True``/``False`` or a positive number of steps per loop iteration."""
  if not isinstance(scan_unroll, bool) and not (isinstance(scan_unroll, int) and scan_unroll >= 1):
    raise ValueError(f"scan_unroll must be True (no loop), False/1 (a loop of single steps) or a positive int "
                     f"number of steps per loop iteration, got {scan_unroll!r}.")


def check_hparam_shapes(hparams, depth: int, stacked: bool) -> None:
  """Raises unless every hyperparameter is a scalar, or a (depth,) array of one value per step when ``stacked``."""
  expected = (depth,) if stacked else ()
  for path, value in jax.tree_util.tree_leaves_with_path(hparams):
    if jnp.shape(value) == expected:
      continue
    name = f"hparams{jax.tree_util.keystr(path)}"
    if stacked:
      raise ValueError(f"{name} has shape {jnp.shape(value)}, but stacked_hparams=True takes one value per step: "
                       f"an array of shape ({depth},); pass that, or a scalar with stacked_hparams=False.")
    hint = (" For one value per step pass stacked_hparams=True." if jnp.shape(value) == (depth,) else "")
    raise ValueError(f"{name} has shape {jnp.shape(value)}, but a solver hyperparameter is one scalar shared by "
                     f"every step.{hint} Per-token or per-feature hyperparameters are not supported.")


def unroll(layer, params, hparams, x, mask=None, *, num_steps: int, stacked_params: bool = True,
           stacked_hparams: bool = False, state=None, record_energy: bool = False, remat: bool = True,
           scan_unroll: int | bool = 1, pin_tokens: bool = False) -> Rollout:
  """``(x_{l+1}, s_{l+1}) = layer.step(θ_l, h_l, x_l, s_l)`` for ``l < num_steps``, one sequence ``x`` (N, D).

  ``θ_l`` is ``params[l]`` when ``stacked_params`` else ``params``; likewise ``h_l`` and ``hparams``, whose leaves
  are scalars, or (num_steps,) arrays when stacked (``check_hparam_shapes``).
  ``remat`` wraps each step in ``jax.checkpoint`` so training memory stays flat in depth. ``scan_unroll`` is
  ``lax.scan``'s ``unroll``: steps per loop iteration (``True``: no loop). Unrolling a shallow stack removes the
  loop's stacked-residual buffers, a large cost for small models on CPU (``BENCHMARKS.md``). ``pin_tokens``
  constrains the token states at every step to one layout on the current mesh: whole along tokens and features,
  and, under a ``jax.vmap`` over sequences with ``spmd_axis_name``, split over those axes along the batch. XLA
  then gathers FSDP-sharded weights instead of resharding the activations inside the loop.
  """
  check_positive_int("num_steps", num_steps)
  check_unroll(scan_unroll)
  state = layer.init_state(x) if state is None else state
  per_step = {"params": params if stacked_params else None, "hparams": hparams if stacked_hparams else None}
  if stacked_params:
    depths = {leaf.shape[0] if jnp.ndim(leaf) else None for leaf in jax.tree.leaves(params)}
    if depths and depths != {num_steps}:
      raise ValueError(f"stacked params must have a leading depth axis of size num_steps={num_steps}, got "
                       f"sizes {sorted(depths, key=str)}; stack one set per step or pass stacked_params=False.")
  check_hparam_shapes(hparams, num_steps, stacked_hparams)

  def body(carry, xs):
    tokens, solver_state = carry
    theta = params if xs["params"] is None else xs["params"]
    h = hparams if xs["hparams"] is None else xs["hparams"]
    if pin_tokens:
      tokens = jax.lax.with_sharding_constraint(tokens, jax.sharding.PartitionSpec())
    new_tokens, solver_state = layer.step(theta, h, tokens, solver_state, mask)
    record = None
    if record_energy:
      record = (layer.energy_value(theta, tokens, mask), layer.energy_value(theta, new_tokens, mask))
    return (new_tokens, solver_state), record

  if remat:
    body = jax.checkpoint(body)
  (x, state), records = jax.lax.scan(body, (x, state), per_step, length=num_steps, unroll=scan_unroll)
  before, after = records if record_energy else (None, None)
  return Rollout(x, state, before, after)
