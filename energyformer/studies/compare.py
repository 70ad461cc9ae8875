"""Language-model pretraining of several attention variants × seeds on the same data and budget: the
``energyformer compare`` command and its report.

An *arm* is a registered attention variant (``standard``, ``momentum``, ``nesterov``, a user's ...), or
``VARIANT+energy``: that variant trained on cross-entropy plus ``energy_weight`` times the relative descent of the
layers' energies (``pretrain.energy_regularised_loss``). Each arm's seeds train as one population of the shared trainer
(``energyformer.train.population``: one ``jax.vmap``-ed program); seed ``s`` initialises its model with ``s`` and
reads the training split in its own order, the same order in every arm. Every arm sees the same tokenizer (bytes, or
a BPE trained once on the training split and saved in the output directory), the same validation sequences, the
same steps, batch and optimiser. The statistics are ``energyformer.studies.statistics``'s.

The report, per arm: the validation loss (nats per byte for bytes, per token for a BPE) at every evaluation, mean
over seeds with a 95 % bootstrap interval over seeds; the final loss and its paired difference from ``standard``
(seed by seed; "no detectable difference" when the interval covers 0); the steps each arm needs to reach
``standard``'s final mean loss; the depth energy per token; and tokens per second of the arm's program (all seeds).

Presets (``tokens`` per step per model = batch × sequence):

============  ================================================  ============  ==========  ====================
preset        model                                             batch × seq   parameters  for
============  ================================================  ============  ==========  ====================
``tiny``      2 layers, width 16, 2 heads × 8, MLP 32           4 × 16        0.01M       tests, seconds
``default``   6 layers, width 64, 4 heads × 16, MLP 128         16 × 64       0.22M       a 2-core CPU
``gpt-30m``   8 layers, width 512, 8 heads × 64, MLP 2048       64 × 512      34M         one accelerator
``gpt-160m``  19 layers, width 768, 12 heads × 64, MLP 3072     128 × 1024    160M        accelerators
============  ================================================  ============  ==========  ====================

The accelerator presets compute in bfloat16, use a BPE of 16 384 (30M) and 32 768 (160M) ids (parameters counted
with them) and want a large corpus (``--data`` a directory of MiniPile or TinyStories text files).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import pathlib

import numpy as np
from tqdm import tqdm

from energyformer import cli
from energyformer.checks import check_positive_int, check_range
from energyformer.data import tokenizers
from energyformer.data.text import TextDataConfig, check_corpus
from energyformer.metrics import MetricsWriter
from energyformer.models import GPTConfig
from energyformer.studies import decoder, lis, pretrain, statistics
from energyformer.train import population
from energyformer.train.checkpoint import CheckpointConfig
from energyformer.train.config import TrainerConfig, to_dict
from energyformer.train.mesh import MeshConfig
from energyformer.train.optim import OptimizerConfig, shorter_warmup

ENERGY_SUFFIX = "+energy"
REFERENCE = "standard"


@dataclasses.dataclass(frozen=True)
class CompareStudy:
  """The arms, the seeds and what they share: model sizes, data, tokenizer and training budget.

  ``model``'s vocabulary is replaced by the tokenizer's (padded to a multiple of 64) and its variant by each arm's.
  ``energy_weight`` is λ of the ``+energy`` arms. ``confidence`` and ``resamples`` set the bootstrap intervals.
  """

  model: GPTConfig
  data: TextDataConfig
  arms: tuple[str, ...] = ("standard", "momentum", "nesterov", "standard+energy")
  seeds: int = 3
  tokenizer: str = tokenizers.BYTES
  energy_weight: float = 1e-2
  steps: int = 300
  batch_size: int = 16
  optimizer: OptimizerConfig = OptimizerConfig(learning_rate=3e-3, warmup_steps=30, weight_decay=0.01)
  eval_every: int = 25
  eval_sequences: int = 128
  steps_per_call: int = 25
  compute_dtype: str = "float32"
  checkpoint_every: int | None = None
  devices: int = 1
  confidence: float = 0.95
  resamples: int = 2000

  def __post_init__(self):
    object.__setattr__(self, "arms", tuple(self.arms))
    if not self.arms or len(set(self.arms)) != len(self.arms):
      raise ValueError(f"arms must be distinct and at least one, got {list(self.arms)}.")
    decoder.check_variants([arm_variant(arm) for arm in self.arms])
    for name in ("seeds", "steps", "batch_size", "eval_every", "eval_sequences", "steps_per_call", "devices",
                 "resamples"):
      check_positive_int(name, getattr(self, name))
    tokenizers.parse_tokenizer(self.tokenizer)
    if any(arm.endswith(ENERGY_SUFFIX) for arm in self.arms) and not self.energy_weight > 0:
      raise ValueError(f"the +energy arms need a positive energy_weight, got {self.energy_weight!r}; pass e.g. "
                       "--energy-weight 1e-2.")
    check_range("confidence", self.confidence, 0.0, 1.0, low_open=True, high_open=True,
                fix="Use a confidence level such as 0.95.")

  def trainer_config(self) -> TrainerConfig:
    """The budget every arm shares."""
    return TrainerConfig(steps=self.steps, batch_size=self.batch_size, optimizer=self.optimizer,
                         mesh=MeshConfig(data=-1, population=self.devices), compute_dtype=self.compute_dtype,
                         checkpoint=CheckpointConfig(every=self.checkpoint_every, keep=2), eval_every=self.eval_every,
                         log_every=self.eval_every, steps_per_call=self.steps_per_call, stop_on_non_finite=False)

  @property
  def tokens_per_step(self) -> int:
    """Tokens one model trains on per step."""
    return self.batch_size * self.data.sequence_length


def arm_variant(arm: str) -> str:
  """The attention variant of an arm: ``arm`` without a trailing ``+energy``."""
  return arm[:-len(ENERGY_SUFFIX)] if arm.endswith(ENERGY_SUFFIX) else arm


def arm_task(study: CompareStudy, arm: str, tokenizer) -> pretrain.TextTask:
  """The text task of ``arm``: the study's model with the arm's variant and the tokenizer's vocabulary, the depth
  energy measured at every evaluation, and λ for a ``+energy`` arm."""
  vocabulary = tokenizers.padded_vocab_size(tokenizer)
  model = dataclasses.replace(study.model, variant=arm_variant(arm), vocab_size=vocabulary)
  weight = study.energy_weight if arm.endswith(ENERGY_SUFFIX) else 0.0
  return pretrain.TextTask(model, study.data, study.eval_sequences, tokenizer=tokenizer, energy_weight=weight,
                           measure_energy=True)


def members(study: CompareStudy, arm: str) -> list[dict]:
  """The arm's population: one member per seed."""
  return [{"variant": arm_variant(arm), "seed": seed} for seed in range(study.seeds)]


