"""Lagrangians whose gradients are activation functions: ``g = ∇L(x)``, applied token by token.

Because ``∂g/∂x`` is the Hessian of a convex Lagrangian (positive semi-definite), the dynamics
``τ dx/dt = −∂E/∂g`` never increase ``E(g(x))``.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from energyformer.checks import check_positive_int, check_range
from energyformer.energies.params import ParamSpec, constant


@dataclasses.dataclass(frozen=True)
class LayerNormLagrangian:
  """``L(x) = Σ_n [D γ √(mean_j (x_nj − x̄_n)² + ε) + Σ_j δ_j x_nj]``.

  Its gradient is LayerNorm with a *scalar* scale γ and a vector bias δ: ``γ (x − x̄)/√(var + ε) + δ``
  (a vector scale would not be the gradient of any function).
  """

  dim: int
  eps: float = 1e-5

  def __post_init__(self):
    check_positive_int("dim", self.dim)
    check_range("eps", self.eps, 0.0, low_open=True, fix="Use a small positive eps such as 1e-5.")

  def specs(self):
    """A scalar gain ``gamma`` (a vector would not give a gradient) and a bias ``delta`` (D,)."""
    return {"gamma": ParamSpec((), (), constant(1.0)), "delta": ParamSpec((self.dim,), ("embed",), constant(0.0))}

  def __call__(self, params, x):
    centred = x - jnp.mean(x, axis=-1, keepdims=True)
    spread = jnp.sqrt(jnp.mean(centred * centred, axis=-1) + self.eps)
    return jnp.sum(self.dim * params["gamma"] * spread) + jnp.sum(x @ params["delta"])


@dataclasses.dataclass(frozen=True)
class RMSLagrangian:
  """``L(x) = Σ_n D γ √(mean_j x_nj² + ε)``; its gradient is RMS normalisation ``γ x / rms(x)`` (a sphere of radius γ√D)."""

  dim: int
  eps: float = 1e-6

  def __post_init__(self):
    check_positive_int("dim", self.dim)
    check_range("eps", self.eps, 0.0, low_open=True, fix="Use a small positive eps such as 1e-6.")

  def specs(self):
    """A scalar gain ``gamma``."""
    return {"gamma": ParamSpec((), (), constant(1.0))}

  def __call__(self, params, x):
    return jnp.sum(self.dim * params["gamma"] * jnp.sqrt(jnp.mean(x * x, axis=-1) + self.eps))


def activation(lagrangian, params, x):
  """``g = ∇_x L(x)``: the activation a Lagrangian defines."""
  return jax.grad(lagrangian, argnums=1)(params, x)
