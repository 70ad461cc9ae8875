"""Cost of the derived softmax attention layer against a reference multi-head attention, in one run.

Three layers over the same tokens, all with causal masking, H heads of size Dh (D = H·Dh), float32:

* ``reference``: q/k/v/o projections + ``jax.nn.dot_product_attention`` + residual,
* ``relaxed``: ``Layer(Interaction(D, H, Dh, values=True), "gd", mode="relaxed")`` — one gradient step on the
  Helmholtz inner-product energy with independent value/output projections (equal to the reference),
* ``tied``: ``Layer(Interaction(D, H, Dh), "gd", mode="tied")`` — the exact gradient step (values ``k W^Qᵀ``).

For each sequence length it measures, with the pure functions (no NNX): forward time, train-step time
(``jax.grad`` of ``sum(out²)`` w.r.t. every trainable weight and the inputs; for the derived layers this is a
derivative of a derivative), and the temporary memory XLA reserves for each compiled function. Times are medians
of several runs after a warm-up, with ``block_until_ready``. Ratios are to the reference.

    python benchmarks/attention.py                    # S = 512 and 2048
    python benchmarks/attention.py --seq 1024 --quick
    python benchmarks/attention.py --json results.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from energyformer.energies import Interaction, init_params, masks, param_trainable
from energyformer.layers import Layer

MB = 2.0 ** 20


def machine() -> dict:
  """Where the numbers were taken."""
  device = jax.devices()[0]
  return {
      "platform": platform.platform(),
      "processor": platform.processor() or platform.machine(),
      "cpu_count": os.cpu_count(),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "backend": jax.default_backend(),
      "device": getattr(device, "device_kind", str(device)),
  }


# --- the three layers, as pure functions of (trainable weights, fixed weights, tokens (B, N, D)) ---------------

def reference_layer(weights, fixed, x):
  """``x + MHA(x)``: q/k/v/o projections and causal ``jax.nn.dot_product_attention``, (B, N, H, Dh) layout."""
  del fixed
  q = jnp.einsum("bnd,dhk->bnhk", x, weights["query"])
  k = jnp.einsum("bnd,dhk->bnhk", x, weights["key"])
  v = jnp.einsum("bnd,dhk->bnhk", x, weights["value"])
  attended = jax.nn.dot_product_attention(q, k, v, is_causal=True)
  return x + jnp.einsum("bnhk,hkd->bnd", attended, weights["output"])


def derived_layer(layer: Layer, hparams):
  """One solver step of ``layer`` on each sequence (vmapped over the batch when it has more than one)."""

  def one(params, x):
    mask = masks.causal(x.shape[0])
    return layer.step({"energy": params}, hparams, x, layer.init_state(x), mask)[0]

  def apply(weights, fixed, x):
    params = {**weights, **fixed}
    if x.shape[0] == 1:
      return one(params, x[0])[None]
    return jax.vmap(one, in_axes=(None, 0))(params, x)

  return apply


def train_step(apply):
  """Gradient of ``sum(apply(...)²)`` w.r.t. the trainable weights and the tokens."""

  def loss(weights, fixed, x):
    return jnp.sum(jnp.square(apply(weights, fixed, x)))

  return jax.grad(loss, argnums=(0, 2))


def split_params(params, specs):
  trainable = param_trainable(specs)
  weights = {name: value for name, value in params.items() if trainable[name]}
  fixed = {name: value for name, value in params.items() if not trainable[name]}
  return weights, fixed


# --- measurement ---------------------------------------------------------------------------------------------

def temp_bytes(fn, *args) -> int:
  return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def timed(fn, args, repeats: int):
  """(median seconds, last output) of ``fn(*args)`` after one warm-up call."""
  out = jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times), out


def max_abs_diff(a, b) -> float:
  return max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def measure(seq: int, heads: int, head_dim: int, batch: int, repeats: int, seed: int = 0) -> dict:
  dim = heads * head_dim
  key_x, key_p = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(key_x, (batch, seq, dim), jnp.float32)

  relaxed = Layer(Interaction(dim, heads, head_dim, values=True), "gd", mode="relaxed")
  tied = Layer(Interaction(dim, heads, head_dim), "gd", mode="tied")
  specs = relaxed.specs()["energy"]
  params = init_params(specs, key_p)
  weights, fixed = split_params(params, specs)
  tied_specs = tied.specs()["energy"]
  tied_weights, tied_fixed = split_params({name: params[name] for name in tied_specs}, tied_specs)

  cases = {
      "reference": (reference_layer, (weights, fixed, x)),
      "relaxed": (derived_layer(relaxed, relaxed.default_hparams()), (weights, fixed, x)),
      "tied": (derived_layer(tied, tied.default_hparams()), (tied_weights, tied_fixed, x)),
  }
  rows, outputs = {}, {}
  for name, (apply, args) in cases.items():
    grad = train_step(apply)
    start = time.perf_counter()
    fwd_time, fwd_out = timed(jax.jit(apply), args, repeats)
    train_time, train_out = timed(jax.jit(grad), args, repeats)
    rows[name] = {
        "forward_s": fwd_time,
        "train_step_s": train_time,
        "forward_temp_bytes": temp_bytes(apply, *args),
        "train_step_temp_bytes": temp_bytes(grad, *args),
        "wall_s": time.perf_counter() - start,
    }
    outputs[name] = (fwd_out, train_out)

  ref = rows["reference"]
  for name, row in rows.items():
    row["ratios"] = {k: row[k] / ref[k] if ref[k] else float("nan")
                     for k in ("forward_s", "train_step_s", "forward_temp_bytes", "train_step_temp_bytes")}
  # The relaxed layer is the reference attention: same output and same training gradients.
  ref_out, ref_grads = outputs["reference"]
  rel_out, rel_grads = outputs["relaxed"]
  rows["relaxed"]["max_abs_diff_forward"] = max_abs_diff(rel_out, ref_out)
  rows["relaxed"]["max_abs_diff_grads"] = max_abs_diff(rel_grads, ref_grads)
  return {"seq": seq, "batch": batch, "heads": heads, "head_dim": head_dim, "dim": dim, "repeats": repeats,
          "layers": rows}


def print_table(results) -> None:
  header = (f"{'layer':<10} {'S':>5} | {'fwd ms':>9} {'ratio':>6} | {'fwd temp MB':>11} {'ratio':>6} | "
            f"{'train ms':>9} {'ratio':>6} | {'train temp MB':>13} {'ratio':>6}")
  print(header)
  print("-" * len(header))
  for result in results:
    for name, row in result["layers"].items():
      r = row["ratios"]
      print(f"{name:<10} {result['seq']:>5} | {1e3 * row['forward_s']:>9.1f} {r['forward_s']:>5.2f}x | "
            f"{row['forward_temp_bytes'] / MB:>11.1f} {r['forward_temp_bytes']:>5.2f}x | "
            f"{1e3 * row['train_step_s']:>9.1f} {r['train_step_s']:>5.2f}x | "
            f"{row['train_step_temp_bytes'] / MB:>13.1f} {r['train_step_temp_bytes']:>5.2f}x")
    print("-" * len(header))
  for result in results:
    row = result["layers"]["relaxed"]
    print(f"S={result['seq']}: relaxed vs reference max |Δ| output {row['max_abs_diff_forward']:.2e}, "
          f"gradients {row['max_abs_diff_grads']:.2e}")
  print()
  for result in results:
    for name in ("relaxed", "tied"):
      r = result["layers"][name]["ratios"]
      print(f"S={result['seq']}: {name} forward time {r['forward_s']:.2f}x, train-step time "
            f"{r['train_step_s']:.2f}x, forward temp memory {r['forward_temp_bytes']:.2f}x, "
            f"train-step temp memory {r['train_step_temp_bytes']:.2f}x")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seq", type=int, nargs="+", default=None, help="sequence lengths (default 512 2048)")
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--head-dim", type=int, default=64)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed runs per measurement (default: 9 below S=1024, 5 below 2048, else 3)")
  parser.add_argument("--quick", action="store_true", help="S = 256 only (unless --seq) and 2 repeats")
  parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
  args = parser.parse_args(argv)

  seqs = args.seq or ([256] if args.quick else [512, 2048])
  info = machine()
  print(f"machine: {info['platform']} ({info['processor']}), {info['cpu_count']} CPUs, "
        f"python {info['python']}, jax {info['jax']}, backend {info['backend']} ({info['device']})")
  print(f"config: {args.heads} heads x {args.head_dim} (D = {args.heads * args.head_dim}), batch {args.batch}, "
        "float32, causal; times are medians after warm-up")
  print()

  results = []
  for seq in seqs:
    repeats = args.repeats or (2 if args.quick else 9 if seq < 1024 else 5 if seq < 2048 else 3)
    results.append(measure(seq, args.heads, args.head_dim, args.batch, repeats))
  print_table(results)

  if args.json:
    with open(args.json, "w") as f:
      json.dump({"machine": info, "results": results}, f, indent=2)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
  main()
