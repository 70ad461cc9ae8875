"""Interaction energies evaluated tile by tile against the dense path of the same energy.

Every aggregator (Helmholtz, plain, discounted and gated sums) with a pairwise local energy written by a user
(``energies.pairwise``) and one written as a function of the scores, blockwise (``chunk_size=3``: tiles that do not
divide N = 7) and dense (``chunk_size=None``): the energy, the tied and full fields, and the gradients of a loss
through a layer step (derivatives of derivatives, w.r.t. every weight and the tokens) are equal, under causal,
padded and arbitrary boolean masks (the last with a row that sees no key). Float64 to 1e-10, float32 to 1e-5.
The tied field of a pairwise energy under Helmholtz, one online-softmax sweep (``Interaction.tied_field``), equals
``jax.grad`` of the energy, dense and blockwise, and so do training and a Newton step through it.
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
TOLERANCES = {"float32": dict(atol=1e-5, rtol=1e-5), "float64": dict(atol=1e-10, rtol=1e-10)}


@energies.pairwise
def user_huber(q, k):
  r = jnp.abs(q - k)
  return jnp.sum(jnp.where(r <= 0.5, 0.5 * r * r, 0.5 * (r - 0.25)))


def user_elastic_scores(scores, q, k):
  return 0.5 * jnp.sum(q * q, -1)[..., :, None] - scores + 0.5 * jnp.sum(k * k, -1)[..., None, :]


LOCALS = {"pairwise": user_huber, "scores": user_elastic_scores}
AGGREGATES = {
    "helmholtz": lambda chunk: energies.Helmholtz(learnable=True, chunk_size=chunk),
    "plain": lambda chunk: energies.PlainSum(chunk_size=chunk),
    "discounted": lambda chunk: energies.Discounted(0.8, learnable=True, chunk_size=chunk),
    "gated": lambda chunk: energies.Gated(chunk_size=chunk),
}


def _mask(kind):
  if kind == "causal":
    return masks.causal(N)
  if kind == "padded":
    return masks.combine(masks.causal(N), masks.from_lengths(jnp.array(N - 2), N))
  visible = np.random.default_rng(1).random((N, N)) < 0.5
  visible[2] = False  # a query that sees no key
  return jnp.asarray(visible)


def _layer(aggregate, local, chunk, mode):
  return ef.Layer(energies.Interaction(D, H, DH, local=LOCALS[local], aggregate=AGGREGATES[aggregate](chunk)), "gd",
                  mode=mode)


def _inputs(layer, dtype):
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda spec: jnp.asarray(0.4 * rng.standard_normal(spec.shape), dtype), layer.specs(),
                        is_leaf=lambda node: isinstance(node, energies.ParamSpec))
  energy_params = params["energy"]
  if "temperature" in energy_params:
    energy_params["temperature"] = jnp.asarray([1.5, 2.5], dtype)
  if "decay" in energy_params:
    energy_params["decay"] = jnp.asarray([0.8, 0.6], dtype)
  return params, jnp.asarray(rng.standard_normal((N, D)), dtype), jnp.asarray(rng.standard_normal((N, D)), dtype)


def _derivatives(layer, params, x, target, mask):
  """Energy, field, and the gradients of ``Σ sin(step(x)) ⊙ target`` w.r.t. the parameters and the tokens."""

  def loss(p, xs):
    out, _ = layer.step(p, layer.default_hparams(), xs, layer.init_state(xs), mask)
    return jnp.sum(jnp.sin(out) * target)

  return layer.energy_value(params, x, mask), layer.gradient(params, x, mask), jax.grad(loss, argnums=(0, 1))(params, x)


@pytest.mark.parametrize("aggregate, local, mode, mask_kind, dtype", [
    ("helmholtz", "pairwise", "tied", "causal", "float64"),
    ("helmholtz", "pairwise", "full", "arbitrary", "float64"),
    ("helmholtz", "scores", "tied", "padded", "float32"),
    ("helmholtz", "scores", "full", "arbitrary", "float32"),
    ("plain", "pairwise", "tied", "padded", "float64"),
    ("discounted", "scores", "full", "causal", "float64"),
    ("gated", "pairwise", "tied", "arbitrary", "float32"),
])
def test_blockwise_equals_dense(aggregate, local, mode, mask_kind, dtype):
  mask = _mask(mask_kind)
  with jax.enable_x64(dtype == "float64"):
    blockwise, dense = (_layer(aggregate, local, chunk, mode) for chunk in (CHUNK, None))
    params, x, target = _inputs(dense, dtype)
    run = lambda layer: jax.jit(lambda *args: _derivatives(layer, *args))(params, x, target, mask)
    chex.assert_trees_all_close(run(blockwise), run(dense), **TOLERANCES[dtype])


def test_newton_hessian_vector_products_blockwise_equal_dense():
  """A Newton step (Hessian-vector products of the field, context fixed) and training through it: float64."""
  with jax.enable_x64(True):
    layers = [ef.Layer(energies.Interaction(D, H, DH, local=user_huber, aggregate=energies.Helmholtz(chunk_size=c)),
                       "newton", mode="tied") for c in (CHUNK, None)]
    params, x, target = _inputs(layers[1], "float64")
    run = lambda layer: jax.jit(lambda *args: _derivatives(layer, *args))(params, x, target, _mask("padded"))
    chex.assert_trees_all_close(*(run(layer) for layer in layers), **TOLERANCES["float64"])


def test_auto_chunk_size_threshold():
  """``"auto"`` (the default of every aggregator): dense below 1024 tokens (256 for per-pair energies), blocks of
  512 (64) from there; an integer is the block size capped at the sequence, ``None`` is dense."""
  for aggregate in (energies.Helmholtz(), energies.PlainSum(), energies.Discounted(), energies.Gated()):
    assert aggregate.chunk_size == "auto"
  assert kernels.block_size("auto", 1023, 1023) is None
  assert kernels.block_size("auto", 1024, 1) == 512
  assert kernels.block_size("auto", 255, 255, per_pair=True) is None
  assert kernels.block_size("auto", 256, 256, per_pair=True) == 64
  assert kernels.block_size(100, 40, 30) == 40 and kernels.block_size(None, 10 ** 6, 10 ** 6) is None
  interaction = energies.Interaction(D, H, DH, local=user_huber)
  assert interaction.block_size(255, 255) is None and interaction.block_size(256, 256) == 64
  assert energies.Interaction(D, H, DH, local=user_elastic_scores).block_size(512, 512) is None


def test_default_pairwise_train_step_memory_is_linear():
  """With the default aggregator a pairwise energy's train-step temp memory roughly doubles from S = 512 to 1024;
  the dense path's (chunk_size=None) roughly quadruples from S = 256 to 512."""

  def temp_bytes(chunk_size, seq):
    aggregate = energies.Helmholtz(chunk_size=chunk_size)
    layer = ef.Layer(energies.Interaction(D, H, DH, local=user_huber, aggregate=aggregate))
    params, _, _ = _inputs(layer, "float32")
    loss = lambda p, xs: jnp.sum(jnp.square(layer.step(p, layer.default_hparams(), xs, layer.init_state(xs))[0]))
    x = jax.ShapeDtypeStruct((seq, D), jnp.float32)
    return jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile().memory_analysis().temp_size_in_bytes

  assert temp_bytes("auto", 1024) < 2.5 * temp_bytes("auto", 512)
  assert temp_bytes(None, 512) > 3.5 * temp_bytes(None, 256)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "big"])
