"""Interaction energies: a local energy between projected tokens, summed by an aggregator over a head structure.

``F(x; c) = A(E)``, ``E_hnm = local(s_hnm, q_hn, k_hm)``, ``q_h = x W^Q_h``, ``k_h = c W^K_h``, ``s_hnm = q_hn·k_hm``,
where ``x`` (N, D) are the tokens being updated and ``c`` (M, D) the context (``c = x`` for self-attention).
The energy is a sum over H subspaces of dimension Dh, one per head.

The Helmholtz inner-product form ``F = −Σ_h T_h Σ_n log Σ_m exp(q_hn·k_hm / T_h)`` (``is_softmax``) is evaluated
through the aggregator's attention primitive (``Helmholtz.inner_product_energy``), so its derivatives reuse the
softmax. Long sequences (``Helmholtz(chunk_size="auto")``, the default, or a block size) evaluate any local energy
tile by tile (``chunked.tile_reduce``), pairwise ones in small tiles of pairs, and so are the tied field
(``Interaction.tied_field``: a pairwise energy's in one online-softmax sweep) and the relaxed field
(``Interaction.relaxed_field``).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from energyformer.checks import check_positive_int
from energyformer.energies.aggregate import Helmholtz
from energyformer.energies.local import LocalEnergy, Pairwise, inner_product
from energyformer.ops import chunked
from energyformer.ops.matmul import matmul, swap
from energyformer.energies.params import ParamSpec, normal


@dataclasses.dataclass(frozen=True)
class Interaction:
  """Multi-head interaction energy ``F(x; c) = A(local(q·k, q, k))`` (see the module docstring).

  ``Interaction(dim, num_heads, head_dim, local=inner_product, aggregate=Helmholtz(), values=False)``.
  ``energy(params, x, context, mask)``: ``x`` (N, dim), ``context`` (M, dim), ``mask`` boolean (N, M) or ``None``
  → a scalar of ``x``'s dtype. Parameters: ``query``, ``key`` (dim, H, Dh) (+ ``value``, ``output`` with
  ``values=True``) and the aggregator's (``temperature`` (H,) for Helmholtz). ``local`` is any local energy
  (``energies.local``); it never sees the mask: the aggregator drops the hidden pairs, so masking is handled here.

  With ``values=True`` it also owns value and output projections ``W^V`` (D, H, Dh) and ``W^O`` (H, Dh, D), used
  only by the *relaxed* derivation: the same attention weights ``−∂F/∂s`` applied to ``v = c W^V`` and
  projected by ``W^O`` instead of the tied ``k W^Qᵀ``.
  """

  dim: int
  num_heads: int
  head_dim: int
  local: LocalEnergy = inner_product
  aggregate: Any = Helmholtz()
  values: bool = False

  def __post_init__(self):
    for name in ("dim", "num_heads", "head_dim"):
      check_positive_int(name, getattr(self, name))

  def specs(self):
    """Parameters: query/key (and value/output) projections plus the aggregator's own."""
    shape, axes = (self.dim, self.num_heads, self.head_dim), ("embed", "heads", "head_dim")
    specs = {
        "query": ParamSpec(shape, axes, normal(self.dim ** -0.5)),
        "key": ParamSpec(shape, axes, normal(self.dim ** -0.5)),
    }
    if self.values:
      specs["value"] = ParamSpec(shape, axes, normal(self.dim ** -0.5))
      specs["output"] = ParamSpec((self.num_heads, self.head_dim, self.dim), ("heads", "head_dim", "embed"),
                                  normal((self.num_heads * self.head_dim) ** -0.5))
    return {**specs, **self.aggregate.specs(self.dim, self.num_heads, self.head_dim)}

  @property
  def is_softmax(self) -> bool:
    """Whether this is the Helmholtz inner-product energy, whose query-side fields are softmax attention."""
    return self.local is inner_product and isinstance(self.aggregate, Helmholtz)

  def queries(self, params, x):
    """``q = x W^Q`` (H, N, Dh)."""
    return jnp.einsum("nd,dhk->hnk", x, params["query"])

  def keys(self, params, context):
    """``k = c W^K`` (H, M, Dh)."""
    return jnp.einsum("md,dhk->hmk", context, params["key"])

  def project(self, params, x, context):
    """``q = x W^Q`` (H, N, Dh), ``k = c W^K`` (H, M, Dh) and the scores ``s = q·k`` (H, N, M)."""
    q, k = self.queries(params, x), self.keys(params, context)
    return q, k, matmul(q, swap(k))

  def from_scores(self, params, scores, q, k, mask, context):
    """The energy as a function of scores given separately from ``q`` and ``k``: ``A(local(s, q, k))``."""
    return self.aggregate(self.local(scores, q, k), mask, params, context)

  def __call__(self, params, x, context, mask=None):
    q, k = self.queries(params, x), self.keys(params, context)
    if self.is_softmax:
      return self.aggregate.inner_product_energy(params, q, k, mask)
    return self._aggregate_tiles(params, functools.partial(_local_tile, self.local), q, k, mask, context)

  def _aggregate_tiles(self, params, energy_tile, rows, cols, mask, context):
    """``A(E)`` for local energies ``E = energy_tile(rows, cols)`` of per-query and per-key operands (pytrees of
    (H, N, ...) and (H, M, ...) arrays): tile by tile where ``block_size`` says so, else at once."""
    size = self.block_size(chunked.length(rows), chunked.length(cols))
    if size is not None:
      return self.aggregate.blockwise_energy(params, energy_tile, rows, cols, mask, context, size)
    return self.aggregate(energy_tile(rows, cols), mask, params, context)

  def tied_field(self, params, x, mask, context):
    """The tied field ``∂F(z; c)/∂z`` at ``z = x``, the context held (``layers.tied_gradient``).

    The Helmholtz inner-product energy takes its closed form ``−Σ_h (Σ_m p_hnm k_hm) W^Q_hᵀ`` (one softmax-attention
    pass). A pairwise energy (``energies.pairwise``) under Helmholtz, evaluated blockwise, takes
    ``Σ_h (Σ_m p_hnm ∇_q E(q_hn, k_hm)) W^Q_hᵀ`` with ``p = softmax_m(−E/T)`` over the visible keys, in one
    online-softmax sweep over key tiles (``chunked.softmax_field``), which training differentiates as one more
    sweep. Any other energy takes ``jax.grad`` of the energy. All are exact to every order.
    """
    q, k = self.queries(params, x), self.keys(params, context)
    if self.is_softmax:
      return -self.query_out(params, self.aggregate.attention(params, q, k, k, mask)[0])
    size = self.block_size(q.shape[1], k.shape[1])
    if size is not None and isinstance(self.local, Pairwise) and isinstance(self.aggregate, Helmholtz):
      field = chunked.softmax_field(functools.partial(_pair_field_tile, self.local), q, k, params["temperature"],
                                    mask, size)
      return self.query_out(params, field)
    return jax.grad(lambda z: self(params, z, context, mask))(x)

  def query_out(self, params, per_head):
    """``Σ_h u_hn W^Q_hᵀ`` (N, D) for per-head query-space vectors ``u`` (H, N, Dh): ``∂F/∂x`` from ``∂F/∂q``."""
    return jnp.einsum("hnk,dhk->nd", per_head, params["query"])

  def relaxed_field(self, params, x, mask, context):
    """The relaxed field ``G(x) = ∂A/∂x|_s + Σ_h (∂A/∂s_h) v_h W^O_h`` (``energies.relaxed``).

    Both terms are one gradient of ``F̃(z, u) = A(local(q·k + u·v, z W^Q, k))`` at ``z = x``, ``u = 0``, the
    scores' queries ``q = x W^Q`` held: ``∂F̃/∂z = ∂A/∂x|_s`` and ``∂F̃/∂u_hn = Σ_m (∂A/∂s_hnm) v_hm``, so the
    field is evaluated like the energy (tile by tile for long sequences) and its derivatives are exact. The
    Helmholtz inner-product energy takes its closed form ``−Σ_h (Σ_m p_hnm v_hm) W^O_h``.
    """
    q, k, v = self.queries(params, x), self.keys(params, context), self.value_vectors(params, context)
    if self.is_softmax:
      return -self.output(params, self.aggregate.attention(params, q, k, v, mask)[0])

    def probe(z, u):
      rows = (q, self.queries(params, z), u)
      return self._aggregate_tiles(params, functools.partial(_relaxed_tile, self.local), rows, (k, v), mask, context)

    direct, attended = jax.grad(probe, argnums=(0, 1))(x, jnp.zeros(q.shape[:2] + v.shape[-1:], v.dtype))
    return direct + self.output(params, attended)

  def block_size(self, num_queries: int, num_keys: int) -> int | None:
    """The aggregator's block size for this local energy (``None``: dense), for aggregators evaluated blockwise."""
    if not hasattr(self.aggregate, "blockwise_energy"):
      return None
    return self.aggregate.block_size(num_queries, num_keys, per_pair=isinstance(self.local, Pairwise))

  def value_vectors(self, params, context):
    """``v = c W^V`` (H, M, Dh)."""
    return jnp.einsum("md,dhk->hmk", context, params["value"])

  def output(self, params, attended):
    """``Σ_h o_hn W^O_h`` (N, D) for per-head outputs ``o`` (H, N, Dh)."""
    return jnp.einsum("hnk,hkd->nd", attended, params["output"])

  def values_out(self, params, weights, context):
    """``Σ_h Σ_m a_hnm v_hm W^O_h`` with ``v_h = c W^V_h``: attention output for weights ``a`` (H, N, M)."""
    return self.output(params, matmul(weights, self.value_vectors(params, context)))

  def scores(self, params, x, context):
    """``s = q·k`` (H, N, M) (``energies.ScoreEnergy``, with ``energy_of_scores`` and ``values_out``)."""
    return self.project(params, x, context)[2]

  def energy_of_scores(self, params, scores, x, context, mask=None):
    """``A(local(s, q, k))`` with the scores ``s`` given apart from ``q = x W^Q`` and ``k = c W^K``."""
    return self.from_scores(params, scores, self.queries(params, x), self.keys(params, context), mask, context)


