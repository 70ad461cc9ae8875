"""Image classification at matched parameter counts: Hyper-SET, a standard Transformer, the Energy Transformer.

Every model is the same classifier around a different token core (``PatchClassifier``): an image (H, W, C) is cut
into patches (``models.image_completion.patchify``), each patch encoded linearly to a D-dimensional token, a
learned class token prepended and learned positions added; the core updates the tokens, and a linear head reads
the class token (``pooling="cls"``) or the mean of the patch tokens (``pooling="mean"``) to class logits. Cores:

* ``hyper_set``: Hyper-SET's recurrent hyperspherical layer iterated T times (``models.HyperSETLayer``);
* ``transformer``: a standard pre-norm Transformer encoder (``models.transformer_encoder``), the reference size;
* ``energy_transformer``: the Energy Transformer block (``models.EnergyTransformer``).

Parameter counts are matched to the Transformer's: the Hyper-SET feed-forward width and the ET's number of
memories are chosen so that the whole classifier has about its count (each count is affine in that width:
``matched_width``). The loss is the cross-entropy of the labels; the metric the test accuracy. Every model trains
``seeds`` times as one vmapped population of the trainer; the table gives the mean test accuracy over seeds with
its 95 % percentile-bootstrap interval (``studies.statistics``), beside two references that need no training: the
majority class of the training labels and a logistic regression on the raw pixels (scikit-learn).

Data: ``digits`` (scikit-learn's 8×8 digits, no download) or ``tfds:NAME`` (e.g. ``tfds:cifar10``), a tfds dataset
already prepared on disk under ``--data-dir`` (nothing is downloaded: an unprepared one is refused with the
command that prepares it). Writes results.json, results.csv, the trainer's metrics.jsonl (and TensorBoard) and
classify_images.png.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from energyformer import cli
from energyformer.checks import check_positive_int
from energyformer.data import images as image_data
from energyformer.metrics import MetricsWriter
from energyformer.models import HyperSETConfig, HyperSETLayer
from energyformer.models.energy_transformer import EnergyTransformer, ETConfig
from energyformer.models.image_completion import ImageConfig, check_images, patchify
from energyformer.models.transformer_encoder import TransformerEncoder, count_params
from energyformer.studies.statistics import bootstrap_interval
from energyformer.train import population
from energyformer.train.config import TrainerConfig
from energyformer.train.optim import OptimizerConfig, shorter_warmup
from energyformer.train.task import data_seed

MODELS = ("hyper_set", "transformer", "energy_transformer")
POOLINGS = ("cls", "mean")
TFDS_PREFIX = "tfds:"


@dataclasses.dataclass(frozen=True)
class ClassifyStudy:
  """Data, sizes, models, seeds and the optimisation budget.

  ``image``: geometry and token width D; ``transformer_depth`` / ``transformer_heads`` / ``transformer_hidden``:
  the reference Transformer (its MLP width fixes the parameter budget); ``hyper_set_*``: Hyper-SET's heads, head
  width, iterations T and iteration features (its feed-forward width is matched); ``et``: the ET's heads, head
  width, steps and step size (its memories are matched; its ``dim`` is the token width). ``eval_images`` caps
  the test images (``None``: all); ``baseline_images`` caps the training images of the pixel logistic regression.
  """

  dataset: str = "digits"
  data_dir: str | None = None
  image: ImageConfig = ImageConfig((8, 8), 1, 2, 32)
  num_classes: int = 10
  pooling: str = "cls"
  transformer_depth: int = 2
  transformer_heads: int = 4
  transformer_hidden: int = 64
  hyper_set_heads: int = 4
  hyper_set_head_dim: int = 8
  hyper_set_iterations: int = 6
  hyper_set_time_dim: int = 16
  et: ETConfig = ETConfig(dim=32, num_heads=4, head_dim=8, num_memories=64, depth=6, step_size=0.1, remat=False)
  models: tuple[str, ...] = MODELS
  seeds: int = 3
  steps: int = 600
  batch_size: int = 64
  optimizer: OptimizerConfig = OptimizerConfig(learning_rate=3e-3, warmup_steps=50, final_fraction=0.0,
                                               weight_decay=0.05, b2=0.99, clip_norm=1.0)
  eval_every: int = 100
  eval_batch_size: int = 297
  eval_images: int | None = None
  baseline_images: int = 5000
  steps_per_call: int = 50

  def __post_init__(self):
    unknown = sorted(set(self.models) - set(MODELS))
    if unknown or not self.models:
      raise ValueError(f"unknown classifier model(s) {unknown or '(none given)'}; choose from {list(MODELS)}.")
    if self.pooling not in POOLINGS:
      raise ValueError(f"unknown pooling {self.pooling!r}; choose one of {list(POOLINGS)}.")
    if self.dataset != "digits" and not self.dataset.startswith(TFDS_PREFIX):
      raise ValueError(f"unknown dataset {self.dataset!r}; use 'digits' (scikit-learn, no download) or "
                       f"'{TFDS_PREFIX}NAME' for a tfds dataset prepared on disk (e.g. '{TFDS_PREFIX}cifar10').")
    if self.et.dim != self.image.dim:
      raise ValueError(f"et.dim={self.et.dim} must equal image.dim={self.image.dim}: the ET updates the patch tokens.")
    for name in ("num_classes", "transformer_depth", "transformer_heads", "transformer_hidden", "hyper_set_heads",
                 "hyper_set_head_dim", "hyper_set_iterations", "seeds", "steps", "batch_size", "eval_every",
                 "eval_batch_size", "baseline_images", "steps_per_call"):
      check_positive_int(name, getattr(self, name))

  def trainer_config(self) -> TrainerConfig:
    """The trainer settings of this study."""
    return TrainerConfig(steps=self.steps, batch_size=self.batch_size, optimizer=self.optimizer,
                         eval_every=self.eval_every, eval_batch_size=self.eval_batch_size, log_every=self.eval_every,
                         steps_per_call=self.steps_per_call)

  def hyper_set_config(self, hidden: int) -> HyperSETConfig:
    """Hyper-SET's layer at the token width with ``hidden`` feed-forward units (vocabulary fields unused)."""
    return HyperSETConfig(1, self.image.num_patches + 1, self.num_classes, self.image.dim, self.hyper_set_heads,
                          self.hyper_set_head_dim, hidden, self.hyper_set_iterations, self.hyper_set_time_dim)


