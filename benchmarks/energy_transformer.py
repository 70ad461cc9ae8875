"""Cost of the library's Energy Transformer against direct implementations of the same equations, in one run.

The ET block of the image recipe: D = 768, 12 heads of 64, 3072 ReLU² memories, 197 tokens, T = 12 Euler steps of
α = 0.1 on ``E(LN(x)) = E^ATT + E^HN`` (attention over all pairs, β = 1/√64), output ``LN(x_T)``. Three versions:

* ``library``: ``EnergyTransformer`` (``EnergyStack`` of the derived ``Layer``, full derivation), as a pure
  function of its parameters through ``nnx.merge``;
* ``autodiff``: the energy written directly with ``jnp`` and ``jax.grad`` taken with respect to ``g`` inside
  a ``lax.scan``;
* ``manual``: the hand-written gradient
  ``∂E/∂g_A = −Σ_h [Σ_B p_hAB W^Q_h K_hB + Σ_C p_hCA W^K_h Q_hC] − ξᵀ ReLU(ξ g_A)`` inside a ``lax.scan``.

It times the forward pass and a training step (``jax.grad`` of ``mean(LN(x_T) · target)`` with respect to every
parameter — a derivative of a derivative), checks that the three agree, and prints times and ratios to
``manual``. Times are medians over interleaved repeats after a warm-up (no ``jax.checkpoint`` in any version).

    python benchmarks/energy_transformer.py            # the paper's size, batch 2
    python benchmarks/energy_transformer.py --small    # a quick run (D = 128, 65 tokens)
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from energyformer.models.energy_transformer import EnergyTransformer, ETConfig
from report import check_repeats, conditions, ratios, show, spread

PAPER = dict(dim=768, num_heads=12, head_dim=64, num_memories=3072, tokens=197)
SMALL = dict(dim=128, num_heads=4, head_dim=32, num_memories=512, tokens=65)


def layer_norm(x, gamma, delta, eps=1e-5):
  """``γ (x − x̄)/√(var(x) + ε) + δ`` per token (scalar γ, vector δ)."""
  centred = x - jnp.mean(x, axis=-1, keepdims=True)
  return gamma * centred * jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + eps) + delta


def energy(params, g, beta):
  """``E = −(1/β) Σ_h Σ_C log Σ_B exp(β K_hB·Q_hC) − ½ Σ_B Σ_μ ReLU(ξ_μ·g_B)²`` for one image g (N, D)."""
  q = jnp.einsum("nd,dhy->hny", g, params["query"])
  k = jnp.einsum("nd,dhy->hny", g, params["key"])
  attention = -jnp.sum(jax.nn.logsumexp(beta * jnp.einsum("hcy,hby->hcb", q, k), axis=-1)) / beta
  return attention - 0.5 * jnp.sum(jnp.square(jax.nn.relu(g @ params["memories"].T)))


def manual_gradient(params, g, beta):
  """``∂E/∂g`` written out (module docstring) for one image."""
  q = jnp.einsum("nd,dhy->hny", g, params["query"])
  k = jnp.einsum("nd,dhy->hny", g, params["key"])
  p = jax.nn.softmax(beta * jnp.einsum("hcy,hby->hcb", q, k), axis=-1)
  attention = jnp.einsum("hab,hby,dhy->ad", p, k, params["query"]) + jnp.einsum("hca,hcy,dhy->ad", p, q,
                                                                                  params["key"])
  return -attention - jax.nn.relu(g @ params["memories"].T) @ params["memories"]


def direct_model(gradient, steps: int, step_size: float, beta: float):
  """``x ← x − α ∂E/∂g(LN(x))`` for ``steps`` steps, then ``LN(x_T)``, batched with ``vmap``."""

  def one(params, x):
    def body(x, _):
      g = layer_norm(x, params["gamma"], params["delta"])
      return x - step_size * gradient(params, g, beta), None

    x, _ = jax.lax.scan(body, x, None, length=steps)
    return layer_norm(x, params["gamma"], params["delta"])

  return jax.vmap(one, in_axes=(None, 0))


def library_model(config: ETConfig):
  """The library's ET as ``(params, x) → LN(x_T)`` over its ``nnx.Param`` state, and that state."""
  graphdef, params, rest = nnx.split(EnergyTransformer(config, rngs=nnx.Rngs(0)), nnx.Param, ...)
  return (lambda p, x: nnx.merge(graphdef, p, rest)(x)), params


