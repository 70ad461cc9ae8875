"""Training-step time on 1 device against 8-device meshes, checkpoint save time, and accelerator throughput.

Measured in one run, each training step timed after compilation on synthetic batches (median of ``--steps``, at
least 3, with their range; the date and load average are printed at the start and end):

1. the pretraining step of a model (``--model`` preset, default ``tiny``) on the single-device mesh and on the
   8-device ``data``, ``fsdp`` and ``fsdp_tp`` meshes. On a CPU the 8 devices are fake
   (``--xla_force_host_platform_device_count=8``, set here before JAX starts) and share the same cores, so the
   ratio shows the partitioning's overhead, not a speed-up;
2. saving a checkpoint of that model's whole training state: the time ``save`` blocks the loop (async) and the
   time until the checkpoint is on disk (median and range of ``--saves``), each also in training steps;
3. on a GPU or TPU only: tokens per second and model FLOPs utilisation (MFU) of the ``gpt2-124m`` preset, with
   the FLOPs estimated as ``6·N + 12·L·T·d`` per token (N parameters, L layers, T sequence length, d width).

  python benchmarks/train.py [--model tiny|small] [--steps 20] [--batch-size 16] [--saves 5]
"""
from __future__ import annotations

import os

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import argparse
import dataclasses
import platform
import tempfile
import time

import jax
import numpy as np

from energyformer.studies.pretrain import parameter_count, presets
from energyformer.train.checkpoint import CheckpointConfig, Checkpointer
from energyformer.train.config import to_dict
from energyformer.train.mesh import PRESETS as MESHES, make_mesh
from energyformer.train.optim import hyperparameters
from energyformer.train.programs import programs
from energyformer.train.sharding import batch_sharding
from energyformer.train.task import PopulationBatches
from report import check_repeats, conditions, show, spread

# Dense bfloat16 peak FLOP/s by device kind (vendor figures).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "TPU v4": 275e12, "TPU v5 lite": 197e12,
              "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12}


class _Position:
  """A data position to checkpoint alongside the state (what a text iterator saves)."""

  def get_state(self):
    return {"position": 0}


def _batch(config, sharding, rng):
  shape = (1, 1, config.trainer.batch_size, config.task.data.sequence_length + 1)
  return {"tokens": jax.device_put(rng.integers(0, 256, shape, dtype=np.int32), sharding)}


def time_steps(config, mesh, steps: int):
  """Seconds of each training step of ``config`` (a ``Pretraining``) on ``mesh`` (compilation and first step
  excluded, ``report.spread``), and the final state."""
  compiled = programs(config.task, (), config.trainer, mesh)
  rng = np.random.default_rng(0)
  sharding = batch_sharding(mesh, config.trainer.mesh.rules, leading=(None, "population"))
  hparams, seeds = hyperparameters(config.trainer.optimizer, [{}]), np.zeros(1, np.uint32)
  state, opt_state = compiled.init([{}])
  total = config.trainer.steps
  with jax.set_mesh(mesh):
    state, opt_state, metrics = compiled.steps(state, opt_state, _batch(config, sharding, rng), hparams, seeds, 0,
                                               total)
    jax.block_until_ready(metrics)
    times = []
    for step in range(1, steps + 1):
      batch = _batch(config, sharding, rng)
      began = time.perf_counter()
      state, opt_state, metrics = compiled.steps(state, opt_state, batch, hparams, seeds, step, total)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - began)
  return spread(times), state, opt_state


def time_checkpoint(config, state, opt_state, repeats: int = 3) -> tuple[dict, dict]:
  """``report.spread`` of the seconds ``save`` blocks and of the seconds until the checkpoint is complete, over
  ``repeats`` asynchronous saves."""
  iterator = PopulationBatches([_Position()], 1)
  blocking, complete = [], []
  with tempfile.TemporaryDirectory() as directory:
    checkpointer = Checkpointer(directory, CheckpointConfig(every=1, keep=1))
    for step in range(1, repeats + 1):
      began = time.perf_counter()
      checkpointer.save(step, state, opt_state, iterator, {"config": to_dict(config)})
      blocking.append(time.perf_counter() - began)
      checkpointer.wait()
      complete.append(time.perf_counter() - began)
    checkpointer.close()
  return spread(blocking), spread(complete)


