"""Adaptive-step solvers against explicit numpy loops of their update equations on a linear field."""
import jax.numpy as jnp
import numpy as np
import pytest

from energyformer import solvers

A = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, -0.3], [0.0, -0.3, 0.2]])
ETAS = [0.3, 0.1, 0.5, 0.2]


def _reference(name, x, hp):
  """The module docstring's equations, step by step, with a step size that changes every step."""
  b, s = np.zeros_like(x), np.zeros_like(x)
  for eta in ETAS:
    g = x @ A
    if name == "accumulated_momentum":
      b = hp["beta"] * b + g
      x = x - eta * b
    else:
      s = hp["rho"] * s + (1 - hp["rho"]) * g * g
      scaled = g / (np.sqrt(s) + 1e-6)
      b = hp["beta"] * b + scaled if name == "adaptive_rmsprop_momentum" else scaled
      x = x - eta * b
  return x


@pytest.mark.parametrize("name", ["accumulated_momentum", "adaptive_rmsprop", "adaptive_rmsprop_momentum"])
def test_adaptive_solver_matches_its_equations(name):
  solver = solvers.get(name)
  x0 = np.array([[1.0, -2.0, 0.5], [0.3, 0.7, -1.1]])
  hparams = solver.hparams()
  x, state = jnp.asarray(x0, jnp.float32), solver.init(jnp.asarray(x0, jnp.float32))
  for eta in ETAS:
    x, state = solver.step(lambda z: z @ jnp.asarray(A, jnp.float32), x, state, {**hparams, "eta": jnp.float32(eta)})
  defaults = {key: float(value) for key, value in hparams.items()}
  np.testing.assert_allclose(np.asarray(x), _reference(name, x0, defaults), rtol=1e-5, atol=1e-5)


def test_adaptive_solver_ranges():
  with pytest.raises(ValueError, match="decay rho"):
    solvers.adaptive_rmsprop().hparams(rho=1.0)
  with pytest.raises(ValueError, match="momentum beta"):
    solvers.accumulated_momentum().hparams(beta=-0.1)
