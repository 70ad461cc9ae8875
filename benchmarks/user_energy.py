"""Cost of attention layers derived from energies a user writes, against reference attention and against the same
layers written out by hand, in one run.

Three user energies, written as a user would (module level below), each under the library's default
``Helmholtz()`` (temperature √Dh; ``chunk_size="auto"``: blockwise for long sequences):

* ``elastic``: ``energies.pairwise(lambda q, k: ½‖q − k‖²)``, a function of one (query, key) pair,
* ``huber``: ``energies.pairwise`` of ``Σ_j huber_δ(q_j − k_j)`` (δ = 1),
* ``elastic_scores``: the elastic energy as a plain function of the scores, ``½‖q‖² − s + ½‖k‖²``.

Each is one gradient-descent step of ``Layer(Interaction(D, H, Dh, local=...), "gd", mode="tied")``
(``x − η ∂F/∂x``, η = 1). Against

* ``reference``: q/k/v/o projections + ``jax.nn.dot_product_attention`` + residual (``benchmarks/attention.py``),
* ``<energy>_by_hand``: the same layer in ``jnp`` with its gradient written out: ``∂F/∂q_n = Σ_m p_nm g(q_n, k_m)``
  with ``p = softmax_m(−E_nm / T)`` and the per-pair gradient ``g = ∂E/∂q`` written by hand (``q − k``, or
  ``clip(q − k, −δ, δ)``), in one blockwise pass with an online softmax (each key tile's work under
  ``jax.checkpoint``). The pairwise energies' hand-written layers do the same per-pair vector work as the user's
  function; ``elastic_scores_by_hand`` uses the expansion (``Σ_m p_nm (q_n − k_m) = q_n − Σ_m p_nm k_m``,
  products of matrices), as the score form does.

Float32, causal, batch 1, D = H·Dh. Train step = ``jax.grad`` of ``sum(out²)`` w.r.t. the weights and the tokens;
for the derived layers a derivative of a derivative. Time and temp memory are measured as in
``benchmarks/attention.py`` (interleaved medians after a warm-up; XLA's temp buffer size); every time ratio is
taken repeat by repeat and printed as its median with its range in brackets. The date and load average are printed
at the start and end.

    python benchmarks/user_energy.py                         # S = 512 and 2048
    python benchmarks/user_energy.py --seq 8192              # the long length: about 9 minutes on a 2-core CPU
    python benchmarks/user_energy.py --seq 256 --repeats 3   # a quick look
"""
from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp

from attention import (MB, default_repeats, derived_layer, machine, reference_layer, relative_diff, split_params,
                       time_and_memory)
from report import check_repeats, conditions, ratios, show, spread
from energyformer import energies
from energyformer.layers import Layer

HUBER_DELTA = 1.0


# --- the user's energies ------------------------------------------------------------------------------------

@energies.pairwise
def elastic(q, k):
  return 0.5 * jnp.sum((q - k) ** 2)


@energies.pairwise
def huber(q, k):
  r = jnp.abs(q - k)
  return jnp.sum(jnp.where(r <= HUBER_DELTA, 0.5 * r * r, HUBER_DELTA * (r - 0.5 * HUBER_DELTA)))


def elastic_scores(scores, q, k):
  return 0.5 * jnp.sum(q * q, -1)[..., :, None] - scores + 0.5 * jnp.sum(k * k, -1)[..., None, :]


USER_ENERGIES = {"elastic": elastic, "huber": huber, "elastic_scores": elastic_scores}


# --- the same layers by hand: per-tile energies and per-pair gradients -----------------------------------------

def elastic_tile(q, k):
  """``(E, Σ_m w_nm g_nm as a function of w)`` for ``E = ½‖q − k‖²``, ``g = q − k`` over one tile."""
  diff = q[:, :, None, :] - k[:, None, :, :]
  return 0.5 * jnp.sum(diff * diff, -1), lambda w: jnp.einsum("hnm,hnmd->hnd", w, diff)


