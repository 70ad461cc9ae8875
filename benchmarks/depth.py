"""Compile time of a stack against its depth: the train step of a 48-layer stack against a 12-layer one, in one run.

The stack is a GPT block per layer, ``Split((attention, mlp))``: gradient descent on the relaxed Helmholtz
inner-product energy (multi-head attention) then on the relaxed ``Potential`` energy (a GELU MLP), applied by
``energyformer.layers.unroll``: one ``lax.scan`` over the stacked parameters with ``jax.checkpoint`` per layer, so
the traced program holds one layer whatever the depth. The train step is ``jax.grad`` of ``sum(out²)`` with respect
to the stacked parameters and the tokens (causal mask). Compile time is trace + lower + XLA compile of a fresh
``jax.jit``; the step's run time and temp memory are listed beside it. With ``--unrolled`` the same stack is also
built as a Python loop over layers, for contrast. Each time is the median of ``--repeats`` (at least 3), the depths
interleaved within each repeat; ratios are to the shallowest depth, taken repeat by repeat, their median with their
range in brackets. The date and load average are printed at the start and end.

    python benchmarks/depth.py                        # depths 12 and 48
    python benchmarks/depth.py --depths 12 24 48 --unrolled
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from energyformer.energies import Helmholtz, Interaction, Potential, init_params, masks
from energyformer.layers import Layer, Split, unroll
from report import check_repeats, conditions, ratios, show, spread

LIMIT = 1.5  # the deepest stack's compile time, at most this times the shallowest one's


def block(dim: int, heads: int) -> Split:
  """One GPT block: relaxed attention then a relaxed MLP, each one gradient-descent step."""
  attention = Layer(Interaction(dim, heads, dim // heads, aggregate=Helmholtz(), values=True), "gd", mode="relaxed")
  mlp = Layer(Potential(dim, 4 * dim, activation="gelu", values=True), "gd", mode="relaxed")
  return Split((attention, mlp))


def stacked_params(layer: Split, depth: int, key):
  return jax.vmap(lambda k: init_params(layer.specs(), k))(jax.random.split(key, depth))


def scanned(layer: Split, depth: int):
  """The stack as one ``lax.scan`` over layers (``unroll``)."""

  def apply(params, x):
    mask = masks.causal(x.shape[0])
    return unroll(layer, params, layer.default_hparams(), x, mask, num_steps=depth).x

  return apply


def unrolled(layer: Split, depth: int):
  """The stack as a Python loop over layers, each step rematerialised."""

  def apply(params, x):
    mask = masks.causal(x.shape[0])
    step = jax.checkpoint(lambda p, tokens: layer.step(p, layer.default_hparams(), tokens, layer.init_state(tokens),
                                                       mask)[0])
    for i in range(depth):
      x = step(jax.tree.map(lambda leaf: leaf[i], params), x)
    return x

  return apply


def train_step(apply):
  return jax.grad(lambda params, x: jnp.sum(jnp.square(apply(params, x))), argnums=(0, 1))


def compile_seconds(fn, args) -> tuple[float, object]:
  """Seconds to trace, lower and compile a fresh ``jax.jit(fn)``, and the executable."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return time.perf_counter() - start, compiled


def measure(kind: str, depths, dim: int, heads: int, seq: int, repeats: int) -> dict:
  """Per depth: compile times, step times (each ``repeats`` of them, depths interleaved) and temp memory; and the
  ratios of each to the shallowest depth's, repeat by repeat."""
  layer, builder = block(dim, heads), {"scanned": scanned, "unrolled": unrolled}[kind]
  x = jax.random.normal(jax.random.key(0), (seq, dim), jnp.float32)
  args = {depth: (stacked_params(layer, depth, jax.random.key(1)), x) for depth in depths}
  compile_times, run_times, compiled = {depth: [] for depth in depths}, {depth: [] for depth in depths}, {}
  for _ in range(repeats):  # depths interleaved, so that warm-up and load fall on each alike
    for depth in depths:
      seconds, compiled[depth] = compile_seconds(train_step(builder(layer, depth)), args[depth])
      compile_times[depth].append(seconds)
  for depth in depths:
    jax.block_until_ready(compiled[depth](*args[depth]))
  for _ in range(repeats):
    for depth in depths:
      start = time.perf_counter()
      jax.block_until_ready(compiled[depth](*args[depth]))
      run_times[depth].append(time.perf_counter() - start)
  base = depths[0]
  return {depth: {"compile_s": spread(compile_times[depth]), "run_s": spread(run_times[depth]),
                  "temp_bytes": compiled[depth].memory_analysis().temp_size_in_bytes,
                  "compile_ratio": spread(ratios(compile_times[depth], compile_times[base])),
                  "run_ratio": spread(ratios(run_times[depth], run_times[base])),
                  "temp_ratio": compiled[depth].memory_analysis().temp_size_in_bytes
                  / compiled[base].memory_analysis().temp_size_in_bytes}
          for depth in depths}


def print_rows(kind: str, rows: dict) -> None:
  print(f"{'stack':<9} {'depth':>5} | {'compile s (range)':>19} {'ratio (range)':>19} | {'step ms (range)':>21} "
        f"{'ratio (range)':>19} | {'temp MB':>8} {'ratio':>6}")
  for depth, row in rows.items():
    print(f"{kind:<9} {depth:>5} | {show(row['compile_s']):>19} {show(row['compile_ratio'], unit='x'):>19} | "
          f"{show(row['run_s'], 1e3, 1):>21} {show(row['run_ratio'], unit='x'):>19} | "
          f"{row['temp_bytes'] / 2 ** 20:>8.1f} {row['temp_ratio']:>5.2f}x")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--depths", type=int, nargs="+", default=[12, 48])
  parser.add_argument("--dim", type=int, default=256)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--seq", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=3, help="timed compilations and steps per depth (at least 3)")
  parser.add_argument("--unrolled", action="store_true", help="also time the stack unrolled as a Python loop")
  args = parser.parse_args(argv)
  check_repeats(args.repeats)

  print(conditions("started"))
  print(f"jax {jax.__version__}, backend {jax.default_backend()}; GPT blocks (relaxed attention + GELU MLP), "
        f"D = {args.dim}, {args.heads} heads, S = {args.seq}, float32, causal; train step = grad w.r.t. all "
        f"parameters and tokens; medians of {args.repeats}")
  results = {kind: measure(kind, args.depths, args.dim, args.heads, args.seq, args.repeats)
             for kind in ("scanned", "unrolled") if kind == "scanned" or args.unrolled}
  for kind, rows in results.items():
    print_rows(kind, rows)
  scan = results["scanned"]
  shallow, deep = args.depths[0], args.depths[-1]
  ratio = scan[deep]["compile_ratio"]
  print(f"target: scanned {deep}-layer compile time {show(ratio, unit='x')} the {shallow}-layer one (limit "
        f"{LIMIT}x): {'met' if ratio['median'] <= LIMIT else 'NOT met'}")
  print(conditions("finished"))


if __name__ == "__main__":
  main()
