"""The LIS study: every attention variant trained on the Longest Increasing Subsequence task, several seeds each.

For each variant one compiled program trains all seeds at once: the seeds are a population of
``energyformer.train.sweep`` (the training step ``jax.vmap``-ed over parameters, optimizer states and batches).
Seed ``s`` initialises its model with ``s`` and reads its own shuffle of the grain pipeline of
``energyformer.data.lis``; accuracy is measured every ``eval_every`` steps on the in-distribution validation
split and on the held-out-length test split.

Accuracy is exact match of the whole answer under teacher forcing, which equals exact match of greedy decoding:
if every teacher-forced argmax is right, greedy decoding reproduces the answer, and conversely.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import json
import pathlib

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from energyformer.checks import check_positive_int, check_range
from energyformer.data import LISConfig, lis_dataset, numpy_split
from energyformer.metrics import MetricsWriter
from energyformer.models import GPT, VARIANTS, GPTConfig
from energyformer.train import sweep


@dataclasses.dataclass(frozen=True)
class LISStudy:
  """What to train and how: data, model sizes, variants, seeds and the optimisation budget.

  ``scan_unroll=True`` unrolls the depth loop: for these shallow models it removes the loop's stacked-residual
  buffers and makes a training step about 1.4× (one model) to 1.8× (a vmapped population) faster on CPU.
  ``steps_per_call`` training steps run per call of the compiled program (``sweep.SweepConfig``).
  """

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
  scan_unroll: int | bool = True
  steps_per_call: int = 25
  in_memory_data: bool = True

  def __post_init__(self):
    unknown = [v for v in self.variants if v not in VARIANTS]
    if unknown:
      raise ValueError(f"unknown attention variant(s) {unknown}; choose from {VARIANTS}.")
    for name in ("seeds", "steps", "batch_size", "eval_every", "steps_per_call"):
      check_positive_int(name, getattr(self, name))
    check_range("learning_rate", self.learning_rate, 0.0, low_open=True, fix="Use a positive learning rate.")
    check_range("target_accuracy", self.target_accuracy, 0.0, 1.0, fix="Use a target accuracy in [0, 1].")

  def sweep_config(self) -> sweep.SweepConfig:
    """The shared training budget of every model of the study."""
    return sweep.SweepConfig(steps=self.steps, batch_size=self.batch_size, eval_every=self.eval_every,
                             learning_rate=self.learning_rate, weight_decay=self.weight_decay,
                             warmup_steps=self.warmup_steps, steps_per_call=self.steps_per_call)

  def model_config(self, variant: str) -> GPTConfig:
    return GPTConfig(self.data.vocab_size, self.data.context_length, self.dim, self.num_heads, self.head_dim,
                     self.depth, self.mlp_hidden, variant=variant, remat=self.remat, scan_unroll=self.scan_unroll)


PRESETS = {
    "default": LISStudy(),
    "tiny": LISStudy(data=LISConfig(min_length=4, max_length=6, vocab_numbers=12, train_size=512, val_size=64,
                                    test_size=64, test_lengths=(7, 8)),
                     dim=16, num_heads=2, head_dim=8, depth=2, mlp_hidden=32, seeds=2, steps=30, batch_size=16,
                     eval_every=10, warmup_steps=5, steps_per_call=10),
    # The paper-scale protocol of Feng et al. (2023): sequences of up to 100 numbers, 1M training examples. GPU.
    "paper": LISStudy(data=LISConfig(min_length=10, max_length=100, vocab_numbers=150, train_size=1_000_000,
                                     val_size=10_000, test_size=10_000, test_lengths=(101, 120)),
                      dim=256, num_heads=8, head_dim=32, depth=6, mlp_hidden=1024, seeds=3, steps=50_000,
                      batch_size=256, learning_rate=1e-3, warmup_steps=1000, eval_every=1000, target_accuracy=0.9,
                      remat=True, in_memory_data=False),
}


def masked_metrics(logits, tokens, loss_mask):
  """Mean cross-entropy over the answer positions and the fraction of examples whose whole answer is the argmax."""
  targets, mask = tokens[:, 1:], loss_mask[:, :-1]
  loss = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, targets) * mask) / jnp.sum(mask)
  wrong = (jnp.argmax(logits, axis=-1) != targets) & (mask > 0)
  return loss, jnp.mean(~jnp.any(wrong, axis=-1))


@dataclasses.dataclass(frozen=True)
class LISTask:
  """The LIS task for ``energyformer.train.sweep``: a GPT decoder per member, LIS batches, exact-match accuracy."""

  study: LISStudy
  structural = ("variant", "depth", "dim", "num_heads", "head_dim", "mlp_hidden", "mlp", "splitting")
  metric_name = "accuracy"
  higher_is_better = True

  def model(self, member: dict) -> GPT:
    """The member's decoder: the study's sizes with the member's structure and solver hyperparameters."""
    overrides = {k: v for k, v in member.items() if k in self.structural + sweep.SOLVER}
    config = dataclasses.replace(self.study.model_config(overrides.pop("variant", "standard")), **overrides)
    return GPT(config, rngs=nnx.Rngs(int(member.get("seed", 0))))

  def batches(self, data_seed: int, batch_size: int):
    return lis_dataset(self.study.data, "train", batch_size=batch_size, shuffle_seed=data_seed,
                       in_memory=self.study.in_memory_data)

  def evaluation_sets(self) -> dict:
    """The validation split and the held-out-length test split, each one batch."""
    return {name: _split_arrays(self.study.data, name) for name in ("val", "test")}

  def metrics(self, model, batch):
    return masked_metrics(model(batch["tokens"][:, :-1]), batch["tokens"], batch["loss_mask"])


@functools.lru_cache(maxsize=8)
def _split_arrays(data: LISConfig, split: str) -> dict:
  return {k: jnp.asarray(v) for k, v in numpy_split(data, split).items() if k in ("tokens", "loss_mask")}


def train_variant(study: LISStudy, variant: str, writer: MetricsWriter, progress, mesh=None) -> dict:
  """Trains ``study.seeds`` models of ``variant`` as one population (laid over ``mesh``'s ``population`` axis when
  given, ``sweep.population_mesh``); returns curves, accuracies and timing."""
  members = [{"variant": variant, "seed": seed, "data_seed": seed} for seed in range(study.seeds)]
  runs = sweep.train_population(LISTask(study), members, study.sweep_config(), progress=progress, writer=writer,
                                mesh=mesh, mesh_axis=None if mesh is None else "population")
  val = [run["curves"]["val"]["metric"] for run in runs]
  curve = [(step, [accs[i] for accs in val]) for i, step in enumerate(runs[0]["eval_steps"])]
  return {"variant": variant, "curve": curve, "val_accuracy": curve[-1][1],
          "test_accuracy": [run["curves"]["test"]["metric"][-1] for run in runs],
          "steps_to_target": _steps_to_target(curve, study.target_accuracy, study.seeds),
          "seconds_per_step": runs[0]["seconds_per_step"]}


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


def run(study: LISStudy, out_dir="runs/lis", mesh=None) -> list[dict]:
  """Trains every variant (each population over ``mesh`` if given), prints the table, writes results.csv,
  results.json, metrics and val_accuracy.png."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  results = []
  with MetricsWriter(out) as writer, tqdm(total=study.steps * len(study.variants), desc="LIS", unit="step") as bar:
    for variant in study.variants:
      results.append(train_variant(study, variant, writer, bar, mesh))
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
