"""Learned solver hyperparameters stay in their intervals: the optimiser trains raw values, the layer uses them
mapped into each ``HparamSpec``'s interval."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from energyformer import energies
from energyformer.layers import EnergyStack, Layer, unwrap
from energyformer.solvers import HparamSpec, momentum_coefficient, step_size, time_constant

SPECS = {"step size (0, inf)": step_size(0.5), "beta [0, 1)": momentum_coefficient(0.5),
         "tau (0, inf)": time_constant(2.0), "real line": HparamSpec(0.1),
         "(-inf, 3]": HparamSpec(1.0, None, 3.0), "[-1, 2]": HparamSpec(0.0, -1.0, 2.0)}
INSIDE = {"step size (0, inf)": [1e-4, 0.3, 1.0, 50.0, 200.0], "beta [0, 1)": [1e-3, 0.25, 0.6, 0.999],
          "tau (0, inf)": [0.01, 2.0, 1e3], "real line": [-5.0, 0.0, 7.0], "(-inf, 3]": [-100.0, 0.0, 2.99],
          "[-1, 2]": [-0.9, 0.0, 1.9]}


def _inside(spec, values) -> bool:
  values = np.asarray(values, np.float64)
  low_ok = True if spec.low is None else np.all(values > spec.low if spec.low_open else values >= spec.low)
  high_ok = True if spec.high is None else np.all(values < spec.high if spec.high_open else values <= spec.high)
  return bool(low_ok and high_ok and np.all(np.isfinite(values)))


@pytest.mark.parametrize("name", SPECS)
def test_the_map_is_increasing_into_the_interval_and_its_inverse_is_exact(name):
  """``constrain`` of any float32 raw value (to ±1e30) lies in the interval and increases with the raw value;
  ``constrain(unconstrain(v)) = v`` for values inside it (float32 round-off); the raw value of a value on a closed
  end starts just inside it."""
  spec = SPECS[name]
  raw = jnp.asarray([-1e30, -1e4, -50.0, -1.0, 0.0, 1.0, 50.0, 1e4, 1e30], jnp.float32)
  values = np.asarray(jax.jit(spec.constrain)(raw))
  assert _inside(spec, values), values
  assert np.all(np.diff(values) >= 0) and values[3] < values[4] < values[5]
  inside = jnp.asarray(INSIDE[name], jnp.float32)
  round_trip = jax.jit(lambda v: spec.constrain(spec.unconstrain(v)))
  np.testing.assert_allclose(round_trip(inside), inside, rtol=2e-6, atol=1e-6)
  for end in (spec.low, spec.high):
    if end is not None:
      np.testing.assert_allclose(round_trip(jnp.float32(end)), end, atol=1e-5)


def test_an_aggressive_optimiser_cannot_push_learned_hparams_out_of_their_intervals():
  """SGD at learning rate 1e3 on a loss that rewards η < 0 and β > 1 (plus the stack's output): the raw
  parameters run off, η stays positive and β in [0, 1); the stack computes exactly what a stack with those
  constrained values fixed computes; before training the values are the ones asked for."""
  layer = Layer(energies.Interaction(4, 1, 2), "momentum")
  asked = layer.default_hparams(eta=0.3, beta=0.6)
  stack = EnergyStack(layer, 1, rngs=nnx.Rngs(0), learn_hparams=True, hparams=asked, remat=False)
  for name in asked:
    np.testing.assert_allclose(stack.solver_hparams()[name], asked[name], rtol=1e-6)
  x = 0.3 * jax.random.normal(jax.random.key(1), (3, 4))

  def loss(model):
    hparams = model.solver_hparams()
    return hparams["eta"] - hparams["beta"] + 1e-3 * jnp.sum(model(x) ** 2)

  optimizer = nnx.Optimizer(stack, optax.sgd(1e3), wrt=nnx.Param)
  step = nnx.jit(lambda model, opt: opt.update(model, nnx.grad(loss)(model)))
  for _ in range(30):
    step(stack, optimizer)
  hparams, raw = stack.solver_hparams(), unwrap(stack.hparams)
  assert float(raw["eta"]) < -100 and float(raw["beta"]) > 10     # the optimiser moved the raw values far
  assert 0 < float(hparams["eta"]) and 0 <= float(hparams["beta"]) < 1
  fixed = EnergyStack(layer, 1, rngs=nnx.Rngs(0), hparams=hparams, remat=False)
  fixed.params = stack.params
  np.testing.assert_array_equal(stack(x), fixed(x))
