"""Pretraining the GPT decoder on text: presets, the ``energyformer pretrain`` command's work, and its report.

Presets (byte-level tokens, vocabulary padded to 320; any attention variant):

=============  ============================================  ============  ==========  ======================
preset         model                                         batch × seq   parameters  for
=============  ============================================  ============  ==========  ======================
``tiny``       2 layers, width 64, 4 heads × 16, MLP 256      16 × 128      0.13M       CPU, a few minutes
``small``      6 layers, width 256, 8 heads × 32, MLP 1024    64 × 256      4.9M        one GPU
``gpt2-124m``  12 layers, width 768, 12 heads × 64, MLP 3072  512 × 1024    86M         GPUs, TPU slices; bf16
=============  ============================================  ============  ==========  ======================

``gpt2-124m`` has GPT-2 small's shape; with 320 byte tokens instead of GPT-2's 50 257 its embedding is smaller
(86M parameters instead of 124M). The default corpus is the Python standard library's source (about 30 MB); large presets
want a larger corpus (``corpus="tfds:c4/en"``, ``"tfds:lm1b"`` or a directory of text files).
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib

import jax
from flax import nnx

from energyformer.data.text import TextDataConfig
from energyformer.models.gpt import GPT, GPTConfig
from energyformer.train import loop
from energyformer.train.checkpoint import CheckpointConfig
from energyformer.train.config import TrainConfig, to_dict
from energyformer.train.mesh import parse_mesh
from energyformer.train.optim import OptimizerConfig

VOCAB_SIZE = 320  # the byte tokenizer's 257 ids, padded to a multiple of 64 (divisible by any tensor-parallel size)

PRESETS = {
    "tiny": TrainConfig(
        model=GPTConfig(VOCAB_SIZE, 128, dim=64, num_heads=4, head_dim=16, depth=2, mlp_hidden=256, remat=False),
        data=TextDataConfig(sequence_length=128, shuffle_window=512),
        optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=30, weight_decay=0.01),
        checkpoint=CheckpointConfig(every=100, keep=2), steps=300, batch_size=16, eval_every=50, eval_batches=8,
        log_every=10),
    "small": TrainConfig(
        model=GPTConfig(VOCAB_SIZE, 256, dim=256, num_heads=8, head_dim=32, depth=6, mlp_hidden=1024),
        data=TextDataConfig(sequence_length=256, shuffle_window=2048, num_threads=4, prefetch=8),
        optimizer=OptimizerConfig(learning_rate=1e-3, warmup_steps=200),
        checkpoint=CheckpointConfig(every=500, keep=3), steps=5000, batch_size=64, eval_every=250, eval_batches=16,
        log_every=50),
    "gpt2-124m": TrainConfig(
        model=GPTConfig(VOCAB_SIZE, 1024, dim=768, num_heads=12, head_dim=64, depth=12, mlp_hidden=3072),
        data=TextDataConfig(sequence_length=1024, shuffle_window=4096, num_threads=16, prefetch=16),
        optimizer=OptimizerConfig(learning_rate=6e-4, warmup_steps=700),
        checkpoint=CheckpointConfig(every=1000, keep=3), steps=20000, batch_size=512, compute_dtype="bfloat16",
        eval_every=500, eval_batches=20, log_every=20),
}


def configure(preset: str = "tiny", *, variant: str | None = None, steps: int | None = None,
              batch_size: int | None = None, learning_rate: float | None = None, mesh: str | None = None,
              corpus: str | None = None, data_dir: str | None = None, patterns: tuple[str, ...] | None = None,
              bf16: bool | None = None, checkpoint_every: int | None = None, seed: int | None = None) -> TrainConfig:
  """``PRESETS[preset]`` with the given settings replaced (``None`` keeps the preset's).

  ``mesh`` is a preset name or sizes (``energyformer.train.mesh.parse_mesh``); ``bf16`` computes in bfloat16;
  the warmup is shortened to a tenth of ``steps`` when ``steps`` is shorter than the preset's warmup.
  """
  if preset not in PRESETS:
    raise ValueError(f"unknown pretraining preset {preset!r}; choose one of {sorted(PRESETS)}.")
  config = PRESETS[preset]
  optimizer = dataclasses.replace(config.optimizer, **_given(learning_rate=learning_rate))
  if steps is not None and optimizer.warmup_steps >= steps:
    optimizer = dataclasses.replace(optimizer, warmup_steps=steps // 10)
  return dataclasses.replace(
      config, model=dataclasses.replace(config.model, **_given(variant=variant)),
      data=dataclasses.replace(config.data, **_given(corpus=corpus, data_dir=data_dir, patterns=patterns)),
      optimizer=optimizer,
      mesh=config.mesh if mesh is None else parse_mesh(mesh),
      checkpoint=dataclasses.replace(config.checkpoint, **_given(every=checkpoint_every)),
      **_given(steps=steps, batch_size=batch_size, seed=seed,
               compute_dtype=None if bf16 is None else "bfloat16" if bf16 else "float32"))


def _given(**settings) -> dict:
  return {name: value for name, value in settings.items() if value is not None}


def parameter_count(model: GPTConfig) -> int:
  """Number of trained parameters (``nnx.Param`` entries) of the decoder ``model``."""
  params = nnx.state(nnx.eval_shape(lambda: GPT(model, rngs=nnx.Rngs(0))), nnx.Param)
  return sum(math.prod(x.shape) for x in jax.tree.leaves(params))


def read_curves(metrics_path) -> dict[str, list[tuple[int, float]]]:
  """``{"train/loss": [(step, loss), ...], "val/loss": [...]}`` from ``metrics.jsonl``; a step logged again by a
  resumed run replaces the earlier entry."""
  curves: dict[str, dict[int, float]] = {"train/loss": {}, "val/loss": {}}
  for line in pathlib.Path(metrics_path).read_text().splitlines():
    record = json.loads(line)
    for name, points in curves.items():
      if name in record:
        points[record["step"]] = record[name]
  return {name: sorted(points.items()) for name, points in curves.items()}


def plot_losses(curves: dict, path, title: str) -> None:
  """Validation loss (markers) over the training loss (thin line) against step, in nats per byte."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for name, style in (("train/loss", dict(lw=0.8, alpha=0.6)), ("val/loss", dict(marker="o", lw=1.5))):
    if curves[name]:
      steps, losses = zip(*curves[name])
      ax.plot(steps, losses, label=name.replace("/loss", "ing" if name.startswith("train") else "idation"), **style)
  ax.set(xlabel="step", ylabel="cross-entropy (nats / byte)", title=title)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def run(config: TrainConfig, out_dir="runs/pretrain", *, progress: bool = True) -> dict:
  """Pretrains (resuming from ``out_dir`` when it holds checkpoints of this run), then writes ``val_loss.png``
  and ``summary.json`` and prints the summary. Returns the summary."""
  out = pathlib.Path(out_dir)
  lead = jax.process_index() == 0
  if lead:
    print(f"pretraining a {config.model.variant} decoder ({parameter_count(config.model) / 1e6:.2f}M parameters) "
          f"on {config.data.corpus!r}: {config.steps} steps of {config.tokens_per_step} tokens, "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s), {config.compute_dtype}")
  result = loop.train(config, out, progress=progress)
  if not lead:
    return {}
  curves = read_curves(out / "metrics.jsonl")
  plot_losses(curves, out / "val_loss.png", f"{config.model.variant} decoder, byte-level, {config.data.corpus}")
  summary = {"variant": config.model.variant, "steps": result.step, "resumed_from": result.start_step,
             "stopped_by": result.stopped_by, "first_train_loss": curves["train/loss"][0][1],
             "final_train_loss": curves["train/loss"][-1][1],
             "final_val_loss": curves["val/loss"][-1][1] if curves["val/loss"] else None,
             "tokens_per_second": result.tokens_per_second, "seconds": result.seconds,
             "mesh": dict(result.mesh.shape), "config": to_dict(config)}
  (out / "summary.json").write_text(json.dumps(summary, indent=1))
  state = f"stopped by {result.stopped_by} at step {result.step}" if result.stopped_by else f"{result.step} steps"
  validation = f"{summary['final_val_loss']:.3f}" if curves["val/loss"] else "not measured yet"
  print(f"{state}: training loss {summary['first_train_loss']:.3f} -> {summary['final_train_loss']:.3f}, "
        f"validation loss {validation}, {result.tokens_per_second:.0f} tokens/s, "
        f"{result.seconds:.0f} s; wrote {out / 'val_loss.png'}, {out / 'metrics.jsonl'} and {out / 'summary.json'}")
  return summary
