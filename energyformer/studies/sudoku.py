"""The Sudoku study: recurrent-depth models at matched parameters, and test-time iteration scaling.

Models (``MODELS``), each one weight-shared layer iterated ``T`` times over the 81 cells (no mask):

* ``hyper_set``: Hyper-SET (``models.hyper_set``), gradient descent with learned per-iteration step sizes;
  ``hyper_set_momentum``: the same with the accumulated-momentum solver;
* ``transformer``: the recurrent standard Transformer (the ``standard`` GPT depth step, looped:
  ``models.LoopedEncoder``); ``momentum`` / ``nesterov``: the same with heavy-ball / Nesterov steps, whose velocity
  crosses iterations. Their MLP width is chosen so each has about as many parameters as ``hyper_set``.

Puzzles come from ``data.sudoku`` (generated, no download): training and validation at the study's clue range, a
``hard`` set with fewer clues. A model reads the puzzle (0 = blank) and predicts the digit of every cell; the loss
is the cross-entropy over the blank cells (this project's choice: Hyper-SET's code takes all 81 cells, whose clues
a short run spends its budget learning to copy), the metrics are the accuracy over the blank cells
and the fraction of boards solved entirely, each after ``T`` and after ``2T`` iterations of a model trained at
``T`` (test-time iteration scaling). Every model trains ``seeds`` times as one population of the trainer. Two
references need no model: chance (1/9) and ``elimination_accuracy`` (a uniform guess among the digits no peer clue
excludes).

The learned position table of every model starts from the grid's structure (``unit_positions``: a row, a column
and a box vector summed per cell; this project's choice, ``unit_positions=False`` draws it plainly): from a plain
random table Hyper-SET stayed at chance (blank-cell accuracy 0.11) for 300 steps on 66–74-clue puzzles; from
the structured one it reached 0.40 in 250 steps on 60–70 clues (measured on a loaded CPU). The ``paper`` preset
keeps the plain table, as Hyper-SET has it.

Writes results.json, results.csv, the trainer's metrics.jsonl (and TensorBoard), and sudoku.png.

Budget: the ``default`` preset (width 32, T = 8, about 11.5k parameters, 2000 training puzzles with 60–70 clues,
the ``hard`` set 54–57, 300 steps per model at learning rate 5e-3) aims at under fifteen minutes for the five
models on an idle 2-core CPU, puzzle generation and compilation included (a shared, loaded machine takes several
times longer); easy puzzles, so that a CPU budget shows learning above chance. ``tiny`` runs in seconds of
compute (tests); ``paper`` is Hyper-SET's Sudoku size (width 768, 12 heads, T = 24, 9000 puzzles) for a GPU.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from energyformer import cli
from energyformer.checks import check_positive_int
from energyformer.data.sudoku import SudokuConfig, numpy_split, sudoku_dataset
from energyformer.metrics import MetricsWriter
from energyformer.models import GPTConfig, HyperSET, HyperSETConfig, LoopedEncoder
from energyformer.train import population
from energyformer.train.config import TrainerConfig
from energyformer.train.optim import OptimizerConfig, shorter_warmup
from energyformer.train.task import data_seed

HYPER_SET_SOLVERS = {"hyper_set": "gd", "hyper_set_momentum": "accumulated_momentum"}
LOOPED_VARIANTS = {"transformer": "standard", "momentum": "momentum", "nesterov": "nesterov"}
MODELS = tuple(HYPER_SET_SOLVERS) + tuple(LOOPED_VARIANTS)
EVALUATION_SETS = ("val", "hard")


@dataclasses.dataclass(frozen=True)
class SudokuStudy:
  """Data, sizes, models, seeds and the optimisation budget. ``hard_clues``: the clue range of the ``hard``
  evaluation set; ``hidden``: Hyper-SET's feed-forward units (the looped models' MLP width is matched to its
  parameter count); ``unit_positions``: start the position tables from ``unit_positions``."""

  data: SudokuConfig = SudokuConfig(seed=0, train_size=2000, val_size=100, test_size=1, min_clues=60, max_clues=70)
  hard_clues: tuple[int, int] = (54, 57)
  dim: int = 32
  num_heads: int = 2
  head_dim: int = 16
  hidden: int = 128
  time_dim: int = 32
  iterations: int = 8
  models: tuple[str, ...] = MODELS
  seeds: int = 1
  steps: int = 300
  batch_size: int = 32
  optimizer: OptimizerConfig = OptimizerConfig(learning_rate=5e-3, warmup_steps=30, final_fraction=0.0,
                                               weight_decay=0.01, b2=0.99)
  eval_every: int = 100
  eval_batch_size: int = 100
  steps_per_call: int = 25
  unit_positions: bool = True

  def __post_init__(self):
    unknown = sorted(set(self.models) - set(MODELS))
    if unknown or not self.models:
      raise ValueError(f"unknown Sudoku model(s) {unknown or '(none given)'}; choose from {list(MODELS)}.")
    for name in ("dim", "num_heads", "head_dim", "hidden", "iterations", "seeds", "steps", "batch_size",
                 "eval_every", "steps_per_call"):
      check_positive_int(name, getattr(self, name))

  @property
  def hard_data(self) -> SudokuConfig:
    """The ``hard`` set: the validation split of puzzles with ``hard_clues`` clues (its own seed)."""
    low, high = self.hard_clues
    return dataclasses.replace(self.data, seed=self.data.seed + 1, min_clues=low, max_clues=high)

  def trainer_config(self) -> TrainerConfig:
    """The trainer settings of this study (a diverging member runs on: ``stop_on_non_finite=False``)."""
    return TrainerConfig(steps=self.steps, batch_size=self.batch_size, optimizer=self.optimizer,
                         eval_every=self.eval_every, eval_batch_size=self.eval_batch_size, log_every=self.eval_every,
                         steps_per_call=self.steps_per_call, stop_on_non_finite=False)

  def hyper_set_config(self, model: str) -> HyperSETConfig:
    """The Hyper-SET model of this study's sizes with the solver of ``model``."""
    return HyperSETConfig(10, 81, 9, self.dim, self.num_heads, self.head_dim, self.hidden, self.iterations,
                          self.time_dim, solver=HYPER_SET_SOLVERS[model])

  def looped_config(self, model: str, mlp_hidden: int) -> GPTConfig:
    """The looped (weight-shared) Transformer of this study's sizes with the attention variant of ``model``."""
    return GPTConfig(10, 81, self.dim, self.num_heads, self.head_dim, self.iterations, mlp_hidden,
                     variant=LOOPED_VARIANTS[model], shared=True, remat=False)