def _finite_or_none(step: float):
  return None if not np.isfinite(step) else int(step)


def train_arm(study: CompareStudy, arm: str, tokenizer, out: pathlib.Path, bar) -> dict:
  """Trains the arm's seeds as one population; its metrics go to ``out/<arm>/``. Returns the evaluation steps, the
  validation loss and energy per seed and evaluation, the training losses and the time per step."""
  with MetricsWriter(out / arm) as writer:
    runs = population.train_population(arm_task(study, arm, tokenizer), members(study, arm), study.trainer_config(),
                                       checkpoint_dir=out / arm / "checkpoints", progress=bar, writer=writer)
  return {"arm": arm, "eval_steps": runs[0]["eval_steps"],
          "val_loss": [run["curves"]["val"]["loss"] for run in runs],
          "val_energy": [run["curves"]["val"]["energy"] for run in runs],
          "val_descent": [run["curves"]["val"]["descent"] for run in runs],
          "train_loss": [run["train_loss"] for run in runs], "seconds_per_step": runs[0]["seconds_per_step"]}


def summarize(results: list[dict], study: CompareStudy) -> list[dict]:
  """Per arm: final validation loss and depth energy (mean over seeds, bootstrap interval), the paired difference of
  the final loss from the reference arm (``standard``, else the first), the steps to the reference's final mean loss
  (of the arm's mean curve, and per seed: their median with its interval, ``inf`` when not reached), and tokens per
  second of the arm's program (all seeds)."""
  bootstrap = {"level": study.confidence, "resamples": study.resamples}
  reference = next((r for r in results if r["arm"] == REFERENCE), results[0])
  reference_final = [losses[-1] for losses in reference["val_loss"]]
  target = float(np.mean(reference_final))
  rows = []
  for result in results:
    final = [losses[-1] for losses in result["val_loss"]]
    curves = np.transpose(result["val_loss"])
    per_seed = statistics.steps_to_threshold(result["eval_steps"], curves, target, higher_is_better=False)
    mean_curve = statistics.steps_to_threshold(result["eval_steps"], curves.mean(axis=1, keepdims=True), target,
                                               higher_is_better=False)[0]
    rows.append({"arm": result["arm"], "reference": result is reference,
                 **statistics.bootstrap_interval(final, **bootstrap).as_dict("final_val_loss"),
                 **statistics.paired_difference(final, reference_final, **bootstrap).as_dict("difference"),
                 "steps_to_reference": _finite_or_none(mean_curve),
                 **statistics.bootstrap_interval(per_seed, statistic=np.median, **bootstrap).as_dict(
                     "median_steps_to_reference"),
                 "seeds_reaching_reference": int(np.isfinite(per_seed).sum()),
                 "steps_to_reference_per_seed": [_finite_or_none(step) for step in per_seed],
                 **statistics.bootstrap_interval([values[-1] for values in result["val_energy"]],
                                                 **bootstrap).as_dict("final_val_energy"),
                 "tokens_per_second": study.seeds * study.tokens_per_step / result["seconds_per_step"],
                 "ms_per_step": 1000 * result["seconds_per_step"]})
  return rows


