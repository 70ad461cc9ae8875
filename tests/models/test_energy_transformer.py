"""The Energy Transformer: energy descent, the closed-form gradient, self-exclusion, noise, models and bad input."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from energyformer import solvers
from energyformer.energies import init_params, masks
from energyformer.layers import unroll
from energyformer.models.energy_transformer import EnergyTransformer, ETConfig, et_layer, et_mask
from energyformer.models.graph_nodes import GraphNodeClassifier
from energyformer.models.image_completion import (MASKINGS, ImageCompletion, ImageConfig, Masking, masked_rmse,
                                                  patch_masks, patchify, unpatchify)
from energyformer.models.transformer_encoder import TransformerEncoder, count_params, matched_mlp_hidden

SMALL = ETConfig(dim=16, num_heads=2, head_dim=4, num_memories=24, depth=3, remat=False)
N = 7


def _random_params(config, key):
  """The layer's parameters with a random LayerNorm scale γ > 0, bias δ and per-head β (all trainable in ET)."""
  k_init, k_gamma, k_delta, k_beta = jax.random.split(key, 4)
  params = init_params(et_layer(config).specs(), k_init)
  params["lagrangian"]["gamma"] = 0.5 + jax.random.uniform(k_gamma)
  params["lagrangian"]["delta"] = 0.3 * jax.random.normal(k_delta, (config.dim,))
  params["energy"]["attention"]["temperature"] = 1.0 / (0.2 + jax.random.uniform(k_beta, (config.num_heads,)))
  return params


# ------------------------------------------------------------------------------------------- energy descent


@pytest.mark.parametrize("memory,self_exclusion", [("relu2", True), ("logsumexp", False)])
def test_energy_never_increases_for_small_steps_over_random_inits(memory, self_exclusion):
  """For α = 0.02 the energy E(LN(x_t)) is non-increasing at every one of 20 steps, for each of 20 random
  initialisations (parameters and tokens), vmapped; it also falls overall."""
  config = dataclasses.replace(SMALL, memory=memory, memory_beta=0.5, self_exclusion=self_exclusion, step_size=0.02)
  layer = et_layer(config)
  hparams = layer.default_hparams()
  mask = et_mask(config, N)

  def trace(key):
    params = _random_params(config, key)
    x = jax.random.normal(jax.random.fold_in(key, 1), (N, config.dim))
    rollout = unroll(layer, params, hparams, x, mask, num_steps=20, stacked_params=False, record_energy=True,
                     remat=False)
    return rollout.energy_before, rollout.energy_after

  before, after = jax.jit(jax.vmap(trace))(jax.random.split(jax.random.key(0), 20))
  slack = 1e-5 * jnp.abs(before) + 1e-5
  assert bool(jnp.all(after <= before + slack)), float(jnp.max(after - before))
  assert bool(jnp.all(after[:, -1] < before[:, 0]))
  np.testing.assert_allclose(after[:, :-1], before[:, 1:], rtol=1e-6)


def test_model_rollout_records_energy_at_every_step():
  """EnergyTransformer.rollout gives per-image energy traces of length T that chain and go down."""
  model = EnergyTransformer(SMALL, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (3, N, SMALL.dim))
  rollout, initial = nnx.jit(lambda m, z: (m.rollout(z, record_energy=True), jax.vmap(m.energy)(z)))(model, x)
  assert rollout.energy_before.shape == rollout.energy_after.shape == (3, SMALL.depth)
  np.testing.assert_allclose(rollout.energy_after[:, :-1], rollout.energy_before[:, 1:], rtol=1e-6)
  np.testing.assert_allclose(rollout.energy_before[:, 0], initial, rtol=1e-6)


# ----------------------------------------------------------------------------------- closed-form gradient


def _layer_norm(x, gamma, delta, eps=1e-5):
  centred = x - x.mean(-1, keepdims=True)
  return gamma * centred / jnp.sqrt((centred ** 2).mean(-1, keepdims=True) + eps) + delta


