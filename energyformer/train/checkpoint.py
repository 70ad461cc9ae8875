"""Checkpoints of a training run with orbax: model state, optimizer state, data iterator and config, together.

Each saved step is one directory holding four items: ``params`` and ``opt_state`` (arrays, written
asynchronously), ``data`` (each process's grain iterator state) and ``config`` (the run's configuration as JSON).
Restoring reads the arrays straight into the shardings of the current mesh, which may differ from the mesh that
saved them. A step that cannot be restored is renamed ``<step>.unreadable`` with a warning, and the previous step
is tried.
"""
from __future__ import annotations

import dataclasses
import pathlib
import warnings

import grain
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from energyformer.checks import check_positive_int


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """Save every ``every`` steps (``None``: never), keep the newest ``keep``; ``async_save`` writes in the
  background while training goes on."""

  every: int | None = 100
  keep: int = 3
  async_save: bool = True

  def __post_init__(self):
    if self.every is not None:
      check_positive_int("every", self.every)
    check_positive_int("keep", self.keep)


class Checkpointer:
  """An ``ocp.CheckpointManager`` over ``directory`` saving and restoring whole training states."""

  def __init__(self, directory, config: CheckpointConfig):
    self.directory = pathlib.Path(directory).absolute()
    self.every = config.every
    options = ocp.CheckpointManagerOptions(max_to_keep=config.keep, enable_async_checkpointing=config.async_save,
                                           create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def save(self, step: int, params, opt_state, iterator, config: dict, *, force: bool = False) -> bool:
    """Starts saving the state after ``step`` steps when ``step`` is a multiple of ``every`` (or ``force``);
    returns whether it did. Arrays are copied before this returns, so training may go on at once."""
    if not (force or (self.every is not None and step % self.every == 0)):
      return False
    args = ocp.args.Composite(params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
                              data=grain.checkpoint.CheckpointSave(iterator), config=ocp.args.JsonSave(config))
    return self.manager.save(step, args=args, force=True)

  def steps(self) -> list[int]:
    """The saved steps, oldest first."""
    return sorted(self.manager.all_steps())

  def saved_config(self, step: int) -> dict:
    """The configuration saved with ``step``."""
    return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

  def restore_latest(self, params_target, opt_target, iterator, check_config=None):
    """``(step, params, opt_state)`` of the newest restorable step, with ``iterator`` set to that step's data
    position; ``None`` when nothing was saved.

    Targets are pytrees of ``jax.ShapeDtypeStruct`` whose shardings say where the arrays land.
    ``check_config(saved_config)`` may raise to refuse a checkpoint of another run (nothing is renamed then). A
    step that fails to restore is set aside as ``<step>.unreadable`` with a warning and the previous one is
    tried; if none can be restored, raises.
    """
    steps = self.steps()
    for step in reversed(steps):
      try:
        config = self.saved_config(step)
      except Exception as error:  # orbax and tensorstore raise many kinds of errors for damaged files
        self._set_aside(step, error)
        continue
      if check_config is not None:
        check_config(config)
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(params_target), opt_state=ocp.args.StandardRestore(opt_target),
            data=grain.checkpoint.CheckpointRestore(iterator)))
      except Exception as error:  # as above
        self._set_aside(step, error)
        continue
      return step, restored["params"], restored["opt_state"]
    if steps:
      raise RuntimeError(f"no checkpoint in {self.directory} could be restored (steps {steps} are set aside as "
                         "*.unreadable); start afresh in a new output directory or remove the checkpoints.")
    return None

  def _set_aside(self, step: int, error: Exception) -> None:
    warnings.warn(f"checkpoint step {step} in {self.directory} is damaged or incomplete and cannot be restored "
                  f"({type(error).__name__}: {str(error)[:300]}); it is renamed {step}.unreadable and the previous "
                  "checkpoint is used.", RuntimeWarning, stacklevel=3)
    if jax.process_index() == 0:
      target, copy = self.directory / f"{step}.unreadable", 1
      while target.exists():
        target, copy = self.directory / f"{step}.unreadable{copy}", copy + 1
      (self.directory / str(step)).rename(target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"checkpoint {step} set aside")
    self.manager.reload()

  def wait(self) -> None:
    """Blocks until every started save is complete on disk."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self.manager.close()
