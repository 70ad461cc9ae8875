"""Masked image completion with the Energy Transformer, against a mean-patch baseline and a standard Transformer.

Both models share the patch encoder/decoder, CLS/MASK tokens and positions (``ImageCompletion``); the ET core is
one weight-shared block run for T energy-descent steps, the baseline a standard pre-norm Transformer encoder whose
MLP width is chosen so that its core has about the ET core's parameter count. The mean-patch baseline predicts
every masked patch as the mean training patch at that position. All three are scored by the RMSE over the
scored patches of the same held-out images under the same masks. The default trains on scikit-learn's 8×8 digits
on the CPU in a few minutes.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from energyformer.checks import check_positive_int
from energyformer.data import images as image_data
from energyformer.metrics import MetricsWriter
from energyformer.models.energy_transformer import EnergyTransformer, ETConfig
from energyformer.models.image_completion import (MASKINGS, ImageCompletion, ImageConfig, masked_rmse, patch_masks,
                                                  patchify, unpatchify)
from energyformer.models.transformer_encoder import TransformerEncoder, count_params, matched_mlp_hidden
from energyformer.studies.training import Recipe, et_optimizer, fit


@dataclasses.dataclass(frozen=True)
class ETImagesStudy:
  """Data, masking, model sizes and the training recipe of the image-completion study."""

  dataset: str = "digits"
  data_dir: str | None = None
  image: ImageConfig = ImageConfig((8, 8), 1, 2, 64)
  masking: str = "paper"
  et: ETConfig = ETConfig(dim=64, num_heads=4, head_dim=16, num_memories=256, depth=12, step_size=0.1)
  baseline: bool = True
  baseline_depth: int = 1
  baseline_heads: int = 4
  recipe: Recipe = Recipe(steps=1000, batch_size=64, optimizer=et_optimizer(2e-3, 100))
  eval_every: int = 100
  eval_images: int = 512
  seed: int = 0

  def __post_init__(self):
    if self.masking not in MASKINGS:
      raise ValueError(f"unknown masking preset {self.masking!r}; choose one of {sorted(MASKINGS)}.")
    if self.image.dim != self.et.dim:
      raise ValueError(f"image.dim={self.image.dim} must equal et.dim={self.et.dim}: the ET updates the patch tokens.")
    for name in ("baseline_depth", "baseline_heads", "eval_every", "eval_images"):
      check_positive_int(name, getattr(self, name))


PRESETS = {
    "default": ETImagesStudy(),
    "tiny": ETImagesStudy(image=ImageConfig((8, 8), 1, 2, 16),
                          et=ETConfig(dim=16, num_heads=2, head_dim=8, num_memories=64, depth=4),
                          baseline_depth=1, baseline_heads=2,
                          recipe=Recipe(steps=30, batch_size=16, optimizer=et_optimizer(3e-3, 5)),
                          eval_every=10, eval_images=64),
    # The ET image recipe: ImageNet at 224², 16² patches, D = 768, 12 heads of 64, 3072 memories, 12 steps of 0.1;
    # AdamW (0.9, 0.99, wd 0.05), warmup-cosine to 5e-4, batch 768, 100 epochs, clip 1. Accelerator scale. The
    # warmup length (5 epochs) is this library's choice.
    "paper": ETImagesStudy(dataset="imagenet2012", image=ImageConfig((224, 224), 3, 16, 768),
                           et=ETConfig(dim=768, num_heads=12, head_dim=64, num_memories=3072, depth=12),
                           baseline_depth=4, baseline_heads=12,
                           recipe=Recipe(steps=166_800, batch_size=768, optimizer=et_optimizer(5e-4, 8_340)),
                           eval_every=2_000, eval_images=1_024),
}


def et_model(study: ETImagesStudy, seed: int) -> ImageCompletion:
  """The image model with an Energy Transformer core."""
  rngs = nnx.Rngs(seed)
  return ImageCompletion(study.image, EnergyTransformer(study.et, rngs=rngs), rngs=rngs)


def baseline_model(study: ETImagesStudy, core_params: int, seed: int) -> ImageCompletion:
  """The image model with a standard Transformer core of about ``core_params`` parameters."""
  rngs = nnx.Rngs(seed)
  hidden = matched_mlp_hidden(core_params, study.image.dim, study.baseline_heads, study.baseline_depth)
  core = TransformerEncoder(study.image.dim, study.baseline_heads, study.baseline_depth, hidden, rngs=rngs)
  return ImageCompletion(study.image, core, rngs=rngs)


def completion_loss(masking_name: str):
  """``loss(model, batch, key)``: masked-patch RMSE under fresh random masks (and Langevin noise) per step."""
  masking = MASKINGS[masking_name]

  def loss(model, batch, key):
    images = batch["image"]
    mask_key, noise_key = jax.random.split(key)
    replace, score = patch_masks(mask_key, masking, images.shape[0], model.config.num_patches)
    return model.loss(images, replace, score, key=noise_key)

  return loss


def mean_patch_rmse(train_images, test_images, score_mask, patch_size: int) -> float:
  """RMSE of predicting each scored patch by the mean training patch at its position."""
  mean_patches = jnp.mean(patchify(train_images, patch_size), axis=0)
  target = patchify(test_images, patch_size)
  return float(masked_rmse(jnp.broadcast_to(mean_patches, target.shape), target, score_mask))


def load_images(study: ETImagesStudy, split: str, limit: int | None = None) -> np.ndarray:
  """``split`` of the study's dataset as one array (count, H, W, C) in [0, 1]."""
  source = image_data.image_source(study.dataset, split, study.data_dir)
  return image_data.image_array(source, study.image.image_size, study.image.channels, limit)


