"""Parameter declarations shared by energies, Lagrangians and layers.

An energy declares its parameters once, as a (nested) dict of ``ParamSpec``; ``init_params`` draws them and
``param_axes`` reads their logical axis names, so initialisation and sharding never disagree.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

Initializer = Callable[[jax.Array, tuple[int, ...], Any], jax.Array]


class ParamSpec(NamedTuple):
  """One parameter: its shape, logical axis names (one per dimension), initializer and whether it is trained."""

  shape: tuple[int, ...]
  axes: tuple[str | None, ...]
  init: Initializer
  trainable: bool = True


def constant(value) -> Initializer:
  """Initializer filling the shape with ``value``."""
  return lambda key, shape, dtype: jnp.full(shape, value, dtype)


def normal(stddev: float) -> Initializer:
  """Initializer drawing from N(0, stddev²)."""
  return lambda key, shape, dtype: stddev * jax.random.normal(key, shape, dtype)


def _is_spec(node) -> bool:
  return isinstance(node, ParamSpec)


def init_params(specs, key: jax.Array, dtype=jnp.float32):
  """Draws every parameter of ``specs`` with an independent key; returns a pytree of arrays of the same structure."""
  leaves, treedef = jax.tree.flatten(specs, is_leaf=_is_spec)
  keys = jax.random.split(key, max(len(leaves), 1))
  values = [spec.init(k, spec.shape, dtype) for spec, k in zip(leaves, keys)]
  return jax.tree.unflatten(treedef, values)


def param_axes(specs):
  """The logical axis names of every parameter, as a pytree of tuples (tuples are kept whole as leaves)."""
  return jax.tree.map(lambda s: s.axes, specs, is_leaf=_is_spec)


def param_trainable(specs):
  """Whether each parameter is trained (``False`` for fixed hyperparameters such as a constant temperature)."""
  return jax.tree.map(lambda s: s.trainable, specs, is_leaf=_is_spec)