def test_bad_chunk_size_raises(bad):
  for aggregate in (energies.Helmholtz, energies.PlainSum, energies.Discounted, energies.Gated):
    with pytest.raises(ValueError, match="chunk_size.*None"):
      aggregate(chunk_size=bad)


def _relaxed_reference(energy, params, x, mask):
  """``∂A/∂x|_s + Σ_h (∂A/∂s_h) v_h W^O_h`` through the dense (H, N, N) scores, written out."""
  q = jnp.einsum("nd,dhk->hnk", x, params["query"])
  k = jnp.einsum("md,dhk->hmk", x, params["key"])
  v = jnp.einsum("md,dhk->hmk", x, params["value"])
  energy_of = lambda s, z: energy.aggregate(energy.local(s, jnp.einsum("nd,dhk->hnk", z, params["query"]), k),
                                            mask, params, x)
  score_grad, direct = jax.grad(energy_of, argnums=(0, 1))(jnp.einsum("hnk,hmk->hnm", q, k), x)
  return direct + jnp.einsum("hnm,hmk,hkd->nd", score_grad, v, params["output"])


@pytest.mark.parametrize("aggregate, dtype", [("helmholtz", "float64"), ("gated", "float64"), ("plain", "float32")])
def test_relaxed_field_blockwise_equals_dense_reference(aggregate, dtype):
  """``Interaction.relaxed_field`` tile by tile (and dense) equals the relaxed field written out through dense scores,
  and so do the gradients of a loss through ``x − G(x)`` w.r.t. the weights and the tokens (arbitrary mask)."""
  mask = _mask("arbitrary")
  with jax.enable_x64(dtype == "float64"):
    energies_ = [energies.Interaction(D, H, DH, local=user_elastic_scores, aggregate=AGGREGATES[aggregate](chunk),
                                      values=True) for chunk in (CHUNK, None)]
    params, x, target = _inputs(ef.Layer(energies_[1]), dtype)
    params = params["energy"]

    def check(field):
      loss = lambda p, xs: jnp.sum(jnp.sin(xs - field(p, xs)) * target)
      return jax.jit(lambda p, xs: (field(p, xs), jax.grad(loss, argnums=(0, 1))(p, xs)))(params, x)

    reference = check(lambda p, xs: _relaxed_reference(energies_[0], p, xs, mask))
    for energy in energies_:
      chex.assert_trees_all_close(check(lambda p, xs: energy.relaxed_field(p, xs, mask, xs)), reference,
                                  **TOLERANCES[dtype])


