"""Which computation evaluates softmax attention ``(o, L)`` (see ``ops.softmax``), all exact to every order.

* dense (``implementation="xla"``, no block size): the (H, N, M) scores in plain JAX ops; derivatives of
  every order come from the rules of ``softmax_logsumexp`` and ``ops.matmul`` (its products).
* chunked (a block size, ``block_size``: by default from ``AUTO_LENGTH`` tokens): ``chunked.attention_forward`` for the value and ``chunked.attention_tangent`` for the
  derivative, joined by a ``jax.custom_jvp``: memory linear in the sequence length in forward and reverse mode.
* fused (``implementation="cudnn"`` on a GPU, float16 or bfloat16): the value from the fused kernel of
  ``jax.nn.dot_product_attention(implementation="cudnn", return_residual=True)``. The kernel's logsumexp comes
  back under ``stop_gradient`` and rounded to the inputs' dtype, so derivatives are never taken through the
  kernel: the ``custom_jvp`` rule calls the kernel for the primal and computes the tangent in JAX ops (dense, or
  chunked with ``chunk_size``) from a logsumexp of the library's own path, in float32; every further derivative
  goes through these same rules and stays exact. On any other backend or dtype ``"cudnn"`` selects the XLA path.

The tangent is ``ȯ = Σ_m a v + p v̇ − (Σ_m a) o``, ``L̇ = Σ_m a`` with ``a = p ⊙ (q̇·k + q·k̇)``; zero tangents
(the keys and values of a fixed context, as Newton's Hessian-vector products see them) are skipped.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from energyformer.ops import chunked
from energyformer.ops.softmax import (attention_tangent_terms, dense_attention, logits_dtype, visible_rows,
                                           zero_empty_rows)

IMPLEMENTATIONS = ("xla", "cudnn")
FUSED_DTYPES = (jnp.bfloat16, jnp.float16)


class Plan(NamedTuple):
  """How attention is computed: ``kernel`` names ``dot_product_attention``'s implementation for the forward value
  (``None``: the library's own JAX code), ``chunk_size`` the block size (``None``: dense)."""

  kernel: str | None
  chunk_size: int | None


def select_kernel(implementation: str, q, v) -> str | None:
  """``"cudnn"`` where the fused kernel can run (a GPU backend, half-precision inputs, values as wide as the
  queries), else ``None`` (the XLA path)."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"unknown attention implementation {implementation!r}; choose one of {IMPLEMENTATIONS}.")
  fused = (implementation == "cudnn" and jax.default_backend() == "gpu" and q.dtype in FUSED_DTYPES
           and v.shape[-1] == q.shape[-1])
  return "cudnn" if fused else None


AUTO = "auto"
AUTO_LENGTH, AUTO_BLOCK = 1024, 512
AUTO_PAIR_LENGTH, AUTO_PAIR_BLOCK = 256, 64


def check_chunk_size(chunk_size) -> None:
  """Raises unless ``chunk_size`` is ``"auto"``, ``None`` (dense) or a positive integer (the block size)."""
  if chunk_size is None or chunk_size == AUTO:
    return
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
    raise ValueError(f"chunk_size must be 'auto', None (dense) or a positive integer block size, got {chunk_size!r}; "
                     "pass e.g. chunk_size=512, or chunk_size=None to force the dense path.")


def block_size(chunk_size, num_queries: int, num_keys: int, per_pair: bool = False) -> int | None:
  """The block size for a (N, M) interaction, ``None`` for the dense path.

  An integer ``chunk_size`` is the block size, capped at the longer sequence; ``None`` is dense. ``"auto"`` is
  dense while the longer sequence has fewer than ``AUTO_LENGTH`` tokens and blocks of ``AUTO_BLOCK`` from there;
  for energies that form a vector per pair (``per_pair``: (H, N, M, Dh) where others form (H, N, M)) it is dense
  below ``AUTO_PAIR_LENGTH`` tokens and tiles of ``AUTO_PAIR_BLOCK`` from there.
  """
  check_chunk_size(chunk_size)
  longer = max(num_queries, num_keys)
  if chunk_size == AUTO:
    length, size = (AUTO_PAIR_LENGTH, AUTO_PAIR_BLOCK) if per_pair else (AUTO_LENGTH, AUTO_BLOCK)
    chunk_size = None if longer < length else size
  return None if chunk_size is None else min(chunk_size, longer)


def fused_forward(q, k, v, mask, kernel: str):
  """``(o, L)`` from ``jax.nn.dot_product_attention(implementation=kernel)`` in its (1, N, H, D) layout."""
  layout = lambda a: jnp.swapaxes(a, 0, 1)[None]
  kernel_mask = None if mask is None else mask[None, None]
  out, lse = jax.nn.dot_product_attention(layout(q), layout(k), layout(v), mask=kernel_mask, scale=1.0,
                                          implementation=kernel, return_residual=True)
  rows = visible_rows(mask)
  lse = lse[0].T.astype(logits_dtype(q.dtype))
  return zero_empty_rows(jnp.swapaxes(out[0], 0, 1), rows, 2), zero_empty_rows(lse, rows, 1)


def _forward(q, k, v, mask, plan: Plan):
  if plan.kernel is not None:
    return fused_forward(q, k, v, mask, plan.kernel)
  if plan.chunk_size is not None:
    return chunked.attention_forward(q, k, v, mask, plan.chunk_size)
  return dense_attention(q, k, v, mask)


@functools.partial(jax.custom_jvp, nondiff_argnums=(4,))
def planned_attention(q, k, v, mask, plan: Plan):
  """``(o, L)`` computed as ``plan`` says, differentiated by the rule below."""
  return _forward(q, k, v, mask, plan)


def _nonzero(tangent):
  return None if isinstance(tangent, jax.custom_derivatives.SymbolicZero) else tangent


def _planned_attention_jvp(plan: Plan, primals, tangents):
  q, k, v, mask = primals
  q_dot, k_dot, v_dot = (_nonzero(t) for t in tangents[:3])
  out, lse = planned_attention(q, k, v, mask, plan)
  exact_lse = lse if plan.kernel is None else planned_attention(q, k, v[..., :0], mask, plan._replace(kernel=None))[1]
  if plan.chunk_size is not None:
    tangent = chunked.attention_tangent(q, k, v, mask, out, exact_lse, q_dot, k_dot, v_dot, plan.chunk_size)
    return (out, lse), tangent
  values, weights = attention_tangent_terms(q, k, v, mask, exact_lse, q_dot, k_dot, v_dot)
  return (out, lse), ((values - weights[..., None] * out).astype(out.dtype), weights.astype(lse.dtype))


planned_attention.defjvp(_planned_attention_jvp, symbolic_zeros=True)


def attention(q, k, v, mask=None, *, chunk_size: int | None = None, implementation: str = "xla"):
  """``(o, L)``: softmax attention of pre-scaled queries ``q`` (H, N, Dh) over keys ``k`` (H, M, Dh) with values
  ``v`` (H, M, Dv) and a boolean (N, M) mask, computed as the module docstring describes."""
  plan = Plan(select_kernel(implementation, q, v), block_size(chunk_size, q.shape[1], k.shape[1]))
  if plan == Plan(None, None):
    return dense_attention(q, k, v, mask)
  return planned_attention(q, k, v, mask, plan)