class PatchClassifier(nnx.Module):
  """Images (B, H, W, C) → logits (B, num_classes) through a token ``core(tokens (B, N, D), *, key=None)`` that
  returns normalised tokens (module docstring): ``head(pool(core([CLS; enc(patches)] + positions)))``."""

  def __init__(self, image: ImageConfig, core: Any, num_classes: int, pooling: str, *, rngs: nnx.Rngs):
    self.config, self.core, self.pooling = image, core, pooling
    self.encoder = nnx.Linear(image.patch_dim, image.dim, rngs=rngs)
    self.cls_token = nnx.Param(0.02 * jax.random.normal(rngs.params(), (image.dim,)))
    self.positions = nnx.Param(0.02 * jax.random.normal(rngs.params(), (image.num_patches + 1, image.dim)))
    self.head = nnx.Linear(image.dim, num_classes, rngs=rngs)

  def __call__(self, images):
    """Class logits (B, num_classes)."""
    check_images(images, self.config)
    patches = self.encoder(patchify(images, self.config.patch_size))
    cls = jnp.broadcast_to(self.cls_token[...], (patches.shape[0], 1, self.config.dim))
    out = self.core(jnp.concatenate([cls, patches], axis=1) + self.positions[...], key=None)
    return self.head(out[:, 0] if self.pooling == "cls" else jnp.mean(out[:, 1:], axis=1))


def _core(study: ClassifyStudy, model: str, width: int, rngs):
  if model == "hyper_set":
    return HyperSETLayer(study.hyper_set_config(width), rngs=rngs)
  if model == "energy_transformer":
    return EnergyTransformer(dataclasses.replace(study.et, num_memories=width), rngs=rngs)
  return TransformerEncoder(study.image.dim, study.transformer_heads, study.transformer_depth, width, rngs=rngs)


def build(study: ClassifyStudy, model: str, rngs: nnx.Rngs, width: int | None = None) -> PatchClassifier:
  """The classifier with ``model``'s core; ``width`` (default: matched) is its feed-forward width (Transformer MLP,
  Hyper-SET feed-forward units, ET memories)."""
  width = matched_width(study, model) if width is None else width
  return PatchClassifier(study.image, _core(study, model, width, rngs), study.num_classes, study.pooling, rngs=rngs)


