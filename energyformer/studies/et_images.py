"""Masked image completion with the Energy Transformer, against a mean-patch baseline and a standard Transformer.

Both models share the patch encoder/decoder, CLS/MASK tokens and positions (``ImageCompletion``); the ET core is
one weight-shared block run for T energy-descent steps, the baseline a standard pre-norm Transformer encoder whose
MLP width is chosen so that its core has about the ET core's parameter count. The mean-patch baseline predicts
every masked patch as the mean training patch at that position. All three are scored by the RMSE over the
scored patches of the same held-out images under the same masks. The default trains on scikit-learn's 8×8 digits
on the CPU in a few minutes. With ``equilibrium`` (``--equilibrium``) the same ET block is also trained in
equilibrium mode (run to its fixed point, anchored to the input tokens, differentiated implicitly:
``layers.equilibrium``), reported beside the T-step unrolled ET with its training time and the steps it took.
Its solve budget (``equilibrium_max_steps``, ``equilibrium_tol``; ``--eq-max-steps``, ``--eq-tol``) is this
project's choice for the CPU: at most 30 anchored steps to relative step 1e-2, and the adjoint GMRES bounded by the
same 30 (one cycle of 20 Krylov vectors): a training step then costs about twice the unrolled ET's (against 7× with
1e-3 within 100 steps), and the implicit gradient is that of a fixed point known to that tolerance (``BENCHMARKS.md``).
Both ETs train for the same steps on the same batches.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from energyformer import cli
from energyformer.checks import check_positive_int, check_range
from energyformer.data import images as image_data
from energyformer.metrics import MetricsWriter
from energyformer.models.energy_transformer import EnergyTransformer, ETConfig
from energyformer.models.image_completion import (MASKINGS, ImageCompletion, ImageConfig, Masking, masked_rmse,
                                                  patch_masks, patchify, unpatchify)
from energyformer.models.transformer_encoder import TransformerEncoder, count_params, matched_mlp_hidden
from energyformer.train import trainer
from energyformer.train.task import data_seed
from energyformer.train.config import TrainerConfig
from energyformer.train.mesh import MeshConfig
from energyformer.train.optim import OptimizerConfig, shorter_warmup


def et_optimizer(learning_rate: float, warmup_steps: int, weight_decay: float = 0.05) -> OptimizerConfig:
  """The ET image recipe's optimizer: AdamW(0.9, 0.99) with clip 1.0, warmup then cosine decay to 0."""
  return OptimizerConfig(learning_rate=learning_rate, warmup_steps=warmup_steps, final_fraction=0.0,
                         weight_decay=weight_decay, b1=0.9, b2=0.99, clip_norm=1.0)


# Evaluation sets are evaluated in one piece: an RMSE (or an AUC) over slices is not the one over the whole set.
WHOLE_SET = 1 << 20


def recipe(steps: int, batch_size: int, optimizer: OptimizerConfig, eval_every: int) -> TrainerConfig:
  """The trainer's settings of an ET study: evaluation sets in one piece, metrics at every evaluation."""
  return TrainerConfig(steps=steps, batch_size=batch_size, optimizer=optimizer, mesh=MeshConfig(1, 1, 1),
                       eval_every=eval_every, eval_batch_size=WHOLE_SET, log_every=eval_every)


@dataclasses.dataclass(frozen=True)
class ETImagesStudy:
  """Data, masking, model sizes and the training recipe of the image-completion study."""

  dataset: str = "digits"
  data_dir: str | None = None
  image: ImageConfig = ImageConfig((8, 8), 1, 2, 64)
  masking: str = "paper"
  et: ETConfig = ETConfig(dim=64, num_heads=4, head_dim=16, num_memories=256, depth=12, step_size=0.1)
  baseline: bool = True
  equilibrium: bool = False
  equilibrium_max_steps: int = 30
  equilibrium_tol: float = 1e-2
  baseline_depth: int = 1
  baseline_heads: int = 4
  training: TrainerConfig = recipe(1000, 64, et_optimizer(2e-3, 100), eval_every=100)
  eval_images: int = 512
  seed: int = 0

  def __post_init__(self):
    if self.masking not in MASKINGS:
      raise ValueError(f"unknown masking preset {self.masking!r}; choose one of {sorted(MASKINGS)}.")
    if self.image.dim != self.et.dim:
      raise ValueError(f"image.dim={self.image.dim} must equal et.dim={self.et.dim}: the ET updates the patch tokens.")
    check_range("equilibrium_tol", self.equilibrium_tol, 0.0, low_open=True,
                fix="Use a positive relative tolerance, e.g. 1e-2.")
    for name in ("baseline_depth", "baseline_heads", "eval_images", "equilibrium_max_steps"):
      check_positive_int(name, getattr(self, name))