def _closed_form_gradient(params, g, mask, memory, memory_beta):
  """∂E/∂g by hand: −Σ_h [Σ_B p_hAB W^Q_h K_hB + Σ_C p_hCA W^K_h Q_hC] (attention, p = masked softmax over keys
  B of β_h Q_hC·K_hB) plus −ξᵀ ReLU(ξ g) (ReLU² memory) or −ξᵀ softmax(β_m ξ g) (logsumexp memory)."""
  wq, wk = params["attention"]["query"], params["attention"]["key"]           # (D, H, Y)
  beta = 1.0 / params["attention"]["temperature"]                             # (H,)
  q = jnp.einsum("nd,dhy->hny", g, wq)
  k = jnp.einsum("nd,dhy->hny", g, wk)
  logits = beta[:, None, None] * jnp.einsum("hcy,hby->hcb", q, k)
  p = jax.nn.softmax(jnp.where(mask, logits, -jnp.inf), axis=-1)
  query_role = jnp.einsum("hab,hby,dhy->ad", p, k, wq)
  key_role = jnp.einsum("hca,hcy,dhy->ad", p, q, wk)
  xi = params["memory"]["memories"]                                           # (M, D)
  hidden = g @ xi.T
  if memory == "relu2":
    memory_grad = -jax.nn.relu(hidden) @ xi
  else:
    memory_grad = -jax.nn.softmax(memory_beta * hidden, axis=-1) @ xi
  return -(query_role + key_role) + memory_grad


@pytest.mark.parametrize("memory", ["relu2", "logsumexp"])
@pytest.mark.parametrize("self_exclusion", [True, False])
def test_gradient_equals_two_term_closed_form(memory, self_exclusion):
  """The layer's field ∂E/∂g at g = LN(x) and the Euler step equal the hand-written attention + Hopfield terms."""
  config = dataclasses.replace(SMALL, memory=memory, memory_beta=0.3, self_exclusion=self_exclusion)
  layer = et_layer(config)
  params = _random_params(config, jax.random.key(3))
  params["energy"]["memory"]["beta"] = jnp.float32(0.3) if memory == "logsumexp" else None
  params["energy"]["memory"] = {k: v for k, v in params["energy"]["memory"].items() if v is not None}
  x = jax.random.normal(jax.random.key(4), (N, config.dim))
  mask = et_mask(config, N, masks.from_adjacency(jax.random.bernoulli(jax.random.key(5), 0.6, (N, N))) | jnp.eye(N, dtype=bool))
  g = _layer_norm(x, params["lagrangian"]["gamma"], params["lagrangian"]["delta"])
  expected = _closed_form_gradient(params["energy"], g, mask, memory, 0.3)
  np.testing.assert_allclose(layer.gradient(params, x, mask), expected, rtol=2e-5, atol=2e-5)
  x_next, _ = layer.step(params, layer.default_hparams(), x, (), mask)
  np.testing.assert_allclose(x_next, x - config.step_size * expected, rtol=2e-5, atol=2e-5)


# ----------------------------------------------------------------------------------------- self-exclusion


def test_self_exclusion_makes_the_diagonal_irrelevant():
  """With B ≠ C excluded, adding anything to the diagonal scores (a token's key against its own query) leaves the
  energy unchanged, and ∂E/∂s has an exactly zero diagonal; without exclusion the same change moves the energy."""
  config = dataclasses.replace(SMALL, self_exclusion=True)
  attention = et_layer(config).energy.terms["attention"]
  params = _random_params(config, jax.random.key(6))["energy"]["attention"]
  g = jax.random.normal(jax.random.key(7), (N, config.dim))
  q, k, scores = attention.project(params, g, g)
  bump = 5.0 * jnp.eye(N) * jax.random.normal(jax.random.key(8), (config.num_heads, 1, 1))

  def energy(s, mask):
    return attention.from_scores(params, s, q, k, mask, g)

  excluded = et_mask(config, N)
  assert float(energy(scores + bump, excluded)) == float(energy(scores, excluded))
  score_grad = jax.grad(energy)(scores, excluded)
  assert float(jnp.max(jnp.abs(jnp.diagonal(score_grad, axis1=1, axis2=2)))) == 0.0
  assert abs(float(energy(scores + bump, None) - energy(scores, None))) > 1e-3


# ------------------------------------------------------------------------------------------ Langevin noise


def test_langevin_at_zero_temperature_is_euler():
  """At T = 0 the Langevin step equals the Euler step exactly."""
  grad_fn = lambda z: jnp.sin(z)
  x = jax.random.normal(jax.random.key(9), (N, 5))
  langevin, euler = solvers.langevin(0.1), solvers.euler(0.1)
  noisy, _ = langevin.step(grad_fn, x, jax.random.key(1), langevin.hparams())
  plain, _ = euler.step(grad_fn, x, (), euler.hparams())
  np.testing.assert_array_equal(noisy, plain)


