"""Energies against independent references: per-pair formulas, explicit loops and Flax modules.

Float32 throughout; values and gradients are compared with atol = rtol = 1e-5 unless a test says otherwise.
"""
import itertools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.stats import norm

from energyformer import energies
from energyformer.energies import masks
from energyformer.energies.memory import POTENTIALS
from energyformer.layers import derive

TOL = dict(atol=1e-5, rtol=1e-5)
H, N, M, DH, D = 2, 3, 4, 3, 5


def _normal(seed, shape, scale=1.0):
  return scale * jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _qk(seed=0):
  """Random projected queries (H, N, Dh), keys (H, M, Dh) and their scores (H, N, M)."""
  q, k = _normal(seed, (H, N, DH)), _normal(seed + 1, (H, M, DH))
  return q, k, jnp.einsum("hnk,hmk->hnm", q, k)


def _per_pair(local, pair_formula, seed=0):
  """The local energy and the same energy built by evaluating ``pair_formula(q_hn, k_hm)`` pair by pair."""
  q, k, scores = _qk(seed)
  qn, kn = np.asarray(q, np.float64), np.asarray(k, np.float64)
  expected = np.zeros((H, N, M))
  for h, n, m in itertools.product(range(H), range(N), range(M)):
    expected[h, n, m] = pair_formula(qn[h, n], kn[h, m])
  return local(scores, q, k), expected


def _random_mask(seed, shape, empty_rows=()):
  """A random boolean (N, M) mask with the given query rows fully masked."""
  mask = np.array(jax.random.bernoulli(jax.random.key(seed), 0.6, shape))
  mask[..., :, 0] = True
  for row in empty_rows:
    mask[..., row, :] = False
  return jnp.asarray(mask)


# Local energies.


@pytest.mark.parametrize("name, local, formula", [
    ("inner_product", energies.inner_product, lambda q, k: -q @ k),
    ("elastic", energies.elastic, lambda q, k: 0.5 * np.sum((q - k) ** 2)),
    ("quadratic", energies.quadratic, lambda q, k: -0.5 * (q @ k) ** 2),
])
def test_bilinear_local_energies_match_pair_formula(name, local, formula):
  """inner_product, elastic and quadratic equal −q·k, ½‖q−k‖² and −½(q·k)², pair by pair."""
  actual, expected = _per_pair(local, formula)
  chex.assert_shape(actual, (H, N, M))
  chex.assert_trees_all_close(actual, expected, **TOL)


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0, 3.0])
def test_lp_matches_pair_formula(p):
  """lp(p) equals Σ_j |q_j − k_j|^p, pair by pair."""
  actual, expected = _per_pair(energies.lp(p), lambda q, k: np.sum(np.abs(q - k) ** p))
  chex.assert_trees_all_close(actual, expected, **TOL)


def _huber_formula(delta):
  def pair(q, k):
    r = np.abs(q - k)
    return sum(0.5 * ri * ri if ri <= delta else delta * (ri - 0.5 * delta) for ri in r)

  return pair


@pytest.mark.parametrize("delta", [0.3, 1.0, 2.5])
def test_huber_matches_pair_formula(delta):
  """huber(δ) equals Σ_j (½r_j² if r_j ≤ δ else δ(r_j − ½δ)) with r = |q − k|, pair by pair."""
  actual, expected = _per_pair(energies.huber(delta), _huber_formula(delta))
  chex.assert_trees_all_close(actual, expected, **TOL)


def test_huber_covers_both_regimes():
  """The Huber test data has residuals on both sides of δ = 1 (so both branches are checked)."""
  q, k, _ = _qk()
  residuals = jnp.abs(q[:, :, None, :] - k[:, None, :, :])
  assert jnp.any(residuals < 1.0) and jnp.any(residuals > 1.0)