def unit_positions(key, dim: int, scale: float = 0.02):
  """A position table (81, D) built from the grid: ``P[i] = R[row(i)] + C[column(i)] + B[box(i)]`` with ``R, C, B``
  (9, D) drawn normal with standard deviation ``scale``, so that cells sharing a unit share a component."""
  rows, columns, boxes = scale * jax.random.normal(key, (3, 9, dim))
  cell = jnp.arange(81)
  return rows[cell // 9] + columns[cell % 9] + boxes[3 * (cell // 27) + (cell % 9) // 3]


def _build(study: SudokuStudy, model: str, rngs, mlp_hidden: int | None = None):
  if model in HYPER_SET_SOLVERS:
    built = HyperSET(study.hyper_set_config(model), rngs=rngs)
    positions = built.positions
  else:
    built = LoopedEncoder(study.looped_config(model, mlp_hidden or matched_mlp_hidden(study, model)), 9, rngs=rngs)
    positions = built.core.positions
  if study.unit_positions:
    positions[...] = unit_positions(rngs.params(), study.dim)
  return built


def parameter_count(study: SudokuStudy, model: str, mlp_hidden: int | None = None) -> int:
  """Trained scalars of ``model`` (counted on abstract shapes, nothing initialised)."""
  state = nnx.state(nnx.eval_shape(lambda: _build(study, model, nnx.Rngs(0), mlp_hidden)), nnx.Param)
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(state)))


@functools.lru_cache(maxsize=32)
def matched_mlp_hidden(study: SudokuStudy, model: str) -> int:
  """The MLP width giving looped ``model`` about ``hyper_set``'s parameter count (the count is affine in it)."""
  target = parameter_count(study, "hyper_set")
  at_one, at_two = parameter_count(study, model, 1), parameter_count(study, model, 2)
  return max(1, round(1 + (target - at_one) / (at_two - at_one)))


