"""Training-step time on 1 device against 8-device meshes, checkpoint save time, and accelerator throughput.

Measured in one run, each training step timed after compilation on synthetic batches (median of ``--steps``):

1. the pretraining step of a model (``--model`` preset, default ``tiny``) on the single-device mesh and on the
   8-device ``data``, ``fsdp`` and ``fsdp_tp`` meshes. On a CPU the 8 devices are fake
   (``--xla_force_host_platform_device_count=8``, set here before JAX starts) and share the same cores, so the
   ratio shows the partitioning's overhead, not a speed-up;
2. saving a checkpoint of that model's whole training state: the time ``save`` blocks the loop (async) and the
   time until the checkpoint is on disk, each also in training steps;
3. on a GPU or TPU only: tokens per second and model FLOPs utilisation (MFU) of the ``gpt2-124m`` preset, with
   the FLOPs estimated as ``6·N + 12·L·T·d`` per token (N parameters, L layers, T sequence length, d width).

  python benchmarks/train.py [--model tiny|small] [--steps 20] [--batch-size 16]
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

from energyformer.data.text import text_dataset
from energyformer.train.checkpoint import CheckpointConfig, Checkpointer
from energyformer.train.config import to_dict
from energyformer.train.mesh import PRESETS as MESHES, make_mesh
from energyformer.train.pretrain import PRESETS, parameter_count
from energyformer.train.programs import programs

# Dense bfloat16 peak FLOP/s by device kind (vendor figures).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "TPU v4": 275e12, "TPU v5 lite": 197e12,
              "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12}


def _batch(config, sharding, rng):
  tokens = rng.integers(0, 256, (config.batch_size, config.data.sequence_length + 1), dtype=np.int32)
  return {"tokens": jax.device_put(tokens, sharding)}


def time_steps(config, mesh, steps: int):
  """Median seconds per training step of ``config`` on ``mesh`` (compilation and first step excluded), and the
  final state."""
  compiled = programs(config, mesh)
  rng = np.random.default_rng(0)
  with jax.set_mesh(mesh):
    params, opt_state = compiled.init()
    params, opt_state, metrics = compiled.step(params, opt_state, _batch(config, compiled.batch_sharding, rng))
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
      batch = _batch(config, compiled.batch_sharding, rng)
      began = time.perf_counter()
      params, opt_state, metrics = compiled.step(params, opt_state, batch)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - began)
  return float(np.median(times)), params, opt_state


def time_checkpoint(config, params, opt_state, repeats: int = 3) -> tuple[float, float]:
  """Median (seconds ``save`` blocks, seconds until the checkpoint is complete) of asynchronous saves."""
  iterator = iter(text_dataset([{"text": b"checkpoint benchmark " * 64}], config.data, batch_size=1, seed=0))
  blocking, complete = [], []
  with tempfile.TemporaryDirectory() as directory:
    checkpointer = Checkpointer(directory, CheckpointConfig(every=1, keep=1))
    for step in range(1, repeats + 1):
      began = time.perf_counter()
      checkpointer.save(step, params, opt_state, iterator, to_dict(config))
      blocking.append(time.perf_counter() - began)
      checkpointer.wait()
      complete.append(time.perf_counter() - began)
    checkpointer.close()
  return float(np.median(blocking)), float(np.median(complete))


def flops_per_token(config) -> float:
  """``6·N + 12·L·T·d``: forward and backward matrix FLOPs of the weights plus attention scores and mixing."""
  model = config.model
  return 6 * parameter_count(model) + 12 * model.depth * config.data.sequence_length * model.dim


def peak_flops(device) -> float | None:
  """The dense bfloat16 peak of ``device`` from ``PEAK_FLOPS`` (None when its kind is not listed)."""
  return next((peak for kind, peak in PEAK_FLOPS.items() if kind.lower() in device.device_kind.lower()), None)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="tiny", choices=["tiny", "small"])
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--batch-size", type=int, default=16)
  args = parser.parse_args()
  config = dataclasses.replace(PRESETS[args.model], batch_size=args.batch_size)
  device = jax.devices()[0]
  print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs; {jax.device_count()} {device.platform} devices "
        f"({device.device_kind}); model {args.model} ({parameter_count(config.model) / 1e6:.2f}M parameters), "
        f"batch {config.batch_size} x {config.data.sequence_length}")
  print(f"\n{'mesh':8s} {'shape':>9s} {'ms/step':>9s} {'vs 1 device':>12s}")
  single = None
  for name in ("single", "data", "fsdp", "fsdp_tp"):
    mesh = make_mesh(MESHES[name])
    seconds, params, opt_state = time_steps(dataclasses.replace(config, mesh=MESHES[name]), mesh, args.steps)
    if single is None:
      single, state = seconds, (params, opt_state)
    shape = "x".join(str(mesh.shape[a]) for a in mesh.axis_names)
    print(f"{name:8s} {shape:>9s} {1e3 * seconds:9.1f} {seconds / single:11.2f}x")
  blocking, complete = time_checkpoint(config, *state)
  print(f"\ncheckpoint of the training state (async save): blocks {1e3 * blocking:.1f} ms "
        f"({blocking / single:.2f} steps), complete after {1e3 * complete:.1f} ms ({complete / single:.2f} steps)")
  if device.platform == "cpu":
    print("\nno GPU or TPU: skipping the gpt2-124m tokens/s and MFU measurement")
    return
  big = dataclasses.replace(PRESETS["gpt2-124m"], batch_size=16 * jax.device_count())
  seconds, _, _ = time_steps(dataclasses.replace(big, mesh=MESHES["fsdp"]), make_mesh(MESHES["fsdp"]), args.steps)
  tokens = big.tokens_per_step / seconds
  peak = peak_flops(device)
  mfu = f"{tokens * flops_per_token(big) / (peak * jax.device_count()):.1%}" if peak else "unknown peak for this device"
  print(f"\ngpt2-124m, bf16, fsdp over {jax.device_count()} devices, batch {big.batch_size} x "
        f"{big.data.sequence_length}: {1e3 * seconds:.0f} ms/step, {tokens:,.0f} tokens/s, MFU {mfu}")


if __name__ == "__main__":
  main()
