"""Fast paths of the softmax energy against plain ``jax.grad`` of the same energy, written out here.

``F(z; c) = −Σ_h T_h Σ_n logsumexp_{m visible}(q_hn·k_hm / T_h)`` (rows with no visible key dropped) is written
with ``jax.nn.logsumexp`` and differentiated by plain ``jax.grad``: the tied field is ``∂F/∂z``, the relaxed field
``Σ_hm (∂F/∂s_hnm) v_hm W^O_h``. Every path of the library (dense, chunked with blocks that do not divide the
sequence, the ``"cudnn"`` option, which is the XLA path on a CPU, and the fused-kernel rule driven by
``dot_product_attention``'s XLA kernel) must give the same fields, the same training gradients through a layer
(derivatives of derivatives, w.r.t. every weight, the learnable temperature and the tokens), and the same
Hessian-vector products and gradients through a Newton step, under causal and padded masks (padded rows see no
key). Float32 uses atol = rtol = 2e-5 for first derivatives and 1e-4 for derivatives of derivatives; float64
uses 1e-10.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import energyformer as ef
from energyformer import energies
from energyformer.energies import masks
from energyformer.ops import kernels

N, D, H, DH, CHUNK = 7, 8, 2, 4, 3
TOLERANCES = {"float32": dict(atol=2e-5, rtol=2e-5), "float64": dict(atol=1e-10, rtol=1e-10)}
SECOND_ORDER_TOLERANCES = {**TOLERANCES, "float32": dict(atol=1e-4, rtol=1e-4)}
PATHS = {
    "dense": energies.Helmholtz(learnable=True),
    "chunked": energies.Helmholtz(learnable=True, chunk_size=CHUNK),
    "cudnn_option": energies.Helmholtz(learnable=True, implementation="cudnn"),
}


def _mask(kind):
  """None, causal, or causal with the last two tokens padded (their rows see no key)."""
  if kind == "none":
    return None
  causal = masks.causal(N)
  return causal if kind == "causal" else masks.combine(causal, masks.from_lengths(jnp.array(N - 2), N))


def _layer(path, mode, solver="gd"):
  energy = energies.Interaction(D, H, DH, aggregate=PATHS[path], values=mode == "relaxed")
  return ef.Layer(energy, solver, mode=mode)


def _inputs(layer, dtype, seed=0):
  """Layer params drawn from N(0, 0.4²) with temperatures (1.5, 2.5), tokens and a loss target (NumPy draws, so
  that no initialiser is compiled)."""
  rng = np.random.default_rng(seed)
  draw = lambda shape: jnp.asarray(0.4 * rng.standard_normal(shape), dtype)
  params = jax.tree.map(lambda spec: draw(spec.shape), layer.specs(),
                        is_leaf=lambda node: isinstance(node, energies.ParamSpec))
  params["energy"]["temperature"] = jnp.asarray([1.5, 2.5], dtype)
  return params, draw((N, D)) / 0.4, draw((N, D)) / 0.4


# Plain references.


def _energy_of_scores(w, scores, mask):
  temperature = w["temperature"][:, None, None]
  visible = jnp.ones(scores.shape[1:], bool) if mask is None else mask
  lse = jax.nn.logsumexp(jnp.where(visible, scores / temperature, -1e30), axis=-1)
  return -jnp.sum(temperature[..., 0] * jnp.where(jnp.any(visible, axis=-1), lse, 0.0))


def _energy(w, z, c, mask):
  q, k = jnp.einsum("nd,dhk->hnk", z, w["query"]), jnp.einsum("md,dhk->hmk", c, w["key"])
  return _energy_of_scores(w, jnp.einsum("hnk,hmk->hnm", q, k), mask)


def _reference_field(mode, w, z, c, mask):
  if mode == "tied":
    return jax.grad(_energy, argnums=1)(w, z, c, mask)
  q, k = jnp.einsum("nd,dhk->hnk", z, w["query"]), jnp.einsum("md,dhk->hmk", c, w["key"])
  score_grad = jax.grad(_energy_of_scores, argnums=1)(w, jnp.einsum("hnk,hmk->hnm", q, k), mask)
  v = jnp.einsum("md,dhk->hmk", c, w["value"])
  return jnp.einsum("hnm,hmk,hkd->nd", score_grad, v, w["output"])


def _step(layer, field):
  """One solver step of ``layer`` along ``field(params, z, context)`` (context held at the step's input)."""

  def step(params, x, mask):
    grad_fn = lambda z: field(params, z, x if layer.solver.fixed_context else z, mask)
    return layer.solver.step(grad_fn, x, layer.init_state(x), layer.default_hparams())[0]

  return step


def _fast_field(layer):
  return lambda params, z, c, mask: layer.gradient(params, z, mask, c)


def _plain_field(layer):
  return lambda params, z, c, mask: _reference_field(layer.mode, params["energy"], z, c, mask)


def _loss_gradients(step, params, x, target, mask):
  loss = lambda p, xs: jnp.sum(jnp.sin(step(p, xs, mask)) * target)
  return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)


