"""Stochastic solvers: Euler–Maruyama steps of Langevin dynamics on an energy."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from energyformer.solvers.base import HparamSpec, Solver, step_size, time_constant
from energyformer.solvers.registry import register


def _default_key(x):
  """A fixed key (seed 0); pass ``state=jax.random.key(seed)`` to a rollout to draw other noise."""
  del x
  return jax.random.key(0)


@register("langevin")
def langevin(dt: float = 0.1, tau: float = 1.0, temperature: float = 0.0) -> Solver:
  """Euler–Maruyama step of ``τ dx = −∂E/∂g dt + √(2τ T) dW``: ``x⁺ = x − α ∂E/∂g + √(2 α T) ξ``, ``α = dt/τ``.

  ``ξ ~ N(0, I)`` is drawn from the PRNG key the solver carries as its state (split at every step). At
  temperature ``T = 0`` the step is the deterministic ``euler`` step. The state is a key: give a rollout
  ``state=jax.random.key(seed)`` (one key per sequence for a batch); ``init`` starts from seed 0.
  """

  def step(grad_fn, x, key, hparams):
    key, noise_key = jax.random.split(key)
    rate = hparams["dt"] / hparams["tau"]
    noise = jnp.sqrt(2.0 * rate * hparams["temperature"]) * jax.random.normal(noise_key, x.shape, x.dtype)
    return x - rate * grad_fn(x) + noise, key

  noise = HparamSpec(temperature, 0.0, None, fix="Use a noise temperature >= 0 (0 turns the noise off).")
  return Solver("langevin", _default_key, step,
                {"dt": step_size(dt, "Euler step dt"), "tau": time_constant(tau), "temperature": noise})
