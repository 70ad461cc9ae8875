"""Reversible depth scans: gradients equal the stored-activation gradients of the same steps (float64 to 1e-10,
float32 within the documented bound, which a pure reversal of a deep float32 stack exceeds and reports)."""
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from energyformer import energies
from energyformer.energies import LayerNormLagrangian, init_params, masks
from energyformer.layers import EnergyStack, HeavyBall, Layer, Split, reversible_unroll, unroll, unwrap
from energyformer.layers import reversible
from energyformer.models.gpt import GPT, GPTConfig
from energyformer.train.mesh import PRESETS, make_mesh

D, H, N = 8, 2, 5


def _block(solver="momentum", mlp_solver="gd", scheme="lie_trotter"):
  """A GPT-style block: pre-normalised tied attention (heavy ball; its closed-form field keeps compiles short), then
  a pre-normalised relaxed GELU MLP."""
  attention = Layer(energies.Interaction(D, H, D // H), solver, "tied", lagrangian=LayerNormLagrangian(D))
  mlp = Layer(energies.Potential(D, 2 * D, "gelu", values=True), mlp_solver, "relaxed",
              lagrangian=LayerNormLagrangian(D))
  return Split((attention, mlp), scheme)


def _light_block():
  """A cheaper block for the structural tests: tied heavy-ball attention (closed-form field), then a GD MLP."""
  return Split((Layer(energies.Interaction(D, H, D // H), "momentum", "tied"),
                Layer(energies.Potential(D, 2 * D, "gelu", values=True), "gd", "relaxed")))


def _attention():
  return Layer(energies.Interaction(D, H, D // H, values=True), "momentum", "relaxed",
               lagrangian=LayerNormLagrangian(D))


def _setup(layer, depth, dtype, beta=0.5):
  params = jax.vmap(lambda k: init_params(layer.specs(), k, dtype))(jax.random.split(jax.random.key(0), depth))
  hparams = jax.tree.map(lambda v: jnp.asarray(v, dtype), layer.default_hparams())
  if isinstance(layer, Split):
    hparams = ({**hparams[0], "beta": jnp.asarray(beta, dtype), "eta": jnp.asarray(0.8, dtype)}, hparams[1])
  else:
    hparams = {**hparams, "beta": jnp.asarray(beta, dtype)}
  x = jax.random.normal(jax.random.key(1), (N, D), dtype)
  return params, hparams, x


def _gradients(run, params, hparams, x):
  """∂/∂(params, hparams, tokens) of a loss of the final tokens and velocity."""
  def loss(params, hparams, x):
    rollout = run(params, hparams, x)
    return jnp.sum(jnp.sin(rollout.x)) + 0.5 * jnp.sum(jnp.square(jax.tree.leaves(rollout.state)[0]))
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(params, hparams, x)


def _relative_errors(reference, result):
  """max |Δ| / max |reference| of each gradient leaf."""
  return [float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))
          for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(result))]


def _reversal_errors(layer, depth, dtype, segments, beta=0.5):
  """Relative gradient errors of reversal with each of ``segments`` against the stored activations."""
  params, hparams, x = _setup(layer, depth, dtype, beta)
  mask = masks.causal(N)
  stored = _gradients(lambda p, h, z: unroll(HeavyBall(layer), p, h, z, mask, num_steps=depth, remat=False),
                      params, hparams, x)
  return [_relative_errors(stored, _gradients(
      lambda p, h, z, s=s: reversible_unroll(layer, p, h, z, mask, num_steps=depth, segment=s), params, hparams, x))
          for s in segments]


@pytest.mark.slow  # default-suite time budget
def test_float64_reversal_equals_stored_gradients():
  """A GPT block stack reversed from its output alone (segment=None) or in segments: every gradient (weights,
  hyperparameters, tokens) within 1e-10 of the stored-activation one."""
  with jax.enable_x64(True):
    errors = _reversal_errors(_block(), 5, jnp.float64, [None, 2])
  assert max(map(max, errors)) < 1e-10, errors


def test_float32_reversal_within_documented_bound_and_pure_reversal_exceeds_it():
  """16 float32 GPT blocks at beta 0.5: the default segments keep every gradient within FLOAT32_RELATIVE_BOUND of
  the stored-activation one without a warning; reversing all 16 steps from the output is outside it, and the
  backward pass says so."""
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", reversible.ReversalDriftWarning)
    segmented, whole = _reversal_errors(_block(), 16, jnp.float32, [reversible.DEFAULT_SEGMENT, None])
  assert max(segmented) <= reversible.FLOAT32_RELATIVE_BOUND, segmented
  assert max(whole) > reversible.FLOAT32_RELATIVE_BOUND, whole
  assert len(caught) == 1 and "drifted" in str(caught[0].message)


@pytest.mark.slow  # default-suite time budget
def test_heavy_ball_form_of_a_momentum_layer_is_its_own_step():
  """Reversal does not change a momentum stack's forward pass: bit for bit the ordinary stack's."""
  layer = Layer(energies.Interaction(D, H, D // H), "momentum", "tied")
  stacks = [EnergyStack(layer, 2, rngs=nnx.Rngs(0), reversible=flag) for flag in (False, True)]
  x = jax.random.normal(jax.random.key(2), (2, N, D))
  plain, rebuilt = (jax.jit(lambda z, s=s: s(z, masks.causal(N)))(x) for s in stacks)
  np.testing.assert_array_equal(plain, rebuilt)


def _stack_gradients(stack, x, mask, *, stored):
  """Gradients of a loss with respect to the stack's trained variables (learned hparams included) and tokens; the
  stored-activation reference runs the same steps through ``rollout(record_energy=True)``."""
  graph, trained, rest = nnx.split(stack, nnx.Param, ...)

  def loss(trained, x):
    model = nnx.merge(graph, trained, rest)
    out = model.rollout(x, mask, record_energy=stored).x
    return jnp.sum(jnp.sin(out))

  return jax.grad(loss, argnums=(0, 1))(trained, x)


@pytest.mark.slow  # default-suite time budget
def test_shared_stack_with_learned_hparams_and_a_batch():
  """EnergyStack(shared=True, reversible=True) on a batch of sequences with learned step sizes and momentum:
  gradients of the weights, hyperparameters and tokens equal the stored-activation ones."""
  stack = EnergyStack(_light_block(), 3, rngs=nnx.Rngs(3), shared=True, learn_hparams=True, reversible=True, segment=2)
  x = jax.random.normal(jax.random.key(4), (3, N, D))
  mask = masks.causal(N)
  reference, result = (jax.jit(functools.partial(_stack_gradients, stack, stored=s))(x, mask) for s in (True, False))
  assert unwrap(result[0])["hparams"][0]["beta"] != 0
  assert max(_relative_errors(unwrap(reference), unwrap(result))) < 1e-4


@pytest.mark.slow  # default-suite time budget
def test_vmapped_population_equals_each_member():
  """A population of hyperparameters vmapped over the reversible gradient equals each member run alone."""
  layer = _light_block()
  params, hparams, x = _setup(layer, 3, jnp.float32)

  @jax.jit
  def gradients(eta):
    h = ({**hparams[0], "eta": eta}, hparams[1])
    loss = lambda p, hh, z: jnp.sum(jnp.sin(reversible_unroll(layer, p, hh, z, num_steps=3, segment=2).x))
    return jax.grad(loss, argnums=(0, 1, 2))(params, h, x)

  etas = jnp.asarray([0.3, 0.6])
  batched = jax.vmap(gradients)(etas)
  for i, eta in enumerate(etas):
    assert max(_relative_errors(gradients(eta), jax.tree.map(lambda leaf: leaf[i], batched))) < 1e-5


@pytest.mark.slow
def test_sharded_batch_path_pins_tokens_and_keeps_gradients():
  """With batch_axes under a mesh (the sharded-training path) the reversible scan constrains the token states and
  its gradients equal those without the mesh."""
  stack = EnergyStack(_light_block(), 2, rngs=nnx.Rngs(5), reversible=True, batch_axes=("data", "fsdp"))
  x = jax.random.normal(jax.random.key(6), (2, N, D))
  grads = jax.jit(functools.partial(_stack_gradients, stack, stored=False))
  plain = grads(x, None)
  with jax.set_mesh(make_mesh(PRESETS["single"])):
    text = grads.lower(x, None).as_text()
    pinned = grads(x, None)
  assert "sharding_constraint" in text
  assert max(_relative_errors(unwrap(plain), unwrap(pinned))) < 1e-6


@pytest.mark.slow
def test_gpt_reversible_gradients_equal_the_stored_ones(monkeypatch):
  """GPTConfig(reversible=True): a momentum GPT's loss gradients equal those of the same blocks stored."""
  config = GPTConfig(vocab_size=11, context_length=6, dim=D, num_heads=H, head_dim=D // H, depth=3, mlp_hidden=16,
                     variant="momentum", reversible=True)
  model = GPT(config, rngs=nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 6), 0, 11)

  def gradients():
    return nnx.grad(lambda m: jnp.mean(jnp.square(m(tokens))))(model)

  result = gradients()
  monkeypatch.setattr(EnergyStack, "__call__", lambda self, x, mask=None: self.rollout(x, mask, record_energy=True).x)
  reference = gradients()
  assert max(_relative_errors(nnx.state(reference), nnx.state(result))) < 1e-4


@pytest.mark.parametrize("build, message", [
    (lambda: _block("nesterov"), "Nesterov"),
    (lambda: Layer(energies.Interaction(D, H, D // H), "gd"), "not invertible"),
    (lambda: _block(scheme="strang"), "lie_trotter"),
    (lambda: _block(mlp_solver="momentum"), "exactly one heavy-ball"),
])
def test_layers_without_an_inverse_are_refused(build, message):
  with pytest.raises(ValueError, match=message):
    EnergyStack(build(), 2, rngs=nnx.Rngs(0), reversible=True)


def test_zero_momentum_and_non_momentum_gpt_are_refused():
  with pytest.raises(ValueError, match="beta > 0"):
    EnergyStack(_attention(), 2, rngs=nnx.Rngs(0), reversible=True,
                hparams={"eta": jnp.asarray(1.0), "beta": jnp.asarray(0.0)})
  with pytest.raises(ValueError, match="momentum"):
    GPTConfig(vocab_size=11, context_length=6, variant="standard", reversible=True)
  with pytest.raises(ValueError, match="lie_trotter"):
    GPTConfig(vocab_size=11, context_length=6, variant="momentum", splitting="strang", reversible=True)


@pytest.mark.parametrize("chunk", [1, pytest.param(2, marks=pytest.mark.slow), pytest.param(None, marks=pytest.mark.slow)])
def test_batch_backward_by_chunks_of_sequences_equals_stored_gradients(chunk):
  """The backward pass taking each step's VJP one chunk of ``chunk`` sequences and one part at a time (a mask per
  sequence) gives the stored-activation gradients of the batch, float64 to 1e-10; a non-positive chunk is
  refused."""
  layer = _light_block()
  with jax.enable_x64(True):
    params, hparams, _ = _setup(layer, 2, jnp.float64)
    x = jax.random.normal(jax.random.key(7), (4, N, D), jnp.float64)
    mask = jnp.stack([masks.causal(N), jnp.ones((N, N), bool)] * 2)
    stored = _gradients(lambda p, h, z: jax.vmap(lambda zi, mi: unroll(HeavyBall(layer), p, h, zi, mi, num_steps=2,
                                                                       remat=False))(z, mask), params, hparams, x)
    result = _gradients(lambda p, h, z: reversible_unroll(layer, p, h, z, mask, num_steps=2, segment=None,
                                                          vjp_chunk=chunk), params, hparams, x)
    assert max(_relative_errors(stored, result)) < 1e-10
    with pytest.raises(ValueError, match="vjp_chunk"):
      reversible_unroll(layer, params, hparams, x, num_steps=2, vjp_chunk=0)