def huber_tile(q, k):
  """The same for Huber: ``g = clip(q − k, −δ, δ)``."""
  diff = q[:, :, None, :] - k[:, None, :, :]
  r = jnp.abs(diff)
  energy = jnp.sum(jnp.where(r <= HUBER_DELTA, 0.5 * r * r, HUBER_DELTA * (r - 0.5 * HUBER_DELTA)), -1)
  return energy, lambda w: jnp.einsum("hnm,hnmd->hnd", w, jnp.clip(diff, -HUBER_DELTA, HUBER_DELTA))


def elastic_scores_tile(q, k):
  """The same for the expanded elastic energy: ``Σ_m w (q_n − k_m) = (Σ_m w) q_n − w k``."""
  energy = 0.5 * jnp.sum(q * q, -1)[..., :, None] - jnp.einsum("hnd,hmd->hnm", q, k) \
      + 0.5 * jnp.sum(k * k, -1)[..., None, :]
  return energy, lambda w: jnp.sum(w, -1)[..., None] * q - jnp.einsum("hnm,hmd->hnd", w, k)


BY_HAND = {"elastic": elastic_tile, "huber": huber_tile, "elastic_scores": elastic_scores_tile}


def query_gradient_by_hand(pair_tile, q, k, temperature, size: int):
  """``∂F/∂q_hn = Σ_m p_hnm g(q_hn, k_hm)`` under a causal mask, query blocks × key tiles, online softmax."""
  heads, seq, head_dim = q.shape
  blocks = seq // size
  q_blocks = q.reshape(heads, blocks, size, head_dim).swapaxes(0, 1)
  k_blocks = k.reshape(heads, blocks, size, head_dim).swapaxes(0, 1)
  inv_t = 1.0 / temperature[:, None, None]
  diagonal = jnp.tril(jnp.ones((size, size), bool))

  def query_block(args):
    i, q_i = args

    @jax.checkpoint
    def key_block(carry, xs):
      j, k_j = xs

      def update(carry):
        top, total, acc = carry
        energy, weigh = pair_tile(q_i, k_j)
        logits = jnp.where((j < i) | diagonal, -energy * inv_t, -jnp.inf)
        new_top = jax.lax.stop_gradient(jnp.maximum(top, jnp.max(logits, -1)))
        decay = jnp.exp(top - new_top)
        w = jnp.exp(logits - new_top[..., None])
        return new_top, total * decay + jnp.sum(w, -1), acc * decay[..., None] + weigh(w)

      return jax.lax.cond(j <= i, update, lambda c: c, carry), None

    init = (jnp.full((heads, size), -jnp.inf), jnp.zeros((heads, size)), jnp.zeros((heads, size, head_dim)))
    _, total, acc = jax.lax.scan(key_block, init, (jnp.arange(blocks), k_blocks))[0]
    return acc / total[..., None]

  grads = jax.lax.map(query_block, (jnp.arange(blocks), q_blocks))
  return grads.swapaxes(0, 1).reshape(heads, seq, head_dim)


def layer_by_hand(pair_tile, size: int, eta: float):
  """``x − η Σ_h (∂F/∂q_h) W^Q_hᵀ`` per sequence of a (B, N, D) batch."""

  def apply(weights, fixed, x):
    def one(x):
      q = jnp.einsum("nd,dhk->hnk", x, weights["query"])
      k = jnp.einsum("md,dhk->hmk", x, weights["key"])
      grad_q = query_gradient_by_hand(pair_tile, q, k, fixed["temperature"], size)
      return x - eta * jnp.einsum("hnk,dhk->nd", grad_q, weights["query"])

    return jax.vmap(one)(x)

  return apply


# --- jobs and reports ----------------------------------------------------------------------------------------