def test_pairwise_matches_pair_formula():
  """pairwise(fn) evaluates fn(q_hn, k_hm) on every head and pair (a Gaussian-kernel energy)."""
  fn = lambda q, k: -jnp.exp(-jnp.sum((q - k) ** 2)) + 0.1 * jnp.sum(q * q * k)
  formula = lambda q, k: -np.exp(-np.sum((q - k) ** 2)) + 0.1 * np.sum(q * q * k)
  actual, expected = _per_pair(energies.pairwise(fn), formula)
  chex.assert_trees_all_close(actual, expected, **TOL)


def test_pairwise_non_scalar_raises():
  """A pairwise function returning a vector per pair raises ValueError asking for a scalar."""
  q, k, scores = _qk()
  local = energies.pairwise(lambda q, k: q - k)
  with pytest.raises(ValueError, match="scalar per"):
    local(scores, q, k)


# Aggregators.


def _helmholtz_reference(e, mask, temperature):
  """−Σ_h T_h Σ_n log Σ_{m visible} exp(−E_hnm/T_h), skipping query rows that see no key (float64 loops)."""
  e, mask = np.asarray(e, np.float64), np.asarray(mask)
  total = 0.0
  for h, n in itertools.product(range(e.shape[0]), range(e.shape[1])):
    visible = -e[h, n][mask[n]] / temperature[h]
    if visible.size:
      top = visible.max()
      total -= temperature[h] * (top + math.log(np.sum(np.exp(visible - top))))
  return total


def test_helmholtz_matches_loop_with_mask_and_per_head_temperature():
  """Helmholtz equals −Σ_h T_h Σ_n logsumexp_m(−E/T_h) over visible keys, with one T per head."""
  e = _normal(0, (H, N, M), 3.0)
  mask = _random_mask(1, (N, M), empty_rows=(1,))
  temperature = np.array([0.7, 2.0])
  actual = energies.Helmholtz()(e, mask, {"temperature": jnp.asarray(temperature)}, None)
  chex.assert_trees_all_close(actual, _helmholtz_reference(e, mask, temperature), **TOL)


def test_helmholtz_without_mask_is_logsumexp_over_all_keys():
  """With no mask, Helmholtz equals −Σ_h T_h Σ_n logsumexp over every key."""
  e = _normal(2, (H, N, M))
  temperature = np.array([1.5, 0.5])
  actual = energies.Helmholtz()(e, None, {"temperature": jnp.asarray(temperature)}, None)
  expected = _helmholtz_reference(e, np.ones((N, M), bool), temperature)
  chex.assert_trees_all_close(actual, expected, **TOL)


def test_helmholtz_gradient_is_masked_softmax_and_finite_on_empty_rows():
  """∂F/∂E_hnm = softmax_m(−E/T_h) over visible keys; a fully masked row contributes 0 and a zero, finite gradient."""
  e = _normal(3, (H, N, M), 2.0)
  mask = _random_mask(4, (N, M), empty_rows=(2,))
  params = {"temperature": jnp.array([1.0, 3.0])}
  aggregate = energies.Helmholtz()
  grad = jax.grad(aggregate)(e, mask, params, None)
  assert np.all(np.isfinite(np.asarray(grad)))
  logits = -np.asarray(e, np.float64) / np.array([1.0, 3.0])[:, None, None]
  expected = np.zeros((H, N, M))
  for h, n in itertools.product(range(H), range(N)):
    if mask[n].any():
      w = np.where(mask[n], np.exp(logits[h, n] - logits[h, n][mask[n]].max()), 0.0)
      expected[h, n] = w / w.sum()
  chex.assert_trees_all_close(grad, expected, **TOL)
  only_empty = jnp.zeros((N, M), bool)
  assert aggregate(e, only_empty, params, None) == 0.0
  assert np.all(np.isfinite(np.asarray(jax.grad(aggregate)(e, only_empty, params, None))))


def test_helmholtz_default_temperature_is_sqrt_head_dim():
  """Without an explicit temperature, the declared per-head temperature is √Dh."""
  spec = energies.Helmholtz().specs(D, H, DH)["temperature"]
  chex.assert_trees_all_close(spec.init(None, spec.shape, jnp.float32), jnp.full((H,), math.sqrt(DH)), **TOL)


