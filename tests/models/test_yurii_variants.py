"""YuriiFormer variants: the depth steps against an explicit loop of the update equations, learned scalars."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from energyformer import solvers
from energyformer.energies import masks
from energyformer.layers import Layer, Split
from energyformer.layers.modules import unwrap
from energyformer.models import GPT, GPTConfig

TINY = dict(vocab_size=11, context_length=8, dim=16, num_heads=2, head_dim=8, depth=3, mlp_hidden=32)


def _layer_norm(v, eps=1e-5):
  mean = np.mean(v, axis=-1, keepdims=True)
  return (v - mean) / np.sqrt(np.var(v, axis=-1, keepdims=True) + eps)


def _reference(model, x, mask, look_ahead: bool, strang: bool):
  """The update equations, one layer and sub-step at a time in numpy: ``v ← LN(β v − γ G(x + μ v))``,
  ``x ← x + v`` with the sub-layer fields ``G`` and the layer's own scalars."""
  attention, mlp = model.blocks.layer.parts
  params, hparams = unwrap(model.blocks.params), model.blocks.solver_hparams()
  gradients = [jax.jit(lambda theta, z, part=part: part.gradient(theta, z, mask)) for part in (attention, mlp)]
  x, v = np.asarray(x, np.float64), np.zeros(x.shape)
  for l in range(TINY["depth"]):
    theta = jax.tree.map(lambda p: p[l], params)
    h = [{name: float(value[l]) for name, value in part.items()} for part in hparams]
    fields = [lambda z, k=k: np.asarray(gradients[k](theta[k], jnp.asarray(z, jnp.float32))) for k in (0, 1)]
    schedule = [(0, 0.5), (1, 1.0), (0, 0.5)] if strang else [(0, 1.0), (1, 1.0)]
    for k, scale in schedule:
      mu = h[k]["mu"] if look_ahead else 0.0
      v = _layer_norm(h[k]["beta"] * v - scale * h[k]["gamma"] * fields[k](x + mu * v))
      x = x + v
  return x


@pytest.mark.parametrize("variant, look_ahead, strang", [("yurii_nesterov", True, False),
                                                         ("yurii_polyak", False, False),
                                                         ("yurii_strang", True, True)])
def test_yurii_step_matches_the_update_equations(variant, look_ahead, strang):
  """The scanned stack equals the explicit loop, with different learned scalars (trained parameters of shape
  (depth,), ``γ, β`` and for Nesterov ``μ`` per sub-step) in every layer and sub-step."""
  model = GPT(GPTConfig(**TINY, variant=variant), rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  learned = nnx.state(model.blocks, nnx.Param)["hparams"]
  assert [sorted(learned[k]) for k in (0, 1)] == [["beta", "gamma"] + (["mu"] if look_ahead else [])] * 2
  for part in model.blocks.hparams:
    for name, value in part.items():
      assert value[...].shape == (TINY["depth"],)
      value[...] = jnp.asarray(rng.uniform(-1.0, 1.0, TINY["depth"]), jnp.float32)  # raw, before constrain
  x = jax.random.normal(jax.random.key(1), (5, TINY["dim"]))
  mask = masks.causal(5)
  expected = _reference(model, x, mask, look_ahead, strang)
  np.testing.assert_allclose(np.asarray(model.blocks(x, mask)), expected, rtol=2e-4, atol=2e-4)


def test_velocity_norm_and_shared_state_errors():
  """The velocity LayerNorm has zero mean and unit variance per token and maps 0 to 0; a shared state refuses
  parts whose solvers carry different states."""
  v = jax.random.normal(jax.random.key(0), (3, 8)) * 5 + 2
  normed = solvers.velocity_norm(v)
  np.testing.assert_allclose(np.mean(normed, -1), 0.0, atol=1e-5)
  np.testing.assert_allclose(np.var(normed, -1), 1.0, rtol=1e-3)
  assert float(jnp.max(jnp.abs(solvers.velocity_norm(jnp.zeros((2, 4)))))) == 0.0
  model = GPT(GPTConfig(**TINY, variant="standard"), rngs=nnx.Rngs(0))
  attention, mlp = model.blocks.layer.parts
  mixed = Split((Layer(attention.energy, "momentum", "relaxed", attention.lagrangian), mlp), shared_state=True)
  with pytest.raises(ValueError, match="one solver family"):
    mixed.init_state(jnp.zeros((4, TINY["dim"])))
  with pytest.raises(ValueError, match="look-ahead mu"):
    solvers.yurii_nesterov().hparams(mu=1.0)