def direct_params(library_params) -> dict:
  """The library's parameters (or their gradients) in the direct layout: query, key, memories, gamma, delta."""
  tree = nnx.to_pure_dict(library_params)["stack"]["params"]
  attention, memory, lagrangian = tree["energy"]["attention"], tree["energy"]["memory"], tree["lagrangian"]
  return {"query": attention["query"], "key": attention["key"], "memories": memory["memories"],
          "gamma": lagrangian["gamma"], "delta": lagrangian["delta"]}


def training_step(apply):
  """Gradient of ``mean(apply(params, x) · target)`` with respect to every parameter."""
  return jax.grad(lambda params, x, target: jnp.mean(apply(params, x) * target))


def _timed(compiled, args):
  start = time.perf_counter()
  out = jax.block_until_ready(compiled(*args))
  return time.perf_counter() - start, out


def _max_relative(a, b):
  return max(float(jnp.max(jnp.abs(u - v)) / (jnp.max(jnp.abs(v)) + 1e-30))
             for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def measure(sizes: dict, batch: int, steps: int, repeats: int) -> dict:
  """Compiles and times forward and training step of the three versions; returns times, ratios and agreement."""
  config = ETConfig(dim=sizes["dim"], num_heads=sizes["num_heads"], head_dim=sizes["head_dim"],
                    num_memories=sizes["num_memories"], depth=steps, remat=False)
  beta = config.attention_beta
  library, library_params = library_model(config)
  params = direct_params(library_params)
  x = jax.random.normal(jax.random.key(1), (batch, sizes["tokens"], config.dim))
  target = jax.random.normal(jax.random.key(2), x.shape)
  versions = {
      "library": (library, library_params),
      "autodiff": (direct_model(jax.grad(energy, argnums=1), steps, config.step_size, beta), params),
      "manual": (direct_model(manual_gradient, steps, config.step_size, beta), params),
  }
  jobs = {}
  for name, (apply, weights) in versions.items():
    jobs[name, "forward"] = (jax.jit(apply).lower(weights, x).compile(), (weights, x))
    jobs[name, "train_step"] = (jax.jit(training_step(apply)).lower(weights, x, target).compile(),
                                (weights, x, target))
  outputs = {job: _timed(*jobs[job])[1] for job in jobs}
  outputs["library", "train_step"] = direct_params(outputs["library", "train_step"])
  times = {job: [] for job in jobs}
  for _ in range(repeats):
    for job in jobs:
      times[job].append(_timed(*jobs[job])[0])
  rows = {}
  for name in versions:
    row = {f"{kind}_s": statistics.median(times[name, kind]) for kind in ("forward", "train_step")}
    row.update({f"{kind}_ratio_spread": spread(ratios(times[name, kind], times["manual", kind]))
                for kind in ("forward", "train_step")})
    row.update({f"{kind}_ratio": row[f"{kind}_ratio_spread"]["median"] for kind in ("forward", "train_step")})
    row.update({f"{kind}_rel_diff": _max_relative(outputs[name, kind], outputs["manual", kind])
                for kind in ("forward", "train_step")})
    rows[name] = row
  return {"sizes": sizes, "batch": batch, "steps": steps, "repeats": repeats, "backend": jax.default_backend(),
          "versions": rows}


def print_table(result: dict) -> None:
  s = result["sizes"]
  print(f"ET block: D={s['dim']} H={s['num_heads']} Y={s['head_dim']} M={s['num_memories']} N={s['tokens']}, "
        f"T={result['steps']} steps, batch {result['batch']}, {result['backend']}, median of {result['repeats']}")
  header = (f"{'version':<9} | {'forward ms':>10} {'ratio (range)':>18} | {'train ms':>9} {'ratio (range)':>18} | "
            f"{'max rel diff':>12}")
  print(header)
  print("-" * len(header))
  for name, row in result["versions"].items():
    diff = max(row["forward_rel_diff"], row["train_step_rel_diff"])
    print(f"{name:<9} | {1e3 * row['forward_s']:>10.1f} {show(row['forward_ratio_spread'], unit='x'):>18} | "
          f"{1e3 * row['train_step_s']:>9.1f} {show(row['train_step_ratio_spread'], unit='x'):>18} | {diff:>12.1e}")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--small", action="store_true", help="D = 128, 4 heads, 512 memories, 65 tokens")
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--steps", type=int, default=12)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--json", help="also write the results to this file")
  args = parser.parse_args(argv)
  check_repeats(args.repeats)
  print(conditions("started"))
  result = measure(SMALL if args.small else PAPER, args.batch, args.steps, args.repeats)
  print_table(result)
  print(conditions("finished"))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
