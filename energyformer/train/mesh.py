"""The device mesh: named axes ``population``, ``data``, ``fsdp`` and ``tensor``, their sizes, presets and multi-host
start-up."""
from __future__ import annotations

import dataclasses
import math

import jax
from jax.sharding import AxisType

from energyformer.checks import UsageError, check_positive_int
from energyformer.train.sharding import DEFAULT_RULES, MESH_AXES, check_rules


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Sizes of the mesh axes (one of them may be ``-1``: all devices left over) and the sharding rules.

  ``population`` splits the members of a population (a sweep, several seeds) over devices; ``data``, ``fsdp`` and
  ``tensor`` split each member's batch and parameters (``energyformer.train.sharding``). The mesh holds
  ``population · data · fsdp · tensor`` devices, the first ones of ``jax.devices()``.
  """

  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  rules: tuple = DEFAULT_RULES
  population: int = 1

  def __post_init__(self):
    sizes = self.sizes()
    for axis, size in zip(MESH_AXES, sizes):
      if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1):
        raise UsageError(f"mesh axis {axis!r} must have a positive size or -1 (all remaining devices), got {size!r}.")
    if sizes.count(-1) > 1:
      raise UsageError(f"at most one mesh axis may be -1 (all remaining devices), got {dict(zip(MESH_AXES, sizes))}.")
    rules = tuple((name, tuple(axes)) for name, axes in self.rules)
    check_rules(rules)
    object.__setattr__(self, "rules", rules)

  def sizes(self) -> tuple[int, int, int, int]:
    """``(population, data, fsdp, tensor)`` as configured (possibly with one ``-1``)."""
    return (self.population, self.data, self.fsdp, self.tensor)


PRESETS = {
    "single": MeshConfig(1, 1, 1),
    "data": MeshConfig(-1, 1, 1),
    "fsdp": MeshConfig(1, -1, 1),
    "fsdp_tp": MeshConfig(1, -1, 2),
}


def parse_mesh(text: str) -> MeshConfig:
  """A preset name (``single``, ``data``, ``fsdp``, ``fsdp_tp``) or sizes such as ``"fsdp=4,tensor=2"``.

  Raises naming the setting and the fix for unknown axes, sizes that are not integers and sizes below 1 (other
  than one ``-1``).

  Axes left out of a size list have size 1, unless no axis is ``-1`` and ``data`` is left out: then ``data``
  takes the remaining devices.
  """
  if text in PRESETS:
    return PRESETS[text]
  sizes = {}
  for item in text.split(","):
    axis, _, value = item.partition("=")
    axis = axis.strip()
    if axis not in MESH_AXES:
      raise UsageError(f"unknown mesh axis {axis!r} in mesh {text!r}; the mesh axes are {', '.join(MESH_AXES)} "
                       f"(e.g. 'fsdp=4,tensor=2'), or name a preset: {', '.join(PRESETS)}.")
    try:
      sizes[axis] = int(value)
    except ValueError:
      raise UsageError(f"mesh axis {axis!r} needs an integer size in mesh {text!r}, got {value!r}; e.g. "
                       f"'{axis}=2'.") from None
  if "data" not in sizes and -1 not in sizes.values():
    sizes["data"] = -1
  return MeshConfig(**{axis: sizes.get(axis, 1) for axis in MESH_AXES})


def mesh_shape(config: MeshConfig, device_count: int) -> tuple[int, int, int, int]:
  """The axis sizes with ``-1`` resolved so that the mesh uses ``device_count`` devices (or all it names)."""
  sizes = config.sizes()
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if device_count % known:
      raise UsageError(f"cannot fill mesh {dict(zip(MESH_AXES, sizes))} with {device_count} devices: the fixed axes "
                       f"need a multiple of {known}; choose sizes whose product divides {device_count} (e.g. "
                       f"--mesh fsdp) or run on a multiple of {known} devices.")
    sizes = tuple(device_count // known if s == -1 else s for s in sizes)
  if math.prod(sizes) > device_count:
    raise UsageError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but only {device_count} "
                     "are available; shrink the mesh (e.g. --mesh data) or run on more devices.")
  return sizes


def make_mesh(config: MeshConfig, devices=None) -> jax.sharding.Mesh:
  """The mesh of ``config`` over the first devices of ``devices`` (default ``jax.devices()``), Auto axis types."""
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(config, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices[:math.prod(shape)])


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Joins this process to a multi-host run (``jax.distributed.initialize``) before any other JAX call.

  On Cloud TPU pods, SLURM and Open MPI every argument is detected from the environment; elsewhere (e.g. several
  GPU machines) pass the coordinator's ``host:port``, the number of processes and this process's index.
  """
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)


def use_cpu_devices(count: int) -> None:
  """Makes JAX see at least ``count`` devices, splitting the host's CPU into ``count`` XLA devices
  (``jax_num_cpu_devices``) when JAX has not started yet.

  One CPU device runs a program's operations mostly on one core when they are small; several devices let
  independent work (the members of a population, data-parallel shards) run on all cores. Call it before JAX's
  first computation; on accelerator hosts it only changes the CPU backend.
  """
  check_positive_int("count", count)
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError:
    if jax.device_count() < count:
      raise RuntimeError(f"cannot give JAX {count} devices: it has already started with {jax.device_count()}. Call "
                         "use_cpu_devices first thing in the program, before any JAX computation.") from None
