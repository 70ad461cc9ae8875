"""Boolean interaction masks of shape (N, M): ``mask[n, m]`` is True where query token n may see context token m.

Masks are boolean, never additive: layers and ``combine`` refuse other dtypes (``check_boolean``), since an additive
float mask (0 where visible, −inf where hidden) read as "non-zero = visible" would invert it.
"""
from __future__ import annotations

import jax.numpy as jnp


def causal(num_queries: int, num_keys: int | None = None):
  """``m ≤ n``: each token sees itself and earlier tokens."""
  num_keys = num_queries if num_keys is None else num_keys
  return jnp.tril(jnp.ones((num_queries, num_keys), bool))


def self_exclusion(num_tokens: int):
  """``m ≠ n``: each token sees every token but itself (the Energy Transformer's ``B ≠ C``)."""
  return ~jnp.eye(num_tokens, dtype=bool)


def padding(query_valid, key_valid=None):
  """``valid_q[n] ∧ valid_k[m]`` from per-token validity vectors of shape (..., N) and (..., M)."""
  key_valid = query_valid if key_valid is None else key_valid
  return jnp.asarray(query_valid, bool)[..., :, None] & jnp.asarray(key_valid, bool)[..., None, :]


def from_lengths(lengths, num_tokens: int):
  """Padding mask for sequences whose first ``lengths[b]`` tokens are real: shape (..., N, N)."""
  valid = jnp.arange(num_tokens) < jnp.asarray(lengths)[..., None]
  return padding(valid)


def from_adjacency(adjacency):
  """Graph mask: node n sees node m where ``adjacency[n, m]`` is non-zero."""
  return jnp.asarray(adjacency) != 0


def check_boolean(mask, name: str = "mask") -> None:
  """Raises a ``TypeError`` unless ``mask`` is ``None`` or a boolean array, saying how to convert other masks."""
  if mask is None or jnp.result_type(mask) == jnp.bool_:
    return
  raise TypeError(
      f"{name} must be a boolean array (True where query n may see key m), got dtype {jnp.result_type(mask)}. "
      "Convert an additive mask (0 where visible, -inf where hidden) with `mask = additive == 0`, a 0/1 mask "
      "(1 where visible) with `mask = weights != 0`; or build it with energyformer.energies.masks.")


def combine(*masks):
  """Logical AND of the given boolean masks, skipping ``None``; ``None`` when all are ``None``."""
  for i, m in enumerate(masks):
    check_boolean(m, f"combine's mask {i}")
  present = [jnp.asarray(m) for m in masks if m is not None]
  if not present:
    return None
  out = present[0]
  for m in present[1:]:
    out = out & m
  return out
