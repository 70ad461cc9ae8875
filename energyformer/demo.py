"""The demo job: layers derived from several energies, their outputs and their energies along depth.

Every row is an energy + solver turned into a depth stack with no hand-written gradient. The demo prints, per
layer kind, the output norm and the energy before the first and after the last step, writes every step's energy
to ``energies.jsonl`` and plots the traces to ``energy_traces.png``.
"""
from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
from flax import nnx
from tqdm import tqdm

from energyformer import solvers
from energyformer.energies import (Discounted, EnergySum, Gated, HopfieldReLU2, Interaction, LayerNormLagrangian,
                                   PlainSum, elastic, huber, masks, quadratic)
from energyformer.layers import EnergyStack, Layer

DIM, HEADS, HEAD_DIM, TOKENS, DEPTH = 32, 4, 8, 12, 6


def demo_layers():
  """Name → (layer, shared parameters?, mask kind) for every energy and solver the demo shows."""
  softmax = Interaction(DIM, HEADS, HEAD_DIM, values=True)
  tied = Interaction(DIM, HEADS, HEAD_DIM)
  et_energy = EnergySum({"attention": Interaction(DIM, HEADS, HEAD_DIM), "memory": HopfieldReLU2(DIM, 4 * DIM)})
  return {
      "standard attention (relaxed, GD)": (Layer(softmax, solvers.gradient_descent(), "relaxed"), False, "causal"),
      "tied softmax (exact gradient, GD)": (Layer(tied, solvers.gradient_descent(0.5), "tied"), False, "causal"),
      "elastic energy (GD)": (Layer(Interaction(DIM, HEADS, HEAD_DIM, local=elastic), solvers.gradient_descent(0.1), "full"), True, "all"),
      "Huber energy (GD)": (Layer(Interaction(DIM, HEADS, HEAD_DIM, local=huber(0.05)), solvers.gradient_descent(0.1), "full"), True, "all"),
      "linear attention": (Layer(Interaction(DIM, HEADS, HEAD_DIM, quadratic, PlainSum(), True), solvers.gradient_descent(0.1), "relaxed"),
                           False, "causal"),
      "decayed linear attention": (
          Layer(Interaction(DIM, HEADS, HEAD_DIM, quadratic, Discounted(0.9), True), solvers.gradient_descent(0.1), "relaxed"), False, "causal"),
      "gated linear attention": (Layer(Interaction(DIM, HEADS, HEAD_DIM, quadratic, Gated(), True), solvers.gradient_descent(0.1), "relaxed"),
                                 False, "causal"),
      "momentum (MomenMHA)": (Layer(softmax, solvers.momentum(1.0, 0.5), "relaxed"), False, "causal"),
      "Nesterov (NagMHA)": (Layer(softmax, solvers.nesterov(1.0, 0.5), "relaxed"), False, "causal"),
      "Newton (MHA2nd1st)": (Layer(softmax, solvers.newton(0.5), "relaxed"), False, "causal"),
      "secant Newton (LightMHA2nd1st)": (Layer(softmax, solvers.light_newton(0.5), "relaxed"), False, "causal"),
      "Energy Transformer (Euler)": (Layer(et_energy, solvers.euler(0.1), "full", LayerNormLagrangian(DIM)), True,
                                     "exclude_self"),
  }


def _mask(kind: str):
  return {"causal": masks.causal(TOKENS), "exclude_self": masks.self_exclusion(TOKENS), "all": None}[kind]


def run(out_dir: str = "runs/demo", seed: int = 0) -> list[dict]:
  """Builds every demo layer, runs it on the same random tokens, prints a table and writes JSONL and a PNG."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  tokens = jax.random.normal(jax.random.key(seed), (TOKENS, DIM)) / jnp.sqrt(DIM)  # tokens of norm ≈ 1
  rows = []
  for name, (layer, shared, mask_kind) in tqdm(demo_layers().items(), desc="layers"):
    stack = EnergyStack(layer, DEPTH, shared=shared, rngs=nnx.Rngs(seed))
    rollout = stack.rollout(tokens, _mask(mask_kind), record_energy=True)
    rows.append({"layer": name, "solver": layer.solver.name, "mode": layer.mode, "shared": shared,
                 "output_norm": float(jnp.linalg.norm(rollout.x)),
                 "energy_before": [float(e) for e in rollout.energy_before],
                 "energy_after": [float(e) for e in rollout.energy_after]})
  with open(out / "energies.jsonl", "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
  _print_table(rows)
  _plot(rows, out / "energy_traces.png")
  print(f"wrote {out / 'energies.jsonl'} and {out / 'energy_traces.png'}")
  return rows


def _print_table(rows):
  print(f"\n{'layer':34s} {'solver':>12s} {'mode':>8s} {'|x_out|':>9s} {'E first':>11s} {'E last':>11s}")
  for row in rows:
    print(f"{row['layer']:34s} {row['solver']:>12s} {row['mode']:>8s} {row['output_norm']:9.3f} "
          f"{row['energy_before'][0]:11.4g} {row['energy_after'][-1]:11.4g}")


def _plot(rows, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  recurrent = [r for r in rows if r["shared"]]
  fig, axes = plt.subplots(1, len(recurrent), figsize=(4 * len(recurrent), 3.2))
  for ax, row in zip(axes, recurrent):
    trace = row["energy_before"] + row["energy_after"][-1:]
    ax.plot(range(len(trace)), trace, marker="o")
    ax.set(title=row["layer"], xlabel="step", ylabel="energy")
  fig.suptitle("Energy along recurrent depth (one shared parameter set)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
