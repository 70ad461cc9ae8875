"""First-order solvers: gradient descent, heavy-ball momentum, Nesterov, and the explicit Euler step."""
from __future__ import annotations

from energyformer.solvers.base import (Solver, momentum_coefficient, no_state, step_size, time_constant,
                                       zeros_like_state)
from energyformer.solvers.registry import register


@register("gd")
def gradient_descent(eta: float = 1.0) -> Solver:
  """``x⁺ = x − η ∇F(x)``. On a Helmholtz energy with relaxed values this is standard attention plus residual."""

  def step(grad_fn, x, state, hparams):
    return x - hparams["eta"] * grad_fn(x), state

  return Solver("gd", no_state, step, {"eta": step_size(eta, "step size eta")})


@register("momentum")
def momentum(eta: float = 1.0, beta: float = 0.5) -> Solver:
  """Heavy-ball momentum (MomenMHA): ``m⁺ = β m − η ∇F(x)``, ``x⁺ = x + m⁺``, ``m⁰ = 0``.

  Carried across layers, ``m`` is a weighted skip connection over every earlier layer's attention output.
  """

  def step(grad_fn, x, velocity, hparams):
    velocity = hparams["beta"] * velocity - hparams["eta"] * grad_fn(x)
    return x + velocity, velocity

  return Solver("momentum", zeros_like_state, step,
                {"eta": step_size(eta, "step size eta"), "beta": momentum_coefficient(beta)})


@register("nesterov")
def nesterov(eta: float = 1.0, beta: float = 0.5) -> Solver:
  """Nesterov (NagMHA): ``m⁺ = β m − η ∇F(x + β m)``, ``x⁺ = x + m⁺`` — the gradient at the look-ahead point."""

  def step(grad_fn, x, velocity, hparams):
    velocity = hparams["beta"] * velocity - hparams["eta"] * grad_fn(x + hparams["beta"] * velocity)
    return x + velocity, velocity

  return Solver("nesterov", zeros_like_state, step,
                {"eta": step_size(eta, "step size eta"), "beta": momentum_coefficient(beta)})


@register("euler")
def euler(dt: float = 0.1, tau: float = 1.0) -> Solver:
  """Explicit Euler step of ``τ dx/dt = −∂E/∂g``: ``x⁺ = x − (dt/τ) ∂E/∂g``.

  Used with a Lagrangian (``g = ∇L(x)``) this is the Energy Transformer's recurrent update.
  """

  def step(grad_fn, x, state, hparams):
    return x - (hparams["dt"] / hparams["tau"]) * grad_fn(x), state

  return Solver("euler", no_state, step, {"dt": step_size(dt, "Euler step dt"), "tau": time_constant(tau)})