def board_metrics(logits, puzzle, solution) -> dict:
  """``cell_accuracy``: correct digits among the blank cells; ``board_accuracy``: boards with every cell right."""
  right = jnp.argmax(logits, axis=-1) == solution - 1
  blank = puzzle == 0
  return {"cell_accuracy": jnp.sum(right & blank) / jnp.maximum(jnp.sum(blank), 1),
          "board_accuracy": jnp.mean(jnp.all(right, axis=-1))}


def blank_cross_entropy(logits, puzzle, solution):
  """Mean cross-entropy of the solution's digits over the blank cells (``puzzle == 0``)."""
  blank = puzzle == 0
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, solution - 1)
  return jnp.sum(losses * blank) / jnp.maximum(jnp.sum(blank), 1)


def _peer_matrix() -> np.ndarray:
  """(81, 81) boolean: cells ``i`` and ``j ≠ i`` share a row, a column or a box."""
  cell = np.arange(81)
  row, column, box = cell // 9, cell % 9, 3 * (cell // 27) + (cell % 9) // 3
  same = (row[:, None] == row) | (column[:, None] == column) | (box[:, None] == box)
  return same & ~np.eye(81, dtype=bool)


def elimination_accuracy(puzzle) -> float:
  """The expected blank-cell accuracy of guessing uniformly among each blank's candidates, the digits no clue among
  its peers holds (one round of elimination, no search): the mean over blanks of ``1 / #candidates``. ``puzzle``
  (B, 81), 0 = blank. Chance, with no elimination, is 1/9."""
  puzzle = np.asarray(puzzle)
  clue_digits = np.eye(10, dtype=bool)[puzzle][..., 1:]                          # (B, 81, 9)
  excluded = np.einsum("ij,bjd->bid", _peer_matrix().astype(np.int32), clue_digits.astype(np.int32)) > 0
  candidates = np.sum(~excluded, axis=-1)
  blank = puzzle == 0
  return float(np.sum(np.where(blank, 1.0 / np.maximum(candidates, 1), 0.0)) / max(np.sum(blank), 1))


def reference_accuracies(study: SudokuStudy) -> dict[str, dict[str, float]]:
  """Blank-cell accuracy with no model, per evaluation set: chance (1/9) and ``elimination_accuracy``."""
  sets = {"val": study.data, "hard": study.hard_data}
  return {name: {"chance": 1 / 9, "elimination": elimination_accuracy(numpy_split(config, "val")["puzzle"])}
          for name, config in sets.items()}


@dataclasses.dataclass(frozen=True)
class SudokuTask:
  """The Sudoku task (``energyformer.train.task.Task``): member ``{"model": name}``; metrics after T and 2T."""

  study: SudokuStudy
  hyperparameters = ("model",)
  structural = ("model",)
  metric_name = "board_accuracy"
  higher_is_better = True

  def create_model(self, member, rngs, batch_axes):
    """The member's model (``member["model"]``, Hyper-SET by default)."""
    del batch_axes
    return _build(self.study, member.get("model", "hyper_set"), rngs)

  def batches(self, member, batch_size, shard_index, shard_count):
    """This process's share of the training puzzles, in the order of the member's data seed."""
    return iter(sudoku_dataset(self.study.data, "train", batch_size=batch_size, shuffle_seed=data_seed(member),
                               shard_index=shard_index, shard_count=shard_count))

  def loss(self, model, batch, key):
    """Cross-entropy of the blank cells' digits after ``T`` iterations (``blank_cross_entropy``)."""
    del key
    return blank_cross_entropy(model(batch["puzzle"]), batch["puzzle"], batch["solution"])

  def evaluation_sets(self, shard_index, shard_count):
    """``val`` (the training clue range) and ``hard`` (fewer clues), this process's share."""
    sets = {"val": numpy_split(self.study.data, "val"), "hard": numpy_split(self.study.hard_data, "val")}
    return {name: {key: values[shard_index::shard_count] for key, values in arrays.items()}
            for name, arrays in sets.items()}

  def evaluate(self, model, batch):
    """The loss and ``board_metrics`` after ``T`` iterations, and ``board_metrics`` after ``2T`` (suffix ``_2T``)."""
    logits = model(batch["puzzle"])
    metrics = {"loss": blank_cross_entropy(logits, batch["puzzle"], batch["solution"]),
               **board_metrics(logits, batch["puzzle"], batch["solution"])}
    longer = board_metrics(model(batch["puzzle"], 2 * self.study.iterations), batch["puzzle"], batch["solution"])
    return {**metrics, **{f"{name}_2T": value for name, value in longer.items()}}

  def identity(self) -> dict:
    """The study's settings (what a checkpoint must match)."""
    return study_dict(self.study)