def test_plain_sum_matches_masked_sum():
  """PlainSum equals Σ of E over visible pairs (explicit loop)."""
  e = _normal(5, (H, N, M))
  mask = _random_mask(6, (N, M))
  en = np.asarray(e, np.float64)
  expected = sum(en[h, n, m] for h, n, m in itertools.product(range(H), range(N), range(M)) if mask[n, m])
  chex.assert_trees_all_close(energies.PlainSum()(e, mask, {}, None), expected, **TOL)
  chex.assert_trees_all_close(energies.PlainSum()(e, None, {}, None), float(np.sum(np.asarray(e))), **TOL)


def _decayed_reference(e, mask, gates):
  """Σ_{h,n,m≤n, visible} (Π_{m<j≤n} g_hj) E_hnm by explicit loops (gates of shape (H, N))."""
  e, gates = np.asarray(e, np.float64), np.asarray(gates, np.float64)
  total = 0.0
  for h, n in itertools.product(range(e.shape[0]), range(e.shape[1])):
    for m in range(n + 1):
      if mask is None or mask[n, m]:
        total += np.prod(gates[h, m + 1:n + 1]) * e[h, n, m]
  return total


@pytest.mark.parametrize("use_mask", [False, True])
def test_discounted_matches_geometric_weights(use_mask):
  """Discounted equals Σ_h Σ_n Σ_{m≤n} γ_h^{n−m} E_hnm (per-head γ, optionally masked)."""
  n = 5
  e = _normal(7, (H, n, n))
  mask = _random_mask(8, (n, n)) if use_mask else None
  decay = np.array([0.8, 0.5])
  actual = energies.Discounted()(e, mask, {"decay": jnp.asarray(decay)}, jnp.zeros((n, D)))
  en, mask = np.asarray(e, np.float64), None if mask is None else np.asarray(mask)
  expected = 0.0
  for h, i in itertools.product(range(H), range(n)):
    for m in range(i + 1):
      if mask is None or mask[i, m]:
        expected += decay[h] ** (i - m) * en[h, i, m]
  chex.assert_trees_all_close(actual, expected, **TOL)


def test_gated_matches_product_of_sigmoid_gates():
  """Gated equals Σ_{h,n,m≤n} Π_{m<j≤n} σ(c_j·w_h + b_h) E_hnm (explicit loops over the gates)."""
  n = 5
  e = _normal(9, (H, n, n))
  context = _normal(10, (n, D))
  params = {"gate_kernel": _normal(11, (D, H)), "gate_bias": jnp.array([0.5, -0.3])}
  c, w, b = (np.asarray(a, np.float64) for a in (context, params["gate_kernel"], params["gate_bias"]))
  gates = np.zeros((H, n))
  for h, j in itertools.product(range(H), range(n)):
    z = c[j] @ w[:, h] + b[h]
    gates[h, j] = 1.0 / (1.0 + math.exp(-z))
  actual = energies.Gated()(e, None, params, context)
  chex.assert_trees_all_close(actual, _decayed_reference(e, None, gates), **TOL)
  mask = _random_mask(12, (n, n))
  chex.assert_trees_all_close(energies.Gated()(e, mask, params, context), _decayed_reference(e, mask, gates), **TOL)


# Masks.


def test_causal_mask():
  """causal(N) is True exactly where m ≤ n; causal(N, M) is the rectangular version."""
  expected = np.array([[m <= n for m in range(6)] for n in range(4)])
  np.testing.assert_array_equal(masks.causal(4, 6), expected)
  np.testing.assert_array_equal(masks.causal(4), expected[:, :4])
  assert masks.causal(4).dtype == jnp.bool_


def test_self_exclusion_mask():
  """self_exclusion(N) is True exactly where m ≠ n."""
  np.testing.assert_array_equal(masks.self_exclusion(5), np.array([[m != n for m in range(5)] for n in range(5)]))


