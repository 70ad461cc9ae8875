"""Cost of the derived softmax attention layer against a reference multi-head attention, in one run.

Layers over the same tokens, all with causal masking, H heads of size Dh (D = H·Dh), float32:

* ``reference``: q/k/v/o projections + ``jax.nn.dot_product_attention`` + residual,
* ``relaxed``: ``Layer(Interaction(D, H, Dh, values=True), "gd", mode="relaxed")`` — one gradient step on the
  Helmholtz inner-product energy with independent value/output projections (equal to the reference),
* ``tied``: ``Layer(Interaction(D, H, Dh), "gd", mode="tied")`` — the exact gradient step (values ``k W^Qᵀ``),
* ``relaxed_chunked`` / ``tied_chunked``: the same layers with ``Helmholtz(chunk_size=C)``: blocks of C queries and
  keys with an online logsumexp, memory linear in S,
* ``einsum``: the reference written out with einsums and ``jax.nn.softmax`` (a second baseline: how much of a
  ratio is the derived layer and how much is ``dot_product_attention``'s own lowering).

For each sequence length it measures, with the pure functions (no NNX): forward time, train-step time
(``jax.grad`` of ``sum(out²)`` w.r.t. every trainable weight and the inputs; for the derived layers this is a
derivative of a derivative), and the temporary memory XLA reserves for each compiled function. Times are medians
of several runs after a warm-up, with ``block_until_ready``, interleaved across the layers so that other
load on the machine falls on each alike. Ratios are ours / reference: below 1 is cheaper than the reference.

The long-sequence table (``--long 8192``; ``--long-heads`` heads so that the dense reference fits in memory)
compares the chunked layers with the dense reference, and lists the chunked train step's temp memory at S/4, S/2
and S to show it growing linearly besides the (S, S) boolean mask the step builds. It is not run by default (the
dense reference needs about 2 GB of memory there).

Every time ratio is taken repeat by repeat (ours and the reference timed within the same round) and printed as its
median with its range; the date and load average are printed at the start and end.

    python benchmarks/attention.py                    # S = 512 and 2048
    python benchmarks/attention.py --seq --long 8192  # the long table only
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

from energyformer.energies import Helmholtz, Interaction, init_params, masks, param_trainable
from energyformer.layers import Layer
from report import check_repeats, conditions, ratios, show, spread

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


def derived_layers(dim: int, heads: int, head_dim: int, chunk_size: int, names) -> dict:
  """The derived layers named in ``names``: ``relaxed``/``tied``, dense or with ``_chunked``."""
  layers = {}
  for name in names:
    mode = name.split("_")[0]
    aggregate = Helmholtz(chunk_size=chunk_size if name.endswith("_chunked") else None)
    layers[name] = Layer(Interaction(dim, heads, head_dim, aggregate=aggregate, values=mode == "relaxed"), "gd",
                         mode=mode)
  return layers


def layer_jobs(names, seq: int, heads: int, head_dim: int, batch: int, chunk_size: int, seed: int = 0) -> dict:
  """``{name: (apply, args)}`` for the baselines and derived layers in ``names``, on shared weights and tokens."""
  dim = heads * head_dim
  key_x, key_p = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(key_x, (batch, seq, dim), jnp.float32)
  specs = Interaction(dim, heads, head_dim, values=True).specs()
  weights, fixed = split_params(init_params(specs, key_p), specs)
  baselines = {"reference": reference_layer, "einsum": einsum_layer}
  jobs = {name: (baselines[name], (weights, fixed, x)) for name in names if name in baselines}
  for name, layer in derived_layers(dim, heads, head_dim, chunk_size, [n for n in names if n not in baselines]).items():
    layer_weights = {k: v for k, v in weights.items() if k in layer.specs()["energy"]}
    jobs[name] = (derived_layer(layer, layer.default_hparams()), (layer_weights, fixed, x))
  return dict(sorted(jobs.items(), key=lambda item: list(names).index(item[0])))


def time_and_memory(layers: dict, repeats: int):
  """``(rows, outputs)`` for ``layers = {name: (apply, args)}``: per layer the compile time, temp memory and median
  (and min, and all) run time of its forward and train step, and each job's output."""
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
  return rows, outputs


