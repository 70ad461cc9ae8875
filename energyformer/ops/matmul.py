"""Batched matrix products ``c = a b`` (last two axes) whose reverse mode suits XLA's CPU backend.

Attention multiplies (N, Dh) by (Dh, M) and (N, M) by (M, Dh) matrices once per sequence and head. Reverse mode of
``c = a b`` needs ``b̄ = aᵀ c̄``: a product that contracts both operands over their major axes, which XLA's CPU
backend leaves to a batched loop three times slower than its other products when the matrices are small and many
(each head of each sequence). For such products — on a CPU backend, every matrix dimension at most
``SMALL_MATRIX`` — ``matmul`` therefore differentiates by

    ``ċ = ȧ b + (ḃᵀ aᵀ)ᵀ``,

whose reverse mode computes ``b̄ = (c̄ᵀ a)ᵀ`` from a transposed copy of the cotangent (optimisation barriers around
the product keep XLA from folding it back into ``aᵀ c̄``). The rule uses itself for the tangents, so derivatives of
every order are exact and equal ``jnp.matmul``'s up to rounding; ``benchmarks/matmul.py`` measures the gain.
Larger matrices, whose products XLA computes well either way and whose copies would cost memory, and other
backends, which multiply transposed operands natively, get ``jnp.matmul`` unchanged.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

SMALL_MATRIX = 64


def swap(x):
  """``xᵀ`` over the last two axes."""
  return jnp.swapaxes(x, -1, -2)


def matmul(a, b, dtype=None):
  """``c = a b`` over the last two axes (leading axes broadcast), accumulated in ``dtype``; small matrices on a CPU
  backend are differentiated as the module docstring says."""
  if jnp.ndim(a) < 2 or jnp.ndim(b) < 2:
    raise ValueError(f"matmul multiplies matrices (the last two axes), got shapes {jnp.shape(a)} and {jnp.shape(b)}; "
                     "add a length-1 axis to a vector (x[None, :] or x[:, None]).")
  if max(a.shape[-2:] + b.shape[-1:]) <= SMALL_MATRIX and jax.default_backend() == "cpu":
    return _cpu_matmul(a, b, dtype)
  return jnp.matmul(a, b, preferred_element_type=dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _cpu_matmul(a, b, dtype=None):
  return jnp.matmul(a, b, preferred_element_type=dtype)


@functools.partial(_cpu_matmul.defjvp, symbolic_zeros=True)
def _cpu_matmul_jvp(dtype, primals, tangents):
  """``ċ = ȧ b + (ḃᵀ aᵀ)ᵀ``, zero tangents skipped."""
  (a, b), (a_dot, b_dot) = primals, tangents
  out = _cpu_matmul(a, b, dtype)
  tangent = jnp.zeros_like(out)
  if not isinstance(a_dot, jax.custom_derivatives.SymbolicZero):
    tangent = tangent + _cpu_matmul(a_dot, b, dtype)
  if not isinstance(b_dot, jax.custom_derivatives.SymbolicZero):
    barrier = jax.lax.optimization_barrier
    tangent = tangent + swap(barrier(_cpu_matmul(barrier(swap(b_dot)), swap(a), dtype)))
  return out, tangent
