"""Throughput of a vmapped population against the same members trained one after another, measured in one run.

For each model size and population size P: P LIS models (momentum variant, learning rates and momenta spread
over a grid, ``--steps-per-call`` training steps per call of the compiled program) trained three ways —

* alone: one member at a time (``chunk_size = 1``: a single-member program run P times), on one device;
* vmapped: the whole population as one vmapped program (``chunk_size = P``) on one device;
* vmapped over N devices: the same program with the members split over the mesh's ``population`` axis. On a CPU
  host the CPU is split into N devices (``use_cpu_devices``, default one per core): a small model's operations
  run mostly on one core, so this is how a population uses all of them.

Every configuration is compiled and run once, then timed ``--repeats`` times (at least 3), interleaved; printed are
the medians of the training-step times, the step throughput ratios ``P · t_alone / t_vmapped`` and the ratio of
end-to-end wall times (model building, data and evaluation included), each ratio taken repeat by repeat, its
median with its range in brackets. The date and load average are printed at the start and end.

The default (8 tiny members, 100 steps) takes a few minutes on a quiet 2-core CPU; larger populations and the
default LIS model are options:

  python benchmarks/sweep.py [--sizes 8] [--steps 100] [--steps-per-call 25] [--models tiny] [--devices N]
                             [--repeats 3]
  python benchmarks/sweep.py --sizes 8 32 --models tiny default
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time

import numpy as np

from energyformer.train import mesh as mesh_lib
from energyformer.train.optim import shorter_warmup
from report import check_repeats, conditions, ratios, show, spread


def _members(size: int) -> list[dict]:
  return [{"variant": "momentum", "learning_rate": 1e-3 * (1 + i % 4), "beta": 0.1 * (i % 8), "seed": i}
          for i in range(size)]


def _timed(task, members, config, chunk_size: int) -> tuple[float, float]:
  """(median step seconds, wall seconds) of one run."""
  from energyformer.train import population
  began = time.perf_counter()
  results = population.train_population(task, members, config, chunk_size=chunk_size)
  return results[0]["seconds_per_step"], time.perf_counter() - began


def measure(model: str, size: int, steps: int, steps_per_call: int, devices: int, repeats: int) -> dict:
  from energyformer.studies import lis
  study = dataclasses.replace(lis.PRESETS[model], steps=steps, eval_every=steps, steps_per_call=steps_per_call)
  study = dataclasses.replace(study, optimizer=shorter_warmup(study.optimizer, steps))
  task = lis.LISTask(study)
  members = _members(size)
  ways = {"alone": (study.trainer_config(), 1), "vmapped": (study.trainer_config(), size),
          "devices": (study.trainer_config(devices), size)}
  for way_config, chunk_size in ways.values():
    _timed(task, members, way_config, chunk_size)
  times = {name: [] for name in ways}
  for _ in range(repeats):
    for name, (way_config, chunk_size) in ways.items():
      times[name].append(_timed(task, members, way_config, chunk_size))
  step = {name: [t[0] for t in runs] for name, runs in times.items()}
  wall = {name: [t[1] for t in runs] for name, runs in times.items()}
  return {"model": model, "members": size, "step_ms": {k: 1e3 * float(np.median(v)) for k, v in step.items()},
          "step_ratio": {k: spread(ratios([size * t for t in step["alone"]], step[k])) for k in ("vmapped", "devices")},
          "wall_ratio": {k: spread(ratios(wall["alone"], wall[k])) for k in ("vmapped", "devices")}}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", type=int, nargs="+", default=[8], help="population sizes P (default: 8)")
  parser.add_argument("--steps", type=int, default=100, help="training steps per member (default: 100)")
  parser.add_argument("--steps-per-call", type=int, default=25,
                      help="training steps per call of the compiled program (default: 25)")
  parser.add_argument("--models", nargs="+", default=["tiny"], help="LIS presets (default: tiny)")
  parser.add_argument("--devices", type=int, default=os.cpu_count(), help="devices of the third way (default: cores)")
  parser.add_argument("--repeats", type=int, default=3, help="timed runs of each way, at least 3 (default: 3)")
  args = parser.parse_args()
  check_repeats(args.repeats)
  print(conditions("started"))
  mesh_lib.use_cpu_devices(args.devices)
  import jax
  print(f"machine: {platform.platform()} ({platform.processor() or platform.machine()}), {os.cpu_count()} CPUs, "
        f"{jax.device_count()} {jax.default_backend()} devices")
  header = (f"{'model':8s} {'P':>3s} | {'alone':>7s} {'vmapped':>8s} {f'over {args.devices}':>8s} ms/step | "
            f"{'step ratio vmapped':>18s} {f'over {args.devices}':>18s} | {'wall ratio vmapped':>18s} "
            f"{f'over {args.devices}':>18s}")
  print(header)
  print("-" * len(header))
  for model in args.models:
    for size in args.sizes:
      r = measure(model, size, args.steps, args.steps_per_call, args.devices, args.repeats)
      ms, step, wall = r["step_ms"], r["step_ratio"], r["wall_ratio"]
      print(f"{model:8s} {size:>3d} | {ms['alone']:>7.2f} {ms['vmapped']:>8.1f} {ms['devices']:>8.1f}         | "
            f"{show(step['vmapped']):>18s} {show(step['devices']):>18s} | {show(wall['vmapped']):>18s} "
            f"{show(wall['devices']):>18s}", flush=True)
  print(conditions("finished"))


if __name__ == "__main__":
  main()
