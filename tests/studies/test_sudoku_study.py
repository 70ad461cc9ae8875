"""The Sudoku study: matched parameter counts, the metrics against numpy, evaluation at T and 2T, a tiny run."""
import dataclasses
import json

import jax
import numpy as np
import pytest

from energyformer.studies import sudoku as study_lib

TINY = study_lib.PRESETS["tiny"]


def test_looped_models_match_hyper_set_parameters():
  target = study_lib.parameter_count(TINY, "hyper_set")
  for model in study_lib.LOOPED_VARIANTS:
    assert abs(study_lib.parameter_count(TINY, model) - target) <= 2 * TINY.dim + 2


def test_board_metrics_against_numpy():
  rng = np.random.default_rng(0)
  solution = rng.integers(1, 10, (4, 81))
  puzzle = np.where(rng.random((4, 81)) < 0.5, solution, 0)
  logits = rng.normal(size=(4, 81, 9))
  logits[1, np.arange(81), solution[1] - 1] += 100.0  # board 1 entirely right
  right = logits.argmax(-1) == solution - 1
  metrics = study_lib.board_metrics(logits, puzzle, solution)
  assert np.isclose(float(metrics["cell_accuracy"]), (right & (puzzle == 0)).sum() / (puzzle == 0).sum())
  assert np.isclose(float(metrics["board_accuracy"]), right.all(-1).mean()) and float(metrics["board_accuracy"]) > 0


class _SolvesAfter:
  """A stand-in model that answers right only when run for at least ``needed`` iterations (default: T)."""

  def __init__(self, needed, solutions):
    self.needed, self.solutions, self.calls = needed, solutions, []

  def __call__(self, puzzle, iterations=TINY.iterations):
    self.calls.append(iterations)
    digits = self.solutions - 1 if iterations >= self.needed else np.zeros_like(self.solutions)
    return jax.nn.one_hot(digits, 9)


def test_evaluation_runs_the_model_for_t_and_2t():
  """``evaluate`` runs the model at its training iterations T and at 2T; the ``_2T`` metrics are the latter's."""
  task = study_lib.SudokuTask(TINY)
  batch = {key: values[:4] for key, values in task.evaluation_sets(0, 1)["val"].items()}
  model = _SolvesAfter(2 * TINY.iterations, batch["solution"])
  metrics = task.evaluate(model, batch)
  assert sorted(set(model.calls)) == [TINY.iterations, 2 * TINY.iterations]
  assert float(metrics["board_accuracy_2T"]) == 1.0 and float(metrics["cell_accuracy"]) < 0.5
  assert set(metrics) == {"loss", "cell_accuracy", "board_accuracy", "cell_accuracy_2T", "board_accuracy_2T"}
  with pytest.raises(ValueError, match="unknown Sudoku model"):
    dataclasses.replace(TINY, models=("lstm",))


@pytest.mark.slow
def test_tiny_study_writes_its_results(tmp_path):
  """Two models train and the table, results, metrics and plot are written."""
  rows = study_lib.run(dataclasses.replace(TINY, models=("hyper_set", "nesterov")), tmp_path)
  assert [row["model"] for row in rows] == ["hyper_set", "nesterov"]
  assert all(0.0 <= row["hard/cell_accuracy_2T"] <= 1.0 for row in rows)
  for name in ("results.csv", "results.json", "metrics.jsonl", "sudoku.png"):
    assert (tmp_path / name).exists()
  assert json.loads((tmp_path / "results.json").read_text())["study"]["iterations"] == TINY.iterations


def test_elimination_accuracy_against_a_loop_over_cells():
  """``1 / #candidates`` averaged over the blanks, candidates found by scanning each blank's row, column and box."""
  rng = np.random.default_rng(2)
  solution = np.tile(np.arange(1, 10), 9)  # any digits: only the clues' positions and values matter
  puzzles = np.stack([np.where(rng.random(81) < 0.4, rng.permutation(solution), 0) for _ in range(3)])
  inverse = []
  for puzzle in puzzles:
    for cell in np.flatnonzero(puzzle == 0):
      r, c = divmod(cell, 9)
      peers = {(r, j) for j in range(9)} | {(i, c) for i in range(9)} | {
          (3 * (r // 3) + i, 3 * (c // 3) + j) for i in range(3) for j in range(3)}
      seen = {puzzle[9 * i + j] for i, j in peers if 9 * i + j != cell}
      inverse.append(1 / max(9 - len(seen - {0}), 1))
  assert np.isclose(study_lib.elimination_accuracy(puzzles), np.mean(inverse))
  assert np.isclose(study_lib.elimination_accuracy(np.zeros((1, 81), int)), 1 / 9)


def test_unit_positions_are_sums_of_row_column_and_box_vectors():
  """``P[i] = R[row] + C[column] + B[box]``: two cells' difference depends only on the units they do not share."""
  table = np.asarray(study_lib.unit_positions(jax.random.key(0), 4))
  assert table.shape == (81, 4)
  np.testing.assert_allclose(table[0] - table[1], table[9] - table[10], atol=1e-6)   # rows 0, 1; columns 0, 1
  np.testing.assert_allclose(table[0] - table[27], table[1] - table[28], atol=1e-6)  # rows 0, 3; columns 0, 1
  assert not np.allclose(table[2] - table[3], table[29] - table[30])                  # across boxes: B differs