def jobs(seq: int, heads: int, head_dim: int, size: int, names, seed: int = 0) -> dict:
  """``{name: (apply, args)}``: the reference, each user energy's derived layer and its hand-written layer."""
  dim = heads * head_dim
  key_x, key_p = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(key_x, (1, seq, dim), jnp.float32)
  specs = energies.Interaction(dim, heads, head_dim, values=True).specs()
  weights, fixed = split_params(energies.init_params(specs, key_p), specs)
  out = {"reference": (reference_layer, (weights, fixed, x))}
  for name in names:
    layer = Layer(energies.Interaction(dim, heads, head_dim, local=USER_ENERGIES[name]), "gd", mode="tied")
    hparams = layer.default_hparams()
    qk = {k: weights[k] for k in ("query", "key")}
    out[name] = (derived_layer(layer, hparams), (qk, fixed, x))
    out[f"{name}_by_hand"] = (layer_by_hand(BY_HAND[name], size, float(hparams["eta"])), (qk, fixed, x))
  return out


def measure(seq: int, heads: int, head_dim: int, size: int, names, repeats: int) -> dict:
  rows, outputs = time_and_memory(jobs(seq, heads, head_dim, size, names), repeats)
  ref = rows["reference"]
  for name, row in rows.items():
    row["vs_reference"] = {k: row[k] / ref[k] for k in ("train_step_temp_bytes", "forward_temp_bytes")}
    row["vs_reference_spread"] = {f"{kind}_s": spread(ratios(row[f"{kind}_times_s"], ref[f"{kind}_times_s"]))
                                  for kind in ("forward", "train_step")}
    row["vs_reference"].update({k: v["median"] for k, v in row["vs_reference_spread"].items()})
    if f"{name}_by_hand" in rows:
      hand = rows[f"{name}_by_hand"]
      row["vs_by_hand_spread"] = {"train_step_s": spread(ratios(row["train_step_times_s"],
                                                                hand["train_step_times_s"]))}
      row["vs_by_hand"] = {"train_step_s": row["vs_by_hand_spread"]["train_step_s"]["median"],
                           "train_step_temp_bytes": row["train_step_temp_bytes"] / hand["train_step_temp_bytes"]}
      row["rel_diff_by_hand"] = {kind: relative_diff(outputs[name, kind], outputs[f"{name}_by_hand", kind])
                                 for kind in ("forward", "train_step")}
  return {"seq": seq, "heads": heads, "head_dim": head_dim, "tile": size, "repeats": repeats, "layers": rows}


TARGET_MEMORY, TARGET_BY_HAND, TARGET_REFERENCE = 1.5, 1.2, 4.0


def print_result(result) -> None:
  header = (f"{'layer':<24} {'S':>5} | {'train ms':>9} {'/ref':>6} {'/hand':>6} | {'train MB':>9} {'/ref':>6} "
            f"{'/hand':>6} | {'fwd ms':>8} {'/ref':>6} | {'fwd MB':>8}")
  print(header)
  print("-" * len(header))
  for name, row in result["layers"].items():
    ref, hand = row["vs_reference"], row.get("vs_by_hand", {})
    cell = lambda key: f"{hand[key]:>5.2f}x" if key in hand else f"{'':>6}"
    print(f"{name:<24} {result['seq']:>5} | {1e3 * row['train_step_s']:>9.1f} {ref['train_step_s']:>5.2f}x "
          f"{cell('train_step_s')} | {row['train_step_temp_bytes'] / MB:>9.1f} {ref['train_step_temp_bytes']:>5.2f}x "
          f"{cell('train_step_temp_bytes')} | {1e3 * row['forward_s']:>8.1f} {ref['forward_s']:>5.2f}x | "
          f"{row['forward_temp_bytes'] / MB:>8.1f}")
  reference = spread(result["layers"]["reference"]["train_step_times_s"])
  print(f"S={result['seq']}: reference train step {show(reference, 1e3, 1, ' ms')}")
  for name, row in result["layers"].items():
    if name == "reference":
      continue
    by_hand = row.get("vs_by_hand_spread", {}).get("train_step_s")
    print(f"S={result['seq']}: {name} train time {show(row['vs_reference_spread']['train_step_s'], unit='x')} "
          f"reference" + (f", {show(by_hand, unit='x')} by hand" if by_hand else "")
          + f" (median (range) of {result['repeats']} repeats)")
  for name, row in result["layers"].items():
    if "rel_diff_by_hand" in row:
      diff = row["rel_diff_by_hand"]
      print(f"S={result['seq']}: {name} vs by hand, max |Δ| / max |by hand|: output {diff['forward']:.1e}, "
            f"train-step gradients {diff['train_step']:.1e}")
  print()


