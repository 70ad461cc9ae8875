"""Checkpoints of a training run with orbax: model state, optimizer state, data iterators and the run, together.

Each saved step is one directory holding four items: ``state`` and ``opt_state`` (the population's arrays, written
asynchronously), ``data`` (each process's data iterator states) and ``run`` (JSON: the configuration, the task,
the members and the history of losses and evaluations). Restoring reads the arrays straight into the shardings of
the current mesh, which may differ from the mesh that saved them. A step that cannot be restored is renamed
``<step>.unreadable`` with a warning, and the previous step is tried. Single runs and populations use the same
checkpoints: a single run is the population of one.
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

  def due(self, step: int) -> bool:
    """Whether ``step`` is a multiple of ``every``."""
    return self.every is not None and step % self.every == 0

  def save(self, step: int, state, opt_state, iterator, run: dict) -> bool:
    """Starts saving the training state after ``step`` steps; returns whether it did. Arrays are copied before this
    returns, so training may go on at once. ``iterator`` has grain's ``get_state``/``set_state``."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), opt_state=ocp.args.StandardSave(opt_state),
                              data=grain.checkpoint.CheckpointSave(iterator), run=ocp.args.JsonSave(run))
    return self.manager.save(step, args=args, force=True)

  def steps(self) -> list[int]:
    """The saved steps, oldest first."""
    return sorted(self.manager.all_steps())

  def saved_run(self, step: int) -> dict:
    """The run (configuration, members, history) saved with ``step``."""
    return self.manager.restore(step, args=ocp.args.Composite(run=ocp.args.JsonRestore()))["run"]

  def restore_latest(self, state_target, opt_target, iterator, check_run=None):
    """``(step, state, opt_state, run)`` of the newest restorable step, with ``iterator`` set to that step's data
    position; ``None`` when nothing was saved.

    Targets are pytrees of ``jax.ShapeDtypeStruct`` whose shardings say where the arrays land (or of NumPy arrays).
    ``check_run(saved_run)`` may raise to refuse a checkpoint of another run (nothing is renamed then). A step that
    fails to restore is set aside as ``<step>.unreadable`` with a warning and the previous one is tried; if none
    can be restored, raises.
    """
    steps = self.steps()
    for step in reversed(steps):
      try:
        run = self.saved_run(step)
      except Exception as error:  # orbax and tensorstore raise many kinds of errors for damaged files
        self._set_aside(step, error)
        continue
      if check_run is not None:
        check_run(run)
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(state_target), opt_state=ocp.args.StandardRestore(opt_target),
            data=grain.checkpoint.CheckpointRestore(iterator)))
      except Exception as error:  # as above
        self._set_aside(step, error)
        continue
      return step, restored["state"], restored["opt_state"], run
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
