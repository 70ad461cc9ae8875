"""Derived layers against independent references: reference multi-head attention, closed-form energy gradients,
linear-attention recurrences and finite differences.

Float32 comparisons use atol = rtol = 1e-5; finite-difference checks run in float64 with relative error < 1e-5.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import energyformer as ef
from energyformer import energies
from energyformer.energies import masks
from energyformer.layers import unwrap

TOL = dict(atol=1e-5, rtol=1e-5)
B, N, D, H, DH = 2, 7, 16, 4, 4
LENGTHS = (7, 4)


def _normal(seed, shape, scale=1.0, dtype=jnp.float32):
  return scale * jax.random.normal(jax.random.key(seed), shape, dtype)


def _tokens(seed=0, shape=(B, N, D)):
  return _normal(seed, shape)


def _masks(kind):
  """A (B, N, N) or (N, N) mask and the (B, N) validity of each query row (it sees at least one key)."""
  if kind == "causal":
    mask = masks.causal(N)
  else:
    mask = masks.combine(masks.from_lengths(jnp.array(LENGTHS), N), masks.causal(N))
  full = jnp.broadcast_to(mask, (B, N, N))
  return mask, jnp.any(full, axis=-1)


def _module(energy, mode, solver="gd", seed=0, **hparams):
  layer = ef.Layer(energy, solver, mode=mode)
  return ef.EnergyLayer(layer, rngs=nnx.Rngs(seed), hparams=layer.default_hparams(**hparams) if hparams else None)


def _weights(module):
  return unwrap(module.params)["energy"]


def _relaxed_module(seed=0):
  return _module(energies.Interaction(D, H, DH, values=True), "relaxed", seed=seed)


def _attention_output(w, x, mask):
  """Σ_h softmax(q k^T/√Dh) v W^O_h through jax.nn.dot_product_attention, for x of shape (B, N, D)."""
  q, k, v = (jnp.einsum("bnd,dhk->bnhk", x, w[name]) for name in ("query", "key", "value"))
  mask = None if mask is None else jnp.broadcast_to(mask, (x.shape[0], N, N))[:, None]
  return jnp.einsum("bnhk,hkd->bnd", jax.nn.dot_product_attention(q, k, v, mask=mask), w["output"])


def _reference_layer(w, x, mask):
  """Residual + reference multi-head attention."""
  return x + _attention_output(w, x, mask)


def _where_valid(valid, value, otherwise):
  return jnp.where(valid[..., None], value, otherwise)


# Relaxed layer = standard multi-head attention.


@pytest.mark.parametrize("kind", ["causal", "padded"])
def test_relaxed_layer_equals_dot_product_attention(kind):
  """Relaxed GD (η = 1) on the Helmholtz inner-product energy equals x + MHA built on jax.nn.dot_product_attention;
  query rows that see no key are left unchanged."""
  module = _relaxed_module()
  x, (mask, valid) = _tokens(), _masks(kind)
  out = module(x, mask)
  expected = _where_valid(valid, _reference_layer(_weights(module), x, mask), x)
  chex.assert_trees_all_close(out, expected, **TOL)
  assert bool(jnp.all(valid)) == (kind == "causal")


def _flax_mha(w):
  mha = nnx.MultiHeadAttention(num_heads=H, in_features=D, qkv_features=H * DH, out_features=D, use_bias=False,
                               decode=False, rngs=nnx.Rngs(1))
  chex.assert_shape([mha.query.kernel[...], mha.key.kernel[...], mha.value.kernel[...]], (D, H, DH))
  chex.assert_shape(mha.out.kernel[...], (H, DH, D))
  for name, target in (("query", mha.query), ("key", mha.key), ("value", mha.value), ("output", mha.out)):
    target.kernel[...] = w[name]
  return mha


@pytest.mark.parametrize("kind", ["causal", "padded"])
def test_relaxed_layer_equals_flax_multi_head_attention(kind):
  """Relaxed GD (η = 1) equals x + flax.nnx.MultiHeadAttention with the same kernels, on rows that see a key."""
  module = _relaxed_module(seed=3)
  x, (mask, valid) = _tokens(1), _masks(kind)
  mha = _flax_mha(_weights(module))
  batch_mask = jnp.broadcast_to(mask, (B, N, N))[:, None]
  expected = _where_valid(valid, x + mha(x, mask=batch_mask), x)
  chex.assert_trees_all_close(module(x, mask), expected, **TOL)


def test_relaxed_layer_step_size_scales_attention():
  """Relaxed GD with step size η equals x + η·MHA (dot_product_attention reference)."""
  module = _module(energies.Interaction(D, H, DH, values=True), "relaxed", eta=0.35)
  x = _tokens(2)
  expected = x + 0.35 * _attention_output(_weights(module), x, masks.causal(N))
  chex.assert_trees_all_close(module(x, masks.causal(N)), expected, **TOL)


# Tied layer = exact query-side energy gradient.


def _attention_energy(w, z, c, mask, temperature):
  """−Σ_h T Σ_n log Σ_{m visible} exp(q_hn·k_hm / T), rows with no visible key dropped; q = z W^Q, k = c W^K."""
  q = jnp.einsum("nd,dhk->hnk", z, w["query"])
  k = jnp.einsum("md,dhk->hmk", c, w["key"])
  logits = jnp.einsum("hnk,hmk->hnm", q, k) / temperature
  visible = jnp.ones(logits.shape[1:], bool) if mask is None else mask
  lse = jax.nn.logsumexp(jnp.where(visible, logits, -1e9), axis=-1)
  return -temperature * jnp.sum(jnp.where(jnp.any(visible, axis=-1), lse, 0.0))


def _tied_closed_form(w, x, mask, eta, temperature):
  """x + η Σ_h Σ_m p_hnm k_hm W^Q_hᵀ with p = softmax_m(q·k / T) over visible keys (x of shape (N, D))."""
  q = jnp.einsum("nd,dhk->hnk", x, w["query"])
  k = jnp.einsum("md,dhk->hmk", x, w["key"])
  p = jax.nn.softmax(jnp.einsum("hnk,hmk->hnm", q, k) / temperature, axis=-1, where=mask)
  return x + eta * jnp.einsum("hnm,hmk,dhk->nd", p, k, w["query"])


def test_tied_layer_equals_closed_form():
  """Tied GD equals x + η Σ_h Σ_m p_hnm k_hm W^Q_hᵀ with T = √Dh (causal mask, batch of two)."""
  module = _module(energies.Interaction(D, H, DH), "tied", eta=0.6)
  x, mask, w = _tokens(3), masks.causal(N), _weights(module)
  expected = jax.vmap(lambda xi: _tied_closed_form(w, xi, mask, 0.6, np.sqrt(DH)))(x)
  chex.assert_trees_all_close(module(x, mask), expected, **TOL)


@pytest.mark.parametrize("kind", ["causal", "padded"])
def test_tied_layer_equals_query_side_gradient(kind):
  """Tied GD equals x − η ∂F(z; c)/∂z at z = c = x, for the Helmholtz energy written out here."""
  module = _module(energies.Interaction(D, H, DH), "tied", eta=0.8)
  x, (mask, _) = _tokens(4), _masks(kind)
  w = _weights(module)
  mask = jnp.broadcast_to(mask, (B, N, N))

  def step(xi, mi):
    return xi - 0.8 * jax.grad(_attention_energy, argnums=1)(w, xi, xi, mi, np.sqrt(DH))

  chex.assert_trees_all_close(module(x, mask), jax.jit(jax.vmap(step))(x, mask), **TOL)


def test_elastic_single_head_step_is_decayed_attention():
  """Elastic energy, H = 1, W^Q = I: one GD step is (1−η) z + η Σ_m p_m W h_m, p = softmax(−½‖z − W h_m‖²/T)."""
  dim, eta, temperature = 8, 0.3, 2.0
  energy = energies.Interaction(dim, 1, dim, local=energies.elastic, aggregate=energies.Helmholtz(temperature))
  module = _module(energy, "tied", eta=eta)
  kernel = _normal(5, (dim, dim), dim ** -0.5)
  module.params["energy"]["query"][...] = jnp.eye(dim)[:, None, :]
  module.params["energy"]["key"][...] = kernel[:, None, :]
  h = np.asarray(_normal(6, (N, dim)), np.float64)
  memories = h @ np.asarray(kernel, np.float64)
  expected = []
  for z in h:
    logits = -0.5 * np.sum((z - memories) ** 2, axis=-1) / temperature
    p = np.exp(logits - logits.max())
    expected.append((1 - eta) * z + eta * (p / p.sum()) @ memories)
  chex.assert_trees_all_close(module(jnp.asarray(h, jnp.float32)), np.stack(expected), **TOL)


# Linear attentions: plain, gated and discounted sums of the quadratic energy.


def _linear_module(aggregate, seed=0):
  energy = energies.Interaction(D, H, DH, local=energies.quadratic, aggregate=aggregate, values=True)
  return _module(energy, "relaxed", seed=seed)


def _projections(w, x):
  """Per-head q, k, v of shape (H, N, Dh) in float64."""
  w64 = {name: np.asarray(value, np.float64) for name, value in w.items()}
  x64 = np.asarray(x, np.float64)
  return [np.einsum("nd,dhk->hnk", x64, w64[name]) for name in ("query", "key", "value")] + [w64]


def test_plain_sum_quadratic_is_linear_attention():
  """Relaxed quadratic energy with a plain sum and causal mask: x + Σ_h Σ_{m≤n} (q_n·k_m) v_m W^O_h (explicit loop)."""
  module = _linear_module(energies.PlainSum())
  x = _tokens(7, (N, D))
  q, k, v, w = _projections(_weights(module), x)
  expected = np.array(x, np.float64)
  for h in range(H):
    for n in range(N):
      for m in range(n + 1):
        expected[n] += (q[h, n] @ k[h, m]) * v[h, m] @ w["output"][h]
  chex.assert_trees_all_close(module(x, masks.causal(N)), expected, **TOL)


def _recurrent_linear_attention(x, q, k, v, w, gates):
  """x + Σ_h (S_ht q_ht) W^O_h with S_ht = g_ht S_h,t−1 + v_ht k_htᵀ, S_h0 = 0 (explicit Python loop)."""
  out = np.array(x, np.float64)
  for h in range(H):
    state = np.zeros((DH, DH))
    for t in range(N):
      state = gates[h, t] * state + np.outer(v[h, t], k[h, t])
      out[t] += (state @ q[h, t]) @ w["output"][h]
  return out


@pytest.mark.parametrize("mask", [None, "causal"])
def test_gated_quadratic_is_gated_linear_attention(mask):
  """Relaxed quadratic energy with the Gated sum equals the recurrence S_t = g_t S_{t−1} + v_t k_tᵀ, o_t = S_t q_t,
  g_ht = σ(x_t·w_h + b_h)."""
  module = _linear_module(energies.Gated(bias_init=0.5), seed=1)
  x = _tokens(8, (N, D))
  q, k, v, w = _projections(_weights(module), x)
  gates = 1.0 / (1.0 + np.exp(-(np.asarray(x, np.float64) @ w["gate_kernel"] + w["gate_bias"]).T))
  expected = _recurrent_linear_attention(x, q, k, v, w, gates)
  chex.assert_trees_all_close(module(x, None if mask is None else masks.causal(N)), expected, **TOL)


def test_discounted_quadratic_is_decayed_linear_attention():
  """Relaxed quadratic energy with the Discounted sum equals the recurrence with constant per-head gates γ_h."""
  module = _linear_module(energies.Discounted(decay=0.7), seed=2)
  decay = np.array([0.9, 0.7, 0.5, 1.0])
  module.params["energy"]["decay"][...] = jnp.asarray(decay, jnp.float32)
  x = _tokens(9, (N, D))
  q, k, v, w = _projections(_weights(module), x)
  expected = _recurrent_linear_attention(x, q, k, v, w, np.broadcast_to(decay[:, None], (H, N)))
  chex.assert_trees_all_close(module(x, masks.causal(N)), expected, **TOL)


# Full mode: query and key roles both differentiated (Energy Transformer).


def _full_layer():
  return ef.Layer(energies.Interaction(D, H, DH), "gd", mode="full")


def _params(layer, seed=0, dtype=jnp.float32):
  return energies.init_params(layer.specs(), jax.random.key(seed), dtype)


def _two_term_gradient(w, x, mask, temperature):
  """−Σ_h [Σ_m p_hnm k_hm W^Q_hᵀ + Σ_n' p_hn'n q_hn' W^K_hᵀ]: attention with V = (W^Q)ᵀK plus the term through keys."""
  q = jnp.einsum("nd,dhk->hnk", x, w["query"])
  k = jnp.einsum("md,dhk->hmk", x, w["key"])
  p = jax.nn.softmax(jnp.einsum("hnk,hmk->hnm", q, k) / temperature, axis=-1, where=mask)
  p = jnp.where(mask, p, 0.0)
  through_queries = jnp.einsum("hnm,hmk,dhk->nd", p, k, w["query"])
  through_keys = jnp.einsum("hnm,hnk,dhk->md", p, q, w["key"])
  return -(through_queries + through_keys)


def test_full_field_equals_gradient_of_energy():
  """Full-mode field equals jax.grad of the self-exclusion Helmholtz energy F(x; x) written out here."""
  layer = _full_layer()
  params, x, mask = _params(layer, 1), _tokens(10, (N, D)), masks.self_exclusion(N)
  expected = jax.jit(jax.grad(lambda z: _attention_energy(params["energy"], z, z, mask, np.sqrt(DH))))(x)
  chex.assert_trees_all_close(jax.jit(layer.gradient)(params, x, mask), expected, **TOL)


def test_full_field_equals_two_term_closed_form():
  """Full-mode field equals the two-term closed form (query term + key term), and GD steps along it."""
  layer = _full_layer()
  params, x, mask = _params(layer, 2), _tokens(11, (N, D)), masks.self_exclusion(N)
  expected = _two_term_gradient(params["energy"], x, mask, np.sqrt(DH))
  chex.assert_trees_all_close(jax.jit(layer.gradient)(params, x, mask), expected, **TOL)
  new_x, _ = jax.jit(layer.step)(params, layer.default_hparams(eta=0.25), x, (), mask)
  chex.assert_trees_all_close(new_x, x - 0.25 * expected, **TOL)


def test_full_and_tied_fields_differ_by_key_term():
  """The tied field is the query term alone: full − tied equals the key term of the closed form."""
  params, x, mask = _params(_full_layer(), 3), _tokens(12, (N, D)), masks.self_exclusion(N)
  tied = ef.Layer(energies.Interaction(D, H, DH), "gd", mode="tied").gradient(params, x, mask)
  full = _full_layer().gradient(params, x, mask)
  w = params["energy"]
  q, k = (jnp.einsum("nd,dhk->hnk", x, w[name]) for name in ("query", "key"))
  p = jnp.where(mask, jax.nn.softmax(jnp.einsum("hnk,hmk->hnm", q, k) / np.sqrt(DH), axis=-1, where=mask), 0.0)
  chex.assert_trees_all_close(full - tied, -jnp.einsum("hnm,hnk,dhk->md", p, q, w["key"]), **TOL)


# Lagrangian layer: the field is ∂E/∂g at g = LN(x).


def _layer_norm(x, gamma, delta, eps):
  centred = x - jnp.mean(x, axis=-1, keepdims=True)
  return gamma * centred / jnp.sqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + eps) + delta