def verdict(ok: bool) -> str:
  return "met" if ok else "NOT met"


def print_targets(results) -> None:
  """Memory ≤ 1.5× reference at S = 2048 (and growing linearly); time ≤ 1.2× by hand and, for the pairwise
  energies, ≤ 4× reference."""
  print("targets (ours / reference and ours / by hand, same run):")
  for result in results:
    for name, row in result["layers"].items():
      if "vs_by_hand" not in row:
        continue
      ref, hand = row["vs_reference"], row["vs_by_hand"]
      cells = [f"train memory {ref['train_step_temp_bytes']:.2f}x reference (limit {TARGET_MEMORY}x) "
               f"{verdict(ref['train_step_temp_bytes'] <= TARGET_MEMORY)}",
               f"train time {hand['train_step_s']:.2f}x by hand (limit {TARGET_BY_HAND}x) "
               f"{verdict(hand['train_step_s'] <= TARGET_BY_HAND)}"]
      if isinstance(USER_ENERGIES[name], energies.local.Pairwise):
        cells.append(f"{ref['train_step_s']:.2f}x reference (limit {TARGET_REFERENCE}x) "
                     f"{verdict(ref['train_step_s'] <= TARGET_REFERENCE)}")
      print(f"  S={result['seq']}: {name}: " + "; ".join(cells))
  names = [n for n in results[0]["layers"] if "vs_by_hand" in results[0]["layers"][n]] if results else []
  for name in names:
    cells = ", ".join(f"S={r['seq']}: {r['layers'][name]['train_step_temp_bytes'] / MB:.1f} MB "
                      f"({r['layers'][name]['train_step_temp_bytes'] / r['seq'] / MB * 1024:.2f} MB per 1k tokens)"
                      for r in results)
    print(f"  {name} train-step temp memory: {cells}")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seq", type=int, nargs="*", default=[512, 2048], help="sequence lengths")
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--head-dim", type=int, default=64)
  parser.add_argument("--tile", type=int, default=64, help="tile of the hand-written layers (default 64)")
  parser.add_argument("--energies", nargs="*", default=list(USER_ENERGIES), choices=list(USER_ENERGIES))
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed runs, at least 3 (default: by length, as attention.py: 11 below S = 1024, 7 below "
                           "2048, 5 below 4096, else 3)")
  parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
  args = parser.parse_args(argv)
  if args.repeats is not None:
    check_repeats(args.repeats)

  print(conditions("started"))
  info = machine()
  print(f"machine: {info['platform']} ({info['processor']}), {info['cpu_count']} CPUs, python {info['python']}, "
        f"jax {info['jax']}, backend {info['backend']}")
  print(f"config: {args.heads} heads x {args.head_dim}, float32, causal, batch 1, tied GD step, hand-written tile "
        f"{args.tile}; times are medians after warm-up")
  print()
  results = []
  for seq in args.seq:
    repeats = args.repeats or default_repeats(seq, False)
    results.append(measure(seq, args.heads, args.head_dim, min(args.tile, seq), args.energies, repeats))
    print_result(results[-1])
  print_targets(results)
  print(conditions("finished"))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"command": " ".join(sys.argv), "machine": info, "results": results}, f, indent=2)


if __name__ == "__main__":
  main()
