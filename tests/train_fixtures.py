"""A small text corpus and a tiny training configuration shared by the training tests and their worker scripts."""
from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np

from energyformer.data.text import TextDataConfig
from energyformer.models import GPTConfig
from energyformer.studies.pretrain import Pretraining, TextTask
from energyformer.train.checkpoint import CheckpointConfig
from energyformer.train.config import TrainerConfig
from energyformer.train.mesh import MeshConfig
from energyformer.train.optim import OptimizerConfig

WORDS = ("energy", "token", "state", "solver", "step", "layer", "gradient", "momentum", "attention", "head", "mesh",
         "shard", "batch", "loss", "the", "a", "of", "minimises", "descends", "is")


def write_corpus(directory, num_files: int = 40, seed: int = 0) -> pathlib.Path:
  """``num_files`` text files of random sentences (about 1 kB each) under ``directory``, in two folders."""
  rng = np.random.default_rng(seed)
  root = pathlib.Path(directory)
  for index in range(num_files):
    path = root / f"part{index % 2}" / f"doc{index:03d}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    sentences = [" ".join(rng.choice(WORDS, size=rng.integers(4, 12))) + "." for _ in range(rng.integers(10, 30))]
    path.write_text(f"document {index}\n" + "\n".join(sentences) + "\n")
  return root


def tiny_config(corpus, data_dir, *, mesh: MeshConfig = MeshConfig(1, 1, 1), steps: int = 8, every: int | None = 2,
                seed: int = 0, **overrides) -> Pretraining:
  """A one-layer, width-16 decoder on sequences of 16 bytes, batch 8, checkpoints every ``every`` steps;
  ``overrides`` replace ``TrainerConfig`` fields."""
  task = TextTask(GPTConfig(vocab_size=320, context_length=16, dim=16, num_heads=2, head_dim=8, depth=1, mlp_hidden=32,
                            remat=False),
                  TextDataConfig(corpus=str(corpus), data_dir=str(data_dir), sequence_length=16, validation_percent=20,
                                 shuffle_window=16), eval_sequences=16)
  trainer = TrainerConfig(steps=steps, batch_size=8, optimizer=OptimizerConfig(learning_rate=1e-2, warmup_steps=2),
                          mesh=mesh, checkpoint=CheckpointConfig(every=every, keep=2), eval_every=4, log_every=1)
  return Pretraining(task, dataclasses.replace(trainer, **overrides), seed)


class KilledAfter:
  """A progress bar that stops a run once ``steps`` steps are done: raises ``KeyboardInterrupt`` (a run killed
  mid-way), or sends this process ``signal_number`` (a pre-emption the run handles)."""

  def __init__(self, steps: int, signal_number=None):
    self.steps, self.done, self.signal_number = steps, 0, signal_number

  def update(self, n):
    self.done += n
    if self.done == self.steps:
      if self.signal_number is None:
        raise KeyboardInterrupt
      os.kill(os.getpid(), self.signal_number)

  def set_postfix(self, *_, **__):
    pass
