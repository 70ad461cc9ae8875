"""Depth scans against explicit Python loops over layers, per-sequence runs and hand-applied splittings."""
import functools
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from energyformer import energies
from energyformer.energies import masks
from energyformer.layers import EnergyStack, Fixed, Hyperparameter, Layer, Split, unroll, unwrap
from references import helmholtz_grad

D, H, DH, N, M = 16, 4, 4, 6, 32
TOL = dict(rtol=1e-5, atol=1e-5)


@functools.lru_cache(maxsize=None)
def _tokens(seed, batch=None):
  """Standard-normal tokens (N, D), or (batch, N, D)."""
  shape = (N, D) if batch is None else (batch, N, D)
  return jax.random.normal(jax.random.key(seed), shape)


@jax.jit
def helmholtz_energy(params, x):
  """F(x; x) = −Σ_h T_h Σ_n logsumexp_m(q_hn·k_hm / T_h), written out."""
  q = jnp.einsum("nd,dhk->hnk", x, params["query"])
  k = jnp.einsum("md,dhk->hmk", x, params["key"])
  t = params["temperature"][:, None]
  scores = jnp.einsum("hnk,hmk->hnm", q, k) / t[..., None]
  top = jnp.max(scores, axis=-1)
  return -jnp.sum(t * (top + jnp.log(jnp.sum(jnp.exp(scores - top[..., None]), axis=-1))))


@jax.jit
def hopfield_grad(params, x):
  """∇_x of −½ Σ ReLU(x ξᵀ)²: −ReLU(x ξᵀ) ξ."""
  return -jax.nn.relu(x @ params["memories"].T) @ params["memories"]


def _layer_params(stack, layer_index=None):
  """The raw energy parameters of one layer (stacked stacks) or the shared set."""
  params = unwrap(stack.params)
  return params if layer_index is None else jax.tree.map(lambda p: p[layer_index], params)


def _interaction_layer(solver):
  return Layer(energies.Interaction(D, H, DH), solver)


def _momentum_loop(name, layer_params, etas, betas, x):
  """Heavy ball / Nesterov by hand: m^l = β m^{l−1} − η g(x^l [+ β m^{l−1}]), x^{l+1} = x^l + m^l."""
  m = jnp.zeros_like(x)
  for params, eta, beta in zip(layer_params, etas, betas):
    point = x + beta * m if name == "nesterov" else x
    m = beta * m - eta * helmholtz_grad(params["energy"], point, point)
    x = x + m
  return x, m


@pytest.mark.parametrize("shared", [False, True], ids=["stacked", "shared"])
@pytest.mark.parametrize("name", ["momentum", "nesterov"])
def test_momentum_stack_matches_layer_loop(name, shared):
  """A depth-4 momentum/Nesterov stack equals the Python loop over layers with the buffer crossing layers."""
  depth, eta, beta = 4, 0.3, 0.6
  layer = _interaction_layer(name)
  hparams = layer.default_hparams(eta=eta, beta=beta)
  stack = EnergyStack(layer, depth, rngs=nnx.Rngs(1), shared=shared, hparams=hparams)
  x = _tokens(2)
  out = jax.jit(lambda x: stack.rollout(x))(x)
  layer_params = [_layer_params(stack, None if shared else l) for l in range(depth)]
  if not shared:  # one distinct parameter set per layer
    assert not np.allclose(layer_params[0]["energy"]["query"], layer_params[1]["energy"]["query"])
  x_ref, m_ref = _momentum_loop(name, layer_params, [eta] * depth, [beta] * depth, x)
  np.testing.assert_allclose(out.x, x_ref, **TOL)
  np.testing.assert_allclose(out.state, m_ref, **TOL)


