"""Momentum-stream solvers of YuriiFormer (Nesterov-accelerated Transformers): the velocity is LayerNorm-ed.

A YuriiFormer depth step carries one velocity ``v`` through its attention and MLP sub-steps (``Split`` with
``shared_state=True``). Each sub-step, with field ``G`` (``−G`` is the sub-layer's output at pre-normalised
tokens), is

    Nesterov:  v⁺ = LN(β v − γ G(x + μ v)),   x⁺ = x + v⁺
    Polyak:    v⁺ = LN(β v − γ G(x)),         x⁺ = x + v⁺

with a momentum ``β ∈ [0, 1)``, a look-ahead ``μ ∈ [0, 1)`` and a step size ``γ > 0`` (the scalars the paper maps
through sigmoid and softplus; here declared by their intervals), and ``LN`` the LayerNorm over features that the
paper needs for stability. This project's reading: ``LN`` is parameter-free (zero mean, unit variance per token,
no affine gain; the solver state is the velocity alone), and the first velocity is zero.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from energyformer.solvers.base import Solver, momentum_coefficient, step_size, zeros_like_state
from energyformer.solvers.registry import register


def velocity_norm(v, eps: float = 1e-5):
  """``LN(v) = (v − mean(v)) / √(var(v) + ε)`` over the last (feature) axis; ``LN(0) = 0``."""
  centred = v - jnp.mean(v, axis=-1, keepdims=True)
  return centred * jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + eps)


def look_ahead(default: float):
  """The look-ahead ``μ ∈ [0, 1)`` of the Nesterov step (the field is taken at ``x + μ v``)."""
  return momentum_coefficient(default)._replace(fix="Use a look-ahead mu in [0, 1).")


@register("yurii_nesterov")
def yurii_nesterov(gamma: float = 1.0, beta: float = 0.5, mu: float = 0.5, eps: float = 1e-5) -> Solver:
  """``v⁺ = LN(β v − γ G(x + μ v))``, ``x⁺ = x + v⁺`` (module docstring); the state is the velocity ``v``."""

  def step(grad_fn, x, velocity, hparams):
    field = grad_fn(x + hparams["mu"] * velocity)
    velocity = velocity_norm(hparams["beta"] * velocity - hparams["gamma"] * field, eps)
    return x + velocity, velocity

  return Solver("yurii_nesterov", zeros_like_state, step,
                {"gamma": step_size(gamma, "step size gamma"), "beta": momentum_coefficient(beta),
                 "mu": look_ahead(mu)})


@register("yurii_polyak")
def yurii_polyak(gamma: float = 1.0, beta: float = 0.5, eps: float = 1e-5) -> Solver:
  """Heavy ball: ``v⁺ = LN(β v − γ G(x))``, ``x⁺ = x + v⁺``; the state is the velocity ``v``."""

  def step(grad_fn, x, velocity, hparams):
    velocity = velocity_norm(hparams["beta"] * velocity - hparams["gamma"] * grad_fn(x), eps)
    return x + velocity, velocity

  return Solver("yurii_polyak", zeros_like_state, step,
                {"gamma": step_size(gamma, "step size gamma"), "beta": momentum_coefficient(beta)})
