"""The energy-regularised pretraining loss: λ = 0 is the plain loss, the depth energy against a layer-by-layer
loop, and the regulariser's gradient against central finite differences (float64; every quantity from one
compiled program, compiled once for the module)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from energyformer.energies import masks
from energyformer.layers.modules import unwrap
from energyformer.layers.stack import unroll
from energyformer.models import GPT, GPTConfig
from energyformer.studies import pretrain

CONFIG = GPTConfig(vocab_size=24, context_length=8, dim=8, num_heads=2, head_dim=4, depth=2, mlp_hidden=16,
                   remat=False, scan_unroll=True)
FAST_COMPILE = {"xla_backend_optimization_level": 0}
EPS = 1e-6


def _layer_by_layer_energy(model, tokens):
  """``Σ_b Σ_l E_l(x_{b,l}) / (B T)`` with a Python loop over the layers instead of the depth scan."""
  inputs = tokens[:, :-1]
  x = model.embed[...][inputs] + model.positions[...][:inputs.shape[1]]
  mask = masks.causal(inputs.shape[1])
  stacked, hparams, layer = unwrap(model.blocks.params), unwrap(model.blocks.hparams), model.blocks.layer
  total = 0.0
  for step in range(CONFIG.depth):
    theta = jax.tree.map(lambda p: p[step], stacked)
    total += jnp.sum(jax.vmap(lambda s: layer.energy_value(theta, s, mask))(x))
    x = jax.vmap(lambda s: unroll(layer, theta, hparams, s, mask, num_steps=1, stacked_params=False).x)(x)
  return total / inputs.size


@functools.cache
def quantities() -> dict:
  with jax.enable_x64(True):
    tokens = jax.random.randint(jax.random.key(1), (2, 6), 0, 24)

    def compute():
      graph, params, rest = nnx.split(GPT(CONFIG, rngs=nnx.Rngs(0)), nnx.Param, ...)
      params, rest = jax.tree.map(lambda p: p.astype(jnp.float64) if jnp.issubdtype(p.dtype, jnp.floating) else p,
                                  (params, rest))
      model = lambda p: nnx.merge(graph, p, rest)
      regulariser = lambda p: pretrain.loss_and_energy(model(p), tokens)[1]
      leaves, tree = jax.tree.flatten(params)
      direction = jax.tree.unflatten(tree, [jax.random.normal(jax.random.key(i), p.shape, jnp.float64)
                                            for i, p in enumerate(leaves)])
      gradient = jax.grad(regulariser)(params)
      shifted = lambda sign: regulariser(jax.tree.map(lambda p, v: p + sign * EPS * v, params, direction))
      cross_entropy, energy = pretrain.loss_and_energy(model(params), tokens)
      return {"plain": pretrain.next_token_loss(model(params), tokens),
              "zero_weight": pretrain.energy_regularised_loss(model(params), tokens, 0.0),
              "weighted": pretrain.energy_regularised_loss(model(params), tokens, 0.5),
              "cross_entropy": cross_entropy, "energy": energy,
              "layer_by_layer": _layer_by_layer_energy(model(params), tokens),
              "analytic": sum(jnp.vdot(g, v) for g, v in zip(jax.tree.leaves(gradient), jax.tree.leaves(direction))),
              "numeric": (shifted(1.0) - shifted(-1.0)) / (2 * EPS)}

    return jax.device_get(jax.jit(compute, compiler_options=FAST_COMPILE)())


def test_zero_weight_is_exactly_the_plain_loss_and_the_energy_pass_keeps_the_logits():
  q = quantities()
  assert q["zero_weight"] == q["plain"]
  np.testing.assert_allclose(q["cross_entropy"], q["plain"], rtol=1e-6)    # next_token_loss computes in float32
  np.testing.assert_allclose(q["weighted"], q["cross_entropy"] + 0.5 * q["energy"], rtol=1e-12)


def test_depth_energy_is_the_layer_by_layer_energy_per_token():
  q = quantities()
  np.testing.assert_allclose(q["energy"], q["layer_by_layer"], rtol=1e-10)


def test_regulariser_gradient_matches_central_finite_differences():
  q = quantities()
  assert q["numeric"].dtype == np.float64 and abs(q["analytic"]) > 1e-3
  np.testing.assert_allclose(q["analytic"], q["numeric"], rtol=1e-6)