def test_padding_mask():
  """padding(valid_q, valid_k)[b, n, m] = valid_q[b, n] ∧ valid_k[b, m]; one argument means keys = queries."""
  valid_q = np.array([[1, 1, 0], [1, 0, 1]], bool)
  valid_k = np.array([[1, 0, 1, 1], [0, 1, 1, 0]], bool)
  expected = np.array([[[valid_q[b, n] and valid_k[b, m] for m in range(4)] for n in range(3)] for b in range(2)])
  np.testing.assert_array_equal(masks.padding(valid_q, valid_k), expected)
  self_expected = np.array([[[valid_q[b, n] and valid_q[b, m] for m in range(3)] for n in range(3)] for b in range(2)])
  np.testing.assert_array_equal(masks.padding(valid_q), self_expected)


def test_from_lengths_mask():
  """from_lengths(ℓ, N)[b, n, m] = (n < ℓ_b) ∧ (m < ℓ_b)."""
  lengths = [3, 5, 0]
  expected = np.array([[[n < l and m < l for m in range(5)] for n in range(5)] for l in lengths])
  np.testing.assert_array_equal(masks.from_lengths(jnp.array(lengths), 5), expected)
  np.testing.assert_array_equal(masks.from_lengths(2, 4), np.array([[n < 2 and m < 2 for m in range(4)] for n in range(4)]))


def test_from_adjacency_mask():
  """from_adjacency(A) is True exactly where A is non-zero (any sign, any dtype)."""
  adjacency = np.array([[0.0, 2.5, 0.0], [-1.0, 0.0, 1e-3], [1.0, 1.0, 0.0]])
  np.testing.assert_array_equal(masks.from_adjacency(adjacency), adjacency != 0)
  np.testing.assert_array_equal(masks.from_adjacency(adjacency.astype(int)), adjacency.astype(int) != 0)


def test_combine_masks():
  """combine is the elementwise AND of its masks, skips None, and is None when every mask is None."""
  a, b = np.asarray(_random_mask(13, (4, 4))), np.asarray(masks.causal(4))
  c = np.asarray(masks.self_exclusion(4))
  np.testing.assert_array_equal(masks.combine(a, None, b, c), a & b & c)
  np.testing.assert_array_equal(masks.combine(a), a)
  batched = np.asarray(masks.from_lengths(jnp.array([2, 4]), 4))
  np.testing.assert_array_equal(masks.combine(batched, b), batched & b[None])
  assert masks.combine(None, None) is None
  assert masks.combine() is None


# Lagrangians.


def _lagrangian_params(seed):
  return {"gamma": jnp.asarray(1.7, jnp.float32), "delta": _normal(seed, (D,))}


@pytest.mark.parametrize("shape", [(N, D), (2, N, D)])
def test_layernorm_lagrangian_gradient_is_flax_layernorm(shape):
  """∇L of LayerNormLagrangian equals flax.nnx.LayerNorm with scale γ·1 and bias δ (same ε)."""
  lagrangian = energies.LayerNormLagrangian(D)
  params = _lagrangian_params(14)
  x = _normal(15, shape, 2.0) + 0.5
  norm = nnx.LayerNorm(D, epsilon=lagrangian.eps, use_fast_variance=False, rngs=nnx.Rngs(0))
  norm.scale[...] = params["gamma"] * jnp.ones(D)
  norm.bias[...] = params["delta"]
  chex.assert_trees_all_close(energies.activation(lagrangian, params, x), norm(x), **TOL)


def test_layernorm_lagrangian_gradient_matches_formula():
  """∇L of LayerNormLagrangian equals γ (x − x̄)/√(var + ε) + δ, token by token."""
  lagrangian = energies.LayerNormLagrangian(D, eps=1e-3)
  params = _lagrangian_params(16)
  x = np.asarray(_normal(17, (N, D)), np.float64)
  expected = np.stack([
      float(params["gamma"]) * (row - row.mean()) / math.sqrt(np.mean((row - row.mean()) ** 2) + 1e-3)
      + np.asarray(params["delta"]) for row in x])
  chex.assert_trees_all_close(energies.activation(lagrangian, params, jnp.asarray(x, jnp.float32)), expected, **TOL)


