"""A user energy declaring its relaxed form (``energies.ScoreEnergy``) against a hand-written relaxed field.

The energy, written here as a user would: ``F(x; c) = Σ_h [−Σ_{n,m ∈ mask} softplus(s_hnm / √Dh) + λ/2 ‖q_h‖²]``
with ``s_h = q_h k_hᵀ``, ``q_h = x W^Q_h``, ``k_h = c W^K_h``. Its relaxed field, written out:
``G = λ Σ_h q_h W^Q_hᵀ − Σ_h (σ(s_h/√Dh)/√Dh ⊙ mask) v_h W^O_h``: sigmoid attention plus a query-side decay.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import energyformer as ef
from energyformer import energies, solvers
from energyformer.energies import masks
from energyformer.layers import relaxed_gradient, score_relaxed_field, unwrap

N, D, H, DH = 6, 8, 2, 4
DECAY = 0.3
TOL = dict(rtol=1e-5, atol=1e-5)


@dataclasses.dataclass(frozen=True)
class SigmoidEnergy:
  """``−Σ softplus(s/√Dh) + λ/2 ‖q‖²`` over heads; relaxed: sigmoid attention (a ``ScoreEnergy``)."""

  values: bool = True

  def specs(self):
    spec = energies.ParamSpec((D, H, DH), ("embed", "heads", "head_dim"), energies.normal(D ** -0.5))
    out = energies.ParamSpec((H, DH, D), ("heads", "head_dim", "embed"), energies.normal((H * DH) ** -0.5))
    return {"query": spec, "key": spec, "value": spec, "output": out}

  def scores(self, params, x, context):
    q, k = (jnp.einsum("nd,dhk->hnk", t, params[name]) for t, name in ((x, "query"), (context, "key")))
    return q @ jnp.swapaxes(k, -1, -2)

  def energy_of_scores(self, params, s, x, context, mask):
    q = jnp.einsum("nd,dhk->hnk", x, params["query"])
    pair = jax.nn.softplus(s / DH ** 0.5)
    return -jnp.sum(jnp.where(mask, pair, 0.0) if mask is not None else pair) + 0.5 * DECAY * jnp.sum(q * q)

  def values_out(self, params, weights, context):
    v = jnp.einsum("md,dhk->hmk", context, params["value"])
    return jnp.einsum("hnk,hkd->nd", weights @ v, params["output"])

  def __call__(self, params, x, context, mask=None):
    return self.energy_of_scores(params, self.scores(params, x, context), x, context, mask)


def _hand_written_field(w, x, mask):
  """``λ Σ_h q_h W^Q_hᵀ − Σ_h (σ(s_h/√Dh)/√Dh ⊙ mask) v_h W^O_h``."""
  q, k, v = (jnp.einsum("nd,dhk->hnk", x, w[name]) for name in ("query", "key", "value"))
  weights = jax.nn.sigmoid(q @ jnp.swapaxes(k, -1, -2) / DH ** 0.5) / DH ** 0.5
  weights = jnp.where(mask, weights, 0.0)
  return DECAY * jnp.einsum("hnk,dhk->nd", q, w["query"]) - jnp.einsum("hnk,hkd->nd", weights @ v, w["output"])


def _setup(seed=0):
  energy = SigmoidEnergy()
  params = energies.init_params(energy.specs(), jax.random.key(seed))
  x = jax.random.normal(jax.random.key(seed + 1), (N, D))
  return energy, params, x


def test_declared_energy_is_a_score_energy():
  """The class implements the protocol; ``values=False`` or a plain energy does not relax."""
  assert isinstance(SigmoidEnergy(), energies.ScoreEnergy) and energies.has_relaxed_form(SigmoidEnergy())
  assert not energies.has_relaxed_form(SigmoidEnergy(values=False))
  assert not energies.has_relaxed_form(energies.energy(lambda p, x, c, m: jnp.sum(x)))


def test_user_relaxed_field_equals_hand_written():
  """The relaxed layer field of the user energy equals the hand-written sigmoid-attention field, causal mask."""
  energy, params, x = _setup()
  layer = ef.Layer(energy, solvers.gradient_descent(0.5), "relaxed")
  field, stepped = jax.jit(lambda w, z: (layer.gradient({"energy": w}, z, masks.causal(N)),
                                         layer.step({"energy": w}, layer.default_hparams(), z, (), masks.causal(N))[0]))(
                                             params, x)
  expected = _hand_written_field(params, x, masks.causal(N))
  np.testing.assert_allclose(field, expected, **TOL)
  np.testing.assert_allclose(stepped, x - 0.5 * expected, **TOL)


def test_user_relaxed_training_gradients_equal_hand_written():
  """Gradients of a loss through a 2-step relaxed stack, w.r.t. every weight and the input tokens, equal those
  through the hand-written field (float64)."""
  with jax.enable_x64(True):
    energy, params, x = _setup(2)
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    x, mask = x.astype(jnp.float64), masks.causal(N)

    def loss(field, w, z):
      for _ in range(2):
        z = z - 0.5 * field(w, z)
      return jnp.sum(jnp.sin(z))

    library = lambda w, z: relaxed_gradient(energy, w, z, mask)
    reference = lambda w, z: _hand_written_field(w, z, mask)
    got = jax.jit(jax.grad(lambda w, z: loss(library, w, z), argnums=(0, 1)))(params, x)
    want = jax.jit(jax.grad(lambda w, z: loss(reference, w, z), argnums=(0, 1)))(params, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), got, want)


def test_user_energy_in_a_stack_and_in_a_sum():
  """In an EnergyStack the relaxed user energy matches the hand-written loop; in an EnergySum with a term
  without a relaxed form (a Hopfield memory) that term keeps its exact tied gradient."""
  energy, params, x = _setup(4)
  stack = ef.EnergyStack(ef.Layer(energy, solvers.gradient_descent(0.5), "relaxed"), 3, rngs=nnx.Rngs(5))
  weights = unwrap(stack.params)["energy"]

  @jax.jit
  def hand_written_loop(z):
    for step in range(3):
      z = z - 0.5 * _hand_written_field(jax.tree.map(lambda w: w[step], weights), z, masks.causal(N))
    return z

  np.testing.assert_allclose(nnx.jit(lambda s, z: s(z, masks.causal(N)))(stack, x), hand_written_loop(x), **TOL)

  memory = energies.HopfieldReLU2(D, 5)
  total = energies.EnergySum({"attention": energy, "memory": memory})
  both = {"attention": params, "memory": energies.init_params(memory.specs(), jax.random.key(6))}
  expected = _hand_written_field(params, x, masks.causal(N)) + jax.grad(lambda z: memory(both["memory"], z))(x)
  np.testing.assert_allclose(relaxed_gradient(total, both, x, masks.causal(N)), expected, **TOL)


def test_undeclared_energies_are_refused_with_the_way_to_declare():
  """mode='relaxed' on an energy without a relaxed form raises a TypeError naming ScoreEnergy and its methods;
  a ScoreEnergy without value projections a ValueError asking for values=True."""
  plain = energies.energy(lambda p, x, c, m: jnp.sum(x * x))
  with pytest.raises(TypeError, match=r"ScoreEnergy.*scores\(.*energy_of_scores\(.*values_out\("):
    ef.Layer(plain, "gd", "relaxed")
  with pytest.raises(TypeError, match="ScoreEnergy"):
    relaxed_gradient(plain, {}, jnp.ones((N, D)), None)
  with pytest.raises(ValueError, match="values=True"):
    ef.Layer(SigmoidEnergy(values=False), "gd", "relaxed")


def test_declared_fast_field_replaces_the_generic_derivation():
  """An energy's own relaxed_field (here the hand-written one, e.g. a closed form) is what the layer calls."""
  calls = []

  class WithClosedForm(SigmoidEnergy):
    def relaxed_field(self, params, x, mask, context):
      calls.append(context is x)
      return _hand_written_field(params, x, mask)

  _, params, x = _setup(8)
  got = ef.Layer(WithClosedForm(), "gd", "relaxed").gradient({"energy": params}, x, masks.causal(N))
  np.testing.assert_allclose(got, _hand_written_field(params, x, masks.causal(N)), **TOL)
  assert calls == [True]


@pytest.mark.parametrize("local", ["elastic", "quadratic"])
def test_interaction_fast_field_equals_its_generic_relaxed_form(local):
  """For a built-in Interaction, its own relaxed_field (probe energy, tile by tile when long) equals the generic
  derivation from its declared relaxed form (scores, energy_of_scores, values_out)."""
  energy = energies.Interaction(D, H, DH, local=getattr(energies, local), values=True)
  params = energies.init_params(energy.specs(), jax.random.key(9))
  x = jax.random.normal(jax.random.key(10), (N, D))
  generic, fast = jax.jit(lambda w, z: (score_relaxed_field(energy, w, z, masks.causal(N), z),
                                        energy.relaxed_field(w, z, masks.causal(N), z)))(params, x)
  np.testing.assert_allclose(fast, generic, **TOL)