PRESETS = {
    "default": ETImagesStudy(),
    "tiny": ETImagesStudy(image=ImageConfig((8, 8), 1, 2, 16),
                          et=ETConfig(dim=16, num_heads=2, head_dim=8, num_memories=64, depth=4),
                          baseline_depth=1, baseline_heads=2,
                          training=recipe(30, 16, et_optimizer(3e-3, 5), eval_every=10), eval_images=64),
    # The ET image recipe: ImageNet at 224², 16² patches, D = 768, 12 heads of 64, 3072 memories, 12 steps of 0.1;
    # AdamW (0.9, 0.99, wd 0.05), warmup-cosine to 5e-4, batch 768, 100 epochs, clip 1. Accelerator scale. The
    # warmup length (5 epochs) is this library's choice.
    "paper": ETImagesStudy(dataset="imagenet2012", image=ImageConfig((224, 224), 3, 16, 768),
                           et=ETConfig(dim=768, num_heads=12, head_dim=64, num_memories=3072, depth=12),
                           baseline_depth=4, baseline_heads=12,
                           training=recipe(166_800, 768, et_optimizer(5e-4, 8_340), eval_every=2_000),
                           eval_images=1_024),
}


def et_model(study: ETImagesStudy, rngs: nnx.Rngs, equilibrium: bool = False) -> ImageCompletion:
  """The image model with an Energy Transformer core (``study.et``, or its equilibrium form: at most
  ``study.equilibrium_max_steps`` steps to ``study.equilibrium_tol``)."""
  config = study.et
  if equilibrium:
    config = dataclasses.replace(config, equilibrium=True, max_steps=study.equilibrium_max_steps,
                                 tol=study.equilibrium_tol)
  return ImageCompletion(study.image, EnergyTransformer(config, rngs=rngs), rngs=rngs)


def baseline_model(study: ETImagesStudy, core_params: int, rngs: nnx.Rngs) -> ImageCompletion:
  """The image model with a standard Transformer core of about ``core_params`` parameters."""
  hidden = matched_mlp_hidden(core_params, study.image.dim, study.baseline_heads, study.baseline_depth)
  core = TransformerEncoder(study.image.dim, study.baseline_heads, study.baseline_depth, hidden, rngs=rngs)
  return ImageCompletion(study.image, core, rngs=rngs)


def et_core_params(study: ETImagesStudy) -> int:
  """Parameters of the ET core (the baseline's core is matched to it)."""
  return count_params(nnx.eval_shape(lambda: et_model(study, nnx.Rngs(0))).core)


def completion_loss(model, images, masking: Masking, key):
  """Masked-patch RMSE of ``model`` on ``images`` under fresh random masks (and Langevin noise) drawn from ``key``."""
  mask_key, noise_key = jax.random.split(key)
  replace, score = patch_masks(mask_key, masking, images.shape[0], model.config.num_patches)
  return model.loss(images, replace, score, key=noise_key)


@dataclasses.dataclass(frozen=True)
class CompletionTask:
  """Masked image completion (``energyformer.train.task.Task``) with the ET core, the ET in equilibrium mode or the
  Transformer baseline (``core``: ``"et"``, ``"et_equilibrium"`` or ``"transformer"``); evaluated by the
  masked-patch RMSE on fixed held-out images and masks."""

  study: ETImagesStudy
  core: str = "et"
  hyperparameters = ()
  structural = ()

  def create_model(self, member, rngs, batch_axes):
    """The completion model with the task's core."""
    if self.core in ("et", "et_equilibrium"):
      return et_model(self.study, rngs, equilibrium=self.core == "et_equilibrium")
    return baseline_model(self.study, et_core_params(self.study), rngs)

  def batches(self, member, batch_size, shard_index, shard_count):
    """The shuffled training images (``data_seed``)."""
    source = image_data.image_source(self.study.dataset, "train", self.study.data_dir)
    dataset = image_data.image_dataset(source, image_size=self.study.image.image_size,
                                       channels=self.study.image.channels, batch_size=batch_size,
                                       seed=data_seed(member))
    return iter(dataset.map(lambda batch: {"image": batch["image"]}))

  def loss(self, model, batch, key):
    """``completion_loss`` under the study's masking."""
    return completion_loss(model, batch["image"], MASKINGS[self.study.masking], key)

  def evaluation_sets(self, shard_index, shard_count):
    """``test``: the held-out images with their fixed masks."""
    images, replace, score = test_set(self.study)
    return {"test": {"image": images, "replace": replace, "score": score}}

  def evaluate(self, model, batch):
    """``{"rmse": masked-patch RMSE}`` of the completion."""
    predicted = model(batch["image"], batch["replace"], key=jax.random.key(0))
    return {"rmse": masked_rmse(predicted, patchify(batch["image"], model.config.patch_size), batch["score"])}

  def identity(self) -> dict:
    """The study and the core."""
    return {"study": _study_dict(self.study), "core": self.core}