def _et_energy(params, g, mask):
  """Self-exclusion attention energy plus Hopfield ReLU² energy, written out here."""
  hidden = jax.nn.relu(g @ params["memory"]["memories"].T)
  return _attention_energy(params["attention"], g, g, mask, np.sqrt(DH)) - 0.5 * jnp.sum(hidden * hidden)


def test_lagrangian_layer_field_is_energy_gradient_at_layer_norm():
  """Full mode with LayerNormLagrangian: the field equals ∂E/∂g at g = γ(x − x̄)/√(var + ε) + δ, and the Euler step
  is x − (dt/τ) ∂E/∂g."""
  energy = energies.EnergySum({"attention": energies.Interaction(D, H, DH),
                               "memory": energies.HopfieldReLU2(D, 2 * D)})
  lagrangian = energies.LayerNormLagrangian(D)
  layer = ef.Layer(energy, "euler", mode="full", lagrangian=lagrangian)
  params = _params(layer, 4)
  params["lagrangian"] = {"gamma": jnp.asarray(1.3), "delta": _normal(13, (D,), 0.2)}
  x, mask = _tokens(14, (N, D), ) * 2.0 + 0.3, masks.self_exclusion(N)
  g = _layer_norm(x, 1.3, params["lagrangian"]["delta"], lagrangian.eps)
  expected = jax.jit(jax.grad(_et_energy, argnums=1))(params["energy"], g, mask)
  chex.assert_trees_all_close(jax.jit(layer.gradient)(params, x, mask), expected, **TOL)
  new_x, _ = jax.jit(layer.step)(params, layer.default_hparams(dt=0.2, tau=2.0), x, (), mask)
  chex.assert_trees_all_close(new_x, x - 0.1 * expected, **TOL)