# Fields.


FIELD_CASES = [(path, kind) for path in PATHS for kind in ("causal", "padded")] + [("chunked", "none")]


@pytest.mark.parametrize("mode", ["tied", "relaxed"])
@pytest.mark.parametrize("path, mask_kind", FIELD_CASES)
def test_field_and_energy_equal_plain_grad(path, mask_kind, mode):
  """The layer's field equals the plain-jax.grad field and the energy equals the written-out energy (without a
  mask, the chunked path masks only its padded keys)."""
  layer, mask = _layer(path, mode), _mask(mask_kind)
  params, x, _ = _inputs(layer, "float32")
  fields = jax.jit(lambda field: field(params, x, x, mask), static_argnums=0)
  chex.assert_trees_all_close(fields(_fast_field(layer)), fields(_plain_field(layer)), **TOLERANCES["float32"])
  plain_energy = lambda params, x, mask: _energy(params["energy"], x, x, mask)
  energy_values = jax.jit(lambda energy: energy(params, x, mask), static_argnums=0)
  chex.assert_trees_all_close(energy_values(layer.energy_value), energy_values(plain_energy), **TOLERANCES["float32"])


# Second derivatives: training through the layer and Newton's Hessian-vector products.


@pytest.mark.parametrize("path, mode, dtype, solvers", [
    ("dense", "tied", "float32", ("gd", "newton")), ("dense", "relaxed", "float32", ("gd", "newton")),
    ("chunked", "tied", "float32", ("gd",)), ("chunked", "relaxed", "float32", ("gd",)),
    ("cudnn_option", "relaxed", "float32", ("gd",)), ("chunked", "tied", "float64", ("gd",)),
])
def test_second_derivatives_equal_plain_grad(path, mode, dtype, solvers):
  """Gradients of a loss through a GD or Newton step w.r.t. all weights, the temperature and the tokens, and the
  Hessian-vector product Newton takes (jvp of the field with the context fixed), equal those of the plain-jax.grad
  field; padded causal mask. (The dense paths in float64 are checked against finite differences in test_derive.)"""
  tol, mask = SECOND_ORDER_TOLERANCES[dtype], _mask("padded")
  with jax.enable_x64(dtype == "float64"):
    for solver in solvers:
      layer = _layer(path, mode, solver)
      params, x, target = _inputs(layer, dtype)
      fast = _loss_gradients(_step(layer, _fast_field(layer)), params, x, target, mask)
      plain = _loss_gradients(_step(layer, _plain_field(layer)), params, x, target, mask)
      chex.assert_trees_all_close(fast, plain, **tol)
    hvp = jax.jit(lambda field: jax.jvp(lambda z: field(params, z, x, mask), (x,), (target,))[1], static_argnums=0)
    chex.assert_trees_all_close(hvp(_fast_field(layer)), hvp(_plain_field(layer)), **tol)


# The chunked energy for any local energy, and the full derivation.


@pytest.mark.parametrize("local", [energies.elastic, energies.huber(0.5)], ids=["elastic", "huber"])
def test_chunked_energy_equals_dense_for_any_local_energy(local):
  """Helmholtz(chunk_size) with a non-inner-product local energy: value, gradient and Hessian-vector product equal
  the dense energy's (float64, padded causal mask)."""
  with jax.enable_x64(True):
    dense = energies.Interaction(D, H, DH, local=local)
    chunked = energies.Interaction(D, H, DH, local=local, aggregate=energies.Helmholtz(chunk_size=CHUNK))
    params, x, direction = _inputs(ef.Layer(dense), "float64")
    mask = _mask("padded")

    def derivatives(energy):
      value = lambda z: energy(params["energy"], z, z, mask)
      grad, hvp = jax.jvp(jax.grad(value), (x,), (direction,))
      return value(x), grad, hvp

    derivatives = jax.jit(derivatives, static_argnums=0)
    chex.assert_trees_all_close(derivatives(chunked), derivatives(dense), **TOLERANCES["float64"])