def measure(names, seq: int, heads: int, head_dim: int, batch: int, repeats: int, chunk_size: int) -> dict:
  rows, outputs = time_and_memory(layer_jobs(names, seq, heads, head_dim, batch, chunk_size), repeats)
  ref = rows["reference"]
  for name, row in rows.items():
    row["ratios"] = {k: row[k] / ref[k] if ref[k] else float("nan") for k in RATIO_KEYS}
    # Time ratios repeat by repeat (ours and the reference timed within the same interleaved round): their median
    # is the ratio reported, their range its spread.
    row["ratio_spread"] = {f"{kind}_s": spread(ratios(row[f"{kind}_times_s"], ref[f"{kind}_times_s"]))
                           for kind in ("forward", "train_step")}
    row["ratios"].update({k: v["median"] for k, v in row["ratio_spread"].items()})
  # Every relaxed layer (and the einsum baseline) is the reference attention: same output, same training gradients.
  for name in rows:
    if name == "einsum" or name.startswith("relaxed"):
      for kind in ("forward", "train_step"):
        rows[name][f"{kind}_rel_diff"] = relative_diff(outputs[name, kind], outputs["reference", kind])
  return {"seq": seq, "batch": batch, "heads": heads, "head_dim": head_dim, "dim": heads * head_dim,
          "repeats": repeats, "chunk_size": chunk_size, "layers": rows}


def chunked_memory_growth(seqs, heads: int, head_dim: int, batch: int, chunk_size: int) -> dict:
  """Train-step temp memory (bytes) of the chunked layers at each length in ``seqs`` (compiled, not run)."""
  growth = {}
  for seq in seqs:
    for name, (apply, args) in layer_jobs(("relaxed_chunked", "tied_chunked"), seq, heads, head_dim, batch,
                                          chunk_size).items():
      growth.setdefault(name, {})[seq] = compile_fn(train_step(apply), args).memory_analysis().temp_size_in_bytes
  return growth


RATIO_KEYS = ("forward_s", "train_step_s", "forward_temp_bytes", "train_step_temp_bytes")
PARITY = 1.05  # dense derived layers: at most this times the reference's train-step time and memory
LONG_MEMORY, LONG_TIME = 0.3, 1.3  # chunked layers at the long length: memory and time limits vs the reference


def print_table(results) -> None:
  header = (f"{'layer':<16} {'S':>5} | {'fwd ms':>9} {'ratio':>6} | {'fwd temp MB':>11} {'ratio':>6} | "
            f"{'train ms':>9} {'ratio':>6} | {'train temp MB':>13} {'ratio':>6}")
  print(header)
  print("-" * len(header))
  for result in results:
    for name, row in result["layers"].items():
      r = row["ratios"]
      print(f"{name:<16} {result['seq']:>5} | {1e3 * row['forward_s']:>9.1f} {r['forward_s']:>5.2f}x | "
            f"{row['forward_temp_bytes'] / MB:>11.1f} {r['forward_temp_bytes']:>5.2f}x | "
            f"{1e3 * row['train_step_s']:>9.1f} {r['train_step_s']:>5.2f}x | "
            f"{row['train_step_temp_bytes'] / MB:>13.1f} {r['train_step_temp_bytes']:>5.2f}x")
    print("-" * len(header))
  for result in results:
    ref = result["layers"]["reference"]
    print(f"S={result['seq']}: reference forward {show(spread(ref['forward_times_s']), 1e3, 1, ' ms')}, train step "
          f"{show(spread(ref['train_step_times_s']), 1e3, 1, ' ms')}, train-step temp memory "
          f"{ref['train_step_temp_bytes'] / MB:.1f} MB")
    for name, row in result["layers"].items():
      if "train_step_rel_diff" in row:
        print(f"S={result['seq']}: {name} vs reference, max |Δ| / max |reference|: output "
              f"{row['forward_rel_diff']:.1e}, train-step gradients {row['train_step_rel_diff']:.1e}")
  print()
  for result in results:
    for name, row in result["layers"].items():
      if name == "reference":
        continue
      r, spreads = row["ratios"], row["ratio_spread"]
      print(f"S={result['seq']}: {name} forward time {show(spreads['forward_s'])}x, train-step time "
            f"{show(spreads['train_step_s'])}x (median (range) of {result['repeats']} repeats), forward temp "
            f"memory {r['forward_temp_bytes']:.2f}x, train-step temp memory {r['train_step_temp_bytes']:.2f}x")
    layers = result["layers"]
    if "einsum" in layers:
      for name in [n for n in layers if n not in ("reference", "einsum")]:
        print(f"S={result['seq']}: {name} vs einsum baseline: forward time "
              f"{layers[name]['forward_s'] / layers['einsum']['forward_s']:.2f}x, train-step time "
              f"{layers[name]['train_step_s'] / layers['einsum']['train_step_s']:.2f}x")


def print_growth(growth) -> None:
  """Chunked train-step temp memory per length, with and without the (S, S) boolean causal mask built in the step
  (one byte per pair: the only part that is not linear in S)."""
  for name, by_seq in growth.items():
    cells = ", ".join(f"S={seq}: {size / MB:.1f} MB, {(size - seq * seq) / MB / seq * 1024:.1f} MB per 1k tokens "
                      f"besides the {seq * seq / MB:.0f} MB mask" for seq, size in by_seq.items())
    print(f"{name} train-step temp memory: {cells}")


