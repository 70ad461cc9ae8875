"""The LIS study: every attention variant trained on the Longest Increasing Subsequence task, several seeds each.

For each variant one compiled program trains all seeds at once (the training step is ``jax.vmap``-ed over a
population axis of parameters, optimizer states and batches). Batches come from the grain pipeline of
``energyformer.data.lis``; validation accuracy is measured every ``eval_every`` steps on the in-distribution
validation split, and at the end also on the held-out-length test split.

Accuracy is exact match of the whole answer under teacher forcing, which equals exact match of greedy decoding:
if every teacher-forced argmax is right, greedy decoding reproduces the answer, and conversely.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from energyformer.checks import check_positive_int, check_range
from energyformer.data import LISConfig, lis_dataset, numpy_split
from energyformer.metrics import MetricsWriter
from energyformer.models import GPT, VARIANTS, GPTConfig


@dataclasses.dataclass(frozen=True)
class LISStudy:
  """What to train and how: data, model sizes, variants, seeds and the optimisation budget."""

  data: LISConfig = LISConfig(min_length=6, max_length=12, vocab_numbers=24, train_size=20_000, val_size=500,
                              test_size=500, test_lengths=(13, 16))
  dim: int = 48
  num_heads: int = 4
  head_dim: int = 12
  depth: int = 2
  mlp_hidden: int = 96
  variants: tuple[str, ...] = VARIANTS
  seeds: int = 3
  steps: int = 400
  batch_size: int = 32
  learning_rate: float = 3e-3
  warmup_steps: int = 40
  weight_decay: float = 0.01
  eval_every: int = 25
  target_accuracy: float = 0.5
  remat: bool = False

  def __post_init__(self):
    unknown = [v for v in self.variants if v not in VARIANTS]
    if unknown:
      raise ValueError(f"unknown attention variant(s) {unknown}; choose from {VARIANTS}.")
    for name in ("seeds", "steps", "batch_size", "eval_every"):
      check_positive_int(name, getattr(self, name))
    check_range("learning_rate", self.learning_rate, 0.0, low_open=True, fix="Use a positive learning rate.")
    check_range("target_accuracy", self.target_accuracy, 0.0, 1.0, fix="Use a target accuracy in [0, 1].")

  def model_config(self, variant: str) -> GPTConfig:
    return GPTConfig(self.data.vocab_size, self.data.context_length, self.dim, self.num_heads, self.head_dim,
                     self.depth, self.mlp_hidden, variant=variant, remat=self.remat)


PRESETS = {
    "default": LISStudy(),
    "tiny": LISStudy(data=LISConfig(min_length=4, max_length=6, vocab_numbers=12, train_size=512, val_size=64,
                                    test_size=64, test_lengths=(7, 8)),
                     dim=16, num_heads=2, head_dim=8, depth=2, mlp_hidden=32, seeds=2, steps=30, batch_size=16,
                     eval_every=10, warmup_steps=5),
    # The paper-scale protocol of Feng et al. (2023): sequences of up to 100 numbers, 1M training examples. GPU.
    "paper": LISStudy(data=LISConfig(min_length=10, max_length=100, vocab_numbers=150, train_size=1_000_000,
                                     val_size=10_000, test_size=10_000, test_lengths=(101, 120)),
                      dim=256, num_heads=8, head_dim=32, depth=6, mlp_hidden=1024, seeds=3, steps=50_000,
                      batch_size=256, learning_rate=1e-3, warmup_steps=1000, eval_every=1000, target_accuracy=0.9, remat=True),
}


def masked_metrics(logits, tokens, loss_mask):
  """Mean cross-entropy over the answer positions and the fraction of examples whose whole answer is the argmax."""
  targets, mask = tokens[:, 1:], loss_mask[:, :-1]
  loss = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, targets) * mask) / jnp.sum(mask)
  wrong = (jnp.argmax(logits, axis=-1) != targets) & (mask > 0)
  return loss, jnp.mean(~jnp.any(wrong, axis=-1))


def _optimizer(study: LISStudy):
  schedule = optax.warmup_cosine_decay_schedule(0.0, study.learning_rate, study.warmup_steps, study.steps)
  return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=study.weight_decay))


def _programs(study: LISStudy, variant: str):
  """Population init, train step and evaluation for one variant, each vmapped over seeds and jitted."""
  config = study.model_config(variant)
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: GPT(config, rngs=nnx.Rngs(0))))
  optimizer = _optimizer(study)

  def population(seeds: int):
    """One model per seed, initialised eagerly (cheaper than compiling the initialisers) and stacked."""
    members = [nnx.split(GPT(config, rngs=nnx.Rngs(seed)), nnx.Param, ...)[1:] for seed in range(seeds)]
    params, rest = jax.tree.map(lambda *leaves: jnp.stack(leaves), *members)
    return params, rest, jax.vmap(optimizer.init)(params)

  def metrics(params, rest, batch):
    logits = nnx.merge(graphdef, params, rest)(batch["tokens"][:, :-1])
    return masked_metrics(logits, batch["tokens"], batch["loss_mask"])

  def train_step(params, rest, opt_state, batch):
    (loss, accuracy), grads = jax.value_and_grad(metrics, has_aux=True)(params, rest, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, accuracy

  step = jax.jit(jax.vmap(train_step), donate_argnums=(0, 2))
  evaluate = jax.jit(jax.vmap(metrics, in_axes=(0, 0, None)))
  return population, step, evaluate


def train_variant(study: LISStudy, variant: str, splits: dict, writer: MetricsWriter, progress) -> dict:
  """Trains ``study.seeds`` models of ``variant`` together; returns their curves, final accuracies and timing."""
  population, step, evaluate = _programs(study, variant)
  params, rest, opt_state = population(study.seeds)
  batches = iter(lis_dataset(study.data, "train", batch_size=study.seeds * study.batch_size, shuffle_seed=1))
  curve, step_times = [], []
  for index in range(1, study.steps + 1):
    batch = {k: v.reshape(study.seeds, study.batch_size, *v.shape[1:]) for k, v in next(batches).items()
             if k in ("tokens", "loss_mask")}
    start = time.perf_counter()
    params, opt_state, loss, accuracy = step(params, rest, opt_state, batch)
    loss = np.asarray(loss)
    step_times.append(time.perf_counter() - start)
    if index % study.eval_every == 0 or index == study.steps:
      _, val_accuracy = evaluate(params, rest, splits["val"])
      val_accuracy = np.asarray(val_accuracy)
      curve.append((index, val_accuracy.tolist()))
      for seed in range(study.seeds):
        writer.write(index, {"train_loss": loss[seed], "val_accuracy": val_accuracy[seed]}, f"{variant}/seed{seed}")
      progress.set_postfix(variant=variant, loss=f"{loss.mean():.3f}", val_acc=f"{val_accuracy.mean():.2f}")
    progress.update(1)
  _, test_accuracy = evaluate(params, rest, splits["test"])
  return {"variant": variant, "curve": curve, "val_accuracy": curve[-1][1],
          "test_accuracy": np.asarray(test_accuracy).tolist(),
          "steps_to_target": _steps_to_target(curve, study.target_accuracy, study.seeds),
          "seconds_per_step": float(np.median(step_times[1:] or step_times))}


def _steps_to_target(curve, target, seeds):
  """Per seed, the first evaluated step whose validation accuracy reaches ``target`` (None if never)."""
  return [next((step for step, accs in curve if accs[seed] >= target), None) for seed in range(seeds)]


def summarize(result: dict) -> dict:
  """Mean ± std over seeds of the final accuracies, and the mean steps to target over the seeds that reached it."""
  reached = [s for s in result["steps_to_target"] if s is not None]
  return {"variant": result["variant"],
          "val_accuracy_mean": float(np.mean(result["val_accuracy"])),
          "val_accuracy_std": float(np.std(result["val_accuracy"])),
          "test_accuracy_mean": float(np.mean(result["test_accuracy"])),
          "test_accuracy_std": float(np.std(result["test_accuracy"])),
          "steps_to_target_mean": float(np.mean(reached)) if reached else None,
          "seeds_reaching_target": len(reached),
          "ms_per_step": 1000 * result["seconds_per_step"]}


def format_table(rows: list[dict], study: LISStudy) -> str:
  """The study's summary as a text table."""
  header = (f"{'variant':14s} {'val acc':>15s} {'held-out acc':>15s} "
            f"{f'steps to {study.target_accuracy:.0%}':>16s} {'ms/step':>8s}")
  lines = [header, "-" * len(header)]
  for r in rows:
    reached = (f"{r['steps_to_target_mean']:.0f} ({r['seeds_reaching_target']}/{study.seeds})"
               if r["steps_to_target_mean"] is not None else f"— (0/{study.seeds})")
    lines.append(f"{r['variant']:14s} {r['val_accuracy_mean']:8.3f} ± {r['val_accuracy_std']:.3f} "
                 f"{r['test_accuracy_mean']:8.3f} ± {r['test_accuracy_std']:.3f} {reached:>16s} "
                 f"{r['ms_per_step']:8.1f}")
  return "\n".join(lines)