def _pair_energies(local, scores, q, k):
  """``local(s, q, k)``, refused unless it is one energy per (query, key) pair, shaped like the scores."""
  energies = local(scores, q, k)
  if jnp.shape(energies) != scores.shape:
    raise ValueError(
        f"a local energy local(scores, q, k) must return one value per (head, query, key), shape {scores.shape} like "
        f"its scores, got {jnp.shape(energies)}; reduce over the head dimension only (axis -1 of q and k).")
  return energies


def _local_tile(local, q, k):
  """``local(q·k, q, k)`` of one tile: (H, size, size) local energies of a block of queries and one of keys."""
  return _pair_energies(local, matmul(q, swap(k)), q, k)


def _relaxed_tile(local, rows, cols):
  """``local(q_s·k + u·v, q, k)`` of one tile (``Interaction.relaxed_field``)."""
  (score_queries, q, u), (k, v) = rows, cols
  return _pair_energies(local, matmul(score_queries, swap(k)) + matmul(u, swap(v)), q, k)


def _pair_field_tile(local: Pairwise, q, k, temperature):
  """``(−E/T, ∇_q E)`` of one tile of a pairwise energy: (H, size, size) logits, T per head, and (H, size, size,
  Dh) query gradients (``Interaction.tied_field``)."""
  energies, gradients = local.with_query_gradients(q, k)
  return -energies / jnp.reshape(temperature, (-1, 1, 1)), gradients