@functools.lru_cache(maxsize=4)
def test_set(study: ETImagesStudy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The held-out images (``eval_images`` of them) and their fixed replace and score masks."""
  images = load_images(study, "test", study.eval_images)
  replace, score = patch_masks(jax.random.key(study.seed + 1), MASKINGS[study.masking], len(images),
                               study.image.num_patches)
  return images, np.asarray(replace), np.asarray(score)


def mean_patch_rmse(train_images, test_images, score_mask, patch_size: int) -> float:
  """RMSE of predicting each scored patch by the mean training patch at its position."""
  mean_patches = jnp.mean(patchify(train_images, patch_size), axis=0)
  target = patchify(test_images, patch_size)
  return float(masked_rmse(jnp.broadcast_to(mean_patches, target.shape), target, score_mask))


def load_images(study: ETImagesStudy, split: str, limit: int | None = None) -> np.ndarray:
  """``split`` of the study's dataset as one array (count, H, W, C) in [0, 1]."""
  source = image_data.image_source(study.dataset, split, study.data_dir)
  return image_data.image_array(source, study.image.image_size, study.image.channels, limit)


def energy_trace(model: ImageCompletion, images, replace_mask, key) -> np.ndarray:
  """ET energy per image at steps 0..T, shape (B, T + 1), along the rollout on the masked images."""
  tokens = model.tokens(patchify(images, model.config.patch_size), replace_mask)
  rollout = model.core.rollout(tokens, key=key, record_energy=True)
  return np.concatenate([np.asarray(rollout.energy_before), np.asarray(rollout.energy_after[:, -1:])], axis=1)


def _train(name: str, study: ETImagesStudy, writer, bar) -> tuple[dict, ImageCompletion]:
  """Trains the ``name`` core ("et" or "transformer"); its summary and trained model."""
  run = trainer.train(CompletionTask(study, name), study.training, members=[{"seed": study.seed}], progress=bar,
                      writer=_Prefixed(writer, name))
  if run.stopped_by is not None:
    raise trainer.RunStopped(f"stopped by {run.stopped_by} at step {run.step} of the {name} model; nothing is "
                             "reported.")
  model = run.model()
  evaluations = run.history["evaluations"]
  history = {"loss": [losses[0] for losses in run.history["loss"]], "seconds": run.seconds,
             "seconds_per_step": run.seconds_per_step,
             "evaluations": [{"step": step, "test_rmse": sets["test"]["rmse"][0]} for step, sets in evaluations]}
  return {**history, "test_rmse": history["evaluations"][-1]["test_rmse"], "params": count_params(model),
          "core_params": count_params(model.core)}, model


class _Prefixed:
  """A metrics writer whose names start with ``prefix/`` (one writer for both models of the study)."""

  def __init__(self, writer, prefix: str):
    self.writer, self.prefix = writer, prefix

  def write(self, step: int, scalars: dict, prefix: str = "") -> None:
    self.writer.write(step, scalars, f"{self.prefix}/{prefix}" if prefix else self.prefix)


def run(study: ETImagesStudy, out_dir="runs/et_images") -> dict:
  """Trains the ET (and the Transformer baseline), compares them with the mean-patch baseline on held-out
  images; prints a table and writes results.json, metrics (JSONL + TensorBoard), completion.png, energy.png."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  images, replace, score = test_set(study)
  test = jnp.asarray(images)
  results = {"study": _study_dict(study)}
  total = study.training.steps * (1 + study.baseline + study.equilibrium)
  with MetricsWriter(out) as writer, tqdm(total=total, desc="et-images", unit="step") as bar:
    results["et"], et = _train("et", study, writer, bar)
    models = {"ET": et}
    if study.equilibrium:
      results["et_equilibrium"], models["ET equilibrium"] = _train("et_equilibrium", study, writer, bar)
      results["et_equilibrium"]["convergence"] = convergence(models["ET equilibrium"], test, replace)
    if study.baseline:
      results["transformer"], models["Transformer"] = _train("transformer", study, writer, bar)
  train_images = jnp.asarray(load_images(study, "train", 4096))
  results["mean_patch"] = {"test_rmse": mean_patch_rmse(train_images, test, score, study.image.patch_size)}
  energies = energy_trace(et, test, replace, jax.random.key(0))
  results["energy_mean"] = energies.mean(axis=0).tolist()
  results["energy_monotone_fraction"] = float(np.mean(np.all(np.diff(energies, axis=1) <= 1e-5 * np.abs(
      energies[:, :-1]), axis=1)))
  print("\n" + format_table(results))
  (out / "results.json").write_text(json.dumps(results, indent=1))
  plot_completions(models, test[:10], replace[:10], out / "completion.png")
  plot_energy(energies, out / "energy.png")
  print(f"wrote {out / 'results.json'}, {out / 'metrics.jsonl'}, {out / 'completion.png'} and {out / 'energy.png'}")
  return results


def convergence(model: ImageCompletion, images, replace_mask) -> dict:
  """Steps and final relative residual of the equilibrium ET on ``images`` (mean and max over images), and how many
  images stopped at the step limit above ``tol``."""
  tokens = model.tokens(patchify(images, model.config.patch_size), replace_mask)
  rollout = model.core.rollout(tokens)
  steps, residual = np.asarray(rollout.steps), np.asarray(rollout.residual)
  tol = model.core.config.tol
  return {"mean_steps": float(steps.mean()), "max_steps": int(steps.max()), "max_residual": float(residual.max()),
          "unconverged": int(np.sum(~(residual <= tol))), "images": int(residual.size), "tol": tol}


def format_table(results: dict) -> str:
  """Held-out masked-patch RMSE, parameter counts and training time of each model."""
  lines = [f"{'model':24s} {'masked RMSE':>12s} {'core params':>12s} {'train s':>9s}", "-" * 60]
  lines.append(f"{'mean patch':24s} {results['mean_patch']['test_rmse']:12.4f} {'-':>12s} {'-':>9s}")
  for key, name in (("et", "Energy Transformer"), ("et_equilibrium", "ET equilibrium"),
                    ("transformer", "Transformer encoder")):
    if key in results:
      r = results[key]
      lines.append(f"{name:24s} {r['test_rmse']:12.4f} {r['core_params']:12d} {r['seconds']:9.1f}")
  if "convergence" in results.get("et_equilibrium", {}):
    c = results["et_equilibrium"]["convergence"]
    lines.append(f"ET equilibrium on the held-out images: {c['mean_steps']:.1f} steps on average (max {c['max_steps']}), "
                 f"max relative residual {c['max_residual']:.1e} (tol {c['tol']:g}), "
                 f"{c['unconverged']} of {c['images']} not converged")
  return "\n".join(lines)


def _panel(model, images, replace):
  predicted = model(images, replace, key=jax.random.key(0))
  patches = patchify(images, model.config.patch_size)
  return unpatchify(jnp.where(replace[..., None], predicted, patches), model.config)


def plot_completions(models: dict, images, replace, path) -> None:
  """Rows: originals, masked inputs (hidden patches grey), then each model's completion (visible patches kept)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  config = next(iter(models.values())).config
  masked = unpatchify(jnp.where(replace[..., None], 0.5, patchify(images, config.patch_size)), config)
  rows = {"original": images, "masked": masked, **{name: _panel(m, images, replace) for name, m in models.items()}}
  fig, axes = plt.subplots(len(rows), len(images), figsize=(1.1 * len(images), 1.2 * len(rows)), squeeze=False)
  for r, (name, row) in enumerate(rows.items()):
    for c in range(len(images)):
      picture = np.clip(np.asarray(row[c]), 0.0, 1.0)
      axes[r, c].imshow(picture[..., 0] if picture.shape[-1] == 1 else picture, cmap="gray", vmin=0, vmax=1)
      axes[r, c].set_xticks([])
      axes[r, c].set_yticks([])
    axes[r, 0].set_ylabel(name, fontsize=8)
  fig.suptitle("Masked image completion (held-out images)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_energy(energies, path) -> None:
  """ET energy against step: a few images' traces and the mean over images."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  steps = np.arange(energies.shape[1])
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  for trace in energies[:8]:
    ax.plot(steps, trace, color="0.7", linewidth=0.8)
  ax.plot(steps, energies.mean(axis=0), color="C0", marker="o", label="mean over held-out images")
  ax.set(xlabel="step t", ylabel="energy E(LN(x_t))", title="Energy Transformer: energy along the dynamics")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _study_dict(study: ETImagesStudy) -> dict:
  return json.loads(json.dumps(dataclasses.asdict(study), default=list))


def with_steps(training: TrainerConfig, steps: int | None) -> TrainerConfig:
  """``training`` for ``steps`` steps (``shorter_warmup``); unchanged for ``None``."""
  if steps is None:
    return training
  check_positive_int("--steps", steps)
  return dataclasses.replace(training, steps=steps, optimizer=shorter_warmup(training.optimizer, steps))


def study_from_args(args) -> ETImagesStudy:
  """The image study of ``args``: a preset with the given options replaced; raises naming a bad option."""
  if args.preset not in PRESETS:
    raise ValueError(f"unknown preset {args.preset!r}; choose one of {sorted(PRESETS)}.")
  study = PRESETS[args.preset]
  study = dataclasses.replace(study, training=with_steps(study.training, args.steps))
  overrides = {"dataset": args.dataset, "data_dir": args.data_dir, "masking": args.masking, "seed": args.seed}
  study = dataclasses.replace(study, **{k: v for k, v in overrides.items() if v is not None})
  if args.no_baseline:
    study = dataclasses.replace(study, baseline=False)
  if args.equilibrium:
    study = dataclasses.replace(study, equilibrium=True)
  solve = {"equilibrium_max_steps": args.eq_max_steps, "equilibrium_tol": args.eq_tol}
  study = dataclasses.replace(study, **{k: v for k, v in solve.items() if v is not None})
  if args.self_exclusion or args.temperature is not None:
    et = dataclasses.replace(study.et, self_exclusion=args.self_exclusion or study.et.self_exclusion,
                             temperature=study.et.temperature if args.temperature is None else args.temperature)
    study = dataclasses.replace(study, et=et)
  return study


def _options(command) -> None:
  command.add_argument("--preset", default="default", help="default (digits, CPU minutes), tiny (seconds) or paper "
                                                           "(ImageNet recipe, accelerator)")
  command.add_argument("--dataset", help="digits, folder (images under --data-dir) or a tfds name (cifar10, "
                                         "imagenet2012) prepared under --data-dir (default: the preset's)")
  command.add_argument("--data-dir", help="tfds data directory, or the image folder for --dataset folder "
                                          "(default: the preset's)")
  command.add_argument("--masking", help="paper (100/196 scored, 90%% of those replaced), mask25 or mask75 "
                                         "(default: the preset's)")
  command.add_argument("--steps", type=int, help="training steps per model (default: the preset's)")
  command.add_argument("--seed", type=int, help="seed of the initialisation and the data (default: the preset's)")
  command.add_argument("--self-exclusion", action="store_true", help="exclude each token from its own attention")
  command.add_argument("--temperature", type=float,
                       help="Langevin noise temperature of the ET dynamics (0: none; default: the preset's)")
  command.add_argument("--no-baseline", action="store_true", help="train the ET only")
  command.add_argument("--equilibrium", action="store_true",
                       help="also train the ET run to its fixed point (implicit gradients) and compare it")
  command.add_argument("--eq-max-steps", type=int, help="step limit of the equilibrium ET's solve (default 30)")
  command.add_argument("--eq-tol", type=float, help="relative tolerance of the equilibrium ET's solve (default 1e-2)")
  command.add_argument("--out", default="runs/et_images", help="directory for results, metrics and PNGs")


@cli.command("et-images", help="Energy Transformer masked image completion vs a mean-patch baseline and a standard "
                               "Transformer (digits on the CPU by default)", options=_options)
def _command(args) -> None:
  with cli.user_settings():
    study = study_from_args(args)
  run(study, args.out)