@pytest.mark.parametrize("chunk", [CHUNK, None])
def test_local_energy_of_the_wrong_shape_raises(chunk):
  """A local energy that sums over the keys (one value per query) is refused, dense or tile by tile."""
  per_query = lambda scores, q, k: jnp.sum(scores, axis=-1)
  energy = energies.Interaction(D, H, DH, local=per_query, aggregate=energies.Helmholtz(chunk_size=chunk))
  params, x, _ = _inputs(ef.Layer(energy), "float32")
  with pytest.raises(ValueError, match="one value per .head, query, key."):
    energy(params["energy"], x, x, masks.causal(N))


# --- The tied field of a pairwise energy in one online-softmax sweep ------------------------------------------
# ``Interaction.tied_field`` (``chunked.softmax_field``): ``∂F/∂x = Σ_h (Σ_m p_hnm ∇_q E(q_hn, k_hm)) W^Q_hᵀ``,
# ``p = softmax_m(−E/T)`` over the visible keys, against ``jax.grad`` of the dense energy and of the blockwise energy
# (the path before the sweep), for elastic and Huber energies over two heads with different temperatures.

@energies.pairwise
def user_elastic(q, k):
  return 0.5 * jnp.sum((q - k) ** 2)


TIED_LOCALS = {"elastic": user_elastic, "huber": user_huber}


class GradientOnly:
  """An energy without its own tied field: the layer takes ``jax.grad`` of it (the generic path)."""

  def __init__(self, energy):
    self.energy = energy

  def __call__(self, params, x, context, mask=None):
    return self.energy(params, x, context, mask)

  def specs(self):
    return self.energy.specs()


def _tied_interaction(local, chunk):
  aggregate = energies.Helmholtz(learnable=True, chunk_size=chunk)
  return energies.Interaction(D, H, DH, local=TIED_LOCALS[local], aggregate=aggregate)


def _tied_energies(local):
  """The sweep (blockwise), and ``jax.grad`` of the blockwise and of the dense energy."""
  return {"sweep": _tied_interaction(local, CHUNK), "grad_blockwise": GradientOnly(_tied_interaction(local, CHUNK)),
          "grad_dense": GradientOnly(_tied_interaction(local, None))}


@pytest.mark.parametrize("local", list(TIED_LOCALS))
@pytest.mark.parametrize("mask_kind, dtype", [("arbitrary", "float64"), ("arbitrary", "float32"),
                                              pytest.param("causal", "float64", marks=pytest.mark.slow),
                                              pytest.param("padded", "float64", marks=pytest.mark.slow),
                                              pytest.param("causal", "float32", marks=pytest.mark.slow),
                                              pytest.param("padded", "float32", marks=pytest.mark.slow)])
def test_sweep_equals_gradient_of_the_energy(local, mask_kind, dtype):
  """The energy, the field, and training through a step (weights, temperature, tokens)."""
  mask = _mask(mask_kind)
  with jax.enable_x64(dtype == "float64"):
    layers = {name: ef.Layer(energy, "gd", mode="tied") for name, energy in _tied_energies(local).items()}
    params, x, target = _inputs(layers["sweep"], dtype)
    run = lambda layer: jax.jit(lambda *args: _derivatives(layer, *args))(params, x, target, mask)
    sweep = run(layers["sweep"])
    for name in ("grad_blockwise", "grad_dense"):
      chex.assert_trees_all_close(sweep, run(layers[name]), **TOLERANCES[dtype])


@pytest.mark.parametrize("local", ["huber", pytest.param("elastic", marks=pytest.mark.slow)])
def test_newton_step_through_the_sweep_equals_gradient_of_the_energy(local):
  """Newton's Hessian-vector products differentiate the field (context fixed); training differentiates them."""
  mask = _mask("arbitrary")
  with jax.enable_x64(True):
    layers = {name: ef.Layer(energy, "newton", mode="tied") for name, energy in _tied_energies(local).items()}
    params, x, target = _inputs(layers["sweep"], "float64")
    run = lambda layer: jax.jit(lambda *args: _derivatives(layer, *args))(params, x, target, mask)
    sweep = run(layers["sweep"])
    for name in ("grad_blockwise", "grad_dense"):
      chex.assert_trees_all_close(sweep, run(layers[name]), **TOLERANCES["float64"])


def test_row_without_visible_key_has_zero_field():
  """A query that sees no key contributes nothing to the energy, so its field is 0."""
  mask = _mask("arbitrary")
  energy = _tied_interaction("huber", CHUNK)
  params, x, _ = _inputs(ef.Layer(energy), "float32")
  field = energy.tied_field(params["energy"], x, mask, x)
  np.testing.assert_array_equal(field[2], np.zeros(D))
  assert np.all(np.isfinite(field))
