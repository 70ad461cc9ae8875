"""Pretraining the GPT decoder on text: the task, presets, the ``energyformer pretrain`` command and its report.

Presets (byte-level tokens, vocabulary padded to 320; any attention variant):

=============  ============================================  ============  ==========  ======================
preset         model                                         batch × seq   parameters  for
=============  ============================================  ============  ==========  ======================
``tiny``       2 layers, width 64, 4 heads × 16, MLP 256      16 × 128      0.13M       CPU, a few minutes
``small``      6 layers, width 256, 8 heads × 32, MLP 1024    64 × 256      4.9M        one GPU
``gpt2-124m``  12 layers, width 768, 12 heads × 64, MLP 3072  512 × 1024    86M         GPUs, TPU slices; bf16
=============  ============================================  ============  ==========  ======================

``gpt2-124m`` has GPT-2 small's shape; with 320 byte tokens instead of GPT-2's 50 257 its embedding is smaller
(86M parameters instead of 124M). The default corpus is the Python standard library's source (about 30 MB); large
presets want a larger corpus (``corpus="tfds:c4/en"``, ``"tfds:lm1b"`` or a directory of text files).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.experimental import multihost_utils

from energyformer import cli
from energyformer.checks import check_positive_int
from energyformer.data import tokenizers
from energyformer.data.text import ByteTokenizer, TextDataConfig, check_corpus, corpus_source, text_dataset
from energyformer.models.gpt import GPT, GPTConfig
from energyformer.studies import decoder
from energyformer.train import trainer
from energyformer.train.checkpoint import CheckpointConfig
from energyformer.train.config import TrainerConfig, to_dict
from energyformer.train.mesh import initialize_distributed, parse_mesh
from energyformer.train.optim import OptimizerConfig, shorter_warmup
from energyformer.train.task import data_seed

VOCAB_SIZE = 320  # the byte tokenizer's 257 ids, padded to a multiple of 64 (divisible by any tensor-parallel size)
# The data settings a checkpoint must match to be resumed (where the data lives and how it is read may change).
DATA_IDENTITY = ("corpus", "sequence_length", "patterns", "validation_percent", "shuffle_window", "feature")


def next_token_loss(model, tokens) -> jax.Array:
  """Mean cross-entropy ``−(1/BT) Σ_{b,t} log softmax(model(x)_{b,t})[x_{b,t+1}]`` over tokens (B, T + 1),
  computed in float32 whatever the model's compute precision."""
  logits = model(tokens[:, :-1]).astype(jnp.float32)
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]))


# ε of ``relative_descent``'s denominator: keeps the ratio's gradient finite where both energies vanish.
DESCENT_EPSILON = 1e-6


def relative_descent(before, after) -> jax.Array:
  """``D = (1/B) Σ_b Σ_l (a_bl − e_bl) / (|a_bl| + |e_bl| + ε)``, ε = ``DESCENT_EPSILON``: each depth step's change
  of its own energy, ``e_bl = E_l(x_{b,l})`` before and ``a_bl = E_l(x_{b,l+1})`` after the step (both (B, depth)),
  relative to the energies' sizes. Each term lies in [−1, 1] (``|a − e| ≤ |a| + |e|``), so −depth ≤ D ≤ depth; a
  negative term is a step that lowers its energy."""
  return jnp.sum((after - before) / (jnp.abs(after) + jnp.abs(before) + DESCENT_EPSILON)) / before.shape[0]


