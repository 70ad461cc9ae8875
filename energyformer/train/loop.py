"""The training loop: mesh, sharded state, data, the jitted step, metrics, checkpoints, resumption and stopping.

``train(config, out_dir)`` either starts afresh or, when ``out_dir/checkpoints`` holds a checkpoint of the same
run, continues from the newest one exactly: parameters, optimizer state and the data iterator's position are
restored, so the run takes the same steps on the same batches as one that was never interrupted (bitwise on
CPU). SIGTERM or SIGINT saves a checkpoint at the current step and returns; a non-finite loss raises
``NonFiniteLossError`` before anything is saved, leaving the last good checkpoint in place.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import pathlib
import time

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from energyformer.data.text import check_corpus, corpus_source, process_shard, text_dataset
from energyformer.metrics import MetricsWriter
from energyformer.train.checkpoint import Checkpointer
from energyformer.train.config import TrainConfig, resume_mismatches, to_dict
from energyformer.train.interrupt import StopRequest
from energyformer.train.mesh import make_mesh
from energyformer.train.optim import learning_rate_schedule
from energyformer.train.programs import Programs, programs
from energyformer.train.sharding import batch_shards


class NonFiniteLossError(FloatingPointError):
  """The training loss or gradient norm became NaN or infinite."""


@dataclasses.dataclass
class TrainResult:
  """What a call of ``train`` did: the steps it ran (``start_step`` + 1 … ``step``), the training loss at each of
  them, the validation losses ``(step, loss)``, throughput after the first (compiling) step, and the final
  sharded model and optimizer states. ``stopped_by`` names the signal that stopped the run early, if any."""

  start_step: int
  step: int
  losses: list
  validation: list
  tokens_per_second: float
  seconds: float
  stopped_by: str | None
  params: object
  opt_state: object
  mesh: object


def check_batch(config: TrainConfig, mesh) -> None:
  """Raises unless the global batch splits evenly over the data-parallel devices and over the processes."""
  shards = batch_shards(mesh, config.mesh.rules)
  if config.batch_size % shards:
    raise ValueError(f"batch_size {config.batch_size} is not divisible by the data-parallel size {shards} (mesh "
                     f"axes data × fsdp = {mesh.shape['data']} × {mesh.shape['fsdp']}); use a batch_size that is a "
                     f"multiple of {shards}, or a mesh with smaller data/fsdp axes.")
  if config.batch_size % jax.process_count():
    raise ValueError(f"batch_size {config.batch_size} is not divisible by the {jax.process_count()} processes; use "
                     f"a multiple of {jax.process_count()}.")


def data_pipelines(config: TrainConfig):
  """This process's training iterator and the fixed validation batches (numpy, this process's share).

  With several processes, process 0 prepares the corpus first, so that processes sharing a data directory do not
  write it at the same time; the others then read it (or prepare their own copy on a data directory of their own).
  """
  if jax.process_count() > 1:
    if jax.process_index() == 0:
      corpus_source(config.data, "train")
    multihost_utils.sync_global_devices("text corpus prepared")
  shard_index, shard_count = process_shard()
  local_batch = config.batch_size // shard_count
  options = dict(batch_size=local_batch, seed=config.seed, shard_index=shard_index, shard_count=shard_count)
  train = iter(text_dataset(corpus_source(config.data, "train"), config.data, **options))
  validation = text_dataset(corpus_source(config.data, "validation"), config.data, shuffle=False, **options)
  return train, list(itertools.islice(iter(validation), config.eval_batches))


def _global(batch: dict, sharding) -> dict:
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def _resume_check(config: TrainConfig, directory):
  def check(saved: dict):
    mismatches = resume_mismatches(saved, config)
    if mismatches:
      raise ValueError(f"the checkpoints in {directory} belong to a run with different {', '.join(mismatches)}; "
                       "resume with the same settings, or train into a new output directory.")
  return check


class _Throughput:
  """Tokens per second since the first step of this call (the first step compiles and is not counted)."""

  def __init__(self, tokens_per_step: int):
    self.tokens_per_step, self.began, self.steps = tokens_per_step, None, 0

  def tick(self) -> None:
    if self.began is None:
      self.began = time.perf_counter()
    else:
      self.steps += 1

  def rate(self) -> float:
    elapsed = time.perf_counter() - self.began if self.began is not None else 0.0
    return self.tokens_per_step * self.steps / elapsed if elapsed > 0 and self.steps else float("nan")


def train(config: TrainConfig, out_dir, *, progress: bool = True, on_step=None, devices=None) -> TrainResult:
  """Trains ``config.model`` on ``config.data`` until ``config.steps``, resuming from ``out_dir/checkpoints``.

  Writes ``metrics.jsonl`` and ``tensorboard/`` under ``out_dir`` (``train/loss``, ``train/grad_norm``,
  ``train/learning_rate``, ``train/tokens_per_second`` at step 1 and every ``log_every`` steps; ``val/loss`` every
  ``eval_every`` steps and at the end). ``on_step(step, metrics)`` is called after each step (and its
  checkpoint). ``devices`` (default ``jax.devices()``) are the devices the mesh is built from.
  """
  began = time.perf_counter()
  out = pathlib.Path(out_dir)
  check_corpus(config.data)
  mesh = make_mesh(config.mesh, devices)
  check_batch(config, mesh)
  compiled = programs(config, mesh)
  with jax.set_mesh(mesh), StopRequest() as stop:
    train_iterator, validation = data_pipelines(config)
    checkpointer = Checkpointer(out / "checkpoints", config.checkpoint) if config.checkpoint.every else None
    try:
      restored = None if checkpointer is None else checkpointer.restore_latest(
          *compiled.restore_targets(), train_iterator, _resume_check(config, checkpointer.directory))
      start, params, opt_state = restored if restored is not None else (0, *compiled.init())
      result = _run(config, out, mesh, compiled, params, opt_state, start, train_iterator, validation,
                    checkpointer, stop, progress, on_step)
    finally:
      if checkpointer is not None:
        checkpointer.close()
  result.seconds = time.perf_counter() - began
  return result


def _run(config, out, mesh, compiled: Programs, params, opt_state, start, train_iterator, validation, checkpointer,
         stop: StopRequest, progress, on_step) -> TrainResult:
  sharding = compiled.batch_sharding
  validation = [_global(batch, sharding) for batch in validation]
  schedule = learning_rate_schedule(config.optimizer, config.steps)
  lead = jax.process_index() == 0
  throughput = _Throughput(config.tokens_per_step)
  losses, curve, stopped_by, step = [], [], None, start
  writer = MetricsWriter(out) if lead else None
  bar = tqdm(total=config.steps, initial=start, unit="step", desc="pretrain", disable=not (progress and lead))
  try:
    for step in range(start + 1, config.steps + 1):
      params, opt_state, metrics = compiled.step(params, opt_state, _global(next(train_iterator), sharding))
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      _check_finite(metrics, step, checkpointer)
      throughput.tick()
      losses.append(metrics["loss"])
      if step % config.log_every == 0 or step in (1, config.steps):
        scalars = {**metrics, "learning_rate": float(schedule(step - 1)), "tokens_per_second": throughput.rate()}
        if writer is not None:
          writer.write(step, {k: v for k, v in scalars.items() if math.isfinite(v)}, "train")
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", tok_s=f"{scalars['tokens_per_second']:.0f}")
      if step % config.eval_every == 0 or step == config.steps:
        curve.append((step, float(np.mean([float(compiled.evaluate(params, batch)) for batch in validation]))))
        if writer is not None:
          writer.write(step, {"loss": curve[-1][1]}, "val")
      bar.update(1)
      stopping = stop.requested()
      if checkpointer is not None:
        checkpointer.save(step, params, opt_state, train_iterator, to_dict(config),
                          force=stopping or step == config.steps)
      if on_step is not None:
        on_step(step, metrics)
      if stopping:
        stopped_by = stop.signal_name or "a signal on another process"
        break
  finally:
    bar.close()
    if writer is not None:
      writer.close()
  return TrainResult(start, step, losses, curve, throughput.rate(), 0.0, stopped_by, params, opt_state, mesh)


def _check_finite(metrics: dict, step: int, checkpointer) -> None:
  if all(math.isfinite(v) for v in metrics.values()):
    return
  if checkpointer is not None:
    checkpointer.wait()
  kept = (f"the last good checkpoint (step {checkpointer.steps()[-1]}) is kept in {checkpointer.directory}"
          if checkpointer is not None and checkpointer.steps() else "no checkpoint was saved before it")
  raise NonFiniteLossError(
      f"non-finite training loss or gradient at step {step} (loss {metrics['loss']}, gradient norm "
      f"{metrics['grad_norm']}); training stopped and {kept}. Resume with a lower learning rate, a longer warmup, "
      "a smaller clip_norm, or float32 compute.")
