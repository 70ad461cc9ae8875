"""Compile time of a stack against its depth: the train step of a 48-layer stack against a 12-layer one, in one run.

The stack is a GPT block per layer, ``Split((attention, mlp))``: gradient descent on the relaxed Helmholtz
inner-product energy (multi-head attention) then on the relaxed ``Potential`` energy (a GELU MLP), applied by
``energyformer.layers.unroll``: one ``lax.scan`` over the stacked parameters with ``jax.checkpoint`` per layer, so
the traced program holds one layer whatever the depth. The train step is ``jax.grad`` of ``sum(out²)`` with respect
to the stacked parameters and the tokens (causal mask). Compile time is trace + lower + XLA compile of a fresh
``jax.jit`` (median of several); the step's run time and temp memory are listed beside it. With ``--unrolled`` the
same stack is also built as a Python loop over layers, for contrast. Ratios are to the shallowest depth.

    python benchmarks/depth.py                        # depths 12 and 48
    python benchmarks/depth.py --depths 12 24 48 --unrolled
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from energyformer.energies import Helmholtz, Interaction, Potential, init_params, masks
from energyformer.layers import Layer, Split, unroll

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
  layer, builder = block(dim, heads), {"scanned": scanned, "unrolled": unrolled}[kind]
  x = jax.random.normal(jax.random.key(0), (seq, dim), jnp.float32)
  args = {depth: (stacked_params(layer, depth, jax.random.key(1)), x) for depth in depths}
  compile_times, compiled = {depth: [] for depth in depths}, {}
  for _ in range(repeats):  # depths interleaved, so that warm-up and load fall on each alike
    for depth in depths:
      seconds, compiled[depth] = compile_seconds(train_step(builder(layer, depth)), args[depth])
      compile_times[depth].append(seconds)
  rows = {}
  for depth in depths:
    jax.block_until_ready(compiled[depth](*args[depth]))
    run_times = []
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(compiled[depth](*args[depth]))
      run_times.append(time.perf_counter() - start)
    rows[depth] = {"compile_s": statistics.median(compile_times[depth]), "compile_times_s": compile_times[depth],
                   "run_s": statistics.median(run_times),
                   "temp_bytes": compiled[depth].memory_analysis().temp_size_in_bytes}
  base = rows[depths[0]]
  for row in rows.values():
    row["ratios"] = {key: row[key] / base[key] for key in ("compile_s", "run_s", "temp_bytes")}
  return rows


def print_rows(kind: str, rows: dict) -> None:
  print(f"{'stack':<9} {'depth':>5} | {'compile s':>9} {'ratio':>6} | {'step ms':>9} {'ratio':>6} | "
        f"{'temp MB':>8} {'ratio':>6}")
  for depth, row in rows.items():
    r = row["ratios"]
    print(f"{kind:<9} {depth:>5} | {row['compile_s']:>9.2f} {r['compile_s']:>5.2f}x | {1e3 * row['run_s']:>9.1f} "
          f"{r['run_s']:>5.2f}x | {row['temp_bytes'] / 2 ** 20:>8.1f} {r['temp_bytes']:>5.2f}x")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--depths", type=int, nargs="+", default=[12, 48])
  parser.add_argument("--dim", type=int, default=256)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--seq", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--unrolled", action="store_true", help="also time the stack unrolled as a Python loop")
  args = parser.parse_args(argv)

  print(f"jax {jax.__version__}, backend {jax.default_backend()}; GPT blocks (relaxed attention + GELU MLP), "
        f"D = {args.dim}, {args.heads} heads, S = {args.seq}, float32, causal; train step = grad w.r.t. all "
        f"parameters and tokens; medians of {args.repeats}")
  results = {kind: measure(kind, args.depths, args.dim, args.heads, args.seq, args.repeats)
             for kind in ("scanned", "unrolled") if kind == "scanned" or args.unrolled}
  for kind, rows in results.items():
    print_rows(kind, rows)
  scan = results["scanned"]
  shallow, deep = args.depths[0], args.depths[-1]
  ratio = scan[deep]["ratios"]["compile_s"]
  print(f"target: scanned {deep}-layer compile time {ratio:.2f}x the {shallow}-layer one (limit {LIMIT}x): "
        f"{'met' if ratio <= LIMIT else 'NOT met'}")


if __name__ == "__main__":
  main()
