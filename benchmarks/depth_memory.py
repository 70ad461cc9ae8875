"""Training memory against depth: stored activations, ``jax.checkpoint`` per step, and reversible momentum stacks.

The stack is the momentum GPT's block (``models.gpt.block`` of the ``"momentum"`` variant: pre-normalised relaxed
Helmholtz attention on a heavy-ball velocity, then a GELU MLP) in its reversible form, the MLP's step folded into the
velocity (``layers.HeavyBall``), so all three variants compute the same function:

* ``stored``: ``unroll(..., remat=False)`` — autodiff keeps every step's activations;
* ``checkpoint``: ``unroll(..., remat=True)`` — ``jax.checkpoint`` per step keeps each step's input carry ``(x, m)``;
* ``reversible``: ``reversible_unroll`` as configured by default — one exact carry per segment of
  ``DEFAULT_SEGMENT`` (6) steps, the rest rebuilt (float32 within the documented bound), each step's VJP taken one
  sequence and one part (attention, MLP) at a time; ``reversible/4`` with segments of 4 steps;
  ``reversible/batch`` with the whole batch's VJP at once (``vjp_chunk=None``, the layout under a mesh);
  ``reversible/all`` keeping only the output (float32-inexact at this depth: ``layers.reversible``).

The train step is ``jax.grad`` of ``sum(out²)`` with respect to the stacked parameters, the solver hyperparameters
and the tokens, vmapped over a batch of causal sequences. Memory is XLA's temporary buffer of the compiled step
(``memory_analysis().temp_size_in_bytes``); time the median (and spread, max/min − 1) of the repeats, the variants
interleaved so that load falls on each alike. Ratios are to the checkpoint variant at the same depth. With
``--equilibrium`` it also compiles the gradient of an equilibrium Energy Transformer at two ``max_steps`` and an
unrolled one at the same step counts.

    python benchmarks/depth_memory.py                       # depths 12 24 48, 3 repeats
    python benchmarks/depth_memory.py --equilibrium
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time

import jax
import jax.numpy as jnp

from energyformer.energies import init_params, masks
from energyformer.layers import HeavyBall, reversible_unroll, unroll
from energyformer.models import gpt

MEMORY_LIMIT, TIME_LIMIT = 0.3, 1.5  # reversible / checkpoint at the deepest depth


def momentum_block(dim: int, heads: int):
  config = gpt.GPTConfig(vocab_size=2, context_length=2, dim=dim, num_heads=heads, head_dim=dim // heads,
                         mlp_hidden=4 * dim, variant="momentum", reversible=True)
  return gpt.block(config)


REVERSIBLE = {"reversible": {}, "reversible/4": {"segment": 4}, "reversible/batch": {"vjp_chunk": None},
              "reversible/all": {"segment": None}}


def train_step(kind: str, layer, depth: int):
  """``grad`` of ``sum(out²)`` w.r.t. (params, hparams, tokens (B, S, D)) of the ``kind`` stack."""

  def apply(params, hparams, x):
    mask = masks.causal(x.shape[-2])
    if kind in REVERSIBLE:  # a batch inside the reversible scan, as EnergyStack runs it
      return reversible_unroll(layer, params, hparams, x, mask, num_steps=depth, **REVERSIBLE[kind]).x
    run = lambda xi: unroll(HeavyBall(layer), params, hparams, xi, mask, num_steps=depth, remat=kind == "checkpoint")
    return jax.vmap(run)(x).x

  def loss(params, hparams, x):
    return jnp.sum(jnp.square(apply(params, hparams, x)))

  return jax.grad(loss, argnums=(0, 1, 2))


def timed(compiled, args, repeats: int) -> list[float]:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return times


KINDS = ("stored", "checkpoint", *REVERSIBLE)


def measure_depth(depth: int, dim: int, heads: int, seq: int, batch: int, repeats: int) -> dict:
  layer = momentum_block(dim, heads)
  params = jax.vmap(lambda k: init_params(layer.specs(), k))(jax.random.split(jax.random.key(0), depth))
  x = jax.random.normal(jax.random.key(1), (batch, seq, dim))
  args = (params, layer.default_hparams(), x)
  compiled = {kind: jax.jit(train_step(kind, layer, depth)).lower(*args).compile() for kind in KINDS}
  for kind in KINDS:  # warm-up
    jax.block_until_ready(compiled[kind](*args))
  times = {kind: [] for kind in KINDS}
  for _ in range(repeats):
    for kind in KINDS:
      times[kind] += timed(compiled[kind], args, 1)
  return {kind: {"temp_bytes": compiled[kind].memory_analysis().temp_size_in_bytes, "times": times[kind],
                 "median_s": statistics.median(times[kind])} for kind in KINDS}


def spread(times) -> float:
  return max(times) / min(times) - 1.0


def print_depths(results: dict) -> None:
  print(f"{'depth':>5} {'variant':<14} | {'temp MB':>8} {'ratio':>6} | {'step ms':>8} {'spread':>7} {'ratio':>6}")
  for depth, rows in results.items():
    base = rows["checkpoint"]
    for kind, row in rows.items():
      print(f"{depth:>5} {kind:<14} | {row['temp_bytes'] / 2 ** 20:>8.2f} {row['temp_bytes'] / base['temp_bytes']:>5.2f}x"
            f" | {1e3 * row['median_s']:>8.1f} {100 * spread(row['times']):>6.0f}% "
            f"{row['median_s'] / base['median_s']:>5.2f}x")


def equilibrium_memory(max_steps_list, dim: int, seq: int, batch: int) -> dict:
  """Temp bytes of the gradient of an Energy Transformer's output in equilibrium mode and unrolled (remat per step),
  at each step count."""
  from flax import nnx
  from energyformer.models.energy_transformer import EnergyTransformer, ETConfig

  x = jax.random.normal(jax.random.key(2), (batch, seq, dim))
  rows = {}
  for steps in max_steps_list:
    for mode in ("unrolled", "equilibrium"):
      config = ETConfig(dim=dim, num_heads=4, head_dim=dim // 4, num_memories=2 * dim, depth=steps,
                        equilibrium=mode == "equilibrium", max_steps=steps)
      model = EnergyTransformer(config, rngs=nnx.Rngs(0))
      graph, state = nnx.split(model)
      loss = lambda s, z: jnp.sum(jnp.square(nnx.merge(graph, s)(z)))
      compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(state, x).compile()
      rows[(mode, steps)] = compiled.memory_analysis().temp_size_in_bytes
  return rows


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--depths", type=int, nargs="+", default=[12, 24, 48])
  parser.add_argument("--dim", type=int, default=128)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--seq", type=int, default=64)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--equilibrium", action="store_true", help="also measure equilibrium ET memory")
  args = parser.parse_args(argv)
  if args.repeats < 3:
    parser.error("--repeats must be at least 3 (a median and a spread)")

  print(f"{datetime.datetime.now().isoformat(timespec='seconds')}; load average {os.getloadavg()}; "
        f"jax {jax.__version__}, backend {jax.default_backend()}, {os.cpu_count()} CPUs")
  print(f"momentum GPT blocks (reversible form), D = {args.dim}, {args.heads} heads, MLP {4 * args.dim}, "
        f"S = {args.seq}, batch {args.batch}, float32, causal; train step = grad w.r.t. parameters, hyperparameters "
        f"and tokens; medians of {args.repeats}; ratios to checkpoint")
  results = {depth: measure_depth(depth, args.dim, args.heads, args.seq, args.batch, args.repeats)
             for depth in args.depths}
  print_depths(results)
  deep = results[args.depths[-1]]
  memory = deep["reversible"]["temp_bytes"] / deep["checkpoint"]["temp_bytes"]
  seconds = deep["reversible"]["median_s"] / deep["checkpoint"]["median_s"]
  print(f"target at depth {args.depths[-1]}: reversible memory {memory:.2f}x checkpoint (limit {MEMORY_LIMIT}x): "
        f"{'met' if memory <= MEMORY_LIMIT else 'NOT met'}; time {seconds:.2f}x (limit {TIME_LIMIT}x): "
        f"{'met' if seconds <= TIME_LIMIT else 'NOT met'}")
  if args.equilibrium:
    rows = equilibrium_memory((10, 100), 32, 16, 4)
    print("Energy Transformer gradient temp memory (D = 32, 16 tokens, batch 4):")
    for (mode, steps), size in rows.items():
      print(f"  {mode:<12} steps {steps:>4}: {size / 2 ** 20:8.3f} MB")
  print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
  main()
