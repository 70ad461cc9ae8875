"""Hyper-SET: the recurrent model against an explicit loop of its iterations, step sizes, iteration scaling."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from energyformer.models import HyperSET, HyperSETConfig

TINY = dict(vocab_size=10, length=6, num_classes=4, dim=8, num_heads=2, head_dim=4, hidden=16, iterations=3,
            time_dim=8)


def _loop(model, tokens, iterations, solver):
  """Explicit iterations: per t, a step on the attention field with a_t, then on the feed-forward field with b_t
  (``gd``: x − a G; ``adaptive_rmsprop_momentum``: its equations with ρ = 0.8, β = 0.9), each energy its own buffers."""
  steps = np.asarray(model.step_sizes(iterations))
  fields = [jax.jit(jax.vmap(lambda z, f=f: f(z, None))) for f in model.fields()]
  x = np.asarray(model.embed[...][tokens] + model.positions[...][:tokens.shape[1]], np.float64)
  buffers = {k: [np.zeros_like(x), np.zeros_like(x)] for k in (0, 1)}
  for t in range(iterations):
    for k, field in enumerate(fields):
      g = np.asarray(field(jnp.asarray(x, jnp.float32)), np.float64)
      if solver == "gd":
        x = x - steps[t, k] * g
      else:
        s, b = buffers[k]
        s = 0.8 * s + 0.2 * g * g
        b = 0.9 * b + g / (np.sqrt(s) + 1e-6)
        buffers[k] = [s, b]
        x = x - steps[t, k] * b
  return x


@pytest.mark.parametrize("solver", ["gd", "adaptive_rmsprop_momentum"])
def test_hyper_set_iterations_match_explicit_loop(solver):
  """``encode`` equals the explicit loop at T and 2T (the same shared weights, step sizes of the iteration index,
  which differ from step to step once the step-size network is trained)."""
  model = HyperSET(HyperSETConfig(**TINY, solver=solver), rngs=nnx.Rngs(0))
  np.testing.assert_allclose(np.asarray(model.step_sizes(3)), 0.5, rtol=1e-6)
  model.time_out.kernel[...] = 0.3 * jax.random.normal(jax.random.key(5), model.time_out.kernel[...].shape)
  steps = np.asarray(model.step_sizes(6))
  assert np.all(steps > 0) and np.ptp(steps[:, 0, 0]) > 1e-3
  tokens = jax.random.randint(jax.random.key(1), (2, 6), 0, 10)
  for iterations in (3, 6):
    np.testing.assert_allclose(np.asarray(model.encode(tokens, iterations)), _loop(model, tokens, iterations, solver),
                               rtol=2e-4, atol=2e-4)


@pytest.mark.slow
def test_hyper_set_trains_and_exact_gradient_runs():
  """Ten Adam steps lower the loss on a fixed batch; the exact-gradient model gives finite logits of the shape."""
  model = HyperSET(HyperSETConfig(**TINY), rngs=nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(2), (8, 6), 0, 10)
  labels = tokens % 4
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer):
    loss, grads = nnx.value_and_grad(
        lambda m: optax.softmax_cross_entropy_with_integer_labels(m(tokens), labels).mean())(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(step(model, optimizer)) for _ in range(10)]
  assert losses[-1] < losses[0] - 0.1
  exact = HyperSET(HyperSETConfig(**TINY, exact_gradient=True), rngs=nnx.Rngs(0))
  logits = exact(tokens[:2], 2)
  assert logits.shape == (2, 6, 4) and bool(jnp.all(jnp.isfinite(logits)))
