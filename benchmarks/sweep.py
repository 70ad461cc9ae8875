"""Throughput of a vmapped population against the same members trained one after another, measured in one run.

For each model size and population size P: P LIS models (momentum variant, learning rates and momenta spread
over a grid) trained once as one vmapped program (``chunk_size = P``) and once one member at a time
(``chunk_size = 1``: a single-member program run P times). Both are run twice and timed the second time, so
compilation is excluded. Printed: the median training-step time of each, the step throughput ratio
``P · t_alone / t_population``, and the ratio of end-to-end wall times (model building, data and evaluation
included).

  python benchmarks/sweep.py [--sizes 8 32] [--steps 30] [--models tiny default]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time

from energyformer.studies import lis
from energyformer.train import sweep


def _members(size: int) -> list[dict]:
  return [{"variant": "momentum", "learning_rate": 1e-3 * (1 + i % 4), "beta": 0.1 * (i % 8), "seed": i,
           "data_seed": i} for i in range(size)]


def _timed(task, members, config) -> tuple[float, float]:
  """(median step seconds, wall seconds) of the second of two identical runs."""
  sweep.train_population(task, members, config)
  began = time.perf_counter()
  results = sweep.train_population(task, members, config)
  return results[0]["seconds_per_step"], time.perf_counter() - began


def measure(model: str, size: int, steps: int) -> dict:
  study = lis.PRESETS[model]
  task = lis.LISTask(study)
  config = dataclasses.replace(study.sweep_config(), steps=steps, eval_every=steps)
  members = _members(size)
  together, together_wall = _timed(task, members, dataclasses.replace(config, chunk_size=size))
  alone, alone_wall = _timed(task, members, dataclasses.replace(config, chunk_size=1))
  return {"model": model, "members": size, "population_step_ms": 1e3 * together, "alone_step_ms": 1e3 * alone,
          "step_throughput_ratio": size * alone / together, "wall_ratio": alone_wall / together_wall}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", type=int, nargs="+", default=[8, 32])
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--models", nargs="+", default=["tiny", "default"], choices=sorted(lis.PRESETS))
  args = parser.parse_args()
  print(f"machine: {platform.platform()} ({platform.processor() or platform.machine()}), {os.cpu_count()} CPUs")
  header = f"{'model':8s} {'P':>3s} | {'vmapped ms/step':>15s} {'alone ms/step':>13s} | {'step ratio':>10s} " \
           f"{'wall ratio':>10s}"
  print(header)
  print("-" * len(header))
  for model in args.models:
    for size in args.sizes:
      r = measure(model, size, args.steps)
      print(f"{model:8s} {size:>3d} | {r['population_step_ms']:>15.1f} {r['alone_step_ms']:>13.2f} | "
            f"{r['step_throughput_ratio']:>9.2f}x {r['wall_ratio']:>9.2f}x", flush=True)


if __name__ == "__main__":
  main()
