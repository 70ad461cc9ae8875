"""Adaptive-step solvers (Hyper-SET's momentum and RMSProp-like updates): the step adapts to past fields.

With field ``G`` and step size ``η``:

    accumulated momentum:  b⁺ = β b + G(x),                      x⁺ = x − η b⁺
    RMSProp:               s⁺ = ρ s + (1 − ρ) G(x)²,             x⁺ = x − η G(x) / (√s⁺ + ε)
    RMSProp + momentum:    s⁺ as RMSProp,  b⁺ = β b + G/(√s⁺ + ε), x⁺ = x − η b⁺

(element-wise; buffers start at zero). Unlike ``momentum`` (``m⁺ = β m − η G``) the accumulated buffer holds
fields, not steps, so a step size that changes from step to step (Hyper-SET's learned per-iteration sizes)
scales the whole buffer.
"""
from __future__ import annotations

import jax.numpy as jnp

from energyformer.solvers.base import HparamSpec, Solver, momentum_coefficient, step_size, zeros_like_state
from energyformer.solvers.registry import register


def _decay(default: float) -> HparamSpec:
  return HparamSpec(default, 0.0, 1.0, high_open=True,
                    fix="Use a squared-field decay rho in [0, 1) (the running average's memory).")


def _rms_scaled(field, second_moment, hparams, eps):
  """``(s⁺, G/(√s⁺ + ε))`` with ``s⁺ = ρ s + (1 − ρ) G²``."""
  second_moment = hparams["rho"] * second_moment + (1.0 - hparams["rho"]) * jnp.square(field)
  return second_moment, field / (jnp.sqrt(second_moment) + eps)


@register("accumulated_momentum")
def accumulated_momentum(eta: float = 1.0, beta: float = 0.9) -> Solver:
  """``b⁺ = β b + G(x)``, ``x⁺ = x − η b⁺`` (Hyper-SET's momentum, β = 0.9); the state is ``b``."""

  def step(grad_fn, x, buffer, hparams):
    buffer = hparams["beta"] * buffer + grad_fn(x)
    return x - hparams["eta"] * buffer, buffer

  return Solver("accumulated_momentum", zeros_like_state, step,
                {"eta": step_size(eta, "step size eta"), "beta": momentum_coefficient(beta)})


@register("adaptive_rmsprop")
def adaptive_rmsprop(eta: float = 1.0, rho: float = 0.8, eps: float = 1e-6) -> Solver:
  """``s⁺ = ρ s + (1 − ρ) G²``, ``x⁺ = x − η G/(√s⁺ + ε)`` (Hyper-SET's, ρ = 0.8); the state is ``s``."""

  def step(grad_fn, x, second_moment, hparams):
    second_moment, scaled = _rms_scaled(grad_fn(x), second_moment, hparams, eps)
    return x - hparams["eta"] * scaled, second_moment

  return Solver("adaptive_rmsprop", zeros_like_state, step,
                {"eta": step_size(eta, "step size eta"), "rho": _decay(rho)})


@register("adaptive_rmsprop_momentum")
def adaptive_rmsprop_momentum(eta: float = 1.0, rho: float = 0.8, beta: float = 0.9,
                              eps: float = 1e-6) -> Solver:
  """``s⁺ = ρ s + (1 − ρ) G²``, ``b⁺ = β b + G/(√s⁺ + ε)``, ``x⁺ = x − η b⁺``; the state is ``(s, b)``."""

  def init(x):
    return (jnp.zeros_like(x), jnp.zeros_like(x))

  def step(grad_fn, x, state, hparams):
    second_moment, buffer = state
    second_moment, scaled = _rms_scaled(grad_fn(x), second_moment, hparams, eps)
    buffer = hparams["beta"] * buffer + scaled
    return x - hparams["eta"] * buffer, (second_moment, buffer)

  return Solver("adaptive_rmsprop_momentum", init, step,
                {"eta": step_size(eta, "step size eta"), "rho": _decay(rho), "beta": momentum_coefficient(beta)})
