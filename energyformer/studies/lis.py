"""The LIS study: every attention variant trained on the Longest Increasing Subsequence task, several seeds each.

For each variant one compiled program trains all seeds at once: the seeds are a population of the trainer
(``energyformer.train.trainer``: the training step ``jax.vmap``-ed over parameters, optimizer states and batches).
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
from tqdm import tqdm

from energyformer import cli
from energyformer.checks import check_positive_int, check_range
from energyformer.data import LISConfig, lis_dataset, numpy_split
from energyformer.metrics import MetricsWriter
from energyformer.models import GPTConfig
from energyformer.studies import decoder
from energyformer.train import population
from energyformer.train.config import TrainerConfig
from energyformer.train.mesh import MeshConfig, use_cpu_devices
from energyformer.train.optim import OptimizerConfig, shorter_warmup
from energyformer.train.task import data_seed

BATCH_KEYS = ("tokens", "loss_mask")


@dataclasses.dataclass(frozen=True)
class LISStudy:
  """What to train and how: data, model sizes, variants, seeds and the optimisation budget.

  ``scan_unroll=True`` unrolls the depth loop: for these shallow models it removes the loop's stacked-residual
  buffers and makes a training step about 1.4× (one model) to 1.8× (a vmapped population) faster on CPU.
  ``steps_per_call`` training steps run per call of the compiled program (``TrainerConfig``). ``optimizer``: the
  trainer's AdamW settings (a cosine decay to 0 and optax's default b2 here).
  """

  data: LISConfig = LISConfig(min_length=6, max_length=12, vocab_numbers=24, train_size=20_000, val_size=500,
                              test_size=500, test_lengths=(13, 16))
  dim: int = 48
  num_heads: int = 4
  head_dim: int = 12
  depth: int = 2
  mlp_hidden: int = 96
  variants: tuple[str, ...] = decoder.variant_names()
  seeds: int = 3
  steps: int = 400
  batch_size: int = 32
  optimizer: OptimizerConfig = OptimizerConfig(learning_rate=3e-3, warmup_steps=40, final_fraction=0.0,
                                               weight_decay=0.01, b2=0.999)
  eval_every: int = 25
  eval_batch_size: int = 1024
  target_accuracy: float = 0.5
  remat: bool = False
  scan_unroll: int | bool = True
  steps_per_call: int = 25
  in_memory_data: bool = True

  def __post_init__(self):
    decoder.check_variants(self.variants)
    for name in ("seeds", "steps", "batch_size", "eval_every", "steps_per_call"):
      check_positive_int(name, getattr(self, name))
    check_range("target_accuracy", self.target_accuracy, 0.0, 1.0, fix="Use a target accuracy in [0, 1].")

  def trainer_config(self, devices: int = 1) -> TrainerConfig:
    """The shared training budget of every model of the study, members split over ``devices`` devices."""
    return TrainerConfig(steps=self.steps, batch_size=self.batch_size, optimizer=self.optimizer,
                         mesh=MeshConfig(data=1, population=devices), eval_every=self.eval_every,
                         eval_batch_size=self.eval_batch_size, log_every=self.eval_every,
                         steps_per_call=self.steps_per_call, stop_on_non_finite=False)

  def model_config(self, variant: str) -> GPTConfig:
    """The decoder's configuration for this study's data and sizes with attention ``variant``."""
    return GPTConfig(self.data.vocab_size, self.data.context_length, self.dim, self.num_heads, self.head_dim,
                     self.depth, self.mlp_hidden, variant=variant, remat=self.remat, scan_unroll=self.scan_unroll)


PRESETS = {
    "default": LISStudy(),
    "tiny": LISStudy(data=LISConfig(min_length=4, max_length=6, vocab_numbers=12, train_size=512, val_size=64,
                                    test_size=64, test_lengths=(7, 8)),
                     dim=16, num_heads=2, head_dim=8, depth=2, mlp_hidden=32, seeds=2, steps=30, batch_size=16,
                     eval_every=10, steps_per_call=10,
                     optimizer=dataclasses.replace(LISStudy.optimizer, warmup_steps=5)),
    # The paper-scale protocol of Feng et al. (2023): sequences of up to 100 numbers, 1M training examples. GPU.
    "paper": LISStudy(data=LISConfig(min_length=10, max_length=100, vocab_numbers=150, train_size=1_000_000,
                                     val_size=10_000, test_size=10_000, test_lengths=(101, 120)),
                      dim=256, num_heads=8, head_dim=32, depth=6, mlp_hidden=1024, seeds=3, steps=50_000,
                      batch_size=256, eval_every=1000, target_accuracy=0.9, remat=True, in_memory_data=False,
                      optimizer=dataclasses.replace(LISStudy.optimizer, learning_rate=1e-3, warmup_steps=1000)),
}


def masked_metrics(logits, tokens, loss_mask):
  """Mean cross-entropy over the answer positions and the fraction of examples whose whole answer is the argmax."""
  targets, mask = tokens[:, 1:], loss_mask[:, :-1]
  loss = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, targets) * mask) / jnp.sum(mask)
  wrong = (jnp.argmax(logits, axis=-1) != targets) & (mask > 0)
  return loss, jnp.mean(~jnp.any(wrong, axis=-1))


@dataclasses.dataclass(frozen=True)
class LISTask:
  """The LIS task (``energyformer.train.task.Task``): a GPT decoder per member, LIS batches, exact-match accuracy."""

  study: LISStudy
  structural = decoder.STRUCTURAL
  metric_name = "accuracy"
  higher_is_better = True

  @property
  def hyperparameters(self) -> tuple[str, ...]:
    """The decoder's (``decoder.hyperparameters``: variants and solvers registered so far included)."""
    return decoder.hyperparameters()

  def create_model(self, member, rngs, batch_axes):
    """The member's decoder: the study's sizes with the member's structure and solver hyperparameters."""
    return decoder.decoder(self.study.model_config("standard"), member, rngs, batch_axes)

  def batches(self, member, batch_size, shard_index, shard_count):
    """The member's shuffle of the training split (``data_seed``)."""
    dataset = lis_dataset(self.study.data, "train", batch_size=batch_size, shuffle_seed=data_seed(member),
                          shard_index=shard_index, shard_count=shard_count, in_memory=self.study.in_memory_data)
    return iter(dataset.map(lambda batch: {key: batch[key] for key in BATCH_KEYS}))

  def loss(self, model, batch, key):
    """Cross-entropy over the answer positions (``masked_metrics``)."""
    return self.evaluate(model, batch)["loss"]

  def evaluation_sets(self, shard_index, shard_count):
    """The validation split and the held-out-length test split (this process's share)."""
    return {name: {k: v[shard_index::shard_count] for k, v in _split_arrays(self.study.data, name).items()}
            for name in ("val", "test")}

  def evaluate(self, model, batch):
    """Answer cross-entropy and exact-match accuracy (``masked_metrics``)."""
    loss, accuracy = masked_metrics(model(batch["tokens"][:, :-1]), batch["tokens"], batch["loss_mask"])
    return {"loss": loss, "accuracy": accuracy}

  def identity(self) -> dict:
    """The study's data and model sizes."""
    return _study_dict(self.study)


