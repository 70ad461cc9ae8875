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

import contextlib
import csv
import dataclasses
import functools
import itertools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from energyformer import cli
from energyformer.checks import check_positive_int, check_range
from energyformer.data import LISConfig, lis_dataset, numpy_split, trivial_baselines
from energyformer.metrics import MetricsWriter
from energyformer.models import GPTConfig
from energyformer.studies import decoder, statistics
from energyformer.train import population, trainer
from energyformer.train.config import TrainerConfig
from energyformer.train.mesh import MeshConfig, use_cpu_devices
from energyformer.train.optim import OptimizerConfig, shorter_warmup
from energyformer.train.task import data_seed

BATCH_KEYS = ("tokens", "loss_mask")
# Bootstrap resamples of every interval the study reports.
RESAMPLES = 10_000


@dataclasses.dataclass(frozen=True)
class LISStudy:
  """What to train and how: data, model sizes, variants, seeds, the optimisation budget and what to report.

  ``scan_unroll=True`` unrolls the depth loop: for these small models it removes the loop's stacked-residual
  buffers and makes a training step about 1.4× (one model) to 1.8× (a vmapped population) faster on CPU.
  ``steps_per_call`` training steps run per call of the compiled program (``TrainerConfig``). ``optimizer``: the
  trainer's AdamW settings (a cosine decay to 0 and optax's default b2 here). ``thresholds``: the validation
  accuracies whose steps-to-reach are reported; ``baseline``: the variant every other is compared with, seed by
  seed. ``shared``: one parameter set across depth (a looped Transformer), trained at ``depth`` and evaluated at
  the end at each ``depth_multiples`` × ``depth`` (test-time depth extrapolation).
  """

  data: LISConfig = LISConfig(min_length=4, max_length=8, vocab_numbers=16, train_size=20_000, val_size=400,
                              test_size=400, test_lengths=(9, 11))
  dim: int = 48
  num_heads: int = 4
  head_dim: int = 12
  depth: int = 6
  mlp_hidden: int = 96
  variants: tuple[str, ...] = ("standard", "momentum", "nesterov")
  seeds: int = 5
  steps: int = 1500
  batch_size: int = 32
  optimizer: OptimizerConfig = OptimizerConfig(learning_rate=3e-3, warmup_steps=40, final_fraction=0.0,
                                               weight_decay=0.01, b2=0.999)
  eval_every: int = 50
  eval_batch_size: int = 1024
  thresholds: tuple[float, ...] = (0.5, 0.8, 0.9)
  baseline: str = "standard"
  remat: bool = False
  scan_unroll: int | bool = True
  steps_per_call: int = 50
  in_memory_data: bool = True
  shared: bool = False
  depth_multiples: tuple[int, ...] = (1, 2, 4)

  def __post_init__(self):
    decoder.check_variants(self.variants)
    for name in ("seeds", "steps", "batch_size", "eval_every", "steps_per_call", "depth"):
      check_positive_int(name, getattr(self, name))
    for threshold in self.thresholds:
      check_range("thresholds", threshold, 0.0, 1.0, fix="Use accuracy thresholds in [0, 1].")
    for multiple in self.depth_multiples:
      check_positive_int("depth_multiples", multiple)

  @property
  def evaluation_depths(self) -> tuple[int, ...]:
    """The depths a weight-shared study evaluates at the end: ``depth_multiples`` × ``depth``."""
    return tuple(multiple * self.depth for multiple in self.depth_multiples)

  def trainer_config(self, devices: int = 1) -> TrainerConfig:
    """The shared training budget of every model of the study, members split over ``devices`` devices."""
    return TrainerConfig(steps=self.steps, batch_size=self.batch_size, optimizer=self.optimizer,
                         mesh=MeshConfig(data=1, population=devices), eval_every=self.eval_every,
                         eval_batch_size=self.eval_batch_size, log_every=self.eval_every,
                         steps_per_call=self.steps_per_call, stop_on_non_finite=False)

  def model_config(self, variant: str) -> GPTConfig:
    """The decoder's configuration for this study's data and sizes with attention ``variant``."""
    return GPTConfig(self.data.vocab_size, self.data.context_length, self.dim, self.num_heads, self.head_dim,
                     self.depth, self.mlp_hidden, variant=variant, remat=self.remat, scan_unroll=self.scan_unroll,
                     shared=self.shared)