# Training gradients through derived layers.


@pytest.fixture
def float64():
  with jax.enable_x64(True):
    yield


def _training_loss(layer, target):
  """A smooth scalar loss of one layer step over a batch (causal mask)."""
  mask = masks.causal(N)

  def loss(params, x):
    step = lambda xi: layer.step(params, layer.default_hparams(), xi, layer.init_state(xi), mask)[0]
    return jnp.sum(jnp.sin(jax.vmap(step)(x)) * target)

  return loss


TRAINED_LAYERS = {
    "relaxed": lambda: ef.Layer(energies.Interaction(D, H, DH, values=True), "gd", mode="relaxed"),
    "tied": lambda: ef.Layer(energies.Interaction(D, H, DH), "gd", mode="tied"),
    "full_lagrangian": lambda: ef.Layer(energies.Interaction(D, H, DH), "euler", mode="full",
                                        lagrangian=energies.LayerNormLagrangian(D)),
}


@pytest.mark.parametrize("name", list(TRAINED_LAYERS))
def test_training_gradients_match_finite_differences(name, float64):
  """jax.grad of a loss through the layer, w.r.t. every parameter and the tokens, matches central finite differences
  along a random direction of each (float64, relative error < 1e-5)."""
  layer = TRAINED_LAYERS[name]()
  params = _params(layer, 5, jnp.float64)
  x = _normal(15, (B, N, D), dtype=jnp.float64)
  loss = jax.jit(_training_loss(layer, _normal(16, (B, N, D), dtype=jnp.float64)))
  grads, treedef = jax.tree.flatten(jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x))
  point = [np.asarray(leaf, np.float64) for leaf in jax.tree.leaves((params, x))]
  rng, eps = np.random.default_rng(17), 1e-5
  for i, grad in enumerate(grads):
    direction = rng.standard_normal(point[i].shape)
    shifted = lambda s: jax.tree.unflatten(treedef, point[:i] + [point[i] + s * direction] + point[i + 1:])
    numeric = float((loss(*shifted(eps)) - loss(*shifted(-eps))) / (2 * eps))
    analytic = float(np.vdot(np.asarray(grad), direction))
    assert abs(analytic) > 1e-6
    assert abs(analytic - numeric) < 1e-5 * abs(numeric), (i, analytic, numeric)