@functools.lru_cache(maxsize=8)
def _split_arrays(data: LISConfig, split: str) -> dict:
  return {k: v for k, v in numpy_split(data, split).items() if k in BATCH_KEYS}


def train_variant(study: LISStudy, variant: str, writer: MetricsWriter, progress, devices: int = 1) -> dict:
  """Trains ``study.seeds`` models of ``variant`` as one population (split over ``devices`` devices); returns
  curves, accuracies and timing."""
  members = [{"variant": variant, "seed": seed} for seed in range(study.seeds)]
  runs = population.train_population(LISTask(study), members, study.trainer_config(devices), progress=progress,
                                     writer=writer)
  val = [run["curves"]["val"]["accuracy"] for run in runs]
  curve = [(step, [accs[i] for accs in val]) for i, step in enumerate(runs[0]["eval_steps"])]
  return {"variant": variant, "curve": curve, "val_accuracy": curve[-1][1],
          "test_accuracy": [run["curves"]["test"]["accuracy"][-1] for run in runs],
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


def run(study: LISStudy, out_dir="runs/lis", devices: int = 1) -> list[dict]:
  """Trains every variant (each population split over ``devices`` devices), prints the table, writes results.csv,
  results.json, metrics and val_accuracy.png."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  results = []
  with MetricsWriter(out) as writer, tqdm(total=study.steps * len(study.variants), desc="LIS", unit="step") as bar:
    for variant in study.variants:
      results.append(train_variant(study, variant, writer, bar, devices))
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


def add_study_options(command, variants_help: str) -> None:
  """The options shared by ``energyformer lis`` and ``energyformer sweep``: preset, variants, seeds, budget, devices."""
  command.add_argument("--preset", default="default", help="default (CPU, minutes), tiny (seconds) or paper (GPU)")
  command.add_argument("--variants", nargs="+",
                       help=f"{variants_help}; registered: {', '.join(decoder.variant_names())}")
  command.add_argument("--seeds", type=int, help="models per variant (seeds 0, 1, ...)")
  command.add_argument("--steps", type=int, help="training steps per model")
  command.add_argument("--steps-per-call", type=int,
                       help="training steps per call of the compiled program (fewer host round trips)")
  command.add_argument("--devices", type=int, default=1,
                       help="lay each population over this many devices; on a CPU host the CPU is split into as many "
                            "devices (e.g. one per core), which puts the members on every core")


def study_from_args(args) -> LISStudy:
  """The preset ``args.preset`` with the options given replaced; raises naming a bad option."""
  if args.preset not in PRESETS:
    raise ValueError(f"unknown preset {args.preset!r}; choose one of {sorted(PRESETS)}.")
  for option in ("seeds", "steps", "steps_per_call", "devices"):
    value = getattr(args, option)
    if value is not None and value < 1:
      raise ValueError(f"--{option.replace('_', '-')} must be at least 1, got {value}.")
  overrides = {k: v for k, v in {"seeds": args.seeds, "steps": args.steps, "steps_per_call": args.steps_per_call,
                                 "variants": tuple(args.variants) if args.variants else None}.items() if v}
  study = dataclasses.replace(PRESETS[args.preset], **overrides)
  return dataclasses.replace(study, optimizer=shorter_warmup(study.optimizer, study.steps))


def split_cpu(devices: int) -> None:
  """Makes JAX see ``devices`` devices (on a CPU host, the CPU split into that many) when more than one is asked."""
  if devices > 1:
    use_cpu_devices(devices)


def _options(command) -> None:
  add_study_options(command, "attention variants to train (default: all)")
  command.add_argument("--out", default="runs/lis", help="directory for results.csv/json, metrics and plots")


@cli.command("lis", help="train every attention variant on the LIS task over several seeds", options=_options)
def _command(args) -> None:
  with cli.user_settings():
    study = study_from_args(args)
  split_cpu(args.devices)
  run(study, args.out, devices=args.devices)
