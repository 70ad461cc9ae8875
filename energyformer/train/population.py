"""Populations of members: grids, random searches, grouping by structure, chunks, and training them all.

A *member* is a dict of hyperparameters (``energyformer.train.task``). Members that differ only in arrays (the
optimiser's hyperparameters, the seeds, the solver's step sizes a model stores in its variables) train together as
one ``jax.vmap``-ed program; members that differ in a structural hyperparameter (``Task.structural``: variant,
depth, ...) change the compiled program, so ``train_population`` groups them and trains each group on its own, in
chunks of at most ``chunk_size`` members (for populations that do not fit in memory). Each chunk is one call of
``energyformer.train.trainer.train``, the same loop as a single run, with its own checkpoints.
"""
from __future__ import annotations

import itertools
import pathlib

import numpy as np

from energyformer.checks import check_positive_int
from energyformer.train import trainer


def grid(**axes) -> list[dict]:
  """Every combination of the given values: ``grid(learning_rate=[1e-3, 3e-3], beta=[0, .5])`` → 4 members."""
  for name, values in axes.items():
    if not isinstance(values, (list, tuple)) or not values:
      raise ValueError(f"grid axis {name!r} needs a non-empty list of values, got {values!r}.")
  return [dict(zip(axes, combination)) for combination in itertools.product(*axes.values())]


def random_search(num_members: int, seed: int = 0, **ranges) -> list[dict]:
  """``num_members`` members drawn uniformly from ``name=(low, high)`` ranges, or log-uniformly from
  ``name=(low, high, "log")``."""
  check_positive_int("num_members", num_members)
  rng = np.random.default_rng(seed)
  members = [{} for _ in range(num_members)]
  for name, spec in ranges.items():
    if len(spec) not in (2, 3) or not all(isinstance(v, (int, float)) for v in spec[:2]):
      raise ValueError(f"range {name!r} must be (low, high) or (low, high, 'log') with numbers low < high, got "
                       f"{spec!r}; on the command line --range {name}=LOW:HIGH or {name}=LOW:HIGH:log.")
    low, high, *scale = spec
    if not low < high or scale not in ([], ["log"]) or (scale and low <= 0):
      raise ValueError(f"range {name!r} must be (low, high) or (low, high, 'log') with low < high (and low > 0 "
                       f"for 'log'), got {spec!r}.")
    draw = (np.exp(rng.uniform(np.log(low), np.log(high), num_members)) if scale
            else rng.uniform(low, high, num_members))
    for member, value in zip(members, draw):
      member[name] = float(value)
  return members


def cross(members: list[dict], **axes) -> list[dict]:
  """Every member combined with every point of ``grid(**axes)``; refuses an axis a member already sets (it would
  be overwritten)."""
  clashes = sorted({name for member in members for name in member if name in axes})
  if clashes:
    raise ValueError(f"{', '.join(clashes)} is set both by the members and by the axes crossed with them; set it "
                     "in one place only.")
  return [{**member, **point} for member in members for point in grid(**axes)]


def group_members(members: list[dict], structural) -> dict[tuple, list[int]]:
  """Indices of the members that share their structural hyperparameters (one compiled program per group)."""
  groups: dict[tuple, list[int]] = {}
  for index, member in enumerate(members):
    groups.setdefault(trainer.structure_of(member, structural), []).append(index)
  return groups


def chunks(indices: list[int], chunk_size: int | None) -> list[list[int]]:
  """``indices`` in consecutive pieces of at most ``chunk_size`` (one piece without a size)."""
  size = chunk_size or len(indices)
  return [indices[i:i + size] for i in range(0, len(indices), size)]


def check_population(task, members: list[dict], config) -> None:
  """Refuses, before anything is trained or written, members the trainer would refuse (each structural group
  checked on its own)."""
  if not members:
    raise ValueError("a sweep needs at least one member; build them with grid(...) or random_search(...).")
  for indices in group_members(members, task.structural).values():
    trainer.check_members(task, [members[i] for i in indices], config)


def chunk_label(members: list[dict]) -> str:
  """What a progress bar shows while ``members`` train: the member's name, or the values they share and their
  number (``seed=0,variant=momentum``; ``variant=momentum ×3``)."""
  if len(members) == 1:
    return trainer.member_name(members[0])
  shared = {k: v for k, v in members[0].items() if all(k in m and m[k] == v for m in members)}
  return f"{trainer.member_name(shared)} ×{len(members)}".strip()


def member_result(result: trainer.TrainResult, index: int) -> dict:
  """Member ``index`` of a run: the member, its name, its ``train_loss`` at every step, ``eval_steps`` and
  ``curves[set][metric]`` (one value per evaluation), and the run's ``seconds_per_step``."""
  evaluations = result.history["evaluations"]
  sets = evaluations[0][1] if evaluations else {}
  return {"member": result.members[index], "name": trainer.member_name(result.members[index]),
          "train_loss": [losses[index] for losses in result.history["loss"]],
          "eval_steps": [step for step, _ in evaluations],
          "curves": {name: {metric: [values[name][metric][index] for _, values in evaluations]
                            for metric in metrics} for name, metrics in sets.items()},
          "seconds_per_step": result.seconds_per_step}


def train_population(task, members: list[dict], config, *, chunk_size: int | None = None, checkpoint_dir=None,
                     progress=None, writer=None, devices=None) -> list[dict]:
  """Trains every member (``trainer.train``): grouped by structure, chunked, each chunk one vmapped program over
  ``config.mesh`` (members over its ``population`` axis). Returns ``member_result`` of every member, in member
  order.

  With ``checkpoint_dir`` (and ``config.checkpoint.every``) chunk ``c`` of group ``g`` saves under
  ``checkpoint_dir/group<g>_chunk<c>`` and a rerun resumes it. ``progress`` (a tqdm bar) advances by one per chunk
  step and names the chunk's members (``chunk_label``) after its own description; ``writer`` receives every
  chunk's metrics. A stop signal saves the running chunk (as ``trainer.train``
  does) and raises ``trainer.RunStopped``.
  """
  check_population(task, members, config)
  if chunk_size is not None:
    check_positive_int("chunk_size", chunk_size)
  results: list = [None] * len(members)
  description = getattr(progress, "desc", "").rstrip(": ")
  for g, indices in enumerate(group_members(members, task.structural).values()):
    for c, piece in enumerate(chunks(indices, chunk_size)):
      directory = pathlib.Path(checkpoint_dir) / f"group{g}_chunk{c}" if checkpoint_dir else None
      if hasattr(progress, "set_description"):
        progress.set_description(f"{description} · {chunk_label([members[i] for i in piece])}".lstrip(" ·"))
      run = trainer.train(task, config, directory, members=[members[i] for i in piece], progress=progress,
                          writer=writer, metrics=False, member_names=True, devices=devices)
      if run.stopped_by is not None:
        saved = f"saved in {directory}; rerun the same sweep to resume" if directory else "nothing was saved"
        raise trainer.RunStopped(f"stopped by {run.stopped_by} at step {run.step} of group {g}, chunk {c} ({saved}).")
      for position, index in enumerate(piece):
        results[index] = member_result(run, position)
  return results


def total_steps(task, members: list[dict], config, chunk_size: int | None = None) -> int:
  """Steps a progress bar over ``train_population`` counts: ``config.steps`` per chunk."""
  groups = group_members(members, task.structural).values()
  return config.steps * sum(len(chunks(g, chunk_size)) for g in groups)