def verdict(row: dict, reference: str = REFERENCE) -> str:
  """``lower``/``higher`` than the reference when the interval of the paired difference excludes 0, else ``no
  detectable difference``."""
  if row.get("reference", row["arm"] == reference):
    return "reference"
  if row["difference_high"] < 0:
    return "lower"
  return "higher" if row["difference_low"] > 0 else "no detectable difference"


def format_table(rows: list[dict], study: CompareStudy, unit: str) -> str:
  """The summary as a Markdown table."""
  level = f"{study.confidence:.0%}"
  lines = [f"| arm | final val loss ({unit}), {level} CI | difference from {REFERENCE}, {level} CI | "
           f"steps to {REFERENCE}'s final loss: mean curve; median of seeds (seeds reaching) | depth energy / token | "
           "tokens/s (all seeds) |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    reached = "—" if r["steps_to_reference"] is None else str(r["steps_to_reference"])
    median = "—" if not np.isfinite(r["median_steps_to_reference"]) else f"{r['median_steps_to_reference']:.0f}"
    lines.append(f"| {r['arm']} | {r['final_val_loss']:.4f} [{r['final_val_loss_low']:.4f}, "
                 f"{r['final_val_loss_high']:.4f}] | {r['difference']:+.4f} [{r['difference_low']:+.4f}, "
                 f"{r['difference_high']:+.4f}] {verdict(r)} | {reached}; {median} ({r['seeds_reaching_reference']}/"
                 f"{study.seeds}) | {r['final_val_energy']:.2f} | {r['tokens_per_second']:.0f} |")
  return "\n".join(lines)


def plot(results: list[dict], rows: list[dict], study: CompareStudy, path, unit: str, title: str) -> None:
  """Validation loss against step (mean over seeds, bootstrap band) and the final losses with their intervals."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (curves, finals) = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [2, 1]})
  for result in results:
    bands = [statistics.bootstrap_interval(column, level=study.confidence, resamples=study.resamples)
             for column in np.transpose(result["val_loss"])]
    mean, low, high = ([getattr(band, name) for band in bands] for name in ("estimate", "low", "high"))
    curves.plot(result["eval_steps"], mean, label=result["arm"])
    curves.fill_between(result["eval_steps"], low, high, alpha=0.2)
  curves.set(xlabel="training step", ylabel=f"validation loss ({unit})", title=title)
  curves.legend(fontsize=8)
  positions = np.arange(len(rows))
  errors = [[r["final_val_loss"] - r["final_val_loss_low"] for r in rows],
            [r["final_val_loss_high"] - r["final_val_loss"] for r in rows]]
  finals.errorbar(positions, [r["final_val_loss"] for r in rows], yerr=errors, fmt="o", capsize=4)
  for result, x in zip(results, positions):
    finals.scatter([x] * study.seeds, [losses[-1] for losses in result["val_loss"]], s=10, color="gray", zorder=3)
  finals.set_xticks(positions, [r["arm"] for r in rows], rotation=30, ha="right", fontsize=8)
  finals.set(ylabel=f"final validation loss ({unit})", title=f"{study.confidence:.0%} bootstrap intervals, seeds")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def run(study: CompareStudy, out_dir="runs/compare") -> list[dict]:
  """Trains every arm (the tokenizer first, trained on the training split or reloaded from ``out_dir``), writes
  each arm's ``metrics.jsonl`` and ``tensorboard/``, then the ``report``. Rerunning into the same directory resumes
  arms from their checkpoints (``checkpoint_every``)."""
  out = pathlib.Path(out_dir)
  pretrain.prepare_corpus(study.data)
  base = pretrain.TextTask(study.model, study.data)
  tokenizer = pretrain.with_tokenizer(base, study.tokenizer, out).tokenizer
  parameters = pretrain.parameter_count(arm_task(study, REFERENCE, tokenizer).model)
  print(f"comparing {', '.join(study.arms)}: {study.seeds} seeds each, a {study.model.depth}-layer decoder "
        f"({parameters / 1e6:.2f}M parameters, {tokenizers.tokenizer_name(tokenizer)} tokens) on "
        f"{study.data.corpus!r}, {study.steps} steps of {study.tokens_per_step} tokens")
  results = []
  with tqdm(total=study.steps * len(study.arms), desc="compare", unit="step") as bar:
    for arm in study.arms:
      results.append(train_arm(study, arm, tokenizer, out, bar))
  return report(results, study, out, tokenizer, parameters)


def report(results: list[dict], study: CompareStudy, out: pathlib.Path, tokenizer, parameters: int) -> list[dict]:
  """From the arms' ``train_arm`` results: prints the table and writes ``results.md``, ``results.csv``,
  ``results.json`` and ``val_loss.png`` to ``out``; returns the summary rows."""
  unit = tokenizers.loss_unit(tokenizer)
  rows = summarize(results, study)
  table = format_table(rows, study, unit)
  print("\n" + table)
  with open(out / "results.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  (out / "results.json").write_text(json.dumps({"study": json.loads(json.dumps(to_dict(study), default=list)),
                                                "tokenizer": tokenizers.identity(tokenizer), "parameters": parameters,
                                                "unit": unit, "summary": rows, "runs": results}, indent=1))
  (out / "results.md").write_text(table + "\n")
  title = f"{study.model.depth}-layer decoder, {tokenizers.tokenizer_name(tokenizer)}, {study.steps} steps"
  plot(results, rows, study, out / "val_loss.png", unit, title)
  print(f"wrote {out / 'results.csv'}, {out / 'results.json'}, {out / 'results.md'} and {out / 'val_loss.png'}")
  return rows


PRESETS = {
    "tiny": CompareStudy(
        GPTConfig(pretrain.VOCAB_SIZE, 16, dim=16, num_heads=2, head_dim=8, depth=2, mlp_hidden=32, remat=False,
                  scan_unroll=True),
        TextDataConfig(sequence_length=16, shuffle_window=16), arms=("standard", "nesterov+energy"), seeds=2,
        steps=6, batch_size=4, optimizer=OptimizerConfig(learning_rate=1e-2, warmup_steps=2), eval_every=3,
        eval_sequences=8, steps_per_call=3, resamples=200),
    "default": CompareStudy(
        GPTConfig(pretrain.VOCAB_SIZE, 64, dim=64, num_heads=4, head_dim=16, depth=6, mlp_hidden=128, remat=False,
                  scan_unroll=True),
        TextDataConfig(sequence_length=64, shuffle_window=512)),
    "gpt-30m": CompareStudy(
        GPTConfig(pretrain.VOCAB_SIZE, 512, dim=512, num_heads=8, head_dim=64, depth=8, mlp_hidden=2048),
        TextDataConfig(sequence_length=512, shuffle_window=4096, num_threads=8, prefetch=8), tokenizer="bpe:16384",
        steps=20_000, batch_size=64, optimizer=OptimizerConfig(learning_rate=1e-3, warmup_steps=1000),
        eval_every=500, eval_sequences=2048, steps_per_call=50, compute_dtype="bfloat16", checkpoint_every=2000),
    "gpt-160m": CompareStudy(
        GPTConfig(pretrain.VOCAB_SIZE, 1024, dim=768, num_heads=12, head_dim=64, depth=19, mlp_hidden=3072),
        TextDataConfig(sequence_length=1024, shuffle_window=4096, num_threads=16, prefetch=16),
        tokenizer="bpe:32768", steps=50_000, batch_size=128,
        optimizer=OptimizerConfig(learning_rate=6e-4, warmup_steps=2000), eval_every=1000, eval_sequences=4096,
        steps_per_call=50, compute_dtype="bfloat16", checkpoint_every=2000),
}


def study_from_args(args) -> CompareStudy:
  """The preset ``args.preset`` with the options given replaced; raises naming a bad option."""
  if args.preset not in PRESETS:
    raise ValueError(f"unknown compare preset {args.preset!r}; choose one of {sorted(PRESETS)}.")
  study = PRESETS[args.preset]
  data = dataclasses.replace(study.data, **pretrain._given(corpus=args.data, data_dir=args.data_dir,
                                                           patterns=args.patterns))
  optimizer = dataclasses.replace(study.optimizer, **pretrain._given(learning_rate=args.learning_rate))
  optimizer = optimizer if args.steps is None else shorter_warmup(optimizer, args.steps)
  settings = pretrain._given(arms=tuple(args.arms) if args.arms else None, seeds=args.seeds, steps=args.steps,
                             batch_size=args.batch_size, tokenizer=args.tokenizer, energy_weight=args.energy_weight,
                             eval_every=args.eval_every, devices=args.devices, checkpoint_every=args.checkpoint_every,
                             compute_dtype="bfloat16" if args.bf16 else None)
  return dataclasses.replace(study, data=data, optimizer=optimizer, **settings)


def _options(command) -> None:
  command.add_argument("--preset", default="default",
                       help="default (this CPU, <= 20 min), tiny (seconds), gpt-30m / gpt-160m (accelerators)")
  command.add_argument("--arms", nargs="+", metavar="ARM",
                       help="attention variants, or VARIANT+energy for a variant trained with the energy regulariser "
                            f"(default: standard momentum nesterov standard+energy); registered: "
                            f"{', '.join(decoder.variant_names())}")
  command.add_argument("--seeds", type=int,
                       help="models per arm (seeds 0, 1, ...; one vmapped population; default: the preset's)")
  command.add_argument("--steps", type=int, help="training steps per model (default: the preset's)")
  command.add_argument("--batch-size", type=int, help="sequences per step per model (default: the preset's)")
  command.add_argument("--learning-rate", type=float, help="peak AdamW learning rate (default: the preset's)")
  command.add_argument("--eval-every", type=int, help="steps between validation evaluations (default: the preset's)")
  pretrain.add_data_options(command)
  pretrain.add_tokenizer_options(command)
  command.add_argument("--bf16", action="store_true", help="compute in bfloat16 (float32 parameters)")
  command.add_argument("--devices", type=int,
                       help="split each population's seeds over this many devices (default: the preset's)")
  command.add_argument("--checkpoint-every", type=int,
                       help="save every N steps; rerunning resumes (default: the preset's)")
  command.add_argument("--out", default="runs/compare", help="directory for results, metrics, plots and tokenizer")


@cli.command("compare", help="pretrain several attention variants x seeds on the same text and budget; loss curves "
                             "with bootstrap intervals", options=_options)
def _command(args) -> None:
  with cli.user_settings():
    study = study_from_args(args)
    check_corpus(study.data)
  lis.split_cpu(study.devices)
  run(study, args.out)