def parameter_count(study: ClassifyStudy, model: str, width: int | None = None) -> int:
  """Trained scalars of the whole classifier (counted on abstract shapes, nothing initialised)."""
  return count_params(nnx.eval_shape(lambda: build(study, model, nnx.Rngs(0), width)))


@functools.lru_cache(maxsize=32)
def matched_width(study: ClassifyStudy, model: str) -> int:
  """``study.transformer_hidden`` for the Transformer; for the others the width ``w`` whose count is nearest the
  Transformer's: the count is ``c(w) = c(1) + (w − 1)(c(2) − c(1))``, so ``w = 1 + round((target − c(1)) / slope)``
  (at least 1)."""
  if model == "transformer":
    return study.transformer_hidden
  target = parameter_count(study, "transformer")
  at_one, at_two = parameter_count(study, model, 1), parameter_count(study, model, 2)
  return max(1, 1 + round((target - at_one) / (at_two - at_one)))


def classification_source(study: ClassifyStudy, split: str):
  """``split`` ("train" or "test") of the study's dataset: scikit-learn's digits, or a prepared tfds dataset
  (``tfds:NAME``; ``FileNotFoundError`` naming ``tfds build`` when it is not on disk)."""
  if study.dataset == "digits":
    return image_data.digits(split)
  return image_data.tfds_source(study.dataset[len(TFDS_PREFIX):], split, study.data_dir)


@functools.lru_cache(maxsize=4)
def labelled_arrays(study: ClassifyStudy, split: str, limit: int | None = None) -> dict[str, np.ndarray]:
  """The first ``limit`` (default all) records of ``split``: ``{"image": (n, H, W, C) in [0, 1], "label": (n,)}``."""
  source = classification_source(study, split)
  count = len(source) if limit is None else min(limit, len(source))
  labels = np.asarray([int(source[i]["label"]) for i in range(count)], np.int32)
  return {"image": image_data.image_array(source, study.image.image_size, study.image.channels, count),
          "label": labels}


@dataclasses.dataclass(frozen=True)
class ClassifyTask:
  """Image classification (``energyformer.train.task.Task``): member ``{"model": name}``; test accuracy."""

  study: ClassifyStudy
  hyperparameters = ("model",)
  structural = ("model",)
  metric_name = "accuracy"
  higher_is_better = True

  def create_model(self, member, rngs, batch_axes):
    """The member's classifier (``member["model"]``, the Transformer by default)."""
    del batch_axes
    return build(self.study, member.get("model", "transformer"), rngs)

  def batches(self, member, batch_size, shard_index, shard_count):
    """This process's share of the training images, reshuffled every epoch from the member's data seed."""
    source = classification_source(self.study, "train")
    share = image_data.Subset(source, np.arange(len(source))[shard_index::shard_count])
    return iter(image_data.image_dataset(share, image_size=self.study.image.image_size,
                                         channels=self.study.image.channels, batch_size=batch_size,
                                         seed=data_seed(member)))

  def loss(self, model, batch, key):
    """Mean cross-entropy of the labels."""
    del key
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(model(batch["image"]), batch["label"]))

  def evaluation_sets(self, shard_index, shard_count):
    """``test``: the held-out images (``eval_images`` of them), this process's share."""
    arrays = labelled_arrays(self.study, "test", self.study.eval_images)
    return {"test": {key: values[shard_index::shard_count] for key, values in arrays.items()}}

  def evaluate(self, model, batch):
    """The loss and the accuracy of the arg-max class."""
    logits = model(batch["image"])
    return {"loss": jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])),
            "accuracy": jnp.mean(jnp.argmax(logits, axis=-1) == batch["label"])}

  def identity(self) -> dict:
    """The study's settings (what a checkpoint must match)."""
    return study_dict(self.study)


def study_dict(study: ClassifyStudy) -> dict:
  """``study`` as a JSON-ready dict."""
  return json.loads(json.dumps(dataclasses.asdict(study), default=list))


