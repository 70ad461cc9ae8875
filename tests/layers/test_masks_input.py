"""Masks enter layers and stacks as booleans only: an additive float mask is refused with its conversion."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import energyformer as ef
from energyformer import energies
from energyformer.energies import masks
from energyformer.layers import unwrap
from energyformer.models import TransformerEncoder

N, D, H, DH = 5, 8, 2, 4


def _stack():
  return ef.EnergyStack(ef.Layer(energies.Interaction(D, H, DH, values=True), "gd", "relaxed"), 2, rngs=nnx.Rngs(0))


def _additive_causal():
  """The additive form other libraries use: 0 where visible, −inf where hidden."""
  return jnp.where(masks.causal(N), 0.0, -jnp.inf)


def test_additive_mask_is_refused_with_its_conversion():
  """A float additive mask raises a TypeError naming mask and `mask = additive == 0`, in a stack, a layer's
  field and energy; the converted mask gives the boolean mask's output (rather than its inverse)."""
  stack, x = _stack(), jax.random.normal(jax.random.key(1), (2, N, D))
  with pytest.raises(TypeError, match=r"mask must be a boolean.*float32.*`mask = additive == 0`"):
    stack(x, _additive_causal())
  layer, params = stack.layer, jax.tree.map(lambda p: p[0], unwrap(stack.params))
  with pytest.raises(TypeError, match="additive == 0"):
    layer.gradient(params, x[0], _additive_causal())
  with pytest.raises(TypeError, match="additive == 0"):
    layer.energy_value(params, x[0], _additive_causal())
  run = nnx.jit(lambda s, m: s(x, m))
  np.testing.assert_array_equal(run(stack, _additive_causal() == 0), run(stack, masks.causal(N)))
  assert not np.allclose(run(stack, masks.causal(N)), run(stack, ~masks.causal(N) | jnp.eye(N, dtype=bool)))


def test_integer_masks_and_combine_are_checked():
  """A 0/1 integer mask is refused too (with `weights != 0`); masks.combine refuses a float mask."""
  with pytest.raises(TypeError, match="int32.*`mask = weights != 0`"):
    _stack()(jnp.ones((N, D)), masks.causal(N).astype(jnp.int32))
  with pytest.raises(TypeError, match="combine's mask 1.*additive == 0"):
    masks.combine(masks.causal(N), _additive_causal())


def test_baseline_encoder_refuses_additive_masks():
  """The standard Transformer encoder (the ET's baseline) takes the same boolean masks and refuses additive ones."""
  encoder = TransformerEncoder(D, H, 1, 16, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(2), (1, N, D))
  with pytest.raises(TypeError, match="additive == 0"):
    encoder(x, _additive_causal()[None])
  run = nnx.jit(lambda e, m: e(x, m))
  np.testing.assert_array_equal(run(encoder, (_additive_causal() == 0)[None]), run(encoder, masks.causal(N)[None]))
