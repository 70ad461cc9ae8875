"""Argument checks that fail early with a message naming the argument and the fix.

Values that are JAX tracers (inside ``jit``/``vmap``/``grad``) cannot be inspected and are let through; every
check therefore runs again wherever a concrete value is available (construction, eager calls).
"""
from __future__ import annotations

import numpy as np
import jax


def concrete(value):
  """The value as a NumPy array, or ``None`` when it is an abstract tracer."""
  if isinstance(value, jax.core.Tracer):
    return None
  return np.asarray(value)


def check_positive_int(name: str, value) -> None:
  """Raises unless ``value`` is an integer ≥ 1."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}; pass an int >= 1.")


def check_range(name: str, value, low=None, high=None, *, low_open=False, high_open=False, fix: str = "") -> None:
  """Raises unless every element of ``value`` lies in the interval [low, high] (ends open where asked)."""
  array = concrete(value)
  if array is None:
    return
  if not np.all(np.isfinite(array)):
    raise ValueError(f"{name} must be finite, got {array!r}. {fix}".strip())
  bad = np.zeros(array.shape, bool)
  if low is not None:
    bad |= array <= low if low_open else array < low
  if high is not None:
    bad |= array >= high if high_open else array > high
  if np.any(bad):
    interval = f"{'(' if low_open else '['}{'-inf' if low is None else low}, {'inf' if high is None else high}{')' if high_open else ']'}"
    raise ValueError(f"{name} must lie in {interval}, got {array!r}. {fix}".strip())


def check_tokens(x, dim: int, name: str = "x") -> None:
  """Raises unless ``x`` has shape (..., N, dim)."""
  shape = np.shape(x)
  if len(shape) < 2 or shape[-1] != dim:
    raise ValueError(
        f"{name} must have shape (..., tokens, {dim}) to match the energy's model dimension {dim}, got {shape}; "
        f"project the tokens to width {dim} or build the energy with dim={shape[-1] if shape else '?'}.")


def check_mask(mask, num_queries: int, num_keys: int, batch_shape: tuple[int, ...] = ()) -> None:
  """Raises unless ``mask`` is None or broadcasts as (*batch, N, M) over queries N and keys M."""
  if mask is None:
    return
  shape = tuple(np.shape(mask))
  expected = (*batch_shape, num_queries, num_keys)
  if len(shape) < 2 or shape[-2:] != (num_queries, num_keys) or len(shape) > len(expected) or any(
      s not in (1, e) for s, e in zip(shape[::-1], expected[::-1])):
    raise ValueError(
        f"mask must have shape (N, M) = ({num_queries}, {num_keys}) or {expected}, got {shape}; build it with "
        "energyformer.energies.masks (causal, padding, self_exclusion, from_adjacency).")


class UsageError(ValueError):
  """A setting chosen by the user cannot be used (an unknown name, a value out of range, a run directory that
  belongs to another run); the message names it and the fix. Commands report it as a usage error (exit status 2,
  no traceback); any other exception is a fault and keeps its traceback."""
