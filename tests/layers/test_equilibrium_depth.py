"""Equilibrium layers: implicit gradients equal differentiation through the unrolled iteration run to convergence;
memory does not grow with the step limit; non-convergence is reported."""
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from energyformer import energies
from energyformer.energies import init_params
from energyformer.layers import Anchored, EnergyStack, Layer, NotConvergedWarning, equilibrium, unroll, unwrap
from energyformer.models.energy_transformer import ETConfig, et_layer

D, N = 8, 5


def _softmax_layer():
  """Gradient descent on the modern Hopfield (softmax) energy −(1/β) Σ_n log Σ_μ exp(β ξ_μ·x_n)."""
  return Layer(energies.HopfieldLogSumExp(D, 16, beta=1.0), "gd", "tied")


def _relative_errors(reference, result):
  return [float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))
          for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(result))]


def _implicit_and_unrolled(layer, hparams, anchor, unrolled_steps):
  """Gradients (params, hparams, input tokens) of a loss of the fixed point: implicit, and by autodiff through
  ``unrolled_steps`` anchored steps."""
  params = init_params(layer.specs(), jax.random.key(0), jnp.float64)
  hparams = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), hparams)
  x = jax.random.normal(jax.random.key(1), (N, D), jnp.float64)

  def gradients(run):
    return jax.jit(jax.grad(lambda p, h, z: jnp.sum(jnp.sin(run(p, h, z).x)), argnums=(0, 1, 2)))(params, hparams, x)

  implicit = gradients(lambda p, h, z: equilibrium(layer, p, h, z, tol=1e-12, max_steps=1000, anchor=anchor))
  unrolled = gradients(lambda p, h, z: unroll(Anchored(layer, anchor, z), p, h, z, num_steps=unrolled_steps,
                                              stacked_params=False, remat=False))
  return implicit, unrolled


@pytest.mark.parametrize("kind", [pytest.param("energy_transformer", marks=pytest.mark.slow), "softmax"])
def test_implicit_gradients_equal_the_unrolled_loop_at_convergence(kind):
  """Energy Transformer (LayerNorm activations, attention + Hopfield memory, Euler steps) and a softmax energy:
  the implicit-function gradients equal autodiff through 300 unrolled steps to 1e-4 relative."""
  with jax.enable_x64(True):
    if kind == "energy_transformer":
      layer = et_layer(ETConfig(dim=D, num_heads=2, head_dim=4, num_memories=16))
      implicit, unrolled = _implicit_and_unrolled(layer, layer.default_hparams(), 0.5, 300)
    else:
      implicit, unrolled = _implicit_and_unrolled(_softmax_layer(), {"eta": 0.5}, 0.3, 300)
  assert max(_relative_errors(unrolled, implicit)) < 1e-4


def _gradient_temp_bytes(mode, steps):
  stack = EnergyStack(_softmax_layer(), steps, rngs=nnx.Rngs(0), shared=True, mode=mode, anchor=0.3, remat=False)
  graph, state = nnx.split(stack)
  loss = lambda s, z: jnp.sum(jnp.square(nnx.merge(graph, s)(z)))
  x = jnp.ones((2, N, D))
  return jax.jit(jax.grad(loss, argnums=(0, 1))).lower(state, x).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.slow  # default-suite time budget
def test_memory_does_not_grow_with_max_steps():
  """Compiled temp memory of the gradient is the same at max_steps 10 and 100 in equilibrium mode (the unrolled
  stack's grows with its steps: benchmarks/depth_memory.py --equilibrium)."""
  assert _gradient_temp_bytes("equilibrium", 10) == _gradient_temp_bytes("equilibrium", 100)


def test_stack_reports_convergence_and_non_convergence():
  """A batch through EnergyStack(mode="equilibrium"): converged rows report residual ≤ tol in fewer steps than the
  limit and reach the fixed point of the step; a limit too small is reported (warning, residual, steps)."""
  x = jax.random.normal(jax.random.key(2), (3, N, D))
  stack = EnergyStack(_softmax_layer(), 200, rngs=nnx.Rngs(0), shared=True, mode="equilibrium", tol=1e-5,
                      anchor=0.3)
  rollout = stack.rollout(x)
  assert rollout.residual.shape == (3,) and bool(jnp.all(rollout.residual <= 1e-5))
  assert bool(jnp.all(rollout.steps < 200))
  params, hparams = unwrap(stack.params), unwrap(stack.hparams)
  again = jax.vmap(lambda xs, z: Anchored(stack.layer, 0.3, z).step(params, hparams, xs, ())[0])(rollout.x, x)
  assert float(jnp.max(jnp.abs(again - rollout.x))) < 1e-4 * float(jnp.max(jnp.abs(rollout.x)))
  short = EnergyStack(_softmax_layer(), 2, rngs=nnx.Rngs(0), shared=True, mode="equilibrium", tol=1e-5, anchor=0.3)
  with pytest.warns(NotConvergedWarning, match=r"step limit \(2 steps\)"):
    rollout = short.rollout(x)
  assert bool(jnp.all(rollout.steps == 2)) and bool(jnp.all(rollout.residual > 1e-5))


def test_bad_equilibrium_configurations_raise():
  with pytest.raises(ValueError, match="stateless solver"):
    EnergyStack(Layer(energies.Interaction(D, 2, 4), "momentum"), 5, rngs=nnx.Rngs(0), shared=True,
                mode="equilibrium")
  with pytest.raises(ValueError, match="shared=True"):
    EnergyStack(_softmax_layer(), 5, rngs=nnx.Rngs(0), mode="equilibrium")
  with pytest.raises(ValueError, match="unknown EnergyStack mode"):
    EnergyStack(_softmax_layer(), 5, rngs=nnx.Rngs(0), mode="implicit")
  with pytest.raises(ValueError, match="anchor"):
    equilibrium(_softmax_layer(), init_params(_softmax_layer().specs(), jax.random.key(0)), {"eta": 0.5},
                jnp.ones((N, D)), anchor=1.5)
  with pytest.raises(ValueError, match="no fixed point"):
    ETConfig(equilibrium=True, temperature=0.1)
