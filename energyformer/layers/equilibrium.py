"""Equilibrium layers: one shared layer iterated to its fixed point, differentiated by the implicit function theorem.

The map is the layer's solver step, optionally anchored to the input tokens ``x₀``:
``T(x) = S(x) − κ (x − x₀)``, where ``S(x) = x − η G(x)`` for gradient descent (or Euler). For gradient descent this
is descent on ``F(x) + (κ / 2η) ‖x − x₀‖²``, a proximal term — this project's design: without it (``κ = 0``) a
minimiser of an energy that does not see the input is independent of ``x₀`` almost everywhere, so nothing upstream
of the layer (an encoder, a MASK token) would receive a gradient, and an energy of layer-normalised tokens is
invariant along the tokens' scale and mean, so ``x`` drifts along those directions without converging; the
anchor fixes both and makes ``T`` contract by at least ``1 − κ`` along them.

Forward: ``x_{k+1} = T(x_k)`` in a ``lax.while_loop`` until the relative step ``‖x_{k+1} − x_k‖ / ‖x_{k+1}‖``
falls to ``tol`` or ``max_steps`` steps are taken; the result carries the final ``residual`` and ``steps``, and a
``NotConvergedWarning`` is raised on the host (``jax.debug.callback``) when the residual is still above ``tol``.

Backward (``jax.custom_vjp``): at the fixed point ``x* = T(θ, x*, x₀)``, ``dx* = (I − ∂T/∂x)⁻¹ (∂T/∂θ dθ + ∂T/∂x₀
dx₀)``, so a cotangent ``ḡ`` gives ``w = (I − ∂T/∂xᵀ)⁻¹ ḡ`` and the gradients ``(∂T/∂θ)ᵀ w``, ``(∂T/∂x₀)ᵀ w``.
The linear solve is matrix-free GMRES (``jax.scipy.sparse.linalg.gmres``) on vector–Jacobian products of ``T`` at
``x*``: the Jacobian is not symmetric (a Lagrangian's activations, tied or relaxed fields), which rules out CG,
and GMRES converges in far fewer products than the Neumann iteration ``w ← ḡ + ∂T/∂xᵀ w`` (whose rate is the
forward iteration's). Its residual is checked after the solve and reported like the forward one. Memory holds the
fixed point and the parameters, never the iterates: it does not grow with ``max_steps``. ``jax.lax.custom_root``
would serve as well; an explicit ``custom_vjp`` keeps the adjoint solve, its check and its options in one place.
"""
from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from energyformer.checks import check_positive_int, check_range
from energyformer.layers.split import Split
from energyformer.layers.stack import Rollout

GMRES_RESTART = 20


class NotConvergedWarning(UserWarning):
  """An equilibrium iteration (or its adjoint solve) stopped at its step limit above its tolerance."""


def check_equilibrium(layer) -> None:
  """Raises unless every part of ``layer`` has a stateless solver (a fixed point of ``x ↦ step(x)`` alone)."""
  parts = layer.parts if isinstance(layer, Split) else (layer,)
  stateful = [part.solver.name for part in parts if jax.tree.leaves(part.init_state(jnp.zeros((1, 1))))]
  if stateful:
    raise ValueError(f"an equilibrium layer iterates x ↦ step(x), but solver(s) {stateful} carry state between "
                     "steps (momentum, noise keys); use a stateless solver such as 'gd' or 'euler'.")


def _norm(x):
  return jnp.sqrt(jnp.sum(jnp.square(x)))


def _relative_step(new, old):
  return _norm(new - old) / jnp.maximum(_norm(new), jnp.finfo(new.dtype).tiny)


def _report(residual, steps, tol: float, what: str) -> None:
  """Warns when ``residual`` is above ``tol`` (or not finite). The message names the configuration, not the
  figures (the rollout returns them), so that a training loop warns once rather than at every step."""
  if not np.all(np.asarray(residual) <= tol):
    warnings.warn(f"{what} stopped at its step limit ({int(np.max(steps))} steps) with a relative residual above "
                  f"tol {tol:g} (the rollout's residual and steps give the figures); raise max_steps, loosen tol, "
                  "shorten the step size or raise the anchor.", NotConvergedWarning, stacklevel=2)


def anchored_map(layer, anchor: float):
  """``T(params, hparams, x, x₀, mask) = S(x) − κ (x − x₀)`` for the layer's step ``S`` (module docstring)."""

  def step(params, hparams, x, x0, mask):
    new, _ = layer.step(params, hparams, x, layer.init_state(x), mask)
    return new - anchor * (x - x0) if anchor else new

  return step