def plot_curves(results: list[dict], path) -> None:
  """Validation accuracy against step, mean over seeds with a ±1 std band, one line per variant."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for result in results:
    steps = np.array([s for s, _ in result["curve"]])
    accs = np.array([a for _, a in result["curve"]])
    mean, std = accs.mean(axis=1), accs.std(axis=1)
    ax.plot(steps, mean, label=result["variant"])
    ax.fill_between(steps, mean - std, mean + std, alpha=0.15)
  ax.set(xlabel="training step", ylabel="validation exact-match accuracy", title="LIS: attention variants", ylim=(0, 1))
  ax.legend(fontsize=8, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def run(study: LISStudy, out_dir="runs/lis") -> list[dict]:
  """Trains every variant, prints the table, writes results.csv, results.json, metrics and val_accuracy.png."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  splits = {name: {k: jnp.asarray(v) for k, v in numpy_split(study.data, name).items() if k in ("tokens", "loss_mask")}
            for name in ("val", "test")}
  results = []
  with MetricsWriter(out) as writer, tqdm(total=study.steps * len(study.variants), desc="LIS", unit="step") as bar:
    for variant in study.variants:
      results.append(train_variant(study, variant, splits, writer, bar))
  rows = [summarize(r) for r in results]
  table = format_table(rows, study)
  print("\n" + table)
  with open(out / "results.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  (out / "results.json").write_text(json.dumps({"study": _study_dict(study), "summary": rows, "runs": results}, indent=1))
  plot_curves(results, out / "val_accuracy.png")
  print(f"wrote {out / 'results.csv'}, {out / 'results.json'}, {out / 'metrics.jsonl'} and {out / 'val_accuracy.png'}")
  return rows


def _study_dict(study: LISStudy) -> dict:
  return json.loads(json.dumps(dataclasses.asdict(study), default=list))
