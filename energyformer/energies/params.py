"""Parameter declarations shared by energies, Lagrangians and layers.

An energy declares its parameters once, as a (nested) dict of ``ParamSpec``; ``init_params`` draws them and
``param_axes`` reads their logical axis names, so initialisation and sharding never disagree.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Initializer = Callable[[jax.Array, tuple[int, ...], Any], jax.Array]


class _ParamSpecFields(NamedTuple):
  shape: tuple[int, ...]
  axes: tuple[str | None, ...]
  init: Initializer
  trainable: bool = True


class ParamSpec(_ParamSpecFields):
  """One parameter: its shape, logical axis names (one per dimension), initializer and whether it is trained.

  * ``shape``: a tuple of non-negative ints (a list is accepted).
  * ``axes``: one logical axis name (``"embed"``, ``"heads"``, ``"mlp"``, ...; ``None`` for a replicated dimension)
    per dimension of ``shape``; the sharding rules map them onto mesh axes (``energyformer.train.sharding``).
  * ``init``: ``init(key, shape, dtype) -> array`` (``normal(stddev)``, ``constant(value)``, or any
    ``jax.nn.initializers`` function); a number or array is taken as ``constant(init)``.
  * ``trainable``: ``False`` for a fixed value (a constant temperature) that training leaves alone.

  Bad arguments are refused here, when the energy declares them, with the fix: ``ParamSpec((4, 8), ("embed",),
  normal(0.1))`` raises ``ValueError`` (two dimensions, one axis name).
  """

  def __new__(cls, shape, axes, init, trainable: bool = True):
    shape = _checked_shape(shape)
    return super().__new__(cls, shape, _checked_axes(axes, shape), _checked_init(init), _checked_flag(trainable))


def _checked_shape(shape) -> tuple[int, ...]:
  if isinstance(shape, (tuple, list)) and all(isinstance(n, (int, np.integer)) and not isinstance(n, bool)
                                              and n >= 0 for n in shape):
    return tuple(int(n) for n in shape)
  raise ValueError(f"ParamSpec shape must be a tuple of non-negative ints, got {shape!r}; e.g. shape=(dim,) for a "
                   "vector (note the comma) or (dim, heads, head_dim).")


def _checked_axes(axes, shape) -> tuple[str | None, ...]:
  if isinstance(axes, str) or not isinstance(axes, (tuple, list)) or not all(
      a is None or isinstance(a, str) for a in axes):
    raise ValueError(f"ParamSpec axes must be a tuple of logical axis names (str, or None for a replicated "
                     f"dimension), one per dimension, got {axes!r}; e.g. axes=('embed',) (note the comma).")
  if len(axes) != len(shape):
    raise ValueError(f"ParamSpec axes {tuple(axes)!r} name {len(axes)} dimension(s) but shape {shape} has "
                     f"{len(shape)}; give one logical axis name (or None) per dimension.")
  return tuple(axes)


def _checked_init(init) -> Initializer:
  if callable(init):
    return init
  if isinstance(init, (int, float, np.number, np.ndarray, jax.Array)) and not isinstance(init, bool):
    return constant(init)
  raise TypeError(f"ParamSpec init must be an initializer init(key, shape, dtype) -> array (energies.normal(0.02), "
                  f"energies.constant(1.0), a jax.nn.initializers function) or a number, got {init!r}.")


def _checked_flag(trainable) -> bool:
  if not isinstance(trainable, (bool, np.bool_)):
    raise TypeError(f"ParamSpec trainable must be True or False, got {trainable!r}.")
  return bool(trainable)


def constant(value) -> Initializer:
  """Initializer filling the shape with ``value`` (a number, or an array that broadcasts to the shape)."""
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