def study_dict(study: SudokuStudy) -> dict:
  """``study`` as a JSON-ready dict."""
  return json.loads(json.dumps(dataclasses.asdict(study), default=list))


def train_model(study: SudokuStudy, model: str, writer, progress) -> dict:
  """Trains ``study.seeds`` copies of ``model`` as one population; its curves and final metrics per seed."""
  members = [{"model": model, "seed": seed} for seed in range(study.seeds)]
  runs = population.train_population(SudokuTask(study), members, study.trainer_config(), progress=progress,
                                     writer=writer)
  final = {f"{name}/{metric}": [run["curves"][name][metric][-1] for run in runs]
           for name in EVALUATION_SETS for metric in runs[0]["curves"][name]}
  return {"model": model, "parameters": parameter_count(study, model), "eval_steps": runs[0]["eval_steps"],
          "val_cell_accuracy": [run["curves"]["val"]["cell_accuracy"] for run in runs], "final": final,
          "seconds_per_step": runs[0]["seconds_per_step"]}


TABLE_COLUMNS = [(f"{name}/{metric}{suffix}", f"{name} {label}{suffix}") for name in EVALUATION_SETS
                 for metric, label in (("cell_accuracy", "cell"), ("board_accuracy", "board"))
                 for suffix in ("", "_2T")]


def summarize(result: dict) -> dict:
  """Per model: parameters, mean over seeds of every final metric, ms per step."""
  row = {"model": result["model"], "parameters": result["parameters"]}
  row.update({key: float(np.mean(values)) for key, values in result["final"].items()})
  row["ms_per_step"] = 1000 * result["seconds_per_step"]
  return row


def format_table(rows: list[dict], study: SudokuStudy) -> str:
  """Cell and board accuracy on ``val`` and ``hard`` after T and 2T (means over seeds)."""
  header = f"{'model':20s} {'params':>8s} " + " ".join(f"{label:>14s}" for _, label in TABLE_COLUMNS)
  lines = [f"T = {study.iterations}, 2T = {2 * study.iterations}; {study.seeds} seed(s)", header, "-" * len(header)]
  for row in rows:
    lines.append(f"{row['model']:20s} {row['parameters']:8d} "
                 + " ".join(f"{row[key]:14.3f}" for key, _ in TABLE_COLUMNS))
  return "\n".join(lines)


def plot(results: list[dict], rows: list[dict], study: SudokuStudy, path) -> None:
  """Validation cell accuracy against step (mean over seeds), and hard-set cell accuracy after T and 2T."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (curves, bars) = plt.subplots(1, 2, figsize=(11, 4.2))
  for result in results:
    curves.plot(result["eval_steps"], np.mean(result["val_cell_accuracy"], axis=0), label=result["model"])
  curves.set(xlabel="training step", ylabel="val cell accuracy (blanks)", title="Sudoku: training")
  curves.legend(fontsize=8)
  positions = np.arange(len(rows))
  for offset, suffix, label in ((-0.2, "", f"T = {study.iterations}"), (0.2, "_2T", f"2T = {2 * study.iterations}")):
    bars.bar(positions + offset, [row[f"hard/cell_accuracy{suffix}"] for row in rows], 0.4, label=label)
  bars.set_xticks(positions, [row["model"] for row in rows], rotation=20, fontsize=8)
  bars.set(ylabel="hard-set cell accuracy", title="test-time iterations")
  bars.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def run(study: SudokuStudy, out_dir="runs/sudoku") -> list[dict]:
  """Trains every model, prints the table, writes results.csv/json, metrics.jsonl and sudoku.png."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  for split_config in (study.data, study.hard_data):
    numpy_split(split_config, "val")
  results = []
  with MetricsWriter(out) as writer, tqdm(total=study.steps * len(study.models), desc="Sudoku", unit="step") as bar:
    for model in study.models:
      results.append(train_model(study, model, writer, bar))
  rows = [summarize(result) for result in results]
  references = reference_accuracies(study)
  print("\n" + format_table(rows, study))
  print("no model, blank-cell accuracy: " + "; ".join(
      f"{name}: " + ", ".join(f"{kind} {value:.3f}" for kind, value in values.items())
      for name, values in references.items()))
  with open(out / "results.csv", "w", newline="") as f:
    table = csv.DictWriter(f, fieldnames=list(rows[0]))
    table.writeheader()
    table.writerows(rows)
  (out / "results.json").write_text(json.dumps({"study": study_dict(study), "summary": rows, "references": references, "runs": results},
                                               indent=1))
  plot(results, rows, study, out / "sudoku.png")
  print(f"wrote {out / 'results.csv'}, {out / 'results.json'}, {out / 'metrics.jsonl'} and {out / 'sudoku.png'}")
  return rows