def flops_per_token(config) -> float:
  """``6·N + 12·L·T·d``: forward and backward matrix FLOPs of the weights plus attention scores and mixing."""
  model = config.task.model
  return 6 * parameter_count(model) + 12 * model.depth * config.task.data.sequence_length * model.dim


def peak_flops(device) -> float | None:
  """The dense bfloat16 peak of ``device`` from ``PEAK_FLOPS`` (None when its kind is not listed)."""
  return next((peak for kind, peak in PEAK_FLOPS.items() if kind.lower() in device.device_kind.lower()), None)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="tiny", choices=["tiny", "small"], help="preset (default: tiny)")
  parser.add_argument("--steps", type=int, default=20, help="timed steps per mesh, at least 3 (default: 20)")
  parser.add_argument("--batch-size", type=int, default=16, help="global batch (default: 16)")
  parser.add_argument("--saves", type=int, default=5, help="timed checkpoint saves, at least 3 (default: 5)")
  args = parser.parse_args()
  check_repeats(args.steps)
  check_repeats(args.saves)
  print(conditions("started"))
  preset = presets()[args.model]
  config = dataclasses.replace(preset, trainer=dataclasses.replace(preset.trainer, batch_size=args.batch_size))
  device = jax.devices()[0]
  print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs; {jax.device_count()} {device.platform} devices "
        f"({device.device_kind}); model {args.model} ({parameter_count(config.task.model) / 1e6:.2f}M parameters), "
        f"batch {config.trainer.batch_size} x {config.task.data.sequence_length}")
  print(f"\n{'mesh':8s} {'shape':>9s} {'ms/step (range)':>22s} {'vs 1 device':>12s}")
  single = None
  for name in ("single", "data", "fsdp", "fsdp_tp"):
    try:
      mesh = make_mesh(MESHES[name])
    except ValueError as error:  # a mesh the devices cannot hold (fsdp_tp on one accelerator)
      print(f"{name:8s} skipped: {error}")
      continue
    times, params, opt_state = time_steps(_on(config, MESHES[name]), mesh, args.steps)
    seconds = times["median"]
    if single is None:
      single, state = seconds, (params, opt_state)
    shape = "x".join(str(mesh.shape[a]) for a in mesh.axis_names)
    print(f"{name:8s} {shape:>9s} {show(times, 1e3, 1):>22s} {seconds / single:11.2f}x", flush=True)
  blocking, complete = time_checkpoint(config, *state, repeats=args.saves)
  print(f"\ncheckpoint of the training state (async save, median (range) of {args.saves}): blocks "
        f"{show(blocking, 1e3, 1, ' ms')} ({blocking['median'] / single:.2f} steps), complete after "
        f"{show(complete, 1e3, 1, ' ms')} ({complete['median'] / single:.2f} steps)")
  if device.platform == "cpu":
    print("\nno GPU or TPU: skipping the gpt2-124m tokens/s and MFU measurement")
    print(conditions("finished"))
    return
  big = presets()["gpt2-124m"]
  big = dataclasses.replace(big, trainer=dataclasses.replace(big.trainer, batch_size=16 * jax.device_count()))
  times, _, _ = time_steps(_on(big, MESHES["fsdp"]), make_mesh(MESHES["fsdp"]), args.steps)
  seconds = times["median"]
  tokens = big.tokens_per_step / seconds
  peak = peak_flops(device)
  mfu = f"{tokens * flops_per_token(big) / (peak * jax.device_count()):.1%}" if peak else "unknown peak for this device"
  print(f"\ngpt2-124m, bf16, fsdp over {jax.device_count()} devices, batch {big.trainer.batch_size} x "
        f"{big.task.data.sequence_length}: {1e3 * seconds:.0f} ms/step, {tokens:,.0f} tokens/s, MFU {mfu}")
  print(conditions("finished"))


def _on(config, mesh_config):
  """``config`` trained on the mesh ``mesh_config``."""
  return dataclasses.replace(config, trainer=dataclasses.replace(config.trainer, mesh=mesh_config))


if __name__ == "__main__":
  main()