def reference_accuracies(study: ClassifyStudy) -> dict[str, float]:
  """Test accuracy of the majority class of the training labels, and of a logistic regression on raw pixels
  trained on the first ``baseline_images`` training images."""
  from sklearn.linear_model import LogisticRegression

  train = labelled_arrays(study, "train", study.baseline_images)
  test = labelled_arrays(study, "test", study.eval_images)
  majority = np.bincount(train["label"], minlength=study.num_classes).argmax()
  pixels = LogisticRegression(max_iter=500).fit(train["image"].reshape(len(train["label"]), -1), train["label"])
  return {"majority class": float(np.mean(test["label"] == majority)),
          "logistic regression on pixels": float(pixels.score(test["image"].reshape(len(test["label"]), -1),
                                                              test["label"]))}


def train_model(study: ClassifyStudy, model: str, writer, progress) -> dict:
  """Trains ``study.seeds`` copies of ``model`` as one population; its curves, final accuracies and interval."""
  members = [{"model": model, "seed": seed} for seed in range(study.seeds)]
  runs = population.train_population(ClassifyTask(study), members, study.trainer_config(), progress=progress,
                                     writer=writer)
  accuracies = [run["curves"]["test"]["accuracy"][-1] for run in runs]
  return {"model": model, "parameters": parameter_count(study, model), "width": matched_width(study, model),
          "eval_steps": runs[0]["eval_steps"], "test_accuracy": [run["curves"]["test"]["accuracy"] for run in runs],
          "final_accuracy": accuracies, "interval": bootstrap_interval(accuracies).as_dict("accuracy"),
          "seconds_per_step": runs[0]["seconds_per_step"]}


def format_table(results: list[dict], references: dict[str, float], study: ClassifyStudy) -> str:
  """Per model: parameters, their ratio to the Transformer's, mean test accuracy [95 % bootstrap interval]."""
  transformer = parameter_count(study, "transformer")
  header = f"{'model':30s} {'params':>8s} {'ratio':>6s} {'test accuracy [95% CI]':>26s} {'ms/step':>8s}"
  lines = [f"{study.dataset}: {study.seeds} seed(s), {study.steps} steps", header, "-" * len(header)]
  for result in results:
    interval = result["interval"]
    lines.append(f"{result['model']:30s} {result['parameters']:8d} {result['parameters'] / transformer:6.3f} "
                 f"{interval['accuracy']:9.3f} [{interval['accuracy_low']:.3f}, {interval['accuracy_high']:.3f}]"
                 f"{'':3s} {1000 * result['seconds_per_step']:8.1f}")
  lines += [f"{name:30s} {'-':>8s} {'-':>6s} {accuracy:9.3f}" for name, accuracy in references.items()]
  return "\n".join(lines)


def plot(results: list[dict], references: dict[str, float], path) -> None:
  """Test accuracy against step (mean over seeds, the seeds' range shaded), references as horizontal lines."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axis = plt.subplots(figsize=(7, 4.2))
  for result in results:
    curves = np.asarray(result["test_accuracy"])
    line, = axis.plot(result["eval_steps"], curves.mean(axis=0), label=f"{result['model']} ({result['parameters']})")
    axis.fill_between(result["eval_steps"], curves.min(axis=0), curves.max(axis=0), color=line.get_color(),
                      alpha=0.2)
  for (name, accuracy), style in zip(references.items(), (":", "--")):
    axis.axhline(accuracy, color="grey", linestyle=style, label=name)
  axis.set(xlabel="training step", ylabel="test accuracy", title="image classification at matched parameters")
  axis.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def run(study: ClassifyStudy, out_dir="runs/classify_images") -> list[dict]:
  """Prints the parameter counts, trains every model, prints the table, writes results, metrics and the plot."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  transformer = parameter_count(study, "transformer")
  for model in study.models:
    count = parameter_count(study, model)
    print(f"{model}: {count} parameters (width {matched_width(study, model)}), {count / transformer:.3f} × the "
          f"Transformer's {transformer}")
  references = reference_accuracies(study)
  results = []
  with MetricsWriter(out) as writer, tqdm(total=study.steps * len(study.models), desc="classify", unit="step") as bar:
    for model in study.models:
      results.append(train_model(study, model, writer, bar))
  print("\n" + format_table(results, references, study))
  rows = [{"model": result["model"], "parameters": result["parameters"], **result["interval"]} for result in results]
  with open(out / "results.csv", "w", newline="") as f:
    table = csv.DictWriter(f, fieldnames=list(rows[0]))
    table.writeheader()
    table.writerows(rows)
  (out / "results.json").write_text(json.dumps({"study": study_dict(study), "references": references,
                                                "runs": results}, indent=1))
  plot(results, references, out / "classify_images.png")
  print(f"wrote {out / 'results.csv'}, {out / 'results.json'}, {out / 'metrics.jsonl'} and "
        f"{out / 'classify_images.png'}")
  return results


