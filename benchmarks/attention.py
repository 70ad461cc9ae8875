"""Cost of the derived softmax attention layer against a reference multi-head attention, in one run.

Layers over the same tokens, all with causal masking, H heads of size Dh (D = H·Dh), float32:

* ``reference``: q/k/v/o projections + ``jax.nn.dot_product_attention`` + residual,
* ``relaxed``: ``Layer(Interaction(D, H, Dh, values=True), "gd", mode="relaxed")`` — one gradient step on the
  Helmholtz inner-product energy with independent value/output projections (equal to the reference),
* ``tied``: ``Layer(Interaction(D, H, Dh), "gd", mode="tied")`` — the exact gradient step (values ``k W^Qᵀ``),
* ``einsum``: the reference written out with einsums and ``jax.nn.softmax`` (a second baseline: how much of a
  ratio is the derived layer and how much is ``dot_product_attention``'s own lowering).

For each sequence length it measures, with the pure functions (no NNX): forward time, train-step time
(``jax.grad`` of ``sum(out²)`` w.r.t. every trainable weight and the inputs; for the derived layers this is a
derivative of a derivative), and the temporary memory XLA reserves for each compiled function. Times are medians
of several runs after a warm-up, with ``block_until_ready``, interleaved across the layers so that other
load on the machine falls on each alike. Ratios are to the reference.

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
import sys
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


def einsum_layer(weights, fixed, x):
  """``x + MHA(x)`` written out: einsum scores in (B, H, N, M), ``jnp.where`` causal mask, ``jax.nn.softmax``."""
  del fixed
  head_dim = weights["query"].shape[-1]
  q = jnp.einsum("bnd,dhk->bhnk", x, weights["query"]) * head_dim ** -0.5
  k = jnp.einsum("bnd,dhk->bhnk", x, weights["key"])
  v = jnp.einsum("bnd,dhk->bhnk", x, weights["value"])
  scores = jnp.where(masks.causal(x.shape[1]), jnp.einsum("bhnk,bhmk->bhnm", q, k), -jnp.inf)
  probs = jax.nn.softmax(scores, axis=-1)
  return x + jnp.einsum("bhnm,bhmk,hkd->bnd", probs, v, weights["output"])


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

def compile_fn(fn, args):
  """The compiled executable of ``jax.jit(fn)`` for ``args`` (timed and memory-analysed as one object)."""
  return jax.jit(fn).lower(*args).compile()


def run_once(compiled, args):
  """(seconds, output) of one call, waiting for the result."""
  start = time.perf_counter()
  out = jax.block_until_ready(compiled(*args))
  return time.perf_counter() - start, out


def relative_diff(a, b) -> float:
  """``max |a − b| / max |b|`` over all leaves of two pytrees."""
  diff = max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  scale = max(float(jnp.max(jnp.abs(v))) for v in jax.tree.leaves(b))
  return diff / scale


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

  layers = {
      "reference": (reference_layer, (weights, fixed, x)),
      "relaxed": (derived_layer(relaxed, relaxed.default_hparams()), (weights, fixed, x)),
      "tied": (derived_layer(tied, tied.default_hparams()), (tied_weights, tied_fixed, x)),
      "einsum": (einsum_layer, (weights, fixed, x)),
  }
  jobs = {}  # (layer, "forward" | "train_step") -> (compiled, args)
  rows = {name: {} for name in layers}
  for name, (apply, args) in layers.items():
    for kind, fn in (("forward", apply), ("train_step", train_step(apply))):
      start = time.perf_counter()
      compiled = compile_fn(fn, args)
      rows[name][f"{kind}_compile_s"] = time.perf_counter() - start
      rows[name][f"{kind}_temp_bytes"] = compiled.memory_analysis().temp_size_in_bytes
      jobs[name, kind] = (compiled, args)

  # Warm-up, then the repeats interleaved across layers, so that load from elsewhere on the machine falls on
  # every layer alike.
  outputs = {job: run_once(*jobs[job])[1] for job in jobs}
  times = {job: [] for job in jobs}
  for _ in range(repeats):
    for job in jobs:
      times[job].append(run_once(*jobs[job])[0])
  for (name, kind), ts in times.items():
    rows[name][f"{kind}_s"] = statistics.median(ts)
    rows[name][f"{kind}_min_s"] = min(ts)
    rows[name][f"{kind}_times_s"] = ts

  ref = rows["reference"]
  for name, row in rows.items():
    row["ratios"] = {k: row[k] / ref[k] if ref[k] else float("nan")
                     for k in ("forward_s", "train_step_s", "forward_temp_bytes", "train_step_temp_bytes")}
  # The relaxed layer (and the einsum baseline) is the reference attention: same output, same training gradients.
  for name in ("relaxed", "einsum"):
    for kind in ("forward", "train_step"):
      rows[name][f"{kind}_rel_diff"] = relative_diff(outputs[name, kind], outputs["reference", kind])
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
    for name in ("relaxed", "einsum"):
      row = result["layers"][name]
      print(f"S={result['seq']}: {name} vs reference, max |Δ| / max |reference|: output "
            f"{row['forward_rel_diff']:.1e}, train-step gradients {row['train_step_rel_diff']:.1e}")
  print()
  for result in results:
    for name in ("relaxed", "tied"):
      r = result["layers"][name]["ratios"]
      print(f"S={result['seq']}: {name} forward time {r['forward_s']:.2f}x, train-step time "
            f"{r['train_step_s']:.2f}x, forward temp memory {r['forward_temp_bytes']:.2f}x, "
            f"train-step temp memory {r['train_step_temp_bytes']:.2f}x")
    rel, ein = result["layers"]["relaxed"], result["layers"]["einsum"]
    print(f"S={result['seq']}: relaxed vs einsum baseline: forward time "
          f"{rel['forward_s'] / ein['forward_s']:.2f}x, train-step time "
          f"{rel['train_step_s'] / ein['train_step_s']:.2f}x")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seq", type=int, nargs="+", default=None, help="sequence lengths (default 512 2048)")
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--head-dim", type=int, default=64)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed runs per measurement (default: 11 below S=1024, 7 below 2048, else 5)")
  parser.add_argument("--quick", action="store_true", help="S = 256 only (unless --seq) and 3 repeats")
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
    repeats = args.repeats or (3 if args.quick else 11 if seq < 1024 else 7 if seq < 2048 else 5)
    results.append(measure(seq, args.heads, args.head_dim, args.batch, repeats))
  print_table(results)

  if args.json:
    with open(args.json, "w") as f:
      json.dump({"command": " ".join(sys.argv), "machine": info, "results": results}, f, indent=2)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
  main()
