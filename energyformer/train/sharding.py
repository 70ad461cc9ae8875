"""Logical axes to mesh axes: one rules table decides how every parameter, optimizer moment and batch is laid out.

Parameters carry logical axis names (``nnx.Param(..., out_sharding=("layers", "embed", "heads", "head_dim"))``);
a rules table maps each logical name to a tuple of mesh axes (empty: replicated). With the default table one
layout serves every mesh: mesh axes of size 1 shard nothing, so the mesh shape alone picks data parallelism
(``data``), FSDP (``fsdp``: parameters split along ``embed``, the batch along ``data × fsdp``) or FSDP × tensor
parallelism (``tensor``: heads, MLP hidden units and vocabulary split).
"""
from __future__ import annotations

import math

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

MESH_AXES = ("population", "data", "fsdp", "tensor")

DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("vocab", ("tensor",)),
    ("embed", ("fsdp",)),
    ("heads", ("tensor",)),
    ("head_dim", ()),
    ("mlp", ("tensor",)),
    ("layers", ()),
)


def check_rules(rules) -> None:
  """Raises unless ``rules`` is a sequence of ``(logical name, tuple of mesh axes)`` naming only ``MESH_AXES``."""
  for rule in rules:
    if len(rule) != 2 or not isinstance(rule[0], str) or isinstance(rule[1], str):
      raise ValueError(f"a sharding rule must be (logical axis, tuple of mesh axes), got {rule!r}; e.g. "
                       "('embed', ('fsdp',)) or ('layers', ()).")
    unknown = [axis for axis in rule[1] if axis not in MESH_AXES]
    if unknown:
      raise ValueError(f"sharding rule {rule!r} names unknown mesh axis {unknown[0]!r}; the mesh axes are "
                       f"{MESH_AXES}.")
  names = [rule[0] for rule in rules]
  if len(set(names)) != len(names):
    raise ValueError(f"sharding rules map a logical axis twice: {names}; keep one rule per logical axis.")


def partition_spec(axes, shape, rules, mesh, name: str = "array") -> PartitionSpec:
  """``P(...)`` for an array of ``shape`` whose dimensions have logical names ``axes``.

  Each dimension takes its rule's mesh axes, minus any an earlier dimension already uses; ``None`` (no logical
  name) is replicated. Raises when a logical name has no rule or a dimension does not divide evenly.
  """
  table = dict(rules)
  if len(axes) != len(shape):
    raise ValueError(f"{name} has shape {tuple(shape)} but logical axes {tuple(axes)}; give one name per dimension.")
  used, spec = set(), []
  for size, logical in zip(shape, axes):
    if logical is None:
      spec.append(None)
      continue
    if logical not in table:
      raise ValueError(f"no sharding rule for logical axis {logical!r} of {name}; add ({logical!r}, (mesh axes...)) "
                       f"to the rules (known: {sorted(table)}).")
    mesh_axes = tuple(a for a in table[logical] if a not in used)
    parts = math.prod(mesh.shape[a] for a in mesh_axes)
    if size % parts:
      raise ValueError(f"cannot split axis {logical!r} of {name} (size {size}) over mesh axes {mesh_axes} "
                       f"({parts} devices); choose model sizes divisible by {parts} or a mesh with smaller "
                       f"{'/'.join(mesh_axes)} axes.")
    used.update(mesh_axes)
    spec.append(mesh_axes if mesh_axes else None)
  return PartitionSpec(*spec)


def _is_variable(node) -> bool:
  return isinstance(node, nnx.Variable)


def population_shardings(tree, mesh, rules):
  """The ``NamedSharding`` of every array of ``tree``, a population's state whose arrays have a leading member axis
  (a model state, an optimizer state, or their abstract shapes).

  The member axis is split over the ``population`` mesh axis. NNX variables are laid out along their other axes by
  their ``out_sharding`` logical axes (an optimizer's moments keep their parameter's variables, so they follow the
  parameter); every other leaf (step counts) is split along its member axis only. The result has the structure of
  ``tree``, with ``NamedSharding`` in place of each array.
  """

  def sharding(path, node):
    if not _is_variable(node):
      return NamedSharding(mesh, PartitionSpec("population"))
    member_shape = node.shape[1:]
    axes = node.get_metadata().get("out_sharding") or (None,) * len(member_shape)
    spec = partition_spec(axes, member_shape, rules, mesh, jax.tree_util.keystr(path))
    return node.replace(NamedSharding(mesh, PartitionSpec("population", *spec)))

  return jax.tree_util.tree_map_with_path(sharding, tree, is_leaf=_is_variable)


def batch_sharding(mesh, rules, leading=()) -> NamedSharding:
  """Batches split along their example axis over the ``batch`` rule's mesh axes, replicated along the others;
  ``leading`` gives the mesh axes (or ``None``) of the axes before the example axis (steps, members)."""
  return NamedSharding(mesh, PartitionSpec(*leading, dict(rules).get("batch", ()) or None))


def batch_shards(mesh, rules) -> int:
  """How many pieces a batch is split into (the product of the ``batch`` rule's mesh axis sizes)."""
  return math.prod(mesh.shape[axis] for axis in dict(rules).get("batch", ()))
