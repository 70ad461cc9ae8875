"""Newton-type solvers built on Hessian-vector products of the gradient field, so they work for any energy."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from energyformer.checks import check_positive_int
from energyformer.solvers.base import HparamSpec, Solver, no_state, step_size
from energyformer.solvers.registry import register


def hessian_vector_product(grad_fn, x, v):
  """``H v = d/dε ∇F(x + ε v)|₀``, by forward-mode differentiation of the gradient."""
  return jax.jvp(grad_fn, (x,), (v,))[1]


def neumann_direction(grad_fn, x, num_terms: int, scale=1.0):
  """``d = α Σ_{j=0}^{K} (I − α H)^j ∇F(x)``: the K-term Neumann series of ``H⁻¹ ∇F``.

  The series converges to ``H⁻¹ ∇F`` when the spectrum of ``α H`` lies in (0, 2); α = 1 is the plain series.
  """
  gradient = scale * grad_fn(x)
  term, direction = gradient, gradient
  for _ in range(num_terms):
    term = term - scale * hessian_vector_product(grad_fn, x, term)
    direction = direction + term
  return direction


@register("newton")
def newton(eta: float = 1.0, curvature_scale: float = 1.0, num_terms: int = 1) -> Solver:
  """Neumann-Newton (MHA2nd1st for ``num_terms=1``, α = 1): ``x⁺ = x − η α Σ_{j≤K} (I − α H)^j ∇F(x)``.

  For ``K = 1`` the step is ``x − η (2∇F − H∇F)``; on the elastic Helmholtz energy, whose Hessian is
  ``I − Σ_p/T``, it equals ``x − η (I + Σ_p/T)(x − μ)``: a second attention-like pass. Where the curvature
  exceeds 2 the plain series turns uphill; a curvature scale α < 2/λ_max(H) restores descent.
  """
  check_positive_int("num_terms", num_terms)

  def step(grad_fn, x, state, hparams):
    direction = neumann_direction(grad_fn, x, num_terms, hparams["curvature_scale"])
    return x - hparams["eta"] * direction, state

  scale = HparamSpec(curvature_scale, 0.0, None, low_open=True,
                     fix="Use a positive curvature scale alpha (below 2/lambda_max(H)).")
  return Solver("newton", no_state, step, {"eta": step_size(eta, "step size eta"), "curvature_scale": scale},
                fixed_context=True)


@register("light_newton")
def light_newton(eta: float = 1.0, curvature_bias: float = 0.0, eps: float = 1e-6) -> Solver:
  """Secant Newton (this project's LightMHA2nd1st design; the paper's exact form is not public).

  No extra gradient pass: the curvature along the last step is estimated per token from the solver state,
  ``κ_n = ⟨Δx_n, Δg_n⟩ / (‖Δx_n‖² + ε)`` (a Rayleigh quotient of H, κ = 1 before any step), and the Neumann-1
  step with ``H ≈ κ I`` is taken: ``x⁺ = x − η (clip(2 − κ, 0, 2) + b) ∇F(x)`` with a learnable bias b.
  """

  def init(x):
    return (jnp.zeros_like(x), jnp.zeros_like(x), jnp.zeros((), bool))

  def step(grad_fn, x, state, hparams):
    previous_x, previous_g, started = state
    gradient = grad_fn(x)
    dx, dg = x - previous_x, gradient - previous_g
    secant = jnp.sum(dx * dg, axis=-1, keepdims=True) / (jnp.sum(dx * dx, axis=-1, keepdims=True) + eps)
    curvature = jnp.where(started, secant, 1.0)
    factor = jnp.clip(2.0 - curvature, 0.0, 2.0) + hparams["curvature_bias"]
    return x - hparams["eta"] * factor * gradient, (x, gradient, jnp.ones((), bool))

  return Solver("light_newton", init, step,
                {"eta": step_size(eta, "step size eta"), "curvature_bias": HparamSpec(curvature_bias)})
