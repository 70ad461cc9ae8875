"""Attention's batched products through ``ops.matmul`` against ``jnp.matmul``, in one run.

For each shape (B sequences × H heads, N tokens, head size Dh) both products of softmax attention,
``o = softmax(q kᵀ) v``, are computed with ``ops.matmul`` and with ``jnp.matmul`` (the reference), and
differentiated in reverse mode (``jax.grad`` of ``Σ o ⊙ w`` w.r.t. q, k and v; the forward products are the same).
Each gradient runs ``--repeats`` times inside one compiled ``lax.fori_loop``, every output feeding the next
evaluation, so that dispatch does not count; printed are medians over ``--runs`` calls (the two ways' calls
interleaved), per evaluation, and the ratio reference / ours (above 1: ``matmul`` is faster), taken call by call:
its median and, in brackets, its range over the runs. The date and load average are printed at the start and end.

  python benchmarks/matmul.py [--runs 7] [--repeats 50]
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from energyformer.ops.matmul import matmul, swap
from report import check_repeats, conditions, ratios, show, spread

SHAPES = [  # (sequences·heads, N, Dh)
    (16 * 2, 11, 8),  # one tiny LIS model: batch 16, 2 heads
    (8 * 16 * 2, 11, 8),  # a population of 8 of them
    (32 * 4, 26, 16),  # the default LIS model: batch 32, 4 heads
    (8 * 8, 64, 64),  # the largest matrices matmul differentiates its own way (SMALL_MATRIX)
    (4, 512, 64),  # larger: plain jnp.matmul, a ratio of about 1
]


def _attention_gradient(product, weights):
  """``(q̄, k̄, v̄)`` of ``Σ o ⊙ w`` for ``o = softmax(q kᵀ) v`` with both products taken by ``product``."""
  def loss(q, k, v):
    return jnp.sum(product(jax.nn.softmax(product(q, swap(k)), axis=-1), v) * weights)
  return jax.grad(loss, argnums=(0, 1, 2))


def _seconds_per_evaluation(fns, operands, repeats: int, runs: int) -> list[list[float]]:
  """Seconds per evaluation of each function in each of ``runs`` calls, its calls interleaved with the others'."""
  def looped(fn):
    def body(_, operands):  # every output feeds the next evaluation, so none of it is dead code
      return tuple(x + 1e-30 * y for x, y in zip(operands, fn(*operands)))
    return jax.jit(lambda *ops: jax.lax.fori_loop(0, repeats, body, ops))
  compiled = [looped(fn) for fn in fns]
  for fn in compiled:
    jax.block_until_ready(fn(*operands))
  times = [[] for _ in fns]
  for _ in range(runs):
    for fn, spent in zip(compiled, times):
      began = time.perf_counter()
      jax.block_until_ready(fn(*operands))
      spent.append(time.perf_counter() - began)
  return [[t / repeats for t in spent] for spent in times]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--runs", type=int, default=7)
  parser.add_argument("--repeats", type=int, default=50)
  args = parser.parse_args()
  check_repeats(args.runs)
  print(conditions("started"))
  print(f"machine: {platform.platform()} ({platform.processor() or platform.machine()}), {os.cpu_count()} CPUs, "
        f"{jax.default_backend()}")
  print(f"{'B·H':>5s} {'N':>4s} {'Dh':>3s} | {'gradient µs: jnp.matmul':>23s} {'matmul':>7s} {'ratio (range over runs)':>24s}")
  for batch, tokens, head_dim in SHAPES:
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v = (jax.random.normal(key, (batch, tokens, head_dim)) for key in keys[:3])
    weights = jax.random.normal(keys[3], (batch, tokens, head_dim))
    gradients = [_attention_gradient(product, weights) for product in (jnp.matmul, matmul)]
    ref, ours = _seconds_per_evaluation(gradients, (q, k, v), args.repeats, args.runs)
    print(f"{batch:5d} {tokens:4d} {head_dim:3d} | {1e6 * np.median(ref):23.1f} {1e6 * np.median(ours):7.1f} "
          f"{show(spread(ratios(ref, ours)), unit='x'):>24s}", flush=True)
  print(conditions("finished"))


if __name__ == "__main__":
  main()
