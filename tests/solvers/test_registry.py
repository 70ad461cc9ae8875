"""A solver written outside the library: registered by name, with its own hyperparameter, used by Layer,
EnergyStack, Split and vmapped studies, against the update rule written out; and what the registry refuses."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import energyformer as ef
from energyformer import energies, solvers
from energyformer.layers import Hyperparameter, unwrap
from energyformer.solvers import registry

N, D = 5, 6
EPS = 1e-6
TOL = dict(rtol=1e-5, atol=1e-6)


def rmsprop(eta: float = 0.1, decay: float = 0.9) -> solvers.Solver:
  """Per-token RMSProp: ``r⁺ = ρ r + (1 − ρ) mean_d g²``, ``x⁺ = x − η g / √(r⁺ + ε)``, ``r⁰ = 0``."""

  def init(x):
    return jnp.zeros(x.shape[:-1] + (1,), x.dtype)

  def step(grad_fn, x, r, hparams):
    g = grad_fn(x)
    r = hparams["decay"] * r + (1.0 - hparams["decay"]) * jnp.mean(g * g, axis=-1, keepdims=True)
    return x - hparams["eta"] * g / jnp.sqrt(r + EPS), r

  decay_spec = solvers.HparamSpec(decay, 0.0, 1.0, high_open=True, fix="Use a decay in [0, 1).")
  return solvers.Solver("rmsprop", init, step, {"eta": solvers.step_size(eta), "decay": decay_spec})


def _rmsprop_reference(g, x, r, eta, decay):
  r = decay * r + (1.0 - decay) * jnp.mean(g(x) ** 2, axis=-1, keepdims=True)
  return x - eta * g(x) / jnp.sqrt(r + EPS), r


@pytest.fixture
def registered(monkeypatch):
  """``rmsprop`` registered for one test (the registry is restored afterwards)."""
  monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))
  solvers.register("rmsprop")(rmsprop)


def _quadratic():
  """``F(x) = ½ Σ_n x_n A x_nᵀ``, gradient ``½ x (A + Aᵀ)``."""
  return energies.energy(lambda p, x, c, m: 0.5 * jnp.sum((x @ p["A"]) * x),
                         A=energies.ParamSpec((D, D), ("embed", "embed"), energies.normal(D ** -0.5)))


def _gradient(params):
  a = params["energy"]["A"] if "energy" in params else params["A"]
  return lambda x: 0.5 * x @ (a + a.T)


def _tokens(seed=0):
  return jax.random.normal(jax.random.key(seed), (N, D))


def test_registered_solver_is_found_by_name(registered):
  """solvers.get / names / Layer(energy, name) find the user's solver, with its own defaults and step sizes."""
  assert "rmsprop" in solvers.names()
  solver = solvers.get("rmsprop", decay=0.5)
  assert solver.defaults == {"eta": 0.1, "decay": 0.5} and solver.step_sizes == ("eta",)
  assert ef.Layer(_quadratic(), "rmsprop").solver.name == "rmsprop"


def test_user_hyperparameter_range_is_checked(registered):
  """The solver's own spec checks its own hyperparameter name, in hparams() and in an EnergyStack."""
  with pytest.raises(ValueError, match=r"decay must lie in \[0.0, 1.0\).*Use a decay"):
    solvers.get("rmsprop").hparams(decay=1.0)
  with pytest.raises(ValueError, match="decay"):
    ef.EnergyStack(ef.Layer(_quadratic(), "rmsprop"), 2, rngs=nnx.Rngs(0),
                   hparams={"eta": jnp.float32(0.1), "decay": jnp.float32(1.5)})


