"""Learned preconditioners: a layer's solver steps along ``P G(x)`` instead of ``G(x)``, ``P = D + U Uᵀ``.

With gradient descent the step is ``x ← x − η P ∇E(x)`` (CEM's lightweight preconditioners; the parameterisation
``P = diag(softplus(ρ)) + U Uᵀ``, D > 0 diagonal and U (D, r) of low rank r, is this project's reading). P is
symmetric positive definite, so ``−P ∇E`` is a descent direction and a small enough step never raises the energy.

Design: a solver owns scalar hyperparameters, never weights, so P's weights belong to the layer it
preconditions. This file holds the preconditioner (its parameters, ``P g``) and the solver transform
``precondition(solver, apply)`` (any solver, stepping along ``apply(G)``); ``layers.Preconditioned`` is the layer
that declares P's parameters beside its energy's (one P per layer of a stack, as every parameter) and steps with
its solver so transformed. The solver protocol and ``Layer`` are unchanged.
"""
from __future__ import annotations

import math

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