def train_batches(study: ETImagesStudy):
  """The grain pipeline of the training split."""
  source = image_data.image_source(study.dataset, "train", study.data_dir)
  return image_data.image_dataset(source, image_size=study.image.image_size, channels=study.image.channels,
                                  batch_size=study.recipe.batch_size, seed=study.seed)


def energy_trace(model: ImageCompletion, images, replace_mask, key) -> np.ndarray:
  """ET energy per image at steps 0..T, shape (B, T + 1), along the rollout on the masked images."""
  tokens = model.tokens(patchify(images, model.config.patch_size), replace_mask)
  rollout = model.core.rollout(tokens, key=key, record_energy=True)
  return np.concatenate([np.asarray(rollout.energy_before), np.asarray(rollout.energy_after[:, -1:])], axis=1)


def _evaluator(images, replace, score):
  predict = nnx.jit(lambda model, key: model(images, replace, key=key))

  def evaluate(model):
    predicted = predict(model, jax.random.key(0))
    return {"test_rmse": float(masked_rmse(predicted, patchify(images, model.config.patch_size), score))}

  return evaluate


def _train(name, model, study, evaluate, writer, bar):
  history = fit(model, completion_loss(study.masking), train_batches(study), study.recipe,
                key=jax.random.key(study.seed), evaluate=evaluate, eval_every=study.eval_every, progress=bar,
                writer=writer, prefix=name)
  return {**history, "test_rmse": history["evaluations"][-1]["test_rmse"], "params": count_params(model),
          "core_params": count_params(model.core)}


def run(study: ETImagesStudy, out_dir="runs/et_images") -> dict:
  """Trains the ET (and the Transformer baseline), compares them with the mean-patch baseline on held-out
  images; prints a table and writes results.json, metrics (JSONL + TensorBoard), completion.png, energy.png."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  test = jnp.asarray(load_images(study, "test", study.eval_images))
  replace, score = patch_masks(jax.random.key(study.seed + 1), MASKINGS[study.masking], len(test),
                               study.image.num_patches)
  evaluate = _evaluator(test, replace, score)
  et = et_model(study, study.seed)
  results = {"study": _study_dict(study)}
  total = study.recipe.steps * (2 if study.baseline else 1)
  with MetricsWriter(out) as writer, tqdm(total=total, desc="et-images", unit="step") as bar:
    results["et"] = _train("et", et, study, evaluate, writer, bar)
    models = {"ET": et}
    if study.baseline:
      baseline = baseline_model(study, count_params(et.core), study.seed)
      results["transformer"] = _train("transformer", baseline, study, evaluate, writer, bar)
      models["Transformer"] = baseline
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


def format_table(results: dict) -> str:
  """Held-out masked-patch RMSE, parameter counts and training time of each model."""
  lines = [f"{'model':24s} {'masked RMSE':>12s} {'core params':>12s} {'train s':>9s}", "-" * 60]
  lines.append(f"{'mean patch':24s} {results['mean_patch']['test_rmse']:12.4f} {'-':>12s} {'-':>9s}")
  for key, name in (("et", "Energy Transformer"), ("transformer", "Transformer encoder")):
    if key in results:
      r = results[key]
      lines.append(f"{name:24s} {r['test_rmse']:12.4f} {r['core_params']:12d} {r['seconds']:9.1f}")
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