def test_langevin_noise_has_variance_two_alpha_temperature():
  """On a flat energy the increments x⁺ − x have mean 0 and variance 2αT, and fresh keys give fresh noise."""
  solver = solvers.langevin(dt=0.05, tau=0.5, temperature=0.3)
  x = jnp.zeros((400, 50))
  moved, key = solver.step(jnp.zeros_like, x, jax.random.key(10), solver.hparams())
  np.testing.assert_allclose(float(jnp.var(moved)), 2 * 0.1 * 0.3, rtol=0.03)
  assert abs(float(jnp.mean(moved))) < 0.01
  again, _ = solver.step(jnp.zeros_like, x, key, solver.hparams())
  assert not jnp.allclose(moved, again)


def test_noisy_et_needs_a_key_and_is_reproducible():
  """An ET with temperature > 0 raises without a key; the same key gives the same output, another key another."""
  model = EnergyTransformer(dataclasses.replace(SMALL, temperature=0.05), rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(11), (2, N, SMALL.dim))
  with pytest.raises(ValueError, match="key"):
    model(x)
  run = nnx.jit(lambda m, seed: m(x, key=jax.random.key(seed)))
  a, b, c = run(model, 1), run(model, 1), run(model, 2)
  np.testing.assert_array_equal(a, b)
  assert not jnp.allclose(a, c)


def test_negative_langevin_temperature_raises():
  with pytest.raises(ValueError, match="temperature"):
    solvers.langevin().hparams(temperature=-0.1)


# ------------------------------------------------------------------------------------------------ images


IMAGE = ImageConfig((8, 8), 1, 2, SMALL.dim)


def test_patchify_round_trip_and_order():
  """unpatchify ∘ patchify is the identity; patch 1 is the top row's second p×p block."""
  images = jax.random.uniform(jax.random.key(12), (2, 8, 8, 1))
  patches = patchify(images, 2)
  assert patches.shape == (2, 16, 4)
  np.testing.assert_array_equal(patches[:, 1], images[:, 0:2, 2:4, 0].reshape(2, 4))
  np.testing.assert_array_equal(unpatchify(patches, IMAGE), images)


@pytest.mark.parametrize("name,patches,scored,replaced", [("paper", 196, 100, 90), ("paper", 16, 8, 7),
                                                          ("mask25", 16, 4, 4), ("mask75", 196, 147, 147)])
def test_masking_presets_choose_the_stated_counts(name, patches, scored, replaced):
  """Each image gets exactly the preset's scored and replaced counts, replaced ⊂ scored, and images differ."""
  replace, score = patch_masks(jax.random.key(13), MASKINGS[name], 5, patches)
  assert (MASKINGS[name].counts(patches)) == (scored, replaced)
  np.testing.assert_array_equal(score.sum(-1), scored)
  np.testing.assert_array_equal(replace.sum(-1), replaced)
  assert not bool(jnp.any(replace & ~score))
  assert not bool(jnp.all(score == score[0]))


def test_masked_rmse_formula():
  """RMSE over the pixels of the scored patches only."""
  predicted, target = jnp.zeros((1, 3, 2)), jnp.array([[[1.0, 1.0], [3.0, 3.0], [9.0, 9.0]]])
  score = jnp.array([[True, True, False]])
  np.testing.assert_allclose(masked_rmse(predicted, target, score), np.sqrt((1 + 1 + 9 + 9) / 4), rtol=1e-6)


