"""The softmax primitives of the Helmholtz energy, with derivative rules that reuse the softmax.

For logits ``z`` (..., M) over the last axis:

* ``L = log Σ_m exp z_m`` (per query: the free energy at unit temperature, up to sign), ``∂L/∂z = p``;
* ``p_m = exp(z_m − L)`` (the attention weights), ``(∂p/∂z) ż = p ⊙ (ż − Σ_m p_m ż_m)``.

``softmax_logsumexp`` computes both from one exponential. Its ``custom_jvp`` rule is written with the function
itself, so derivatives of every order are exact, and forward (``jax.jvp``) and reverse (``jax.grad``) modes compose.

Attention over visible keys (``mask[n, m]`` True): ``o_hn = Σ_m p_hnm v_hm`` with ``p`` the softmax of the scores
``s_hnm = q_hn·k_hm`` over the visible keys of row n, ``L_hn`` its logsumexp; a row with no visible key gives
``o = 0, L = 0`` (it contributes nothing to the energy). Scores, weights and ``L`` are computed in at least float32
(as ``jax.nn.dot_product_attention`` does); ``o`` has the values' dtype.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from energyformer.ops.matmul import matmul, swap


@jax.custom_jvp
def softmax_logsumexp(logits):
  """``(p, L)``: the softmax and the logsumexp of ``logits`` over the last axis."""
  top = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  unnormalised = jnp.exp(logits - top)
  total = jnp.sum(unnormalised, axis=-1, keepdims=True)
  return unnormalised / total, (top + jnp.log(total))[..., 0]


@softmax_logsumexp.defjvp
def _softmax_logsumexp_jvp(primals, tangents):
  """``L̇ = Σ_m p_m ż_m``, ``ṗ = p ⊙ (ż − L̇)``."""
  (logits,), (logits_dot,) = primals, tangents
  probs, lse = softmax_logsumexp(logits)
  lse_dot = jnp.sum(probs * logits_dot, axis=-1)
  return (probs, lse), (probs * (logits_dot - lse_dot[..., None]), lse_dot)


def masked_logits(logits, mask):
  """``z`` on visible pairs and the most negative finite value elsewhere, so masked pairs get weight 0."""
  return logits if mask is None else jnp.where(mask, logits, jnp.finfo(logits.dtype).min)


def visible_rows(mask):
  """``any_m mask[n, m]`` (N,), or ``None`` without a mask."""
  return None if mask is None else jnp.any(mask, axis=-1)


def zero_empty_rows(values, rows, axis_from_end: int):
  """``values`` with the rows that see no key set to 0; the row axis is ``axis_from_end`` from the end."""
  if rows is None:
    return values
  return jnp.where(rows.reshape(rows.shape + (1,) * (axis_from_end - 1)), values, 0.0)


def logits_dtype(dtype):
  """The dtype of scores, weights and logsumexps for inputs of ``dtype``: at least float32."""
  return jnp.promote_types(dtype, jnp.float32)


def scores(q, k):
  """``s_hnm = q_hn·k_hm`` (H, N, M), accumulated in ``logits_dtype``."""
  return matmul(q, swap(k), logits_dtype(q.dtype))


def dense_attention(q, k, v, mask):
  """``(o, L)`` of attention (module docstring) for pre-scaled queries ``q`` (H, N, Dh), keys ``k`` (H, M, Dh) and
  values ``v`` (H, M, Dv), through the (H, N, M) score matrix."""
  probs, lse = softmax_logsumexp(masked_logits(scores(q, k), mask))
  rows = visible_rows(mask)
  out = matmul(probs, v).astype(v.dtype)
  return zero_empty_rows(out, rows, 2), zero_empty_rows(lse, rows, 1)


def attention_tangent_terms(q, k, v, visible, lse, q_dot, k_dot, v_dot):
  """The key sums of the attention tangent over one block of keys: ``(Σ_m a_hnm v_hm + p_hnm v̇_hm, Σ_m a_hnm)``.

  ``p = exp(s − L)`` on visible pairs (0 elsewhere) from the row's logsumexp ``L``, ``ṡ = q̇·k + q·k̇`` and
  ``a = p ⊙ ṡ``; summed over all key blocks they give ``ȯ = Σ_m a v + p v̇ − (Σ_m a) o`` and ``L̇ = Σ_m a``.
  ``visible`` is a (N, M) boolean or ``None`` (every pair visible); a tangent given as ``None`` is zero and its
  terms are skipped. Both sums are in ``logits_dtype``.
  """
  shifted = scores(q, k) - lse[..., None]
  probs = jnp.exp(shifted if visible is None else jnp.where(visible, shifted, -jnp.inf))
  score_dot = [scores(a, b) for a, b in ((q_dot, k), (q, k_dot)) if a is not None and b is not None]
  weighted = probs * sum(score_dot) if score_dot else jnp.zeros_like(probs)
  values = matmul(weighted, v)
  if v_dot is not None:
    values = values + matmul(probs, v_dot)
  return values, jnp.sum(weighted, axis=-1)