@dataclasses.dataclass(frozen=True)
class Anchored:
  """``layer`` with its step anchored to the tokens ``x0`` (``anchored_map``), as a stateless layer for ``unroll``
  (the unrolled reference, and energy records); its energy is the layer's own."""

  layer: Any
  anchor: float
  x0: Any

  def init_state(self, x):
    """The wrapped layer's solver state for tokens ``x`` (N, D)."""
    return self.layer.init_state(x)

  def energy_value(self, params, x, mask=None):
    """The wrapped layer's energy ``E(x)`` (a scalar) at tokens ``x`` (N, D)."""
    return self.layer.energy_value(params, x, mask)

  def step(self, params, hparams, x, state, mask=None):
    """``x⁺ = S(x) − κ (x − x0)``: the layer's step anchored to ``x0``; the state passes through unchanged."""
    return anchored_map(self.layer, self.anchor)(params, hparams, x, self.x0, mask), state


def _iterate(step, params, hparams, x0, mask, tol, max_steps):
  """``x_{k+1} = T(x_k)`` from ``x₀`` until the relative step ≤ ``tol`` or ``max_steps``: (x, residual, steps)."""

  def body(carry):
    x, _, k = carry
    new = step(params, hparams, x, x0, mask)
    return new, _relative_step(new, x), k + 1

  def running(carry):
    _, residual, k = carry
    return (k < max_steps) & (residual > tol)

  init = (x0, jnp.asarray(jnp.inf, x0.dtype), jnp.asarray(0, jnp.int32))
  return jax.lax.while_loop(running, body, init)


def _fixed_point(step, tol, max_steps, adjoint_tol, adjoint_max_steps):
  """``(params, hparams, x₀, mask) → (x*, residual, steps)`` with the implicit-function VJP."""

  @jax.custom_vjp
  def solve(params, hparams, x0, mask):
    return _iterate(step, params, hparams, x0, mask, tol, max_steps)

  def solve_fwd(params, hparams, x0, mask):
    x, residual, steps = _iterate(step, params, hparams, x0, mask, tol, max_steps)
    return (x, residual, steps), (params, hparams, x0, mask, x)

  def solve_bwd(saved, cotangents):
    params, hparams, x0, mask, x = saved
    g = cotangents[0]
    _, vjp_x = jax.vjp(lambda z: step(params, hparams, z, x0, mask), x)
    matvec = lambda w: w - vjp_x(w)[0]
    restart = min(GMRES_RESTART, x.size)
    w, _ = jax.scipy.sparse.linalg.gmres(matvec, g, g, tol=adjoint_tol, restart=restart,
                                         maxiter=max(1, adjoint_max_steps // restart))
    residual = _norm(matvec(w) - g) / jnp.maximum(_norm(g), jnp.finfo(g.dtype).tiny)
    jax.debug.callback(functools.partial(_report, tol=10 * adjoint_tol, what="the equilibrium adjoint solve (GMRES)"),
                       residual, jnp.asarray(adjoint_max_steps))
    _, vjp_inputs = jax.vjp(lambda p, h, z0: step(p, h, x, z0, mask), params, hparams, x0)
    gparams, ghparams, gx0 = vjp_inputs(w)
    return gparams, ghparams, gx0, None

  solve.defvjp(solve_fwd, solve_bwd)
  return solve


def equilibrium(layer, params, hparams, x, mask=None, *, tol: float = 1e-5, max_steps: int = 100,
                anchor: float = 0.0, adjoint_tol: float | None = None,
                adjoint_max_steps: int | None = None) -> Rollout:
  """The fixed point ``x* = T(x*)`` of ``layer``'s step anchored to ``x`` (N, D) (module docstring), one shared
  parameter set. Returns ``Rollout(x*, state, residual=relative last step, steps=iterations)``; a residual above
  ``tol`` is also reported by a ``NotConvergedWarning``. ``adjoint_tol`` / ``adjoint_max_steps`` (defaults
  ``tol`` and ``max_steps``) bound the backward linear solve.
  """
  check_equilibrium(layer)
  check_positive_int("max_steps", max_steps)
  check_range("tol", tol, 0.0, low_open=True, fix="Use a positive relative tolerance, e.g. 1e-5.")
  check_range("anchor", anchor, 0.0, 1.0, high_open=True,
              fix="Use an anchor kappa in [0, 1): 0 for the energy's own minimiser, e.g. 0.1 to tie it to the input.")
  adjoint_tol = tol if adjoint_tol is None else adjoint_tol
  adjoint_max_steps = max_steps if adjoint_max_steps is None else adjoint_max_steps
  solve = _fixed_point(anchored_map(layer, anchor), tol, max_steps, adjoint_tol, adjoint_max_steps)
  fixed, residual, steps = solve(params, hparams, x, mask)
  jax.debug.callback(functools.partial(_report, tol=tol, what="the equilibrium iteration"), residual, steps)
  return Rollout(fixed, layer.init_state(fixed), None, None, residual, steps)