def verdict(ok: bool) -> str:
  return "met" if ok else "NOT met"


def print_targets(results, long_results) -> None:
  """One line per target: the measured ratio, the limit, met or not."""
  print("targets (ratios are ours / reference, in the same run):")
  for result in results:
    for name in ("relaxed", "tied"):
      if name in result["layers"]:
        r = result["layers"][name]["ratios"]
        print(f"  S={result['seq']}: {name} train-step time {r['train_step_s']:.2f}x, memory "
              f"{r['train_step_temp_bytes']:.2f}x (limit {PARITY}x): "
              f"{verdict(max(r['train_step_s'], r['train_step_temp_bytes']) <= PARITY)}")
  for result in long_results:
    for name, row in result["layers"].items():
      if name.endswith("_chunked"):
        r = row["ratios"]
        print(f"  S={result['seq']}: {name} train-step memory {r['train_step_temp_bytes']:.2f}x (limit "
              f"{LONG_MEMORY}x), time {r['train_step_s']:.2f}x (limit {LONG_TIME}x): "
              f"{verdict(r['train_step_temp_bytes'] <= LONG_MEMORY and r['train_step_s'] <= LONG_TIME)}")


def default_repeats(seq: int, quick: bool) -> int:
  return 3 if quick or seq >= 4096 else 11 if seq < 1024 else 7 if seq < 2048 else 5


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seq", type=int, nargs="*", default=None, help="sequence lengths (default 512 2048)")
  parser.add_argument("--heads", type=int, default=8, help="heads (default 8)")
  parser.add_argument("--head-dim", type=int, default=64, help="head size (default 64)")
  parser.add_argument("--batch", type=int, default=1, help="sequences per batch (default 1)")
  parser.add_argument("--chunk", type=int, default=512, help="chunk size of the chunked layers (default 512)")
  parser.add_argument("--long", type=int, nargs="*", default=[],
                      help="long sequence lengths, chunked vs dense reference (default: none; the table was taken at "
                           "8192)")
  parser.add_argument("--long-heads", type=int, default=2,
                      help="heads at the long lengths (default 2: the dense reference then needs ~2 GB)")
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed runs per measurement (default: 11 below S=1024, 7 below 2048, 5 below 4096, "
                           "else 3)")
  parser.add_argument("--quick", action="store_true", help="S = 256 only (unless --seq), 3 repeats")
  parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
  args = parser.parse_args(argv)

  if args.repeats is not None:
    check_repeats(args.repeats)
  print(conditions("started"))
  seqs = args.seq if args.seq is not None else ([256] if args.quick else [512, 2048])
  longs = args.long
  info = machine()
  print(f"machine: {info['platform']} ({info['processor']}), {info['cpu_count']} CPUs, "
        f"python {info['python']}, jax {info['jax']}, backend {info['backend']} ({info['device']})")
  if info["backend"] != "gpu":
    print("GPU: none on this machine; Helmholtz(implementation='cudnn') selects the XLA path here, so no fused-kernel "
          "timings are taken")
  print(f"config: {args.heads} heads x {args.head_dim} (D = {args.heads * args.head_dim}), batch {args.batch}, "
        f"float32, causal, chunk size {args.chunk}; times are medians after warm-up")
  print()

  dense_names = ("reference", "einsum", "relaxed", "tied", "relaxed_chunked", "tied_chunked")
  results = [measure(dense_names, seq, args.heads, args.head_dim, args.batch,
                     args.repeats or default_repeats(seq, args.quick), args.chunk) for seq in seqs]
  if results:
    print_table(results)
    print()

  long_results, growth = [], {}
  for seq in longs:
    print(f"long sequence: S = {seq}, {args.long_heads} heads x {args.head_dim}, chunked layers vs dense reference")
    long_results.append(measure(("reference", "relaxed_chunked", "tied_chunked"), seq, args.long_heads,
                                args.head_dim, args.batch, args.repeats or default_repeats(seq, args.quick),
                                args.chunk))
    growth[seq] = chunked_memory_growth((seq // 4, seq // 2, seq), args.long_heads, args.head_dim, args.batch,
                                        args.chunk)
    print_table(long_results[-1:])
    print_growth(growth[seq])
    print()
  print_targets(results, long_results)
  print(conditions("finished"))

  if args.json:
    with open(args.json, "w") as f:
      json.dump({"command": " ".join(sys.argv), "machine": info, "load_average_end": os.getloadavg(), "results": results, "long_results": long_results,
                 "chunked_memory_growth": growth}, f, indent=2)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
  main()