def test_full_field_chunked_equals_plain_grad():
  """Full derivation (query and key roles, the Energy Transformer's field) through the chunked energy equals plain
  jax.grad of F(x; x), and so does its Hessian-vector product (float64, self-exclusion mask)."""
  with jax.enable_x64(True):
    layer = ef.Layer(energies.Interaction(D, H, DH, aggregate=PATHS["chunked"]), "gd", mode="full")
    params, x, direction = _inputs(layer, "float64")
    mask = masks.self_exclusion(N)
    fast = lambda z: layer.gradient(params, z, mask)
    plain = jax.grad(lambda z: _energy(params["energy"], z, z, mask))
    field_and_hvp = jax.jit(lambda field: jax.jvp(field, (x,), (direction,)), static_argnums=0)
    chex.assert_trees_all_close(field_and_hvp(fast), field_and_hvp(plain), **TOLERANCES["float64"])


# Fused kernels: the option's CPU fallback and the rule that keeps a kernel's derivatives exact.


def test_cudnn_option_selects_xla_path_on_cpu():
  """On a CPU the "cudnn" option selects no kernel: attention is the dense XLA path (or chunked with chunk_size)."""
  assert jax.default_backend() == "cpu"
  q = jnp.zeros((H, N, DH), jnp.bfloat16)
  assert kernels.select_kernel("cudnn", q, q) is None
  assert kernels.select_kernel("xla", q, q) is None
  with pytest.raises(ValueError, match="implementation"):
    kernels.select_kernel("pallas", q, q)


@pytest.mark.parametrize("chunk_size", [None, CHUNK])
def test_kernel_rule_is_exact_to_second_order(chunk_size):
  """Attention whose forward is ``dot_product_attention(return_residual=True)`` (its logsumexp under
  stop_gradient; here the XLA kernel stands in for cuDNN) differentiated by the library's rule (dense or chunked
  tangent): value, gradient, gradient of a gradient and jvp of a gradient equal plain autodiff of softmax attention."""
  plan = kernels.Plan("xla", chunk_size)
  keys = jax.random.split(jax.random.key(4), 3)
  q, k, v = (jax.random.normal(key, (H, N, DH)) for key in keys)
  mask = _mask("padded")

  def plain(q, k, v):
    scores = jnp.where(mask, jnp.einsum("hnk,hmk->hnm", q, k), -1e30)
    rows = jnp.any(mask, axis=-1)
    out = jnp.einsum("hnm,hmk->hnk", jax.nn.softmax(scores, axis=-1), v)
    return jnp.where(rows[:, None], out, 0.0), jnp.where(rows, jax.nn.logsumexp(scores, axis=-1), 0.0)

  def derivatives(attention):
    loss = lambda q, k, v: sum(jnp.sum(jnp.sin(a)) for a in attention(q, k, v))
    grad = jax.grad(loss, argnums=(0, 1, 2))
    grad_of_grad = jax.grad(lambda k: jnp.sum(jnp.square(grad(q, k, v)[0])))(k)
    jvp_of_grad = jax.jvp(lambda q: grad(q, k, v), (q,), (v,))[1]
    return attention(q, k, v), grad(q, k, v), grad_of_grad, jvp_of_grad

  fused = lambda q, k, v: kernels.planned_attention(q, k, v, mask, plan)
  derivatives = jax.jit(derivatives, static_argnums=0)
  chex.assert_trees_all_close(derivatives(fused), derivatives(plain), **SECOND_ORDER_TOLERANCES["float32"])


# Memory and options.


def test_chunked_train_step_memory_grows_linearly():
  """The chunked relaxed layer's train-step temp memory roughly doubles from S = 128 to 256 (chunk 32), where the
  dense layer's roughly quadruples."""

  def temp_bytes(path, seq):
    layer = ef.Layer(energies.Interaction(D, H, DH, aggregate=energies.Helmholtz(chunk_size=32 if path else None),
                                          values=True), "gd", mode="relaxed")
    params, _, _ = _inputs(layer, "float32")
    x = jnp.zeros((seq, D))
    step = _step(layer, _fast_field(layer))
    loss = lambda p, xs: jnp.sum(jnp.square(step(p, xs, masks.causal(seq))))
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  assert temp_bytes(True, 256) < 2.5 * temp_bytes(True, 128)
  assert temp_bytes(False, 256) > 3.0 * temp_bytes(False, 128)


def test_invalid_options_raise():
  """A chunk size that is not a positive integer, or an unknown implementation, raises ValueError naming it."""
  with pytest.raises(ValueError, match="chunk_size"):
    energies.Helmholtz(chunk_size=0)
  with pytest.raises(ValueError, match="implementation"):
    energies.Helmholtz(implementation="flash")
