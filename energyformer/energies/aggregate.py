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

from energyformer.checks import check_range
from energyformer.energies.params import ParamSpec, constant, normal


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
  """

  temperature: float | None = None
  learnable: bool = False

  def __post_init__(self):
    if self.temperature is not None:
      check_range("temperature", self.temperature, 0.0, low_open=True,
                  fix="Use a temperature > 0 (standard attention uses sqrt(head_dim)).")

  def specs(self, dim: int, num_heads: int, head_dim: int):
    del dim
    value = math.sqrt(head_dim) if self.temperature is None else self.temperature
    return {"temperature": ParamSpec((num_heads,), ("heads",), constant(value), self.learnable)}

  def __call__(self, energies, mask, params, context):
    del context
    temperature = _per_head(params["temperature"])
    logits = _masked(-energies / temperature, mask, jnp.finfo(energies.dtype).min)
    free = jax.nn.logsumexp(logits, axis=-1)
    if mask is not None:
      free = jnp.where(jnp.any(mask, axis=-1), free, 0.0)
    return -jnp.sum(temperature[..., 0] * free)


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