def test_image_model_uses_mask_token_and_ignores_hidden_pixels():
  """Replaced patches enter as the MASK token: changing their pixels leaves the prediction unchanged."""
  model = ImageCompletion(IMAGE, EnergyTransformer(SMALL, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
  images = jax.random.uniform(jax.random.key(14), (2, 8, 8, 1))
  replace, _ = patch_masks(jax.random.key(15), MASKINGS["paper"], 2, IMAGE.num_patches)
  changed = unpatchify(jnp.where(replace[..., None], 7.0, patchify(images, 2)), IMAGE)
  both = nnx.jit(lambda m: m(jnp.concatenate([images, changed]), jnp.concatenate([replace, replace])))(model)
  np.testing.assert_allclose(both[:2], both[2:], rtol=1e-6)


def _train_losses(model, loss_fn, steps=15, learning_rate=1e-2):
  optimizer = nnx.Optimizer(model, optax.adam(learning_rate), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer):
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  return [float(step(model, optimizer)) for _ in range(steps)]


def test_image_model_trains():
  """Fifteen Adam steps on a fixed batch of digits lower the masked-patch RMSE of the ET image model."""
  from energyformer.data.images import digits
  images = jnp.asarray(digits("train").images[:16])
  replace, score = patch_masks(jax.random.key(16), MASKINGS["paper"], 16, IMAGE.num_patches)
  rngs = nnx.Rngs(0)
  model = ImageCompletion(IMAGE, EnergyTransformer(SMALL, rngs=rngs), rngs=rngs)
  losses = _train_losses(model, lambda m: m.loss(images, replace, score))
  assert losses[-1] < 0.8 * losses[0], losses


def test_baseline_matches_parameter_count_and_encodes():
  """matched_mlp_hidden gives an encoder within one MLP unit of the ET's parameter count; it maps (B, N, D) to
  layer-normalised (B, N, D)."""
  target = count_params(nnx.eval_shape(lambda: EnergyTransformer(ETConfig(dim=32, num_memories=256),
                                                                  rngs=nnx.Rngs(0))))
  hidden = matched_mlp_hidden(target, 32, 4, 1)
  encoder = TransformerEncoder(32, 4, 1, hidden, rngs=nnx.Rngs(0))
  assert 0 <= target - count_params(encoder) < 2 * 32 + 1
  out = encoder(jax.random.normal(jax.random.key(19), (2, 5, 32)))
  np.testing.assert_allclose(jnp.std(out, axis=-1), 1.0, rtol=1e-2)


# ------------------------------------------------------------------------------------------------- graphs


def test_graph_attention_follows_edges_only():
  """A node's output does not depend on a node it has no path to, but does on its neighbour."""
  model = GraphNodeClassifier(5, 2, SMALL, rngs=nnx.Rngs(0))
  adjacency = jnp.zeros((4, 4)).at[0, 1].set(1).at[1, 0].set(1).at[2, 3].set(1).at[3, 2].set(1)
  features = jax.random.normal(jax.random.key(17), (4, 5))
  batch = jnp.stack([features, features.at[3].add(1.0), features.at[1].add(1.0)])
  base, far, near = nnx.jit(lambda m: m(batch, jnp.broadcast_to(adjacency, (3, 4, 4))))(model)
  np.testing.assert_array_equal(base[0], far[0])
  assert not jnp.allclose(base[0], near[0])


def test_graph_model_trains():
  """Twenty Adam steps lower the cross-entropy of the node labels of a few random ego-graphs."""
  model = GraphNodeClassifier(5, 2, SMALL, rngs=nnx.Rngs(0), max_hops=2)
  key = jax.random.key(18)
  features = jax.random.normal(key, (16, 6, 5))
  adjacency = jax.random.bernoulli(jax.random.fold_in(key, 1), 0.5, (16, 6, 6))
  labels = (features[:, 0, 0] > 0).astype(jnp.int32)
  hops = jnp.array([0, 1, 1, 2, 2, 2])

  def loss_fn(m):
    logits = m(features, adjacency, hops=jnp.broadcast_to(hops, (16, 6)))[:, 0]
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  losses = _train_losses(model, loss_fn, steps=20)
  assert losses[-1] < 0.7 * losses[0], losses


# ---------------------------------------------------------------------------------------------- bad input


def test_wrong_image_shape_raises():
  model = ImageCompletion(IMAGE, EnergyTransformer(SMALL, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
  replace = jnp.zeros((2, 16), bool)
  with pytest.raises(ValueError, match=r"images must have shape \(batch, 8, 8, 1\)"):
    model(jnp.zeros((2, 8, 8, 3)), replace)
  with pytest.raises(ValueError, match="images must have shape"):
    model(jnp.zeros((8, 8, 1)), replace)


@pytest.mark.parametrize("kwargs,name", [(dict(score_fraction=1.5), "score_fraction"),
                                         (dict(score_fraction=0.0), "score_fraction"),
                                         (dict(score_fraction=0.5, replace_fraction=-0.1), "replace_fraction"),
                                         (dict(score_fraction=0.5, replace_fraction=1.2), "replace_fraction")])
def test_mask_fraction_out_of_range_raises(kwargs, name):
  with pytest.raises(ValueError, match=name):
    Masking(**kwargs)


@pytest.mark.parametrize("build,name", [
    (lambda: ETConfig(memory="softmax"), "memory"),
    (lambda: ETConfig(step_size=0.0), "step_size"),
    (lambda: ETConfig(beta=-1.0), "beta"),
    (lambda: ETConfig(temperature=-0.5), "temperature"),
    (lambda: ImageConfig((8, 8), 1, 3), "patch_size"),
    (lambda: GraphNodeClassifier(5, 2, SMALL, rngs=nnx.Rngs(0))(jnp.zeros((4, 6)), jnp.eye(4)), "feature_dim"),
    (lambda: matched_mlp_hidden(100, 64, 4, 2), "depth"),
])
def test_bad_configuration_raises_naming_the_argument(build, name):
  with pytest.raises(ValueError, match=name):
    build()
