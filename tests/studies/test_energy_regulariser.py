"""The energy-regularised pretraining loss: λ = 0 is the plain loss, the depth energy and the relative descent
against a layer-by-layer loop, the regulariser's gradient against central finite differences (float64; every
quantity from one compiled program, compiled once for the module), the relative descent against hand-computed
values, and the loss bounded under an aggressive optimiser where the raw energy runs away."""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from energyformer.data.text import ByteTokenizer, TextDataConfig
from energyformer.energies import masks
from energyformer.layers.modules import unwrap
from energyformer.layers.stack import unroll
from energyformer.models import GPT, GPTConfig
from energyformer.studies import pretrain

CONFIG = GPTConfig(vocab_size=24, context_length=8, dim=8, num_heads=2, head_dim=4, depth=2, mlp_hidden=16,
                   remat=False, scan_unroll=True)
FAST_COMPILE = {"xla_backend_optimization_level": 0}
EPS = 1e-6


def _layer_by_layer_energies(model, tokens):
  """``R = Σ_b Σ_l E_l(x_{b,l}) / (B T)`` and ``D = Σ_b Σ_l (a − e) / (|a| + |e| + ε) / B`` with a Python loop over
  the layers instead of the depth scan (``e``, ``a``: layer l's energy before and after its step)."""
  inputs = tokens[:, :-1]
  x = model.embed[...][inputs] + model.positions[...][:inputs.shape[1]]
  mask = masks.causal(inputs.shape[1])
  stacked, hparams, layer = unwrap(model.blocks.params), unwrap(model.blocks.hparams), model.blocks.layer
  total, descent = 0.0, 0.0
  for step in range(CONFIG.depth):
    theta = jax.tree.map(lambda p: p[step], stacked)
    energy = lambda states: jax.vmap(lambda s: layer.energy_value(theta, s, mask))(states)
    before = energy(x)
    x = jax.vmap(lambda s: unroll(layer, theta, hparams, s, mask, num_steps=1, stacked_params=False).x)(x)
    after = energy(x)
    total += jnp.sum(before)
    descent += jnp.sum((after - before) / (jnp.abs(after) + jnp.abs(before) + pretrain.DESCENT_EPSILON))
  return total / inputs.size, descent / inputs.shape[0]


@functools.cache
def quantities() -> dict:
  with jax.enable_x64(True):
    tokens = jax.random.randint(jax.random.key(1), (2, 6), 0, 24)

    def compute():
      graph, params, rest = nnx.split(GPT(CONFIG, rngs=nnx.Rngs(0)), nnx.Param, ...)
      params, rest = jax.tree.map(lambda p: p.astype(jnp.float64) if jnp.issubdtype(p.dtype, jnp.floating) else p,
                                  (params, rest))
      model = lambda p: nnx.merge(graph, p, rest)
      regulariser = lambda p: pretrain.loss_and_energies(model(p), tokens)[2]
      leaves, tree = jax.tree.flatten(params)
      direction = jax.tree.unflatten(tree, [jax.random.normal(jax.random.key(i), p.shape, jnp.float64)
                                            for i, p in enumerate(leaves)])
      gradient = jax.grad(regulariser)(params)
      shifted = lambda sign: regulariser(jax.tree.map(lambda p, v: p + sign * EPS * v, params, direction))
      cross_entropy, energy, descent = pretrain.loss_and_energies(model(params), tokens)
      return {"plain": pretrain.next_token_loss(model(params), tokens),
              "zero_weight": pretrain.energy_regularised_loss(model(params), tokens, 0.0),
              "weighted": pretrain.energy_regularised_loss(model(params), tokens, 0.5),
              "cross_entropy": cross_entropy, "energy": energy, "descent": descent,
              "layer_by_layer": _layer_by_layer_energies(model(params), tokens),
              "analytic": sum(jnp.vdot(g, v) for g, v in zip(jax.tree.leaves(gradient), jax.tree.leaves(direction))),
              "numeric": (shifted(1.0) - shifted(-1.0)) / (2 * EPS)}

    return jax.device_get(jax.jit(compute, compiler_options=FAST_COMPILE)())


def test_zero_weight_is_exactly_the_plain_loss_and_the_energy_pass_keeps_the_logits():
  q = quantities()
  assert q["zero_weight"] == q["plain"]
  np.testing.assert_allclose(q["cross_entropy"], q["plain"], rtol=1e-6)    # next_token_loss computes in float32
  np.testing.assert_allclose(q["weighted"], q["cross_entropy"] + 0.5 * q["descent"], rtol=1e-12)