PRESETS = {
    "default": SudokuStudy(),
    "tiny": SudokuStudy(data=SudokuConfig(seed=0, train_size=64, val_size=16, test_size=1, min_clues=34,
                                          max_clues=38),
                        hard_clues=(30, 33), dim=16, num_heads=2, head_dim=8, hidden=32, time_dim=8, iterations=2,
                        steps=6, batch_size=8, eval_every=3, eval_batch_size=16, steps_per_call=3,
                        optimizer=dataclasses.replace(SudokuStudy.optimizer, warmup_steps=1)),
    # Hyper-SET's Sudoku size (1 layer x 24 iterations, width 768, 12 heads, 4x MLP, 9000 training puzzles,
    # AdamW 1e-4, weight decay 0.1, b2 0.95); this project's generator at 26-34 clues stands in for their data.
    "paper": SudokuStudy(data=SudokuConfig(seed=0, train_size=9000, val_size=1000, test_size=1, min_clues=26,
                                           max_clues=34),
                         hard_clues=(24, 25), dim=768, num_heads=12, head_dim=64, hidden=3072, time_dim=512,
                         iterations=24, seeds=1, steps=30_000, batch_size=64, eval_every=1000,
                         eval_batch_size=250, steps_per_call=100, unit_positions=False,
                         optimizer=OptimizerConfig(learning_rate=1e-4, warmup_steps=1000, weight_decay=0.1,
                                                   b2=0.95)),
}


def study_from_args(args) -> SudokuStudy:
  """The preset ``args.preset`` with the options given replaced."""
  if args.preset not in PRESETS:
    raise ValueError(f"unknown preset {args.preset!r}; choose one of {sorted(PRESETS)}.")
  overrides = {key: value for key, value in {"models": tuple(args.models) if args.models else None,
                                             "seeds": args.seeds, "steps": args.steps,
                                             "iterations": args.iterations}.items() if value is not None}
  study = dataclasses.replace(PRESETS[args.preset], **overrides)
  return dataclasses.replace(study, optimizer=shorter_warmup(study.optimizer, study.steps))


def _options(command) -> None:
  command.add_argument("--preset", default="default",
                       help="default (CPU, under 15 minutes idle), tiny (seconds) or paper (GPU, Hyper-SET's size)")
  command.add_argument("--models", nargs="+", help=f"models to train (default: all of {', '.join(MODELS)})")
  command.add_argument("--seeds", type=int, help="models per kind (seeds 0, 1, ...; default: the preset's)")
  command.add_argument("--steps", type=int, help="training steps per model (default: the preset's)")
  command.add_argument("--iterations", type=int,
                       help="T: iterations of the shared layer in training (2T evaluated; default: the preset's)")
  command.add_argument("--out", default="runs/sudoku", help="directory for results, metrics and the plot")


@cli.command("sudoku", help="Hyper-SET vs looped Transformers (GD, momentum, Nesterov) on generated Sudoku, with "
                            "test-time iteration scaling", options=_options)
def _command(args) -> None:
  with cli.user_settings():
    study = study_from_args(args)
  run(study, args.out)