def test_layernorm_lagrangian_value_matches_formula():
  """L(x) = Σ_n [D γ √(var_n + ε) + δ·x_n]."""
  lagrangian = energies.LayerNormLagrangian(D)
  params = _lagrangian_params(18)
  x = np.asarray(_normal(19, (N, D)), np.float64)
  expected = sum(D * float(params["gamma"]) * math.sqrt(row.var() + lagrangian.eps) + row @ np.asarray(params["delta"])
                 for row in x)
  chex.assert_trees_all_close(lagrangian(params, jnp.asarray(x, jnp.float32)), expected, **TOL)


@pytest.mark.parametrize("shape", [(N, D), (2, N, D)])
def test_rms_lagrangian_gradient_is_rms_normalisation(shape):
  """∇L of RMSLagrangian equals γ x / √(mean x² + ε), token by token."""
  lagrangian = energies.RMSLagrangian(D)
  params = {"gamma": jnp.asarray(0.6, jnp.float32)}
  x = _normal(20, shape, 3.0)
  expected = 0.6 * x / jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True) + lagrangian.eps)
  chex.assert_trees_all_close(energies.activation(lagrangian, params, x), expected, **TOL)
  norms = jnp.linalg.norm(energies.activation(lagrangian, params, x), axis=-1)
  chex.assert_trees_all_close(norms, jnp.full(norms.shape, 0.6 * math.sqrt(D)), atol=1e-4, rtol=1e-4)


# Hopfield memories.


def _memories(seed, num=7):
  return _normal(seed, (num, D))


def test_hopfield_relu2_value_matches_formula():
  """HopfieldReLU2 equals −½ Σ_n Σ_μ ReLU(ξ_μ·x_n)² (loop over tokens and memories)."""
  xi, x = _memories(21), _normal(22, (N, D))
  xin, xn = np.asarray(xi, np.float64), np.asarray(x, np.float64)
  expected = 0.0
  for n, mu in itertools.product(range(N), range(xi.shape[0])):
    expected -= 0.5 * max(xin[mu] @ xn[n], 0.0) ** 2
  energy = energies.HopfieldReLU2(D, xi.shape[0])
  chex.assert_trees_all_close(energy({"memories": xi}, x), expected, **TOL)


def test_hopfield_relu2_negative_gradient_is_tied_mlp():
  """−∇E of HopfieldReLU2 at token n equals ξᵀ ReLU(ξ x_n), a bias-free tied MLP, per token."""
  xi, x = _memories(23), _normal(24, (N, D))
  energy = energies.HopfieldReLU2(D, xi.shape[0])
  grad = jax.grad(lambda z: energy({"memories": xi}, z))(x)
  expected = jnp.stack([xi.T @ jax.nn.relu(xi @ x[n]) for n in range(N)])
  chex.assert_trees_all_close(-grad, expected, **TOL)


@pytest.mark.parametrize("beta", [0.01, 0.8])
def test_hopfield_logsumexp_value_and_gradient(beta):
  """HopfieldLogSumExp equals −(1/β) Σ_n log Σ_μ exp(β ξ_μ·x_n); −∇E at token n is ξᵀ softmax(β ξ x_n)."""
  xi, x = _memories(25), _normal(26, (N, D))
  energy = energies.HopfieldLogSumExp(D, xi.shape[0], beta=beta)
  params = {"memories": xi, "beta": jnp.asarray(beta, jnp.float32)}
  xin, xn = np.asarray(xi, np.float64), np.asarray(x, np.float64)
  expected = -sum(math.log(sum(math.exp(beta * (xin[mu] @ xn[n])) for mu in range(xi.shape[0])))
                  for n in range(N)) / beta
  chex.assert_trees_all_close(energy(params, x), expected, **TOL)
  grad = jax.grad(lambda z: energy(params, z))(x)
  expected_grad = jnp.stack([xi.T @ jax.nn.softmax(beta * (xi @ x[n])) for n in range(N)])
  chex.assert_trees_all_close(-grad, expected_grad, **TOL)