def test_relaxed_training_gradients_equal_reference_attention():
  """Gradients of a loss through the relaxed layer (module, nnx.grad) equal those through reference MHA
  (dot_product_attention), for W^Q, W^K, W^V, W^O and the input tokens."""
  module = _relaxed_module(seed=6)
  x, mask, target = _tokens(18), masks.causal(N), _tokens(19)
  layer_loss = lambda m, xs: jnp.sum(jnp.sin(m(xs, mask)) * target)
  grad_layer, grad_x = nnx.jit(nnx.grad(layer_loss, argnums=(0, 1)))(module, x)
  grad_layer = nnx.to_pure_dict(grad_layer)["params"]["energy"]
  weights = {name: value for name, value in _weights(module).items() if name != "temperature"}
  reference_loss = lambda w, xs: jnp.sum(jnp.sin(_reference_layer(w, xs, mask)) * target)
  reference = jax.jit(jax.grad(reference_loss, argnums=(0, 1)))
  ref_w, ref_x = reference(weights, x)
  assert set(grad_layer) == set(ref_w)
  chex.assert_trees_all_close(grad_layer, ref_w, **TOL)
  chex.assert_trees_all_close(grad_x, ref_x, **TOL)


# Errors.


def test_non_scalar_energy_raises():
  """An energy returning one value per token raises ValueError that asks for a scalar and names the function."""

  def per_token(params, x, context, mask):
    return jnp.sum(x * context, axis=-1)

  layer = ef.Layer(energies.energy(per_token), "gd", mode="tied")
  with pytest.raises(ValueError, match=r"scalar.*per_token|per_token.*scalar"):
    layer.gradient({"energy": {}}, _tokens(20, (N, D)))
  with pytest.raises(ValueError, match="scalar"):
    ef.EnergyLayer(layer, rngs=nnx.Rngs(0))(_tokens(21))