PRESETS = {
    "default": ClassifyStudy(),
    "tiny": ClassifyStudy(image=ImageConfig((8, 8), 1, 4, 16), transformer_depth=1, transformer_heads=2,
                          transformer_hidden=16, hyper_set_heads=2, hyper_set_head_dim=8, hyper_set_iterations=2,
                          hyper_set_time_dim=8, et=ETConfig(dim=16, num_heads=2, head_dim=8, num_memories=16, depth=2,
                                                            remat=False),
                          seeds=2, steps=4, batch_size=16, eval_every=2, eval_batch_size=99, eval_images=99,
                          baseline_images=200, steps_per_call=2,
                          optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=1)),
    # CIFAR-10 at a ViT-small-like size (this project's reading of the papers' CIFAR scale: 4x4 patches, width 384,
    # 6 heads of 64; Hyper-SET one layer x 12 iterations; a 6-layer Transformer with a 4x MLP sets the budget; the
    # ET 12 steps), AdamW with warmup and cosine decay, about 200 epochs at batch 256. For a GPU.
    "cifar10": ClassifyStudy(dataset="tfds:cifar10", image=ImageConfig((32, 32), 3, 4, 384), transformer_depth=6,
                             transformer_heads=6, transformer_hidden=1536, hyper_set_heads=6, hyper_set_head_dim=64,
                             hyper_set_iterations=12, hyper_set_time_dim=256,
                             et=ETConfig(dim=384, num_heads=6, head_dim=64, num_memories=1536, depth=12),
                             seeds=3, steps=40_000, batch_size=256, eval_every=2000, eval_batch_size=1000,
                             steps_per_call=100,
                             optimizer=OptimizerConfig(learning_rate=1e-3, warmup_steps=2000, final_fraction=0.0,
                                                       weight_decay=0.05, b2=0.99, clip_norm=1.0)),
}


def study_from_args(args) -> ClassifyStudy:
  """The preset ``args.preset`` with the options given replaced."""
  if args.preset not in PRESETS:
    raise ValueError(f"unknown preset {args.preset!r}; choose one of {sorted(PRESETS)}.")
  overrides = {key: value for key, value in {"models": tuple(args.models) if args.models else None,
                                             "seeds": args.seeds, "steps": args.steps, "dataset": args.data,
                                             "data_dir": args.data_dir, "pooling": args.pooling}.items()
               if value is not None}
  study = dataclasses.replace(PRESETS[args.preset], **overrides)
  return dataclasses.replace(study, optimizer=shorter_warmup(study.optimizer, study.steps))


def _options(command) -> None:
  command.add_argument("--preset", default="default",
                       help="default (digits, CPU, a few minutes), tiny (seconds) or cifar10 (GPU, tfds:cifar10)")
  command.add_argument("--data",
                       help="digits, or tfds:NAME for a tfds dataset prepared under --data-dir (default: the preset's)")
  command.add_argument("--data-dir",
                       help="the tfds data directory holding the prepared dataset (default: the preset's)")
  command.add_argument("--models", nargs="+", help=f"models to train (default: all of {', '.join(MODELS)})")
  command.add_argument("--seeds", type=int, help="models per kind (seeds 0, 1, ...; default: the preset's)")
  command.add_argument("--steps", type=int, help="training steps per model (default: the preset's)")
  command.add_argument("--pooling", choices=POOLINGS,
                       help="read the class token (cls) or the mean patch token (default: the preset's)")
  command.add_argument("--out", default="runs/classify_images", help="directory for results, metrics and the plot")


@cli.command("classify-images", help="Hyper-SET vs Transformer vs Energy Transformer image classification at "
                                     "matched parameters (digits; tfds:cifar10 when prepared)", options=_options)
def _command(args) -> None:
  with cli.user_settings():
    study = study_from_args(args)
  run(study, args.out)
