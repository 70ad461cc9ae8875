"""The CEM energies against closed forms in float64: the diagonal-plus-low-rank interaction energy and its tied
field (weight-tied attention with the explicit interaction matrices A_h = W_Qh W_Khᵀ + diag(d_h)), and the gated
element-wise energy whose tied field is a gated MLP with shared up/down projection."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import expit, logsumexp
from scipy.stats import norm

from energyformer import energies
from energyformer.energies import masks
from energyformer.layers import Layer

D, H, DH, N, HIDDEN = 6, 2, 3, 5, 7
TOL = dict(rtol=1e-10, atol=1e-12)


def _params(energy, seed):
  return energies.init_params(energy.specs(), jax.random.key(seed), jnp.float64)


def _tokens(seed, n=N):
  return jax.random.normal(jax.random.key(seed), (n, D), jnp.float64)


def _dplr_reference(params, x, mask):
  """``F = −Σ_h T_h Σ_n log Σ_{m visible} exp(x_n A_h x_mᵀ / T_h)`` and its tied field ``−Σ_h Σ_m p_hnm A_h x_m``
  with the (D, D) matrices ``A_h`` formed explicitly, in numpy."""
  x, mask = np.asarray(x), np.asarray(mask)
  query, key, diagonal = (np.asarray(params[k]) for k in ("query", "key", "diagonal"))
  temperature = np.asarray(params["temperature"])
  energy, field = 0.0, np.zeros_like(x)
  for h in range(H):
    a = query[:, h] @ key[:, h].T + np.diag(diagonal[h])
    logits = np.where(mask, x @ a @ x.T / temperature[h], -np.inf)
    energy -= temperature[h] * np.sum(logsumexp(logits, axis=1))
    p = np.exp(logits - logsumexp(logits, axis=1, keepdims=True))
    field -= p @ x @ a.T
  return energy, field


def test_dplr_energy_and_tied_field_are_the_interaction_matrix_closed_forms():
  """Energy and tied field (its closed form, and jax.grad with the context held) equal the explicit-A_h reference
  under a causal mask; with d = 0 the tied field is the weight-tied attention of Interaction(values=False)."""
  with jax.enable_x64(True):
    energy = energies.DPLRInteraction(D, H, DH)
    params = _params(energy, 0)
    params["diagonal"] = jax.random.normal(jax.random.key(1), (H, D), jnp.float64)
    x, mask = _tokens(2), masks.causal(N)
    low_rank = {**params, "diagonal": jnp.zeros((H, D), jnp.float64)}
    tied = energies.Interaction(D, H, DH)

    @jax.jit
    def computed(params, low_rank, x):
      return (energy(params, x, x, mask), Layer(energy, "gd", "tied").gradient({"energy": params}, x, mask),
              jax.grad(lambda z: energy(params, z, x, mask))(x), energy.tied_field(low_rank, x, mask, x),
              tied.tied_field({k: low_rank[k] for k in tied.specs()}, x, mask, x))

    value, field, grad, low_rank_field, tied_field = computed(params, low_rank, x)
    expected_energy, expected_field = _dplr_reference(params, x, mask)
    np.testing.assert_allclose(value, expected_energy, **TOL)
    np.testing.assert_allclose(field, expected_field, **TOL)
    np.testing.assert_allclose(grad, expected_field, **TOL)
    np.testing.assert_allclose(low_rank_field, tied_field, **TOL)
    np.testing.assert_allclose(low_rank_field, _dplr_reference(low_rank, x, mask)[1], **TOL)


def test_dplr_refuses_a_non_bilinear_local_energy():
  with pytest.raises(ValueError, match="inner-product"):
    energies.DPLRInteraction(D, H, DH, local=energies.elastic)


PHI = {"quadratic": (lambda h: 0.5 * h * h, lambda h: h),
       "relu": (lambda h: 0.5 * np.maximum(h, 0.0) ** 2, lambda h: np.maximum(h, 0.0)),
       "gelu": (lambda h: 0.5 * ((h * h - 1.0) * norm.cdf(h) + h * norm.pdf(h)) + 0.25, lambda h: h * norm.cdf(h))}
GATE = {"silu": lambda u: u * expit(u), "sigmoid": expit, "gelu": lambda u: u * norm.cdf(u)}


@pytest.mark.parametrize("potential, gate", [("quadratic", "silu"), ("relu", "sigmoid"), ("gelu", "gelu")])
def test_gated_potential_tied_field_is_a_shared_projection_gated_mlp(potential, gate):
  """``F(x; c) = −Σ g(V c) Φ(W x)`` and, the gate held, ``∂F/∂x = −Wᵀ[g(V x) ⊙ φ(W x)]``; the full gradient, which
  differentiates the gate too, differs."""
  with jax.enable_x64(True):
    energy = energies.GatedPotential(D, HIDDEN, potential, gate)
    params = _params(energy, 3)
    x, c = _tokens(4), _tokens(5)
    w, v = np.asarray(params["up"]), np.asarray(params["gate"])
    big_phi, phi = PHI[potential]
    fields = {mode: Layer(energy, "gd", mode) for mode in ("tied", "full")}
    value, tied, full = jax.jit(lambda p, x, c: (energy(p, x, c), fields["tied"].gradient({"energy": p}, x),
                                                  fields["full"].gradient({"energy": p}, x)))(params, x, c)
    np.testing.assert_allclose(value, -np.sum(GATE[gate](np.asarray(c) @ v.T) * big_phi(np.asarray(x) @ w.T)), **TOL)
    gated = GATE[gate](np.asarray(x) @ v.T) * phi(np.asarray(x) @ w.T)
    np.testing.assert_allclose(tied, -gated @ w, **TOL)
    assert np.max(np.abs(np.asarray(full) - np.asarray(tied))) > 1e-3


def test_gated_potential_refuses_bad_options():
  with pytest.raises(ValueError, match="potential"):
    energies.GatedPotential(D, HIDDEN, potential="tanh")
  with pytest.raises(ValueError, match="gate"):
    energies.GatedPotential(D, HIDDEN, gate="tanh")
  energy = energies.GatedPotential(D, HIDDEN)
  with pytest.raises(ValueError, match="same number of tokens"):
    energy(energies.init_params(energy.specs(), jax.random.key(0)), jnp.ones((4, D)), jnp.ones((3, D)))


def test_gated_potential_gate_reads_each_tokens_own_context_row():
  """Under a mask the gate of token n reads the last row it sees: with a causal mask over the tokens themselves, or
  with the tokens placed after a prefix of other rows (incremental decoding), the tied field is the unmasked one;
  a token that sees nothing contributes nothing."""
  with jax.enable_x64(True):
    energy = energies.GatedPotential(D, HIDDEN)
    params = _params(energy, 6)
    x, prefix = _tokens(7), _tokens(8, n=3)
    field = jax.jit(lambda context, mask: jax.grad(lambda z: energy(params, z, context, mask))(x))
    unmasked = field(x, None)
    np.testing.assert_allclose(field(x, masks.causal(N)), unmasked, **TOL)
    after_prefix = jnp.arange(3 + N)[None, :] <= 3 + jnp.arange(N)[:, None]
    np.testing.assert_allclose(field(jnp.concatenate([prefix, x]), after_prefix), unmasked, **TOL)
    blind = masks.causal(N).at[2].set(False)
    np.testing.assert_allclose(field(x, blind)[2], 0.0, atol=0)
