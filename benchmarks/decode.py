"""Decoding speed: incremental decoding from cached contexts against recomputing the prefix for every token.

For each attention variant and number of new tokens L, a GPT decoder (the ``tiny`` or ``small`` pretraining
preset's shape, random weights, context ``prompt + L``) extends a prompt greedily by L tokens with
``generate(cache=True)`` and ``generate(cache=False)`` (``energyformer.models.decode``). Both are compiled first;
then ``--repeats`` timed runs of each, interleaved so that load from elsewhere falls on both alike, each ending with
``block_until_ready``. Reported: tokens/s from the median time, the spread (slowest/fastest run), and the speed-up
full / cached from the medians of the same run. Both paths give the same tokens (checked here). The date, the
machine and ``uptime``'s load averages are printed before and after.

    python benchmarks/decode.py                                  # tiny, L = 128 and 512, three variants
    python benchmarks/decode.py --config small --lengths 128 --variants standard --json decode.json
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import time

import jax
import jax.numpy as jnp
from flax import nnx

from energyformer.models import GPT, generate
from energyformer.models.decode import cache_support
from energyformer.studies.pretrain import presets


def load() -> str:
  """``uptime``'s line (load averages over 1, 5 and 15 minutes)."""
  try:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "load average: " + ", ".join(f"{value:.2f}" for value in os.getloadavg())


def machine() -> str:
  device = jax.devices()[0]
  return (f"{platform.platform()}, {os.cpu_count()} CPUs, jax {jax.__version__} on {jax.default_backend()} "
          f"({getattr(device, 'device_kind', str(device))})")


def timed(run) -> float:
  began = time.perf_counter()
  jax.block_until_ready(run())
  return time.perf_counter() - began


def measure(config, num_tokens: int, prompt_length: int, batch: int, repeats: int) -> dict:
  """Median times, spreads and tokens/s of cached and full decoding of ``num_tokens`` tokens."""
  model = GPT(config, rngs=nnx.Rngs(0))
  prompt = jax.random.randint(jax.random.key(1), (batch, prompt_length), 0, 256)
  runs = {"cached": lambda: generate(model, prompt, num_tokens), "full": lambda: generate(model, prompt, num_tokens,
                                                                                          cache=False)}
  same = bool(jnp.array_equal(runs["cached"](), runs["full"]()))  # also compiles both
  times = {name: [] for name in runs}
  for _ in range(repeats):
    for name, run in runs.items():
      times[name].append(timed(run))
  result = {"variant": config.variant, "new_tokens": num_tokens, "cached_path": cache_support(model) or "cached",
            "same_tokens": same}
  for name, values in times.items():
    median = statistics.median(values)
    result[name] = {"median_s": median, "tokens_per_s": batch * num_tokens / median,
                    "spread": max(values) / min(values), "times_s": values}
  result["speedup"] = result["full"]["median_s"] / result["cached"]["median_s"]
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="tiny", choices=("tiny", "small"), help="the pretraining preset's shape")
  parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512], help="new tokens per run")
  parser.add_argument("--variants", nargs="+", default=["standard", "momentum", "newton"])
  parser.add_argument("--prompt", type=int, default=16, help="prompt length")
  parser.add_argument("--batch", type=int, default=1, help="sequences decoded together")
  parser.add_argument("--repeats", type=int, default=3, help="timed runs of each path (at least 3)")
  parser.add_argument("--json", help="also write the results here")
  args = parser.parse_args()
  if args.repeats < 3:
    parser.error("--repeats must be at least 3 (a median and a spread need several runs).")
  base = presets()[args.config].task.model
  print(f"{datetime.datetime.now().isoformat(timespec='seconds')}; {machine()}")
  print(f"start: {load()}")
  print(f"{args.config}: depth {base.depth}, width {base.dim}, {base.num_heads} heads x {base.head_dim}, MLP "
        f"{base.mlp_hidden}; prompt {args.prompt}, batch {args.batch}, greedy, {args.repeats} repeats")
  print(f"{'variant':<14}{'new':>6}{'cached tok/s':>14}{'spread':>8}{'full tok/s':>12}{'spread':>8}{'speed-up':>10}")
  results = []
  for num_tokens in args.lengths:
    for variant in args.variants:
      config = dataclasses.replace(base, variant=variant, context_length=args.prompt + num_tokens, remat=False)
      r = measure(config, num_tokens, args.prompt, args.batch, args.repeats)
      results.append(r)
      note = "" if r["cached_path"] == "cached" else "  (not cached: recomputes)"
      note += "" if r["same_tokens"] else "  TOKENS DIFFER"
      print(f"{variant:<14}{num_tokens:>6}{r['cached']['tokens_per_s']:>14.1f}{r['cached']['spread']:>8.2f}"
            f"{r['full']['tokens_per_s']:>12.1f}{r['full']['spread']:>8.2f}{r['speedup']:>9.2f}x{note}", flush=True)
  print(f"end: {load()}")
  if args.json:
    with open(args.json, "w") as handle:
      json.dump({"machine": machine(), "config": args.config, "results": results}, handle, indent=1)


if __name__ == "__main__":
  main()
