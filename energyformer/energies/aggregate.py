"""Aggregators ``F = A(E)`` that turn the local energies E (H, N, M) into one scalar.

An aggregator is a small frozen dataclass with ``specs(dim, num_heads)`` declaring its parameters and
``__call__(E, mask, params, context) -> scalar``. Masked pairs (``mask[n, m]`` False) never contribute; a query
with no visible key contributes nothing.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from energyformer.checks import check_positive_int, check_range
from energyformer.ops import chunked, kernels
from energyformer.energies.params import ParamSpec, constant, normal
from energyformer.ops.softmax import masked_logits, softmax_logsumexp, visible_rows, zero_empty_rows


def _masked(values, mask, fill):
  return values if mask is None else jnp.where(mask, values, fill)


def _per_head(value):
  """Broadcasts a per-head (H,) or scalar parameter against (H, N, M)."""
  value = jnp.asarray(value)
  return value.reshape(value.shape + (1, 1)) if value.ndim == 1 else value


@dataclasses.dataclass(frozen=True)
class Helmholtz:
  """Helmholtz free energy ``F = −Σ_h T_h Σ_n log Σ_m exp(−E_hnm / T_h)``.

  ``∂F/∂E_hnm = p_hnm = softmax_m(−E_hnm/T_h)``. ``temperature`` defaults to ``√head_dim`` (the scale of
  standard attention); it is one value per head and is trained when ``learnable``.

  ``chunk_size`` evaluates the energy (and, for inner-product scores, the attention fields) over blocks of
  ``chunk_size`` queries and keys with an online logsumexp, never forming the (H, N, M) matrices: memory linear in
  the sequence length, for long sequences. ``implementation="cudnn"`` computes inner-product attention with the
  fused cuDNN kernel on a GPU (float16/bfloat16), with exact derivatives of every order; elsewhere it is the XLA
  path (see ``ops.kernels``).
  """

  temperature: float | None = None
  learnable: bool = False
  chunk_size: int | None = None
  implementation: str = "xla"

  def __post_init__(self):
    if self.temperature is not None:
      check_range("temperature", self.temperature, 0.0, low_open=True,
                  fix="Use a temperature > 0 (standard attention uses sqrt(head_dim)).")
    if self.chunk_size is not None:
      check_positive_int("chunk_size", self.chunk_size)
    if self.implementation not in kernels.IMPLEMENTATIONS:
      raise ValueError(f"unknown implementation {self.implementation!r}; choose one of {kernels.IMPLEMENTATIONS}.")

  def specs(self, dim: int, num_heads: int, head_dim: int):
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

  def blockwise_energy(self, params, energy_block, num_queries: int, num_keys: int, mask):
    """``F`` for energies given block by block, ``energy_block(i, j) -> (H, size, size)`` with ``size =
    block_size(N, M)`` (``chunked.online_logsumexp``)."""
    temperature = _per_head(params["temperature"])
    logits_block = lambda i, j: -energy_block(i, j) / temperature
    lse = chunked.online_logsumexp(logits_block, num_queries, num_keys, mask, self.block_size(num_queries, num_keys))
    return -jnp.sum(temperature[..., 0] * lse)

  def block_size(self, num_queries: int, num_keys: int) -> int | None:
    """The block size for a (N, M) interaction, ``None`` when not chunked."""
    return kernels.block_size(self.chunk_size, num_queries, num_keys)


@dataclasses.dataclass(frozen=True)
class PlainSum:
  """``F = Σ_{h,n,m} E_hnm`` (the ``T → ∞`` limit): every visible pair weighs the same."""

  def specs(self, dim, num_heads, head_dim):
    return {}

  def __call__(self, energies, mask, params, context):
    del params, context
    return jnp.sum(_masked(energies, mask, 0.0))


def decayed_sum(energies, mask, log_gates):
  """``F = Σ_{h,n,m≤n} exp(L_hn − L_hm) E_hnm`` with ``L_hn = Σ_{j≤n} log g_hj`` (so the weight is Π_{m<j≤n} g_j)."""
  cumulative = jnp.cumsum(log_gates, axis=-1)
  num_q, num_k = energies.shape[-2:]
  earlier = jnp.tril(jnp.ones((num_q, num_k), bool))
  exponent = jnp.where(earlier, cumulative[:, :num_q, None] - cumulative[:, None, :num_k], -jnp.inf)
  weights = jnp.exp(exponent)
  return jnp.sum(_masked(weights * energies, mask, 0.0))


@dataclasses.dataclass(frozen=True)
class Discounted:
  """Discounted sum ``F = Σ_{h,n,m≤n} γ_h^{n−m} E_hnm`` (decay γ ∈ (0, 1] per head): decayed linear attention."""

  decay: float = 0.9
  learnable: bool = False

  def __post_init__(self):
    check_range("decay", self.decay, 0.0, 1.0, low_open=True, fix="Use a decay γ in (0, 1].")

  def specs(self, dim, num_heads, head_dim):
    return {"decay": ParamSpec((num_heads,), ("heads",), constant(self.decay), self.learnable)}

  def __call__(self, energies, mask, params, context):
    log_gates = jnp.broadcast_to(jnp.log(params["decay"])[:, None], (energies.shape[0], context.shape[0]))
    return decayed_sum(energies, mask, log_gates)


@dataclasses.dataclass(frozen=True)
class Gated:
  """Gated sum: ``Discounted`` with data-dependent gates ``g_hj = σ(c_j·w_h + b_h)`` read from the context.

  With a quadratic local energy its gradient step is gated linear attention ``S_t = g_t S_{t−1} + v_t k_tᵀ``.
  """

  bias_init: float = 3.0

  def specs(self, dim, num_heads, head_dim):
    return {
        "gate_kernel": ParamSpec((dim, num_heads), ("embed", "heads"), normal(dim ** -0.5)),
        "gate_bias": ParamSpec((num_heads,), ("heads",), constant(self.bias_init)),
    }

  def __call__(self, energies, mask, params, context):
    log_gates = jax.nn.log_sigmoid(context @ params["gate_kernel"] + params["gate_bias"]).T
    return decayed_sum(energies, mask, log_gates)
