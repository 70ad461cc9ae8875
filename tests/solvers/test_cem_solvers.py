"""The learned preconditioner and recursive updates: P is symmetric positive definite and applied as P g, a
preconditioned step is x − η P G(x) and a small one never raises the energy, T recursive steps equal T explicit
steps of the same layer."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from energyformer import energies, solvers
from energyformer.energies import masks
from energyformer.layers import EnergyStack, Layer, Preconditioned, Split

D, H, DH, N, RANK = 6, 2, 3, 5, 2


def _energy():
  return energies.EnergySum({"attention": energies.DPLRInteraction(D, H, DH),
                             "mlp": energies.GatedPotential(D, 8, "relu")})


def _random_preconditioner(seed, dtype=jnp.float64):
  diagonal_key, low_rank_key = jax.random.split(jax.random.key(seed))
  return {"diagonal": 2.0 * jax.random.normal(diagonal_key, (D,), dtype),
          "low_rank": jax.random.normal(low_rank_key, (D, RANK), dtype)}


def test_preconditioner_is_positive_definite_and_applied_as_a_matrix():
  """``P = diag(softplus(ρ)) + U Uᵀ`` is symmetric with positive eigenvalues (ρ down to −30); ``apply`` is ``P g``."""
  with jax.enable_x64(True):
    for seed in range(5):
      params = _random_preconditioner(seed)
      params["diagonal"] = params["diagonal"].at[0].set(-30.0)
      p = np.asarray(solvers.preconditioner_matrix(params))
      np.testing.assert_array_equal(p, p.T)
      assert np.min(np.linalg.eigvalsh(p)) > 0.0
      g = jax.random.normal(jax.random.key(10 + seed), (N, D), jnp.float64)
      np.testing.assert_allclose(solvers.apply_preconditioner(params, g), np.asarray(g) @ p.T, rtol=1e-12)


def _preconditioned_layer(eta, mode="full"):
  layer = Preconditioned.of(Layer(_energy(), "gd", mode), RANK)
  return layer, layer.default_hparams(eta=eta)


def _params(layer, seed):
  params = energies.init_params(layer.specs(), jax.random.key(seed), jnp.float64)
  return {**params, "preconditioner": _random_preconditioner(seed)}


def test_preconditioned_step_is_x_minus_eta_p_grad_and_never_raises_the_energy():
  """Layer step = ``x − η P ∇E(x)`` (full derivation: the true gradient); for η = 1e-3 the energy never rises
  over 10 draws of parameters, P and tokens, while the same step with −P (not positive definite) raises it."""
  with jax.enable_x64(True):
    layer, hparams = _preconditioned_layer(1e-3)
    mask = masks.causal(N)

    def step(params, x):
      return layer.step(params, hparams, x, layer.init_state(x), mask)[0]

    def descent(params, x):
      gradient = Layer(_energy(), "gd", "full").gradient(params, x, mask)
      expected = x - hparams["eta"] * gradient @ solvers.preconditioner_matrix(params["preconditioner"]).T
      moved = step(params, x)
      energy = lambda z: layer.energy_value(params, z, mask)
      relative_error = jnp.max(jnp.abs(moved - expected)) / jnp.max(jnp.abs(expected - x))
      return relative_error, energy(moved) - energy(x), energy(2 * x - moved) - energy(x)

    for seed in range(10):
      params, x = _params(layer, seed), jax.random.normal(jax.random.key(100 + seed), (N, D), jnp.float64)
      error, change, change_along_minus_p = jax.jit(descent)(params, x)
      assert float(error) < 1e-10
      assert float(change) < 0.0 < float(change_along_minus_p)


def test_a_stack_learns_one_preconditioner_per_layer_beside_the_energy():
  """In an EnergyStack of depth 3 (a Strang splitting) each layer has its own P (leading layer axis), trained
  (nnx.Param), starting with D = I."""
  layer, _ = _preconditioned_layer(0.1, "tied")
  split = Split((layer, Layer(energies.GatedPotential(D, 8), "gd", "tied")), "strang")
  stack = nnx.eval_shape(lambda: EnergyStack(split, 3, rngs=nnx.Rngs(0)))
  preconditioner = stack.params[0]["preconditioner"]
  assert isinstance(preconditioner["low_rank"], nnx.Param)
  assert preconditioner["diagonal"].shape == (3, D) and preconditioner["low_rank"].shape == (3, D, RANK)
  diagonal_init = layer.specs()["preconditioner"]["diagonal"].init(None, (D,), jnp.float32)
  np.testing.assert_allclose(jax.nn.softplus(diagonal_init), 1.0, rtol=1e-6)


def _tied_layer(solver):
  """A tied layer on the gated energy, whose gate reads the context."""
  return Layer(energies.GatedPotential(D, 8), solver, "tied")


@pytest.mark.parametrize("name, hold_context", [("gd", True), ("momentum", False)])
def test_recursive_steps_equal_explicit_steps_of_the_same_layer(name, hold_context):
  """``repeat(solver, 3, hold_context)`` (and the registered ``recursive``) is three steps of the layer with the
  same parameters and hyperparameters, the solver state threaded through them, against the context at the layer's
  input (``hold_context``) or at each step's input."""
  with jax.enable_x64(True):
    once = _tied_layer(solvers.get(name, eta=0.3))
    thrice = _tied_layer(solvers.repeat(solvers.get(name), 3, hold_context))
    registered = _tied_layer(solvers.get("recursive", solver=name, steps=3, hold_context=hold_context, eta=0.3))
    params = energies.init_params(once.specs(), jax.random.key(0), jnp.float64)
    x, mask = jax.random.normal(jax.random.key(1), (N, D), jnp.float64), masks.causal(N)

    @jax.jit
    def explicit(params, x):
      context = (lambda g: x) if hold_context else None
      z, state = x, once.init_state(x)
      for _ in range(3):
        z, state = once.step(params, once.default_hparams(), z, state, mask, context)
      return z, state

    expected, state = explicit(params, x)
    for layer in (thrice, registered):
      got, got_state = jax.jit(lambda p, x: layer.step(p, layer.default_hparams(eta=0.3), x, layer.init_state(x),
                                                       mask))(params, x)
      np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12), got_state, state)
    assert registered.solver.defaults["eta"] == 0.3 and registered.solver.step_sizes == ("eta",)
    moving = _tied_layer(solvers.repeat(solvers.get(name), 3, not hold_context))
    other = moving.step(params, moving.default_hparams(eta=0.3), x, moving.init_state(x), mask)[0]
    assert np.max(np.abs(np.asarray(other) - np.asarray(expected))) > 1e-6   # the context choice matters


def test_repeat_refuses_a_non_positive_number_of_steps():
  with pytest.raises(ValueError, match="steps"):
    solvers.repeat("gd", 0)
