"""Local energies are used one way (as values, parameterised by calling), masks are the aggregator's job, and
``ParamSpec`` refuses bad declarations."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from energyformer import energies

D, H, DH, N, M = 8, 2, 4, 5, 6
TOL = dict(rtol=1e-5, atol=1e-6)


def _tokens(seed, rows):
  return jax.random.normal(jax.random.key(seed), (rows, D))


def _energy(local, aggregate=None):
  """``F(x; c)`` of an Interaction with ``local`` and its parameters."""
  interaction = energies.Interaction(D, H, DH, local=local, aggregate=aggregate or energies.Helmholtz())
  return interaction, energies.init_params(interaction.specs(), jax.random.key(0))


def _huber_pair(delta):
  def pair(q, k):
    r = np.abs(q - k)
    return np.sum(np.where(r <= delta, 0.5 * r * r, delta * (r - 0.5 * delta)))
  return pair


PAIR_FORMULAS = {  # numpy formulas of one (query, key) pair, written independently of the library
    "inner_product": (energies.inner_product, lambda q, k: -q @ k),
    "elastic": (energies.elastic, lambda q, k: 0.5 * np.sum((q - k) ** 2)),
    "quadratic": (energies.quadratic, lambda q, k: -0.5 * (q @ k) ** 2),
    "huber": (energies.huber, _huber_pair(1.0)),
    "lp": (energies.lp, lambda q, k: np.sum(np.abs(q - k))),
    "huber(delta=0.4)": (energies.huber(delta=0.4), _huber_pair(0.4)),
    "lp(2.5)": (energies.lp(2.5), lambda q, k: np.sum(np.abs(q - k) ** 2.5)),
}


@pytest.mark.parametrize("name", PAIR_FORMULAS)
def test_every_local_energy_is_used_as_a_value(name):
  """``Interaction(local=energies.X)`` works for every built-in, parameterised or not: its Helmholtz energy equals
  ``−T Σ_hn log Σ_m exp(−E_hnm / T)`` of the pair formula evaluated pair by pair in numpy (float64)."""
  local, formula = PAIR_FORMULAS[name]
  interaction, params = _energy(local)
  x, c = _tokens(1, N), _tokens(2, M)
  q = np.einsum("nd,dhk->hnk", np.asarray(x, np.float64), np.asarray(params["query"], np.float64))
  k = np.einsum("md,dhk->hmk", np.asarray(c, np.float64), np.asarray(params["key"], np.float64))
  pair_energies = np.array([[[formula(q[h, n], k[h, m]) for m in range(M)] for n in range(N)] for h in range(H)])
  temperature = np.asarray(params["temperature"], np.float64).reshape(H, 1, 1)
  logits = -pair_energies / temperature
  peak = logits.max(-1, keepdims=True)
  lse = (np.log(np.exp(logits - peak).sum(-1, keepdims=True)) + peak)
  expected = -np.sum(temperature * lse)
  chex.assert_trees_all_close(jax.jit(interaction)(params, x, c), expected, rtol=1e-5)


def test_parameterised_energies_called_with_their_parameters():
  """``huber`` and ``lp`` are their defaults (δ = 1, p = 1); calling sets a parameter positionally or by name, and
  equal parameters give equal (hashable) energies, so compiled programs are shared."""
  assert energies.huber == energies.huber(1.0) == energies.huber(delta=1.0) == energies.huber()
  assert energies.lp == energies.lp(1.0) == energies.lp(p=1.0)
  assert energies.huber(0.5) != energies.huber and hash(energies.huber(0.5)) == hash(energies.huber(delta=0.5))
  assert energies.huber(0.5).delta == 0.5 and energies.lp(3.0).p == 3.0


@pytest.mark.parametrize("call, message", [
    (lambda: energies.huber(delta=0.5, threshold=1.0), "no parameter 'threshold'.*'delta'"),
    (lambda: energies.lp(1.0, 2.0), "takes the parameters"),
    (lambda: energies.huber(-1.0), "^delta must"),
    (lambda: energies.lp(p=0.5), "^p must"),
])
def test_bad_parameters_are_refused_by_name(call, message):
  """An unknown parameter, too many of them, or a value out of range is refused, naming it."""
  with pytest.raises((TypeError, ValueError), match=message):
    call()


@pytest.mark.parametrize("aggregate", [energies.Helmholtz(), energies.PlainSum(), energies.Discounted(decay=0.7)],
                         ids=["helmholtz", "plain_sum", "discounted"])
def test_masked_pairs_never_reach_the_energy(aggregate):
  """A user's pairwise energy ignores masks — the aggregator drops hidden pairs: moving a context token that the mask hides
  from every query leaves the energy unchanged, and moving a visible one changes it."""
  interaction, params = _energy(energies.pairwise(lambda q, k: jnp.sum(jnp.cosh(q - k))), aggregate)
  x, c = _tokens(1, N), _tokens(2, N)
  mask = jnp.ones((N, N), bool).at[:, 2].set(False)
  energy = jax.jit(jax.vmap(lambda context: interaction(params, x, context, mask)))
  moved_hidden, moved_visible, original = energy(jnp.stack([c.at[2].add(5.0), c.at[0].add(5.0), c]))
  chex.assert_trees_all_close(moved_hidden, original, **TOL)
  assert not np.isclose(moved_visible, original, rtol=1e-4)


# ParamSpec.


def test_param_spec_takes_a_number_as_a_constant_initializer():
  """``init=0.5`` (or an array) is ``constant(0.5)``; a list shape is a tuple."""
  specs = {"a": energies.ParamSpec([2, 3], ("embed", None), 0.5), "b": energies.ParamSpec((3,), ("embed",),
                                                                                            np.arange(3.0))}
  params = energies.init_params(specs, jax.random.key(0))
  np.testing.assert_array_equal(params["a"], np.full((2, 3), 0.5))
  np.testing.assert_array_equal(params["b"], np.arange(3.0))
  assert specs["a"].shape == (2, 3)


@pytest.mark.parametrize("build, error, message", [
    (lambda: energies.ParamSpec((4, 8), ("embed",), energies.normal(0.1)), ValueError, "one logical axis name"),
    (lambda: energies.ParamSpec((4,), ("embed", "mlp"), energies.normal(0.1)), ValueError, "name 2 dimension"),
    (lambda: energies.ParamSpec((4,), "embed", energies.normal(0.1)), ValueError, "note the comma"),
    (lambda: energies.ParamSpec(4, ("embed",), energies.normal(0.1)), ValueError, "tuple of non-negative ints"),
    (lambda: energies.ParamSpec((4, -1), ("embed", None), energies.normal(0.1)), ValueError, "non-negative"),
    (lambda: energies.ParamSpec((4,), ("embed",), "normal"), TypeError, "initializer init\\(key, shape, dtype\\)"),
    (lambda: energies.ParamSpec((4,), ("embed",), 1.0, trainable="no"), TypeError, "True or False"),
])
def test_param_spec_refuses_bad_declarations(build, error, message):
  """Axes that do not name every dimension, a shape that is not a tuple of sizes, an initializer that is neither
  callable nor a number, a non-boolean ``trainable``: refused when declared, with the fix."""
  with pytest.raises(error, match=message):
    build()