def test_depth_energy_and_descent_are_the_layer_by_layer_ones():
  q = quantities()
  np.testing.assert_allclose([q["energy"], q["descent"]], q["layer_by_layer"], rtol=1e-10)
  assert -CONFIG.depth <= q["descent"] <= CONFIG.depth


def test_regulariser_gradient_matches_central_finite_differences():
  q = quantities()
  assert q["numeric"].dtype == np.float64 and abs(q["analytic"]) > 1e-3
  np.testing.assert_allclose(q["analytic"], q["numeric"], rtol=1e-6)


def test_relative_descent_against_hand_computed_values():
  before, after = np.array([[2.0, -1.0], [4.0, 3.0]]), np.array([[-2.0, -3.0], [4.0, 1.0]])
  # sequence 0: (−2 − 2)/4 + (−3 + 1)/4 = −1.5; sequence 1: 0/8 + (1 − 3)/4 = −0.5; mean over sequences −1.0
  np.testing.assert_allclose(pretrain.relative_descent(before, after), -1.0, rtol=1e-6)
  np.testing.assert_allclose(pretrain.relative_descent(after, before), 1.0, rtol=1e-6)


def test_relative_descent_is_finite_and_within_depth_at_extreme_energies():
  before = np.array([[1e30, -1e30, 0.0, 5.0], [0.0, 1e-30, -3.0, 1e30]], np.float32)
  after = np.array([[-1e30, 1e30, 0.0, -1e30], [0.0, -1e-30, 1e30, 1e30]], np.float32)
  descent, gradients = jax.value_and_grad(pretrain.relative_descent, argnums=(0, 1))(before, after)
  assert np.isfinite(descent) and -4 <= descent <= 4 and all(np.isfinite(g).all() for g in gradients)


@functools.cache
def aggressive_runs(weight=10.0, steps=25, learning_rate=0.3) -> dict:
  """Along ``steps`` Adam steps from a tiny decoder's initial parameters: the regularised loss ``CE + λ D`` at a
  large λ = ``weight``, and the raw depth energy ``R`` it replaces minimised alone (one program vmapped over the two
  objectives' coefficients of ``(CE, R, D)``)."""
  graph, params, rest = nnx.split(GPT(CONFIG, rngs=nnx.Rngs(0)), nnx.Param, ...)
  tokens = jax.random.randint(jax.random.key(2), (2, 6), 0, 24)
  optimizer = optax.adam(learning_rate)

  def optimise(coefficients):
    value = lambda p: jnp.dot(coefficients, jnp.stack(pretrain.loss_and_energies(nnx.merge(graph, p, rest), tokens)))

    def step(carry, _):
      p, state = carry
      loss, gradient = jax.value_and_grad(value)(p)
      updates, state = optimizer.update(gradient, state, p)
      return (optax.apply_updates(p, updates), state), loss

    return jax.lax.scan(step, (params, optimizer.init(params)), length=steps)[1]

  objectives = jnp.array([[1.0, 0.0, weight], [0.0, 1.0, 0.0]])
  regularised, raw = jax.device_get(jax.jit(jax.vmap(optimise), compiler_options=FAST_COMPILE)(objectives))
  return {"regularised": regularised, "raw": raw}


@pytest.mark.slow
def test_regularised_loss_stays_bounded_under_an_aggressive_optimiser_where_the_raw_energy_runs_away():
  runs = aggressive_runs()
  assert np.isfinite(runs["regularised"]).all()
  assert (runs["regularised"] >= -10.0 * CONFIG.depth).all()                  # CE ≥ 0 and D ≥ −depth
  assert runs["raw"][-1] < 10 * runs["raw"][0] < 0                           # the raw energy: ten times lower


def test_the_regulariser_form_and_weight_are_part_of_the_run_identity():
  """A checkpoint records the regulariser's form: a run saved under another loss is not resumed under this one."""
  model = dataclasses.replace(CONFIG, vocab_size=ByteTokenizer().vocab_size)
  identity = lambda weight: pretrain.TextTask(model, TextDataConfig(sequence_length=8), energy_weight=weight).identity()
  assert "energy_regulariser" not in identity(0.0)
  assert identity(0.5)["energy_regulariser"] == {"form": "relative_descent", "weight": 0.5}
  assert identity(0.5) != identity(0.25)
