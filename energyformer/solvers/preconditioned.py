"""Learned preconditioners: a layer's solver steps along ``P G(x)`` instead of ``G(x)``, ``P = D + U Uᵀ``.

With gradient descent the step is ``x ← x − η P ∇E(x)`` (CEM's lightweight preconditioners; the parameterisation
``P = diag(softplus(ρ)) + U Uᵀ``, D > 0 diagonal and U (D, r) of low rank r, is this project's reading). P is
symmetric positive definite, so ``−P ∇E`` is a descent direction and a small enough step never raises the energy.

Design: a solver owns scalar hyperparameters, never weights, so P's weights belong to the layer it
preconditions. ``precondition(solver, apply)`` is the solver transform (any solver, stepping along ``apply(G)``);
``Preconditioned(layer, rank)`` is the layer wrapper that declares P's parameters beside the energy's (one P per
layer of a stack, as every parameter) and steps the wrapped layer with its solver so transformed. Everything about
the preconditioner is this one file; the solver protocol and the layers are unchanged.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from energyformer.checks import check_positive_int
from energyformer.energies.params import ParamSpec, constant, normal
from energyformer.solvers.base import Solver
from energyformer.solvers.registry import as_solver

_UNIT_SOFTPLUS = math.log(math.e - 1.0)   # softplus(ρ) = 1: P starts near the identity


def preconditioner_specs(dim: int, rank: int):
  """Parameters of ``P = diag(softplus(ρ)) + U Uᵀ``: ``diagonal`` ρ (D,), starting at D = 1, and ``low_rank`` U
  (D, r), drawn with standard deviation ``(D r)^-½`` (``‖U‖_F² ≈ 1``). U = 0 would be a stationary point: the
  gradient of ``U Uᵀ`` vanishes there."""
  check_positive_int("dim", dim)
  check_positive_int("rank", rank)
  return {"diagonal": ParamSpec((dim,), ("embed",), constant(_UNIT_SOFTPLUS)),
          "low_rank": ParamSpec((dim, rank), ("embed", None), normal((dim * rank) ** -0.5))}


def preconditioner_matrix(params) -> jax.Array:
  """``P = diag(softplus(ρ)) + U Uᵀ`` (D, D), symmetric positive definite."""
  u = params["low_rank"]
  return jnp.diag(jax.nn.softplus(params["diagonal"])) + u @ u.T


def apply_preconditioner(params, g) -> jax.Array:
  """``P g`` for every token, ``g`` (..., D): ``softplus(ρ) ⊙ g + (g U) Uᵀ`` in O(D r) per token."""
  u = params["low_rank"]
  return jax.nn.softplus(params["diagonal"]) * g + (g @ u) @ u.T


def precondition(solver, apply) -> Solver:
  """``solver`` following the field ``apply(G)`` where it would follow ``G`` (its look-ahead gradients and
  Hessian-vector products included): with gradient descent, ``x ← x − η P G(x)`` for ``apply = P·``."""
  inner = as_solver(solver, "precondition(solver, ...)")

  def step(grad_fn, x, state, hparams):
    return inner.step(lambda z: apply(grad_fn(z)), x, state, hparams)

  return Solver(f"preconditioned_{inner.name}", inner.init, step, inner.hyperparameters, inner.fixed_context)


def _width(layer) -> int:
  """The token width the wrapped layer's energy (or a term of it, or its Lagrangian) declares."""
  for part in (layer.energy, *getattr(layer.energy, "terms", {}).values(), layer.lagrangian):
    if getattr(part, "dim", None) is not None:
      return part.dim
  raise ValueError("Preconditioned needs the token width: wrap a layer whose energy or Lagrangian has a `dim`.")


@dataclasses.dataclass(frozen=True)
class Preconditioned:
  """``layer`` stepping along ``P G(x)``, with ``P = D + U Uᵀ`` of rank ``rank`` learned beside its parameters
  (``params["preconditioner"]``). A layer itself (``specs``, ``step``, ``energy_value``, ...), usable in a
  ``Split`` or an ``EnergyStack``; its energy, solver (hyperparameters), derivation and Lagrangian are ``layer``'s.
  """

  layer: Any
  rank: int = 4

  def __post_init__(self):
    check_positive_int("rank", self.rank)

  energy = property(lambda self: self.layer.energy)
  solver = property(lambda self: self.layer.solver)
  mode = property(lambda self: self.layer.mode)
  lagrangian = property(lambda self: self.layer.lagrangian)

  def specs(self):
    return {**self.layer.specs(), "preconditioner": preconditioner_specs(_width(self.layer), self.rank)}

  def default_hparams(self, **overrides):
    return self.layer.default_hparams(**overrides)

  def init_state(self, x):
    return self.layer.init_state(x)

  def energy_value(self, params, x, mask=None):
    """The wrapped layer's energy: P changes the path, not the energy."""
    return self.layer.energy_value(params, x, mask)

  def gradient(self, params, x, mask=None, context=None):
    """The field the solver follows: ``P G(x)``."""
    return apply_preconditioner(params["preconditioner"], self.layer.gradient(params, x, mask, context))

  def step(self, params, hparams, x, state, mask=None):
    """The wrapped layer's step with its solver following ``P G`` (``precondition``)."""
    solver = precondition(self.layer.solver, functools.partial(apply_preconditioner, params["preconditioner"]))
    return dataclasses.replace(self.layer, solver=solver).step(params, hparams, x, state, mask)