def test_relaxed_without_values_raises():
  """mode='relaxed' on an Interaction without value projections raises ValueError."""
  with pytest.raises(ValueError, match="values=True"):
    ef.Layer(energies.Interaction(D, H, DH), "gd", mode="relaxed")


def test_unknown_mode_raises():
  """An unknown derivation mode raises ValueError naming it."""
  with pytest.raises(ValueError, match="sideways"):
    ef.Layer(energies.Interaction(D, H, DH), "gd", mode="sideways")


def test_wrong_token_width_raises():
  """Tokens whose width is not the energy's dim raise ValueError naming the expected width."""
  stack = ef.EnergyStack(ef.Layer(energies.Interaction(D, H, DH)), 2, rngs=nnx.Rngs(0), shared=True)
  with pytest.raises(ValueError, match=rf"tokens, {D}\).*{D + 1}"):
    stack(_tokens(22, (B, N, D + 1)))


@pytest.mark.parametrize("shape", [(N + 1, N + 1), (N, N - 1), (3, N, N), (B, 1, N, N)])
def test_wrong_mask_shape_raises(shape):
  """A mask that does not broadcast as (B, N, N) raises ValueError mentioning the mask."""
  module = _relaxed_module()
  with pytest.raises(ValueError, match="mask must have shape"):
    module(_tokens(23), jnp.ones(shape, bool))