def loss_and_energies(model, tokens) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``next_token_loss``, the depth energy ``R = (1/BT) Σ_b Σ_l E_l(x_{b,l})`` (the energy each depth step
  descends, at that step's input state, summed over the steps, per token of the batch) and the relative descent
  ``D`` (``relative_descent``), all of the same forward pass."""
  logits, before, after = model(tokens[:, :-1], return_energy=True)
  at_least_32 = lambda x: x.astype(jnp.promote_types(x.dtype, jnp.float32))
  cross_entropy = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(at_least_32(logits), tokens[:, 1:]))
  before, after = at_least_32(before), at_least_32(after)
  return (cross_entropy, jnp.sum(before) / (tokens.shape[0] * (tokens.shape[1] - 1)),
          relative_descent(before, after))


def energy_regularised_loss(model, tokens, energy_weight: float) -> jax.Array:
  """``CE + λ D`` (``loss_and_energies``), λ = ``energy_weight``; ``next_token_loss`` itself when λ = 0. Bounded
  below by ``CE − λ depth``.

  This project's reading of training with the layers' free energy as a regulariser in an alternating optimisation
  (the forward pass lowers each layer's energy over the token states, the weights are trained on cross-entropy):
  the weights are rewarded for depth steps that *descend* their energies — the relative descent ``D`` — rather
  than for low energies. The energies' values are not bounded below in the weights (aligning queries with keys
  lowers a softmax free energy without limit), so ``CE + λ R`` runs away; each term of ``D`` lies in [−1, 1]. One
  joint loss rather than alternating phases."""
  if energy_weight == 0:
    return next_token_loss(model, tokens)
  cross_entropy, _, descent = loss_and_energies(model, tokens)
  return cross_entropy + energy_weight * descent


@dataclasses.dataclass(frozen=True)
class TextTask:
  """Next-token prediction on a text corpus with the GPT decoder ``model`` (``energyformer.train.task.Task``).

  ``tokenizer``: bytes (default) or a trained BPE (``energyformer.data.tokenizers``). ``energy_weight`` λ trains
  on ``energy_regularised_loss``; ``measure_energy`` adds the depth energy ``R`` and the relative descent ``D`` to
  the evaluations. The
  validation loss is the mean over the first ``eval_sequences`` sequences of the validation split, in file order.
  """

  model: GPTConfig
  data: TextDataConfig = TextDataConfig()
  eval_sequences: int = 128
  tokenizer: ByteTokenizer | tokenizers.BPETokenizer = ByteTokenizer()
  energy_weight: float = 0.0
  measure_energy: bool = False
  structural = decoder.STRUCTURAL

  def __post_init__(self):
    check_positive_int("eval_sequences", self.eval_sequences)
    if self.model.context_length < self.data.sequence_length:
      raise ValueError(f"the model's context_length ({self.model.context_length}) is shorter than the data's "
                       f"sequence_length ({self.data.sequence_length}); raise context_length or shorten sequences.")
    if self.model.vocab_size < self.tokenizer.vocab_size:
      raise ValueError(f"the model's vocab_size ({self.model.vocab_size}) is smaller than the tokenizer's "
                       f"{self.tokenizer.vocab_size} tokens; use vocab_size >= {self.tokenizer.vocab_size}.")
    if not self.energy_weight >= 0:
      raise ValueError(f"energy_weight must be >= 0, got {self.energy_weight!r}; pass 0 for plain cross-entropy.")

  @property
  def hyperparameters(self) -> tuple[str, ...]:
    """The decoder's (``decoder.hyperparameters``: variants and solvers registered so far included)."""
    return decoder.hyperparameters()

  def create_model(self, member, rngs, batch_axes):
    """The member's decoder."""
    return decoder.decoder(self.model, member, rngs, batch_axes)

  def batches(self, member, batch_size, shard_index, shard_count):
    """This process's documents of the training split, in the member's data order."""
    return iter(text_dataset(corpus_source(self.data, "train"), self.data, batch_size=batch_size,
                             seed=data_seed(member), tokenizer=self.tokenizer, shard_index=shard_index,
                             shard_count=shard_count))

  def loss(self, model, batch, key):
    """``energy_regularised_loss`` (``next_token_loss`` at ``energy_weight=0``)."""
    return energy_regularised_loss(model, batch["tokens"], self.energy_weight)

  def evaluation_sets(self, shard_index, shard_count):
    """``val``: this process's share of the first ``eval_sequences`` validation sequences."""
    count = max(self.eval_sequences // shard_count, 1)
    sequences = text_dataset(corpus_source(self.data, "validation"), self.data, batch_size=count, seed=0,
                             tokenizer=self.tokenizer, shard_index=shard_index, shard_count=shard_count,
                             shuffle=False)
    return {"val": next(iter(sequences))}

  def evaluate(self, model, batch):
    """``{"loss": next_token_loss}``, and ``"energy"`` (``R``) and ``"descent"`` (``D``) with ``measure_energy``."""
    if not self.measure_energy:
      return {"loss": next_token_loss(model, batch["tokens"])}
    loss, energy, descent = loss_and_energies(model, batch["tokens"])
    return {"loss": loss, "energy": energy, "descent": descent}

  def identity(self) -> dict:
    """The model, the data's content settings, and a BPE tokenizer or the energy regulariser (its form, the
    relative descent, and its weight) when used."""
    extra = {} if isinstance(self.tokenizer, ByteTokenizer) else {"tokenizer": tokenizers.identity(self.tokenizer)}
    if self.energy_weight:
      extra["energy_regulariser"] = {"form": "relative_descent", "weight": self.energy_weight}
    return {"model": to_dict(self.model), "data": {k: getattr(self.data, k) for k in DATA_IDENTITY}, **extra}


@dataclasses.dataclass(frozen=True)
class Pretraining:
  """A pretraining run: the task, the trainer's settings, the seed (initialisation and data order) and the
  tokenizer (``"bytes"`` or ``"bpe:VOCAB"``, which ``with_run_tokenizer`` trains and puts in the task)."""

  task: TextTask
  trainer: TrainerConfig
  seed: int = 0
  tokenizer: str = tokenizers.BYTES

  def __post_init__(self):
    if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
      raise ValueError(f"seed must be an integer in [0, 2**32), got {self.seed!r}.")
    tokenizers.parse_tokenizer(self.tokenizer)

  @property
  def tokens_per_step(self) -> int:
    """Tokens the model is trained on in one step (all processes): ``batch_size · sequence_length``."""
    return self.trainer.batch_size * self.task.data.sequence_length


@functools.cache
def presets() -> dict[str, Pretraining]:
  """The presets by name (built on first use: building a decoder configuration starts JAX, which must wait until a
  command has chosen its devices)."""
  return {
      "tiny": Pretraining(
          TextTask(GPTConfig(VOCAB_SIZE, 128, dim=64, num_heads=4, head_dim=16, depth=2, mlp_hidden=256, remat=False),
                   TextDataConfig(sequence_length=128, shuffle_window=512), eval_sequences=128),
          TrainerConfig(steps=300, batch_size=16, optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=30,
                                                                            weight_decay=0.01),
                        checkpoint=CheckpointConfig(every=100, keep=2), eval_every=50, log_every=10)),
      "small": Pretraining(
          TextTask(GPTConfig(VOCAB_SIZE, 256, dim=256, num_heads=8, head_dim=32, depth=6, mlp_hidden=1024),
                   TextDataConfig(sequence_length=256, shuffle_window=2048, num_threads=4, prefetch=8),
                   eval_sequences=1024),
          TrainerConfig(steps=5000, batch_size=64, optimizer=OptimizerConfig(learning_rate=1e-3, warmup_steps=200),
                        checkpoint=CheckpointConfig(every=500, keep=3), eval_every=250, log_every=50)),
      "gpt2-124m": Pretraining(
          TextTask(GPTConfig(VOCAB_SIZE, 1024, dim=768, num_heads=12, head_dim=64, depth=12, mlp_hidden=3072),
                   TextDataConfig(sequence_length=1024, shuffle_window=4096, num_threads=16, prefetch=16),
                   eval_sequences=10240),
          TrainerConfig(steps=20000, batch_size=512, optimizer=OptimizerConfig(learning_rate=6e-4, warmup_steps=700),
                        checkpoint=CheckpointConfig(every=1000, keep=3), compute_dtype="bfloat16", eval_every=500,
                        log_every=20)),
  }


def configure(preset: str = "tiny", *, variant: str | None = None, steps: int | None = None,
              batch_size: int | None = None, learning_rate: float | None = None, mesh: str | None = None,
              corpus: str | None = None, data_dir: str | None = None, patterns: tuple[str, ...] | None = None,
              bf16: bool | None = None, checkpoint_every: int | None = None, seed: int | None = None,
              tokenizer: str | None = None, energy_weight: float | None = None) -> Pretraining:
  """``PRESETS[preset]`` with the given settings replaced (``None`` keeps the preset's).

  ``mesh`` is a preset name or sizes (``energyformer.train.mesh.parse_mesh``); ``bf16`` computes in bfloat16;
  the warmup is shortened to a tenth of ``steps`` when ``steps`` is shorter than the preset's warmup.
  """
  if preset not in presets():
    raise ValueError(f"unknown pretraining preset {preset!r}; choose one of {sorted(presets())}.")
  for name, value in (("steps", steps), ("batch_size", batch_size), ("checkpoint_every", checkpoint_every)):
    if value is not None:
      check_positive_int(name, value)
  if variant is not None:
    decoder.check_variants([variant])
  run = presets()[preset]
  optimizer = dataclasses.replace(run.trainer.optimizer, **_given(learning_rate=learning_rate))
  optimizer = optimizer if steps is None else shorter_warmup(optimizer, steps)
  task = dataclasses.replace(
      run.task, model=dataclasses.replace(run.task.model, **_given(variant=variant)),
      data=dataclasses.replace(run.task.data, **_given(corpus=corpus, data_dir=data_dir, patterns=patterns)),
      **_given(energy_weight=energy_weight))
  settings = dataclasses.replace(
      run.trainer, optimizer=optimizer, mesh=run.trainer.mesh if mesh is None else parse_mesh(mesh),
      checkpoint=dataclasses.replace(run.trainer.checkpoint, **_given(every=checkpoint_every)),
      **_given(steps=steps, batch_size=batch_size,
               compute_dtype=None if bf16 is None else "bfloat16" if bf16 else "float32"))
  return dataclasses.replace(run, task=task, trainer=settings, **_given(seed=seed, tokenizer=tokenizer))


def _given(**settings) -> dict:
  return {name: value for name, value in settings.items() if value is not None}


def prepare_corpus(data: TextDataConfig) -> None:
  """Checks the corpus and builds it; with several processes, process 0 first, so that processes sharing a data
  directory do not write it at the same time."""
  check_corpus(data)
  if jax.process_count() > 1:
    if jax.process_index() == 0:
      corpus_source(data, "train")
    multihost_utils.sync_global_devices("text corpus prepared")


def training_texts(data: TextDataConfig):
  """The documents of the training split, in file order."""
  source = corpus_source(data, "train")
  return (source[index][data.feature] for index in range(len(source)))


def with_tokenizer(task: TextTask, spec: str, run_dir) -> TextTask:
  """``task`` with the tokenizer of the run in ``run_dir`` (``tokenizers.run_tokenizer``: the one saved there, or
  ``spec``'s, trained on the training split and saved) and, for a BPE, the model's vocabulary padded to it. With
  several processes, process 0 trains and saves it first."""
  if jax.process_count() > 1 and jax.process_index() == 0:
    tokenizers.run_tokenizer(spec, run_dir, lambda: training_texts(task.data))
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("tokenizer trained")
  tokenizer = tokenizers.run_tokenizer(spec, run_dir, lambda: training_texts(task.data))
  if isinstance(tokenizer, ByteTokenizer):
    return dataclasses.replace(task, tokenizer=tokenizer)
  model = dataclasses.replace(task.model, vocab_size=tokenizers.padded_vocab_size(tokenizer))
  return dataclasses.replace(task, tokenizer=tokenizer, model=model)


def with_run_tokenizer(run: Pretraining, out_dir) -> Pretraining:
  """``run`` with its task's tokenizer resolved in ``out_dir`` (``with_tokenizer``), the corpus prepared first."""
  prepare_corpus(run.task.data)
  return dataclasses.replace(run, task=with_tokenizer(run.task, run.tokenizer, out_dir))


def train(run: Pretraining, out_dir, **options) -> trainer.TrainResult:
  """Trains ``run`` with the trainer (``options`` are ``energyformer.train.trainer.train``'s), resuming from
  ``out_dir``."""
  prepare_corpus(run.task.data)
  return trainer.train(run.task, run.trainer, out_dir, members=[{"seed": run.seed}], **options)


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


def plot_losses(curves: dict, path, title: str, unit: str = "nats / byte") -> None:
  """Validation loss (markers) over the training loss (thin line) against step, in ``unit`` (nats per token of
  the run's tokenizer)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for name, style in (("train/loss", dict(lw=0.8, alpha=0.6)), ("val/loss", dict(marker="o", lw=1.5))):
    if curves[name]:
      steps, losses = zip(*curves[name])
      ax.plot(steps, losses, label=name.replace("/loss", "ing" if name.startswith("train") else "idation"), **style)
  ax.set(xlabel="step", ylabel=f"cross-entropy ({unit})", title=title)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def summarize(config: Pretraining, result: trainer.TrainResult, curves: dict) -> dict:
  """What the run did: its steps (``resumed_from`` the step it started at, ``schedule`` the segments it ran), the
  first and final losses, its throughput (``None`` where no training call was timed) and the configuration it
  trained with."""
  trained = dataclasses.replace(config, trainer=result.config or config.trainer)
  throughput = trained.tokens_per_step / result.seconds_per_step
  return {"variant": config.task.model.variant, "tokenizer": tokenizers.tokenizer_name(config.task.tokenizer),
          "energy_weight": config.task.energy_weight, "steps": result.step, "resumed_from": result.start_step,
          "schedule": result.schedule, "stopped_by": result.stopped_by,
          "first_train_loss": curves["train/loss"][0][1], "final_train_loss": curves["train/loss"][-1][1],
          "final_val_loss": curves["val/loss"][-1][1] if curves["val/loss"] else None,
          "tokens_per_second": throughput if math.isfinite(throughput) else None, "seconds": result.seconds,
          "mesh": dict(result.mesh.shape), "config": _config_dict(trained)}


def _config_dict(config: Pretraining) -> dict:
  """``to_dict(config)`` with the task's tokenizer as its identity (not the whole BPE)."""
  settings = to_dict(config)
  settings["task"]["tokenizer"] = tokenizers.identity(config.task.tokenizer)
  return settings


def run(config: Pretraining, out_dir="runs/pretrain", *, progress: bool = True, extend: bool = False) -> dict:
  """Pretrains (resuming from ``out_dir`` when it holds checkpoints of this run; ``extend``: to another number of
  steps, see ``energyformer.train.trainer.resumed_config``), then writes ``val_loss.png`` and ``summary.json`` and
  prints the summary. Returns the summary. A run already complete trains nothing and returns the summary on disk
  (rewritten only when missing)."""
  out = pathlib.Path(out_dir)
  lead = jax.process_index() == 0
  config = with_run_tokenizer(config, out)
  model = config.task.model
  if lead:
    print(f"pretraining a {model.variant} decoder ({parameter_count(model) / 1e6:.2f}M parameters, "
          f"{tokenizers.tokenizer_name(config.task.tokenizer)} tokens) on "
          f"{config.task.data.corpus!r}: {config.tokens_per_step} tokens a step, "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s), {config.trainer.compute_dtype}")
  result = train(config, out, progress=progress, extend=extend)
  if not lead:
    return {}
  written = out / "summary.json"
  if result.start_step == result.step and result.stopped_by is None and written.exists():
    print(f"nothing to train; the run's summary is {written}")
    return json.loads(written.read_text())
  curves = read_curves(out / "metrics.jsonl")
  tokenizer = config.task.tokenizer
  plot_losses(curves, out / "val_loss.png", f"{model.variant} decoder, {tokenizers.tokenizer_name(tokenizer)} "
              f"tokens, {config.task.data.corpus}", tokenizers.loss_unit(tokenizer))
  summary = summarize(config, result, curves)
  written.write_text(json.dumps(summary, indent=1))
  state = f"stopped by {result.stopped_by} at step {result.step}" if result.stopped_by else f"{result.step} steps"
  validation = f"{summary['final_val_loss']:.3f}" if curves["val/loss"] else "not measured yet"
  speed = ("throughput not measured (too few steps)" if summary["tokens_per_second"] is None
           else f"{summary['tokens_per_second']:.0f} tokens/s")
  print(f"{state}: training loss {summary['first_train_loss']:.3f} -> {summary['final_train_loss']:.3f}, "
        f"validation loss {validation}, {speed}, {result.seconds:.0f} s; wrote {out / 'val_loss.png'}, "
        f"{out / 'metrics.jsonl'} and {written}")
  return summary


def add_data_options(command) -> None:
  """``--data``, ``--patterns`` and ``--data-dir`` (shared with ``energyformer compare``)."""
  command.add_argument("--data", help="'stdlib' (default: the Python standard library's source), a directory of "
                                      "*.txt files, or tfds:NAME: a catalogue dataset (e.g. tfds:lm1b; needs network "
                                      "the first time and TensorFlow, pip install energyformer[catalogue]) or "
                                      "NAME/CONFIG of one prepared as array_record under --data-dir")
  command.add_argument("--patterns", nargs="+", help="file patterns of a --data directory (default: *.txt)")
  command.add_argument("--data-dir", help="where tfds datasets are written and read "
                                          "(default: $ENERGYFORMER_DATA_DIR or ~/.cache/energyformer/datasets)")


def add_tokenizer_options(command) -> None:
  """``--tokenizer`` and ``--energy-weight`` (shared with ``energyformer compare``)."""
  command.add_argument("--tokenizer", help="bytes (default: UTF-8 bytes) or bpe:VOCAB, a byte-level BPE of VOCAB ids "
                                           "trained on the training split and saved with the run (e.g. bpe:4096)")
  command.add_argument("--energy-weight", type=float, metavar="LAMBDA",
                       help="train on cross-entropy + LAMBDA x the relative descent of the layers' energies, summed "
                            "over depth (each layer's term in [-1, 1]; default 0)")


def _options(command) -> None:
  command.add_argument("--config", default="tiny", help="tiny (CPU, minutes), small (one GPU), gpt2-124m (GPUs, TPU)")
  command.add_argument("--variant", help="attention variant (default: the --config preset's): "
                                         f"{', '.join(decoder.variant_names())}")
  command.add_argument("--steps", type=int, help="training steps (default: the --config preset's)")
  command.add_argument("--batch-size", type=int,
                       help="global batch size (sequences per step, all devices; default: the --config preset's)")
  command.add_argument("--learning-rate", type=float, help="peak AdamW learning rate (default: the --config preset's)")
  command.add_argument("--mesh", help="single, data, fsdp, fsdp_tp, or sizes such as fsdp=4,tensor=2 "
                                      "(default: data parallel over every device)")
  add_data_options(command)
  command.add_argument("--bf16", action="store_true", default=None,
                       help="compute in bfloat16, float32 parameters (default: the --config preset's)")
  command.add_argument("--checkpoint-every", type=int,
                       help="save a checkpoint every N steps (default: the --config preset's)")
  command.add_argument("--seed", type=int,
                       help="seed of the initialisation and the data order (default: the --config preset's)")
  command.add_argument("--extend", action="store_true",
                       help="resume a run in --out with another --steps: its saved optimiser settings are kept, the "
                            "warmup is unchanged and the cosine decay is recomputed to end at the new last step (the "
                            "learning rate at the resumed step is printed before and after). Without it, a run is "
                            "resumed only with the schedule it was trained with")
  add_tokenizer_options(command)
  command.add_argument("--out", default="runs/pretrain",
                       help="directory for checkpoints, metrics.jsonl, tensorboard/, val_loss.png, summary.json")
  command.add_argument("--distributed", action="store_true",
                       help="multi-host: call jax.distributed.initialize first (auto-detected on TPU pods, SLURM, "
                            "Open MPI; elsewhere also pass --coordinator, --num-processes, --process-id)")
  command.add_argument("--coordinator",
                       help="host:port of process 0 (multi-host without auto-detection; default: detected)")
  command.add_argument("--num-processes", type=int, help="number of processes (multi-host; default: detected)")
  command.add_argument("--process-id", type=int, help="this process's index (multi-host; default: detected)")


@cli.command("pretrain", help="pretrain the GPT decoder on text (byte-level), sharded over a device mesh, resumable",
             description="Pretrains the GPT-style decoder with any attention variant on a text corpus. Rerunning "
                         "with the same --out resumes from the newest checkpoint; SIGTERM or Ctrl-C saves one and "
                         "stops.", options=_options)
def _command(args) -> None:
  if args.distributed:
    initialize_distributed(args.coordinator, args.num_processes, args.process_id)
  with cli.user_settings():
    if args.extend and (args.steps is None or args.learning_rate is not None):
      raise ValueError("--extend continues a run to another number of steps with its saved optimiser settings: give "
                       "--steps and no --learning-rate.")
    config = configure(args.config, variant=args.variant, steps=args.steps, batch_size=args.batch_size,
                       learning_rate=args.learning_rate, mesh=args.mesh, corpus=args.data, data_dir=args.data_dir,
                       patterns=args.patterns, bf16=args.bf16, checkpoint_every=args.checkpoint_every, seed=args.seed,
                       tokenizer=args.tokenizer, energy_weight=args.energy_weight)
    check_corpus(config.task.data)
  run(config, args.out, extend=args.extend)