def test_memory_energy_ignores_other_tokens():
  """A memory energy's gradient at one token does not change when another token changes."""
  xi, x = _memories(27), _normal(28, (N, D))
  energy = energies.HopfieldReLU2(D, xi.shape[0])
  grad = lambda z: jax.grad(lambda t: energy({"memories": xi}, t))(z)
  moved = x.at[1].add(3.0)
  chex.assert_trees_all_close(grad(x)[0], grad(moved)[0], **TOL)


# Argument checks.


@pytest.mark.parametrize("build, name", [
    (lambda: energies.Helmholtz(temperature=0.0), "temperature"),
    (lambda: energies.Helmholtz(temperature=-1.0), "temperature"),
    (lambda: energies.Discounted(decay=0.0), "decay"),
    (lambda: energies.Discounted(decay=1.5), "decay"),
    (lambda: energies.Discounted(decay=-0.2), "decay"),
    (lambda: energies.lp(0.5), "p"),
    (lambda: energies.huber(0.0), "delta"),
    (lambda: energies.huber(-1.0), "delta"),
    (lambda: energies.Interaction(0, 4, 4), "dim"),
    (lambda: energies.Interaction(16, -1, 4), "num_heads"),
    (lambda: energies.Interaction(16, 4, 0), "head_dim"),
    (lambda: energies.Interaction(16, 4, 2.5), "head_dim"),
    (lambda: energies.LayerNormLagrangian(D, eps=0.0), "eps"),
    (lambda: energies.HopfieldReLU2(D, 0), "num_memories"),
    (lambda: energies.HopfieldLogSumExp(D, 4, beta=0.0), "beta"),
])
def test_bad_arguments_raise_naming_the_argument(build, name):
  """Out-of-range constructor arguments raise ValueError whose message starts with the argument's name."""
  with pytest.raises(ValueError, match=rf"^{name} must"):
    build()


def test_boundary_arguments_are_accepted():
  """The closed ends of the valid ranges (decay = 1, p = 1) are accepted."""
  energies.Discounted(decay=1.0)
  energies.lp(1.0)
  energies.Interaction(1, 1, 1)


# ---------------------------------------------------------------------------------------------- potentials


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_potential_derivatives_are_the_activation_and_its_derivative(activation):
  """Φ' = σ (ReLU, exact GELU h·N(h)) and Φ'' = σ' (1[h>0], N(h) + h·n(h)), both against closed forms, float64."""
  h = np.linspace(-3.0, 3.0, 61) + 0.013
  closed = {"relu": (np.maximum(h, 0.0), (h > 0).astype(float)),
            "gelu": (h * norm.cdf(h), norm.cdf(h) + h * norm.pdf(h))}[activation]
  with jax.enable_x64(True):
    phi = POTENTIALS[activation]
    first = jax.vmap(jax.grad(phi))(jnp.asarray(h))
    second = jax.vmap(jax.grad(jax.grad(phi)))(jnp.asarray(h))
  np.testing.assert_allclose(first, closed[0], rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(second, closed[1], rtol=1e-12, atol=1e-12)


def test_potential_fields_are_tied_and_untied_mlps():
  """−∂E/∂x = σ(xξᵀ + b) ξ for the tied field and σ(xξᵀ + b) W^out for the relaxed one (exact GELU)."""
  potential = energies.Potential(6, 10, "gelu", bias=True, values=True)
  params = energies.init_params(potential.specs(), jax.random.key(0))
  params["bias"] = 0.3 * jax.random.normal(jax.random.key(1), (10,))
  x = np.asarray(jax.random.normal(jax.random.key(2), (5, 6)))
  h = x @ np.asarray(params["memories"]).T + np.asarray(params["bias"])
  hidden = h * norm.cdf(h)
  np.testing.assert_allclose(-derive.tied_gradient(potential, params, x, None), hidden @ params["memories"],
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(-derive.relaxed_gradient(potential, params, x, None), hidden @ params["output"],
                             rtol=1e-5, atol=1e-6)