def test_user_solver_stack_matches_update_rule(registered):
  """A 3-step shared EnergyStack with the user solver equals the RMSProp rule written out, state across steps."""
  stack = ef.EnergyStack(ef.Layer(_quadratic(), "rmsprop"), 3, rngs=nnx.Rngs(1), shared=True,
                         hparams={"eta": jnp.float32(0.2), "decay": jnp.float32(0.7)})
  g, x = _gradient(unwrap(stack.params)), _tokens(2)
  z, r = x, jnp.zeros((N, 1))
  for _ in range(3):
    z, r = _rmsprop_reference(g, z, r, 0.2, 0.7)
  out = stack.rollout(x)
  np.testing.assert_allclose(out.x, z, **TOL)
  np.testing.assert_allclose(out.state, r, **TOL)


def test_strang_half_steps_halve_only_declared_step_sizes(registered):
  """In Strang splitting the user solver's half steps use η/2 and the unchanged decay ρ."""
  first, second = ef.Layer(_quadratic(), "rmsprop"), ef.Layer(_quadratic(), solvers.gradient_descent(0.3))
  split = ef.Split((first, second), "strang")
  params = tuple({"energy": energies.init_params(_quadratic().specs(), jax.random.key(s))} for s in (3, 4))
  hparams = (first.default_hparams(eta=0.4, decay=0.6), second.default_hparams())
  x = _tokens(5)
  got, (r_got, _) = split.step(params, hparams, x, split.init_state(x))
  z, r = _rmsprop_reference(_gradient(params[0]), x, jnp.zeros((N, 1)), 0.2, 0.6)
  z = z - 0.3 * _gradient(params[1])(z)
  z, r = _rmsprop_reference(_gradient(params[0]), z, r, 0.2, 0.6)
  np.testing.assert_allclose(got, z, **TOL)
  np.testing.assert_allclose(r_got, r, **TOL)


def test_user_hyperparameter_vmaps_like_sequential_runs(registered):
  """jax.vmap of a stack over the user's decay values (Hyperparameter variables) equals one run per value."""
  layer = ef.Layer(_quadratic(), "rmsprop")
  stacks = [ef.EnergyStack(layer, 3, rngs=nnx.Rngs(6), hparams=layer.default_hparams(eta=0.3, decay=d))
            for d in (0.0, 0.5, 0.9)]
  graphdef, _, rest = nnx.split(stacks[0], Hyperparameter, ...)
  states = [nnx.split(s, Hyperparameter, ...)[1] for s in stacks]
  run = jax.jit(lambda hp: nnx.merge(graphdef, hp, rest)(_tokens(7)))
  sequential = np.stack([run(s) for s in states])
  vmapped = jax.vmap(run)(jax.tree.map(lambda *v: jnp.stack(v), *states))
  np.testing.assert_allclose(vmapped, sequential, **TOL)
  assert np.max(np.abs(sequential[0] - sequential[2])) > 1e-3  # the decay matters


def test_registry_refuses_duplicates_and_non_factories(registered):
  """A taken name raises unless overwrite=True; a built Solver is not a factory."""
  with pytest.raises(ValueError, match="'rmsprop' is already registered.*overwrite=True"):
    solvers.register("rmsprop", lambda eta=1.0: rmsprop(eta))
  solvers.register("rmsprop", lambda eta=1.0: rmsprop(eta), overwrite=True)
  assert solvers.get("rmsprop").defaults == {"eta": 1.0, "decay": 0.9}
  with pytest.raises(TypeError, match="factory"):
    solvers.register("built", rmsprop())


def test_uncalled_factory_is_refused_with_the_call():
  """solvers.momentum (not called) as a Layer's solver raises a TypeError telling to call it."""
  with pytest.raises(TypeError, match=r"Layer\(solver=\.\.\.\).*'momentum'.*solvers\.momentum\(\)"):
    ef.Layer(_quadratic(), solvers.momentum)


def test_optax_transformation_is_refused_with_what_a_solver_is():
  """An optax GradientTransformation as a solver raises a TypeError saying what a solver is."""
  with pytest.raises(TypeError, match=r"optax GradientTransformation.*token states.*step\(grad_fn, x, state"):
    ef.Layer(_quadratic(), optax.sgd(0.1))
  with pytest.raises(TypeError, match="optax"):
    solvers.as_solver(optax.adam(1e-3))
