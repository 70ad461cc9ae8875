"""Aggregators ``F = A(E)`` that turn the local energies E (H, N, M) into one scalar.

An aggregator is a small frozen dataclass with ``specs(dim, num_heads)`` declaring its parameters and
``__call__(E, mask, params, context) -> scalar``; those that can be evaluated tile by tile (all here, through
``Blockwise``) add ``blockwise_energy(params, energy_tile, q, k, mask, context, size)``, used for long sequences. Masked pairs (``mask[n, m]`` False) never contribute; a query
with no visible key contributes nothing.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from energyformer.checks import check_range
from energyformer.ops import chunked, kernels
from energyformer.energies.params import ParamSpec, constant, normal
from energyformer.ops.softmax import masked_logits, softmax_logsumexp, visible_rows, zero_empty_rows


def _masked(values, mask, fill):
  return values if mask is None else jnp.where(mask, values, fill)


def _per_head(value):
  """Broadcasts a per-head (H,) or scalar parameter against (H, N, M)."""
  value = jnp.asarray(value)
  return value.reshape(value.shape + (1, 1)) if value.ndim == 1 else value


class Blockwise:
  """Aggregators evaluated tile by tile for long sequences: ``chunk_size`` is ``"auto"``, ``None`` (dense) or a
  block size (``kernels.block_size``)."""

  def block_size(self, num_queries: int, num_keys: int, per_pair: bool = False) -> int | None:
    """The block size for a (N, M) interaction, ``None`` for the dense path."""
    return kernels.block_size(self.chunk_size, num_queries, num_keys, per_pair)


def _tile_energies(energy_tile, q, k, shared):
  """The energies of one tile, as ``chunked.tile_reduce`` sums them."""
  del shared
  return energy_tile(q, k)


@dataclasses.dataclass(frozen=True)
class Helmholtz(Blockwise):
  """Helmholtz free energy ``F = −Σ_h T_h Σ_n log Σ_m exp(−E_hnm / T_h)``.

  ``∂F/∂E_hnm = p_hnm = softmax_m(−E_hnm/T_h)``. ``temperature`` defaults to ``√head_dim`` (the scale of
  standard attention); it is one value per head and is trained when ``learnable``.

  ``chunk_size`` evaluates the energy, its fields and their derivatives over blocks of queries and keys with an
  online logsumexp, never forming the (H, N, M) matrices (nor an (H, N, M, Dh) tensor of per-pair vectors): memory
  linear in the sequence length. The default ``"auto"`` is dense for short sequences and blockwise from 1024 tokens
  (from 256 for energies of per-pair vectors, ``energies.pairwise``); an integer sets the block size, ``None``
  forces the dense path (``kernels.block_size``). ``implementation="cudnn"`` computes inner-product attention with the
  fused cuDNN kernel on a GPU (float16/bfloat16), with exact derivatives of every order; elsewhere it is the XLA
  path (see ``ops.kernels``).
  """

  temperature: float | None = None
  learnable: bool = False
  chunk_size: int | str | None = kernels.AUTO
  implementation: str = "xla"

  def __post_init__(self):
    if self.temperature is not None:
      check_range("temperature", self.temperature, 0.0, low_open=True,
                  fix="Use a temperature > 0 (standard attention uses sqrt(head_dim)).")
    kernels.check_chunk_size(self.chunk_size)
    if self.implementation not in kernels.IMPLEMENTATIONS:
      raise ValueError(f"unknown implementation {self.implementation!r}; choose one of {kernels.IMPLEMENTATIONS}.")

  def specs(self, dim: int, num_heads: int, head_dim: int):
    """``temperature`` (H,): ``√head_dim`` unless given; trained when ``learnable``."""
    del dim
    value = math.sqrt(head_dim) if self.temperature is None else self.temperature
    return {"temperature": ParamSpec((num_heads,), ("heads",), constant(value), self.learnable)}

  def __call__(self, energies, mask, params, context):
    del context
    temperature = _per_head(params["temperature"])
    _, lse = softmax_logsumexp(masked_logits(-energies / temperature, mask))
    return -jnp.sum(temperature[..., 0] * zero_empty_rows(lse, visible_rows(mask), 1))

  def attention(self, params, q, k, v, mask):
    """``(o, L)`` for inner-product energies ``E = −q·k``: ``o_hn = Σ_m p_hnm v_hm``, ``L_hn = log Σ_m
    exp(q_hn·k_hm / T_h)`` over visible keys, ``p = softmax_m(q·k / T)`` (0 for rows with no visible key)."""
    scaled = q / _per_head(params["temperature"])
    return kernels.attention(scaled, k, v, mask, chunk_size=self.chunk_size, implementation=self.implementation)

  def inner_product_energy(self, params, q, k, mask):
    """``F = −Σ_h T_h Σ_n L_hn`` for ``E = −q·k``, without forming the energies when chunked."""
    _, lse = self.attention(params, q, k, k[..., :0], mask)
    return -jnp.sum(_per_head(params["temperature"])[..., 0] * lse)

  def blockwise_energy(self, params, energy_tile, q, k, mask, context, size: int):
    """``F = −Σ_h T_h Σ_n log Σ_m exp(−E_hnm / T_h)`` for energies given tile by tile, ``energy_tile(q_i, k_j) ->
    (H, size, size)`` (``chunked.tile_reduce``)."""
    del context
    temperature = jnp.asarray(params["temperature"])
    lse = chunked.tile_reduce(functools.partial(_helmholtz_logits, energy_tile), q, k, temperature, mask, size,
                              logsumexp=True)
    return -jnp.sum(temperature[..., None] * lse)


def _helmholtz_logits(energy_tile, rows, cols, temperature):
  """``−E / T`` of one tile, T per head."""
  return -energy_tile(rows, cols) / _per_head(temperature)


@dataclasses.dataclass(frozen=True)
class PlainSum(Blockwise):
  """``F = Σ_{h,n,m} E_hnm`` (the ``T → ∞`` limit): every visible pair weighs the same."""

  chunk_size: int | str | None = kernels.AUTO

  def __post_init__(self):
    kernels.check_chunk_size(self.chunk_size)

  def specs(self, dim, num_heads, head_dim):
    """None: a plain sum has no parameters."""
    return {}

  def __call__(self, energies, mask, params, context):
    del params, context
    return jnp.sum(_masked(energies, mask, 0.0))

  def blockwise_energy(self, params, energy_tile, q, k, mask, context, size: int):
    """``F = Σ_{h,n,m visible} E_hnm`` for energies given tile by tile (``chunked.tile_reduce``)."""
    del params, context
    return jnp.sum(chunked.tile_reduce(functools.partial(_tile_energies, energy_tile), q, k, (), mask, size,
                                       logsumexp=False))


def _earlier(num_queries: int, num_keys: int, mask):
  """``m ≤ n``, combined with ``mask``."""
  earlier = jnp.tril(jnp.ones((num_queries, num_keys), bool))
  return earlier if mask is None else earlier & mask


def decayed_sum(energies, mask, log_gates):
  """``F = Σ_{h,n,m≤n} exp(L_hn − L_hm) E_hnm`` with ``L_hn = Σ_{j≤n} log g_hj`` (so the weight is Π_{m<j≤n} g_j)."""
  cumulative = jnp.cumsum(log_gates, axis=-1)
  num_q, num_k = energies.shape[-2:]
  exponent = jnp.where(_earlier(num_q, num_k, None), cumulative[:, :num_q, None] - cumulative[:, None, :num_k],
                       -jnp.inf)
  weights = jnp.exp(exponent)
  return jnp.sum(_masked(weights * energies, mask, 0.0))


def blockwise_decayed_sum(energy_tile, q, k, mask, log_gates, size: int):
  """``decayed_sum`` for energies given tile by tile, ``energy_tile(q_i, k_j) -> (H, size, size)`` (``q``, ``k``:
  pytrees of per-query and per-key operands), each tile
  weighted from the cumulative log gates of its queries and keys (``chunked.tile_reduce``)."""
  cumulative = jnp.cumsum(log_gates, axis=-1)
  num_q, num_k = chunked.length(q), chunked.length(k)
  rows, cols = (q, cumulative[:, :num_q]), (k, cumulative[:, :num_k])
  sums = chunked.tile_reduce(functools.partial(_decayed_tile, energy_tile), rows, cols, (),
                             _earlier(num_q, num_k, mask), size, logsumexp=False)
  return jnp.sum(sums)


def _decayed_tile(energy_tile, rows, cols, shared):
  """``exp(L_n − L_m) E_nm`` of one tile; the exponent, ≤ 0 wherever ``m ≤ n``, is clipped at 0 on the hidden pairs
  ``m > n`` so that they stay finite."""
  del shared
  (q, row_cumulative), (k, col_cumulative) = rows, cols
  exponent = row_cumulative[..., :, None] - col_cumulative[..., None, :]
  return jnp.exp(jnp.where(exponent > 0, 0.0, exponent)) * energy_tile(q, k)


def _discount_log_gates(params, num_heads: int, num_keys: int):
  return jnp.broadcast_to(jnp.log(params["decay"])[:, None], (num_heads, num_keys))


@dataclasses.dataclass(frozen=True)
class Discounted(Blockwise):
  """Discounted sum ``F = Σ_{h,n,m≤n} γ_h^{n−m} E_hnm`` (decay γ ∈ (0, 1] per head): decayed linear attention."""

  decay: float = 0.9
  learnable: bool = False
  chunk_size: int | str | None = kernels.AUTO
  indexes_positions = True  # the decay runs between the queries' and keys' row indices, not along the mask

  def __post_init__(self):
    check_range("decay", self.decay, 0.0, 1.0, low_open=True, fix="Use a decay γ in (0, 1].")
    kernels.check_chunk_size(self.chunk_size)

  def specs(self, dim, num_heads, head_dim):
    """``decay`` (H,), one discount per head; trained when ``learnable``."""
    return {"decay": ParamSpec((num_heads,), ("heads",), constant(self.decay), self.learnable)}

  def __call__(self, energies, mask, params, context):
    return decayed_sum(energies, mask, _discount_log_gates(params, energies.shape[0], context.shape[0]))

  def blockwise_energy(self, params, energy_tile, q, k, mask, context, size: int):
    """``F`` for energies given tile by tile (``blockwise_decayed_sum``)."""
    log_gates = _discount_log_gates(params, params["decay"].shape[0], context.shape[0])
    return blockwise_decayed_sum(energy_tile, q, k, mask, log_gates, size)


def _gate_log_gates(params, context):
  return jax.nn.log_sigmoid(context @ params["gate_kernel"] + params["gate_bias"]).T


@dataclasses.dataclass(frozen=True)
class Gated(Blockwise):
  """Gated sum: ``Discounted`` with data-dependent gates ``g_hj = σ(c_j·w_h + b_h)`` read from the context.

  With a quadratic local energy its gradient step is gated linear attention ``S_t = g_t S_{t−1} + v_t k_tᵀ``.
  """

  bias_init: float = 3.0
  chunk_size: int | str | None = kernels.AUTO
  indexes_positions = True  # as Discounted's

  def __post_init__(self):
    kernels.check_chunk_size(self.chunk_size)

  def specs(self, dim, num_heads, head_dim):
    """The gates' projection ``gate_kernel`` (D, H) and bias: the gates are computed from the context tokens."""
    return {
        "gate_kernel": ParamSpec((dim, num_heads), ("embed", "heads"), normal(dim ** -0.5)),
        "gate_bias": ParamSpec((num_heads,), ("heads",), constant(self.bias_init)),
    }

  def __call__(self, energies, mask, params, context):
    return decayed_sum(energies, mask, _gate_log_gates(params, context))

  def blockwise_energy(self, params, energy_tile, q, k, mask, context, size: int):
    """``F`` for energies given tile by tile (``blockwise_decayed_sum``)."""
    return blockwise_decayed_sum(energy_tile, q, k, mask, _gate_log_gates(params, context), size)