@pytest.mark.parametrize("name", ["momentum", "nesterov"])
def test_stacked_hparams_per_layer(name):
  """stacked_hparams=True: layer l uses its own η_l (and β_l), as in the explicit loop."""
  depth = 4
  etas, betas = [0.1, 0.25, 0.4, 0.2], [0.3, 0.5, 0.7, 0.9]
  layer = _interaction_layer(name)
  hparams = {"eta": jnp.asarray(etas, jnp.float32), "beta": jnp.asarray(betas, jnp.float32)}
  stack = EnergyStack(layer, depth, rngs=nnx.Rngs(3), hparams=hparams, stacked_hparams=True)
  x = _tokens(4)
  out = jax.jit(lambda x: stack.rollout(x))(x)
  x_ref, m_ref = _momentum_loop(name, [_layer_params(stack, l) for l in range(depth)],
                                [float(v) for v in hparams["eta"]], [float(v) for v in hparams["beta"]], x)
  np.testing.assert_allclose(out.x, x_ref, **TOL)
  np.testing.assert_allclose(out.state, m_ref, **TOL)
  # the same stack with every layer at the mean step size differs: the per-layer values are used
  flat = EnergyStack(layer, depth, rngs=nnx.Rngs(3), hparams=layer.default_hparams(eta=np.mean(etas), beta=0.6))
  assert np.max(np.abs(jax.jit(lambda x: flat(x))(x) - out.x)) > 1e-3