PRESETS = {
    # Depth 6 (momentum streams need depth), five seeds, accuracy thresholds resolved every 50 of 1500 steps; the
    # paper's central comparison (gradient descent, heavy ball, Nesterov) by default, on the CPU in minutes.
    "default": LISStudy(),
    "tiny": LISStudy(data=LISConfig(min_length=4, max_length=6, vocab_numbers=12, train_size=512, val_size=64,
                                    test_size=64, test_lengths=(7, 8)),
                     dim=16, num_heads=2, head_dim=8, depth=2, mlp_hidden=32, seeds=2, steps=30, batch_size=16,
                     eval_every=10, steps_per_call=10, variants=("standard", "momentum"),
                     optimizer=dataclasses.replace(LISStudy.optimizer, warmup_steps=5)),
    # The paper-scale protocol of Feng et al. (2023): sequences of up to 100 numbers, 1M training examples. GPU.
    "paper": LISStudy(data=LISConfig(min_length=10, max_length=100, vocab_numbers=150, train_size=1_000_000,
                                     val_size=10_000, test_size=10_000, test_lengths=(101, 120)),
                      dim=256, num_heads=8, head_dim=32, depth=6, mlp_hidden=1024, seeds=5, steps=50_000,
                      batch_size=256, eval_every=500, remat=True, in_memory_data=False,
                      variants=decoder.variant_names(),
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
  """The LIS task (``energyformer.train.task.Task``): a GPT decoder per member, LIS batches, exact-match accuracy.

  ``depth``: the depth steps the model runs when evaluated (default its own; another needs a weight-shared model).
  """

  study: LISStudy
  depth: int | None = None
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
    """Cross-entropy over the answer positions (``masked_metrics``), at the model's own depth."""
    return masked_metrics(model(batch["tokens"][:, :-1]), batch["tokens"], batch["loss_mask"])[0]

  def evaluation_sets(self, shard_index, shard_count):
    """The validation split and the held-out-length test split (this process's share)."""
    return {name: {k: v[shard_index::shard_count] for k, v in _split_arrays(self.study.data, name).items()}
            for name in ("val", "test")}

  def evaluate(self, model, batch):
    """Answer cross-entropy and exact-match accuracy (``masked_metrics``)."""
    loss, accuracy = masked_metrics(model(batch["tokens"][:, :-1], depth=self.depth), batch["tokens"],
                                    batch["loss_mask"])
    return {"loss": loss, "accuracy": accuracy}

  def identity(self) -> dict:
    """The study's data and model sizes."""
    return _study_dict(self.study)


@functools.lru_cache(maxsize=8)
def _split_arrays(data: LISConfig, split: str) -> dict:
  return {k: v for k, v in numpy_split(data, split).items() if k in BATCH_KEYS}


def train_variant(study: LISStudy, variant: str, writer: MetricsWriter, progress, devices: int = 1) -> dict:
  """Trains ``study.seeds`` models of ``variant`` as one vmapped population (split over ``devices`` devices).

  Returns the evaluation ``steps``, per-seed ``curves[set][metric]`` (evaluations × seeds), the final ``val`` and
  ``test`` accuracies per seed, ``seconds_per_step`` of the population and, for a weight-shared study, ``depths``:
  the final accuracies at each depth of ``study.evaluation_depths`` (``evaluate_at_depths``).
  """
  members = [{"variant": variant, "seed": seed} for seed in range(study.seeds)]
  task = LISTask(study)
  run = trainer.train(task, study.trainer_config(devices), None, members=members, progress=progress, writer=writer,
                      metrics=False, member_names=True)
  if run.stopped_by is not None:
    raise trainer.RunStopped(f"stopped by {run.stopped_by} at step {run.step} of variant {variant} (nothing saved).")
  runs = [population.member_result(run, index) for index in range(len(members))]
  curves = {name: {metric: np.array([r["curves"][name][metric] for r in runs]).T.tolist() for metric in metrics}
            for name, metrics in runs[0]["curves"].items()}
  result = {"variant": variant, "steps": runs[0]["eval_steps"], "curves": curves,
            "val_accuracy": curves["val"]["accuracy"][-1], "test_accuracy": curves["test"]["accuracy"][-1],
            "seconds_per_step": run.seconds_per_step}
  if study.shared:
    real = jax.tree.map(lambda x: x[:len(members)], run.state)  # without the padding members of a mesh
    result["depths"] = evaluate_at_depths(task, run.graphdef, real, study.evaluation_depths, run.mesh)
  return result


def evaluate_at_depths(task: LISTask, graphdef, state, depths, mesh=None) -> dict:
  """A weight-shared population (``state``: its models' states with a leading member axis, ``graphdef`` their
  structure) evaluated on the task's evaluation sets, each model running its stack for each of ``depths`` steps
  (test-time depth extrapolation), on ``mesh`` if given: ``{depth: {set: {metric: [per member]}}}``."""
  results = {}
  for depth in depths:
    deep = dataclasses.replace(task, depth=depth)
    evaluate = jax.jit(jax.vmap(lambda member, batch: deep.evaluate(nnx.merge(graphdef, member), batch),
                                in_axes=(0, None)))
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
      results[depth] = {name: trainer.evaluate_in_slices(evaluate, state, examples, task.study.eval_batch_size,
                                                         lambda piece: piece)
                        for name, examples in task.evaluation_sets(0, 1).items()}
  return results


def _interval(values, **options) -> statistics.Interval:
  return statistics.bootstrap_interval(values, resamples=RESAMPLES, **options)


def summarize(result: dict, study: LISStudy) -> dict:
  """A variant's row: final validation and held-out accuracies (mean over seeds, 95 % bootstrap interval), median
  steps to each threshold of validation accuracy (interval; ``inf`` where not reached), seeds reaching each, and
  the population's milliseconds per training step (all seeds at once)."""
  row = {"variant": result["variant"]}
  row.update(_interval(result["val_accuracy"]).as_dict("val_accuracy"))
  row.update(_interval(result["test_accuracy"]).as_dict("test_accuracy"))
  for threshold, steps in steps_to_thresholds(result, study).items():
    key = f"steps_to_{threshold:.0%}".replace("%", "pct")
    row.update(_interval(steps, statistic=np.median).as_dict(key))
    row[f"{key}_seeds"] = int(np.isfinite(steps).sum())
  for depth, sets in result.get("depths", {}).items():
    for name in ("val", "test"):
      row.update(_interval(sets[name]["accuracy"]).as_dict(f"{name}_accuracy_depth{depth}"))
  row["ms_per_step"] = 1000 * result["seconds_per_step"]
  return row


def steps_to_thresholds(result: dict, study: LISStudy) -> dict[float, np.ndarray]:
  """Per threshold, each seed's first evaluated step with validation accuracy at or above it (``inf``: never)."""
  return {threshold: statistics.steps_to_threshold(result["steps"], result["curves"]["val"]["accuracy"], threshold)
          for threshold in study.thresholds}


def paired_comparisons(results: list[dict], study: LISStudy) -> list[dict]:
  """Each variant against ``study.baseline`` (the same seeds, so per-seed differences): the mean difference of
  final validation and held-out accuracy and of steps to each threshold (where every seed of both reached it),
  with 95 % bootstrap intervals; ``detectable`` is False when the interval covers 0."""
  base = {r["variant"]: r for r in results}.get(study.baseline)
  if base is None:
    return []
  rows = []
  for result in results:
    if result is base:
      continue
    comparisons = {"val accuracy": (result["val_accuracy"], base["val_accuracy"]),
                   "held-out accuracy": (result["test_accuracy"], base["test_accuracy"])}
    ours, theirs = steps_to_thresholds(result, study), steps_to_thresholds(base, study)
    for threshold in study.thresholds:
      if np.isfinite(ours[threshold]).all() and np.isfinite(theirs[threshold]).all():
        comparisons[f"steps to {threshold:.0%}"] = (ours[threshold], theirs[threshold])
    for measure, (values, baseline) in comparisons.items():
      difference = statistics.paired_difference(values, baseline, resamples=RESAMPLES)
      rows.append({"variant": result["variant"], "baseline": study.baseline, "measure": measure,
                   **difference.as_dict("difference"), "detectable": not difference.covers(0.0)})
  return rows


def _format_interval(interval: dict, key: str, digits: int) -> str:
  number = lambda v: "—" if not np.isfinite(v) else f"{v:.{digits}f}"
  return f"{number(interval[key])} [{number(interval[key + '_low'])}, {number(interval[key + '_high'])}]"


def format_table(rows: list[dict], study: LISStudy, comparisons=(), baselines=None) -> str:
  """The study's summary as text: per variant the final accuracies and steps to each threshold (estimate and 95 %
  bootstrap interval over seeds), the trivial baselines, and the paired comparisons against the baseline variant."""
  thresholds = [f"steps_to_{t:.0%}".replace("%", "pct") for t in study.thresholds]
  header = (f"{'variant':22s} {'val acc [95% CI]':>14s} {'held-out acc [95% CI]':>22s} "
            + " ".join(f"{f'steps to {t:.0%} (seeds)':>22s}" for t in study.thresholds) + f" {'ms/step':>8s}")
  lines = [f"LIS, {study.seeds} seeds per variant; median steps over seeds, — = not reached", header,
           "-" * len(header)]
  for r in rows:
    steps = " ".join(f"{_format_interval(r, key, 0) + ' (' + str(r[key + '_seeds']) + ')':>22s}" for key in thresholds)
    lines.append(f"{r['variant']:14s} {_format_interval(r, 'val_accuracy', 3):>22s} "
                 f"{_format_interval(r, 'test_accuracy', 3):>22s} {steps} {r['ms_per_step']:8.1f}")
  if baselines:
    for name, accuracy in baselines.items():
      lines.append(f"{'(' + name + ')':22s} {accuracy['val']:>14.3f} {accuracy['test']:>22.3f}")
  depth_keys = [d for d in study.evaluation_depths] if study.shared else []
  if depth_keys:
    lines += ["", f"weight-shared, trained at depth {study.depth}: accuracy at test-time depth (mean [95% CI])",
              f"{'variant':14s} " + " ".join(f"{f'val @{d}':>22s} {f'held-out @{d}':>22s}" for d in depth_keys)]
    for r in rows:
      cells = [f"{_format_interval(r, f'{name}_accuracy_depth{d}', 3):>22s}"
               for d in depth_keys for name in ("val", "test")]
      lines.append(f"{r['variant']:14s} " + " ".join(cells))
  if comparisons:
    lines += ["", f"paired against {study.baseline} (same seeds): mean difference [95% CI]"]
    for c in comparisons:
      digits = 0 if c["measure"].startswith("steps") else 3
      verdict = "" if c["detectable"] else "  no detectable difference"
      lines.append(f"{c['variant']:14s} {c['measure']:18s} {_format_interval(c, 'difference', digits):>26s}{verdict}")
  return "\n".join(lines)


def plot_curves(results: list[dict], study: LISStudy, path, baselines: dict | None = None) -> None:
  """Left: validation accuracy against step, mean over seeds with its 95 % bootstrap band, one line per variant
  (``baselines``, name → validation accuracy, dashed). Right: median steps to each accuracy threshold with its
  interval (× at the right edge: not reached by half the seeds)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (curves, reach) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
  offsets = np.linspace(-0.3, 0.3, len(results)) if len(results) > 1 else [0.0]
  for color, offset, result in zip(itertools.cycle(plt.rcParams["axes.prop_cycle"].by_key()["color"]), offsets,
                                   results):
    bands = [_interval(accs, seed=0) for accs in result["curves"]["val"]["accuracy"]]
    curves.plot(result["steps"], [b.estimate for b in bands], color=color, label=result["variant"])
    curves.fill_between(result["steps"], [b.low for b in bands], [b.high for b in bands], color=color, alpha=0.15)
    for position, (threshold, steps) in enumerate(steps_to_thresholds(result, study).items()):
      interval = _interval(steps, statistic=np.median)
      y = position + offset
      if np.isfinite(interval.estimate):
        high = interval.high if np.isfinite(interval.high) else study.steps
        reach.errorbar(interval.estimate, y, xerr=[[interval.estimate - interval.low], [high - interval.estimate]],
                       fmt="o", color=color, capsize=3)
      else:
        reach.plot(study.steps, y, "x", color=color)
  for name, accuracy in (baselines or {}).items():
    curves.axhline(accuracy, color="gray", linestyle="--", linewidth=0.8)
    curves.text(0.01, accuracy, name, transform=curves.get_yaxis_transform(), fontsize=7, color="gray",
                va="bottom")
  curves.set(xlabel="training step", ylabel="validation exact-match accuracy", ylim=(0, 1),
             title=f"LIS: mean over {study.seeds} seeds, 95 % bootstrap band")
  curves.legend(fontsize=8, ncol=2)
  reach.set(yticks=range(len(study.thresholds)), yticklabels=[f"{t:.0%}" for t in study.thresholds],
            xlim=(0, study.steps * 1.05), xlabel="training step", ylabel="validation accuracy threshold",
            title="median steps to threshold (× not reached)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_depths(results: list[dict], study: LISStudy, path) -> None:
  """A weight-shared study: final accuracy (mean and 95 % interval over seeds) against the test-time depth, on the
  validation lengths (left) and the held-out lengths (right)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
  for ax, name, label in zip(axes, ("val", "test"), ("validation lengths", "held-out lengths")):
    for result in results:
      depths = sorted(result["depths"])
      intervals = [_interval(result["depths"][d][name]["accuracy"]) for d in depths]
      means = np.array([i.estimate for i in intervals])
      errors = [means - [i.low for i in intervals], [i.high for i in intervals] - means]
      ax.errorbar(depths, means, yerr=errors, marker="o", capsize=3, label=result["variant"])
    ax.axvline(study.depth, color="gray", linestyle=":", linewidth=0.8)
    ax.set(xscale="log", xticks=list(study.evaluation_depths), xticklabels=list(map(str, study.evaluation_depths)),
           xlabel="depth steps at test time", title=f"{label} (trained at depth {study.depth})", ylim=(0, 1))
    ax.minorticks_off()
  axes[0].set_ylabel("exact-match accuracy")
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def run(study: LISStudy, out_dir="runs/lis", devices: int = 1) -> list[dict]:
  """Trains every variant (each population split over ``devices`` devices), prints the table, writes results.csv,
  results.json, metrics (JSONL, TensorBoard), val_accuracy.png and, for a weight-shared study, depths.png."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  baselines = trivial_baselines(study.data)
  results = []
  with MetricsWriter(out) as writer, tqdm(total=study.steps * len(study.variants), desc="LIS", unit="step") as bar:
    for index, variant in enumerate(study.variants):
      bar.set_description(f"LIS {variant} ({index + 1}/{len(study.variants)})")
      results.append(train_variant(study, variant, writer, bar, devices))
  rows = [summarize(r, study) for r in results]
  comparisons = paired_comparisons(results, study)
  print("\n" + format_table(rows, study, comparisons, baselines))
  with open(out / "results.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  (out / "results.json").write_text(json.dumps({"study": _study_dict(study), "summary": rows, "paired": comparisons,
                                                "baselines": baselines, "runs": results}, indent=1, default=_json))
  plot_curves(results, study, out / "val_accuracy.png", {name: acc["val"] for name, acc in baselines.items()})
  written = ["results.csv", "results.json", "metrics.jsonl", "tensorboard/", "val_accuracy.png"]
  if study.shared:
    plot_depths(results, study, out / "depths.png")
    written.append("depths.png")
  print(f"wrote {', '.join(str(out / name) for name in written)}")
  return rows


def _json(value):
  return np.asarray(value).tolist()


def _study_dict(study: LISStudy) -> dict:
  return json.loads(json.dumps(dataclasses.asdict(study), default=list))


def add_study_options(command, variants_help: str) -> None:
  """The options shared by ``energyformer lis`` and ``energyformer sweep``: preset, variants, seeds, budget, devices."""
  command.add_argument("--preset", default="default", help="default (CPU, minutes), tiny (seconds) or paper (GPU)")
  command.add_argument("--variants", nargs="+",
                       help=f"{variants_help}; registered: {', '.join(decoder.variant_names())}")
  command.add_argument("--seeds", type=int, help="models per variant (seeds 0, 1, ...; default: the preset's)")
  command.add_argument("--steps", type=int, help="training steps per model (default: the preset's)")
  command.add_argument("--steps-per-call", type=int,
                       help="training steps per call of the compiled program (fewer host round trips; "
                            "default: the preset's)")
  command.add_argument("--shared", action="store_true",
                       help="one parameter set across depth (a looped Transformer); lis also evaluates it at 1, 2 and "
                            "4 times the trained depth")
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
                                 "variants": tuple(args.variants) if args.variants else None,
                                 "shared": getattr(args, "shared", False)}.items() if v}
  study = dataclasses.replace(PRESETS[args.preset], **overrides)
  return dataclasses.replace(study, optimizer=shorter_warmup(study.optimizer, study.steps))


def split_cpu(devices: int) -> None:
  """Makes JAX see ``devices`` devices (on a CPU host, the CPU split into that many) when more than one is asked."""
  if devices > 1:
    use_cpu_devices(devices)


def _options(command) -> None:
  add_study_options(command, "attention variants to train (default: the preset's; the default preset's: "
                             f"{' '.join(PRESETS['default'].variants)})")
  command.add_argument("--out", default="runs/lis", help="directory for results.csv/json, metrics and plots")


@cli.command("lis", help="train every attention variant on the LIS task over several seeds", options=_options)
def _command(args) -> None:
  with cli.user_settings():
    study = study_from_args(args)
  split_cpu(args.devices)
  run(study, args.out, devices=args.devices)