def test_default_stacked_hparams_broadcast_over_depth():
  """stacked_hparams=True without hparams broadcasts the defaults to a (depth,) axis, same result as unstacked."""
  layer = _interaction_layer("momentum")
  stacked = EnergyStack(layer, 3, rngs=nnx.Rngs(5), stacked_hparams=True)
  plain = EnergyStack(layer, 3, rngs=nnx.Rngs(5))
  for name, value in unwrap(stacked.hparams).items():
    assert value.shape == (3,)
    np.testing.assert_array_equal(value, np.full(3, unwrap(plain.hparams)[name]))
  x = _tokens(6)
  np.testing.assert_allclose(stacked(x), plain(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("options", [{"remat": False}, {"scan_unroll": True}, {"scan_unroll": 2},
                                     {"remat": False, "scan_unroll": True}], ids=str)
def test_remat_and_unroll_do_not_change_outputs_or_gradients(options):
  """remat / scan_unroll vs the default scanned, rematerialised stack (Split of a Nesterov and a Newton step,
  3 steps, so unroll=2 leaves a remainder): same outputs and gradients (params, hparams)."""
  split = Split((_interaction_layer("nesterov"), _interaction_layer("newton")))
  hparams = (split.parts[0].default_hparams(eta=0.3, beta=0.6), split.parts[1].default_hparams(eta=0.2))
  x = 0.5 * _tokens(7)
  stacks = [EnergyStack(split, 3, rngs=nnx.Rngs(8), learn_hparams=True, hparams=hparams, **kwargs)
            for kwargs in ({}, options)]

  def loss(stack):
    return jnp.sum(jnp.sin(stack(x)))

  outputs = [jax.jit(lambda x, s=s: s(x))(x) for s in stacks]
  grads = [nnx.grad(loss)(s) for s in stacks]
  np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-6, atol=1e-6)
  leaves = [jax.tree.leaves(unwrap(g)) for g in grads]
  num_hparams = sum(len(h) for h in hparams)
  assert len(leaves[0]) == len(leaves[1]) == 4 + num_hparams  # 2 × (query, key) + hparams; temperatures are Fixed
  for a, b in zip(*leaves):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert all(float(jnp.max(jnp.abs(leaf))) > 0.0 for leaf in leaves[0])


@pytest.mark.parametrize("scan_unroll", [0, -1, 1.5, "all"])
def test_bad_scan_unroll_raises(scan_unroll):
  """scan_unroll must be a bool or a positive int; the error names the accepted values."""
  with pytest.raises(ValueError, match="scan_unroll must be True"):
    EnergyStack(_interaction_layer("gd"), 2, rngs=nnx.Rngs(0), scan_unroll=scan_unroll)


def test_record_energy_matches_independent_energy():
  """energy_before[l] = F_l(x_l) and energy_after[l] = F_l(x_{l+1}), x_l from a hand-written GD loop."""
  depth, eta = 4, 0.2
  layer = _interaction_layer("gd")
  stack = EnergyStack(layer, depth, rngs=nnx.Rngs(9), hparams=layer.default_hparams(eta=eta))
  x = _tokens(10)
  out = jax.jit(lambda x: stack.rollout(x, record_energy=True))(x)
  assert out.energy_before.shape == out.energy_after.shape == (depth,)
  tokens = x
  for l in range(depth):
    params = _layer_params(stack, l)["energy"]
    np.testing.assert_allclose(out.energy_before[l], helmholtz_energy(params, tokens), **TOL)
    np.testing.assert_allclose(stack.energy(tokens, step=l), helmholtz_energy(params, tokens), **TOL)
    tokens = tokens - eta * helmholtz_grad(params, tokens, tokens)
    np.testing.assert_allclose(out.energy_after[l], helmholtz_energy(params, tokens), **TOL)
  np.testing.assert_allclose(out.x, tokens, **TOL)


def test_record_energy_shared_params():
  """Recurrent (shared) stack: every recorded energy uses the one parameter set, F(x_l) by hand."""
  depth, eta = 3, 0.2
  layer = _interaction_layer("gd")
  stack = EnergyStack(layer, depth, rngs=nnx.Rngs(11), shared=True, hparams=layer.default_hparams(eta=eta))
  x = _tokens(12)
  out = jax.jit(lambda x: stack.rollout(x, record_energy=True))(x)
  params = _layer_params(stack)["energy"]
  tokens = x
  for l in range(depth):
    np.testing.assert_allclose(out.energy_before[l], helmholtz_energy(params, tokens), **TOL)
    tokens = tokens - eta * helmholtz_grad(params, tokens, tokens)
  np.testing.assert_allclose(out.energy_after[-1], helmholtz_energy(params, tokens), **TOL)


# ---------------------------------------------------------------------------------------------- splitting


def _split_parts(first_solver):
  return (Layer(energies.Interaction(D, H, DH), first_solver), Layer(energies.HopfieldReLU2(D, M), "gd"))


def test_split_lie_trotter_matches_sequential_steps():
  """Lie–Trotter (momentum on attention, then GD on memory) over depth 3 equals the two steps applied by hand."""
  depth = 3
  parts = _split_parts("momentum")
  split = Split(parts, "lie_trotter")
  hparams = (parts[0].default_hparams(eta=0.3, beta=0.6), parts[1].default_hparams(eta=0.2))
  stack = EnergyStack(split, depth, rngs=nnx.Rngs(13), hparams=hparams)
  x = _tokens(14)
  out = jax.jit(lambda x: stack.rollout(x, record_energy=True))(x)
  m, tokens = jnp.zeros_like(x), x
  for l in range(depth):
    attention, memory = (p["energy"] for p in _layer_params(stack, l))
    energy_ref = helmholtz_energy(attention, tokens) - 0.5 * jnp.sum(jax.nn.relu(tokens @ memory["memories"].T) ** 2)
    np.testing.assert_allclose(out.energy_before[l], energy_ref, **TOL)
    m = 0.6 * m - 0.3 * helmholtz_grad(attention, tokens, tokens)
    tokens = tokens + m
    tokens = tokens - 0.2 * hopfield_grad(memory, tokens)
  np.testing.assert_allclose(out.x, tokens, **TOL)
  np.testing.assert_allclose(out.state[0], m, **TOL)
  assert out.state[1] == ()


@pytest.mark.parametrize("first_solver", ["euler", "momentum"])
def test_split_strang_matches_half_full_half(first_solver):
  """Strang: half step of part 1 (step size halved, τ and β kept), full step of part 2, half step of part 1."""
  depth = 2
  parts = _split_parts(first_solver)
  split = Split(parts, "strang")
  first = dict(dt=0.4, tau=2.0) if first_solver == "euler" else dict(eta=0.3, beta=0.6)
  hparams = (parts[0].default_hparams(**first), parts[1].default_hparams(eta=0.2))
  stack = EnergyStack(split, depth, rngs=nnx.Rngs(15), hparams=hparams)
  x = _tokens(16)
  out = jax.jit(lambda x: stack.rollout(x))(x)

  def half_step(params, tokens, m):
    g = lambda z: helmholtz_grad(params, z, z)
    if first_solver == "euler":
      return tokens - (0.5 * 0.4 / 2.0) * g(tokens), m
    m = 0.6 * m - 0.5 * 0.3 * g(tokens)
    return tokens + m, m

  m, tokens = jnp.zeros_like(x), x
  for l in range(depth):
    attention, memory = (p["energy"] for p in _layer_params(stack, l))
    tokens, m = half_step(attention, tokens, m)
    tokens = tokens - 0.2 * hopfield_grad(memory, tokens)
    tokens, m = half_step(attention, tokens, m)
  np.testing.assert_allclose(out.x, tokens, **TOL)
  if first_solver == "momentum":
    np.testing.assert_allclose(out.state[0], m, **TOL)
  lie = EnergyStack(Split(parts, "lie_trotter"), depth, rngs=nnx.Rngs(15), hparams=hparams)
  assert np.max(np.abs(lie(x) - out.x)) > 1e-4  # the two schemes are distinguishable here


def test_split_rejects_bad_configuration():
  """Split with an unknown scheme or a single part raises a ValueError."""
  parts = _split_parts("gd")
  with pytest.raises(ValueError, match="scheme"):
    Split(parts, "yoshida")
  with pytest.raises(ValueError, match="two parts"):
    Split(parts[:1])


# ------------------------------------------------------------------------------------------ sharding metadata

RULES = [("layers", None), ("embed", "data"), ("heads", "model"), ("head_dim", None), ("memories", "model"),
         ("mlp", "model")]


def _abstract_stack(layer, depth, **kwargs):
  """The stack's variables (shapes and metadata only, nothing drawn)."""
  return nnx.eval_shape(lambda: EnergyStack(layer, depth, rngs=nnx.Rngs(0), **kwargs))


def _partition_specs(stack):
  with nnx.logical_axis_rules(RULES):
    return nnx.get_partition_spec(nnx.state(stack))


def _variables(state):
  return jax.tree.leaves(state, is_leaf=lambda v: isinstance(v, nnx.Variable))


def test_partition_specs_from_logical_axes():
  """Logical axes map through the rules: stacked query (layers, embed, heads, head_dim) → P(None, data, model, None)."""
  energy = energies.EnergySum({"attention": energies.Interaction(D, H, DH, values=True),
                               "memory": energies.HopfieldReLU2(D, M)})
  layer = Layer(energy, "momentum", mode="relaxed")
  specs = _partition_specs(_abstract_stack(layer, 3, stacked_hparams=True))
  attention, memory = specs["params"]["energy"]["attention"], specs["params"]["energy"]["memory"]
  assert attention["query"].get_value() == P(None, "data", "model", None)
  assert attention["key"].get_value() == P(None, "data", "model", None)
  assert attention["value"].get_value() == P(None, "data", "model", None)
  assert attention["output"].get_value() == P(None, "model", None, "data")
  assert attention["temperature"].get_value() == P(None, "model")
  assert memory["memories"].get_value() == P(None, "model", "data")
  assert specs["hparams"]["eta"].get_value() == P(None)
  shared = _partition_specs(_abstract_stack(layer, 3, shared=True))
  assert shared["params"]["energy"]["attention"]["query"].get_value() == P("data", "model", None)
  assert shared["params"]["energy"]["memory"]["memories"].get_value() == P("model", "data")


@pytest.mark.parametrize("shared", [False, True], ids=["stacked", "shared"])
def test_every_variable_has_axis_names_of_its_rank(shared):
  """Every Param, Fixed and Hyperparameter carries out_sharding with one logical name per array dimension."""
  energy = energies.EnergySum({"attention": energies.Interaction(D, H, DH, values=True),
                               "memory": energies.HopfieldReLU2(D, M)})
  layer = Layer(energy, "gd", mode="relaxed", lagrangian=energies.LayerNormLagrangian(D))
  stack = _abstract_stack(layer, 3, shared=shared, stacked_hparams=not shared)
  variables = _variables(nnx.state(stack))
  kinds = {type(v) for v in variables}
  assert {nnx.Param, Fixed, Hyperparameter} <= kinds
  for variable in variables:
    axes = variable.get_metadata()["out_sharding"]
    assert len(axes) == len(variable.get_value().shape), (variable, axes)
    if not shared and not isinstance(variable, Hyperparameter):
      assert axes[0] == "layers"
  lagrangian = stack.params["lagrangian"]
  assert isinstance(lagrangian["gamma"], nnx.Param) and isinstance(lagrangian["delta"], nnx.Param)
  assert isinstance(stack.params["energy"]["attention"]["temperature"], Fixed)


# ------------------------------------------------------------------------------------------ batches and masks


def test_batched_rollout_matches_per_sequence():
  """A (B, N, D) rollout equals B separate (N, D) rollouts, tokens and momentum state."""
  layer = _interaction_layer("momentum")
  stack = EnergyStack(layer, 3, rngs=nnx.Rngs(19), hparams=layer.default_hparams(eta=0.3, beta=0.6))
  x = _tokens(20, batch=3)
  run = jax.jit(lambda x, mask=None: stack.rollout(x, mask))
  batched = run(x)
  for b in range(3):
    single = run(x[b])
    np.testing.assert_allclose(batched.x[b], single.x, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(batched.state[b], single.state, rtol=1e-6, atol=1e-6)


def test_batched_masks():
  """An (N, N) mask equals its broadcast (B, N, N); per-sequence (B, N, N) masks equal per-sequence rollouts."""
  layer = _interaction_layer("nesterov")
  stack = EnergyStack(layer, 3, rngs=nnx.Rngs(21), hparams=layer.default_hparams(eta=0.3, beta=0.6))
  x = _tokens(22, batch=3)
  run = jax.jit(lambda x, mask: stack.rollout(x, mask).x)
  causal = masks.causal(N)
  shared_mask = run(x, causal)
  np.testing.assert_allclose(shared_mask, run(x, jnp.broadcast_to(causal, (3, N, N))), rtol=1e-6, atol=1e-6)
  assert np.max(np.abs(shared_mask - run(x, jnp.ones((N, N), bool)))) > 1e-3  # the mask matters
  lengths = masks.combine(masks.from_lengths(jnp.asarray([6, 4, 5]), N), causal)
  per_sequence = run(x, lengths)
  for b in range(3):
    np.testing.assert_allclose(per_sequence[b], run(x[b], lengths[b]), rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="mask"):
    stack.rollout(x, jnp.ones((N, N + 1), bool))


def test_batched_energy_is_sum_of_sequence_energies():
  """EnergyStack.energy on a batch equals the sum of the closed-form per-sequence energies."""
  layer = _interaction_layer("gd")
  stack = EnergyStack(layer, 2, rngs=nnx.Rngs(23))
  x = _tokens(24, batch=3)
  params = _layer_params(stack, 1)["energy"]
  np.testing.assert_allclose(stack.energy(x, step=1), sum(helmholtz_energy(params, x[b]) for b in range(3)), **TOL)


# ---------------------------------------------------------------------------------------------- depth checks


def test_stacked_params_of_wrong_depth_raise():
  """unroll with stacked params of depth 3 but num_steps=4 raises a ValueError naming num_steps."""
  layer = _interaction_layer("gd")
  stack = EnergyStack(layer, 3, rngs=nnx.Rngs(25))
  x = _tokens(26)
  with pytest.raises(ValueError, match="num_steps=4"):
    unroll(layer, unwrap(stack.params), unwrap(stack.hparams), x, num_steps=4)
  out = unroll(layer, unwrap(stack.params), unwrap(stack.hparams), x, num_steps=3)
  np.testing.assert_allclose(out.x, stack(x), rtol=1e-6, atol=1e-6)


def test_stacked_hparams_of_wrong_depth_raise():
  """Per-layer hyperparameters with a leading axis other than the depth raise a ValueError, at construction and
  in unroll."""
  layer = _interaction_layer("gd")
  with pytest.raises(ValueError, match=r"hparams\['eta'\].*\(3,\)"):
    EnergyStack(layer, 3, rngs=nnx.Rngs(27), stacked_hparams=True, hparams={"eta": jnp.full((2,), 0.1)})
  stack = EnergyStack(layer, 3, rngs=nnx.Rngs(27))
  with pytest.raises(ValueError, match=r"hparams\['eta'\].*stacked_hparams=True.*\(3,\)"):
    unroll(layer, unwrap(stack.params), {"eta": jnp.full((2,), 0.1)}, _tokens(28), num_steps=3, stacked_hparams=True)
  with pytest.raises(ValueError, match=r"hparams\['eta'\].*pass stacked_hparams=True"):
    unroll(layer, unwrap(stack.params), {"eta": jnp.full((3,), 0.1)}, _tokens(28), num_steps=3)


@pytest.mark.parametrize("shape", [(D,), (N, 1), (1,)])
def test_unstacked_hparams_must_be_scalars(shape):
  """A (depth,) array without stacked_hparams=True — here depth = D, the token width, where it would broadcast
  per feature — and any other non-scalar hyperparameter raise a ValueError naming it and stacked_hparams."""
  with pytest.raises(ValueError, match=r"hparams\['eta'\].*stacked_hparams" if shape == (D,) else r"hparams\['eta'\]"):
    EnergyStack(_interaction_layer("gd"), D, rngs=nnx.Rngs(0), hparams={"eta": jnp.full(shape, 0.1)})


def test_nonpositive_depth_raises():
  """depth = 0 raises a ValueError."""
  with pytest.raises(ValueError, match="depth"):
    EnergyStack(_interaction_layer("gd"), 0, rngs=nnx.Rngs(0))


def test_batch_axes_pin_token_states_to_the_batch_layout():
  """Under jax.set_mesh, batch_axes constrain the token states inside the depth loop to the batch split over those
  axes (whole along tokens and features), without changing the outputs; without a mesh or axes nothing is pinned."""
  script = textwrap.dedent("""
      import json, jax, jax.numpy as jnp, numpy as np
      from flax import nnx
      from energyformer import energies
      from energyformer.layers import EnergyStack, Layer
      from energyformer.train.mesh import PRESETS, make_mesh
      layer = Layer(energies.Interaction(8, 2, 4), "momentum", "tied")
      pinned, plain = (EnergyStack(layer, 2, rngs=nnx.Rngs(0), batch_axes=axes) for axes in (("data", "fsdp"), ()))
      x = jax.random.normal(jax.random.key(1), (8, 5, 8))
      lowered = lambda stack: jax.jit(lambda x: stack(x)).lower(x).as_text()
      with jax.set_mesh(make_mesh(PRESETS["fsdp"])):
        texts = [lowered(pinned), lowered(plain)]
        outputs = [np.asarray(jax.jit(lambda x, s=s: s(x))(x)) for s in (pinned, plain)]
      texts.append(lowered(pinned))
      print(json.dumps([[line for line in t.splitlines() if "sharding_constraint" in line] for t in texts]
                       + [float(np.max(np.abs(outputs[0] - outputs[1])))]))
  """)
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True).stdout
  with_mesh, without_axes, without_mesh, difference = json.loads(out.splitlines()[-1])
  assert with_mesh and all('[{"data", "fsdp"}, {}, {}]' in line and "tensor<8x5x8xf32>" in line for line in with_mesh)
  assert without_axes == without_mesh == []
  assert difference < 1e-5  # sharded sums reassociate
