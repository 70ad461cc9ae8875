"""Generated Sudoku: valid solutions, unique puzzles at the asked clue counts, determinism, the solution counter
against brute force, grain batches that resume."""
import itertools

import numpy as np
import pytest

from energyformer.data import sudoku

CONFIG = sudoku.SudokuConfig(seed=3, train_size=6, val_size=2, test_size=2, min_clues=28, max_clues=34)


def _brute_force_count(puzzle):
  """Solutions by trying every digit in every blank (few blanks only), checked with ``is_valid_solution``."""
  blanks = np.flatnonzero(puzzle == 0)
  count = 0
  for digits in itertools.product(range(1, 10), repeat=len(blanks)):
    grid = puzzle.copy()
    grid[blanks] = digits
    count += sudoku.is_valid_solution(grid)
  return count


def _deadly_rectangle(solution):
  """Four cells in two boxes (two rows of a band or two columns of a stack) holding a, b / b, a: two solutions."""
  grid = solution.reshape(9, 9)
  for r1, r2 in itertools.combinations(range(9), 2):
    for c1, c2 in itertools.combinations(range(9), 2):
      if ((r1 // 3 == r2 // 3 or c1 // 3 == c2 // 3) and grid[r1, c1] == grid[r2, c2]
          and grid[r1, c2] == grid[r2, c1]):
        return [r1 * 9 + c1, r1 * 9 + c2, r2 * 9 + c1, r2 * 9 + c2]
  return None


def test_puzzles_are_valid_unique_and_have_their_clues():
  for index in range(len(sudoku.SudokuSource(CONFIG, "train"))):
    record = sudoku.generate(CONFIG, "train", index)
    puzzle, solution = record["puzzle"], record["solution"]
    assert puzzle.shape == solution.shape == (81,) and puzzle.dtype == solution.dtype == np.int32
    assert sudoku.is_valid_solution(solution)
    clues = puzzle > 0
    assert np.array_equal(puzzle[clues], solution[clues])
    assert CONFIG.min_clues <= clues.sum() <= CONFIG.max_clues
    assert sudoku.count_solutions(puzzle) == 1
  exact = sudoku.SudokuConfig(seed=1, min_clues=26, max_clues=26)
  assert (sudoku.generate(exact, "val", 0)["puzzle"] > 0).sum() == 26


def test_source_is_random_access_over_its_split():
  source = sudoku.SudokuSource(CONFIG, "val")
  assert len(source) == CONFIG.val_size
  np.testing.assert_array_equal(source[1]["puzzle"], sudoku.generate(CONFIG, "val", 1)["puzzle"])
  with pytest.raises(IndexError, match="2 puzzles of split 'val'"):
    source[CONFIG.val_size]
  with pytest.raises(ValueError, match="split must be one of"):
    sudoku.SudokuSource(CONFIG, "dev")


def test_generation_is_a_pure_function_of_seed_split_index():
  first = sudoku.generate(CONFIG, "val", 1)
  assert all(np.array_equal(first[k], sudoku.generate(CONFIG, "val", 1)[k]) for k in first)
  assert not np.array_equal(first["puzzle"], sudoku.generate(CONFIG, "test", 1)["puzzle"])
  assert not np.array_equal(first["puzzle"], sudoku.generate(CONFIG, "val", 0)["puzzle"])
  other_seed = sudoku.SudokuConfig(**{**CONFIG.__dict__, "seed": 4})
  assert not np.array_equal(first["solution"], sudoku.generate(other_seed, "val", 1)["solution"])


def test_solution_counter_against_brute_force():
  """One solution, two (a deadly rectangle), none (a clash); the empty grid has at least two."""
  solution = next(grid for grid in (sudoku.solved_grid(np.random.default_rng(i)) for i in range(50))
                  if _deadly_rectangle(grid) is not None)
  cells = _deadly_rectangle(solution)
  ambiguous = solution.copy()
  ambiguous[cells] = 0
  assert sudoku.count_solutions(ambiguous) == _brute_force_count(ambiguous) == 2
  unique = solution.copy()
  unique[[0, 10, 20, 40]] = 0
  assert sudoku.count_solutions(unique) == _brute_force_count(unique) == 1
  clash = unique.copy()
  clash[0] = clash[1]
  assert sudoku.count_solutions(clash) == 0
  assert sudoku.count_solutions(np.zeros(81, np.int32), limit=2) == 2
  with pytest.raises(ValueError, match="81 cells"):
    sudoku.count_solutions(np.zeros(80))
  with pytest.raises(ValueError, match="17 clues"):
    sudoku.SudokuConfig(min_clues=16)


def test_grain_batches_resume():
  dataset = sudoku.sudoku_dataset(CONFIG, "train", batch_size=2, shuffle_seed=0)
  iterator = iter(dataset)
  first = next(iterator)
  assert first["puzzle"].shape == (2, 81)
  state = iterator.get_state()
  expected = next(iterator)
  resumed = iter(dataset)
  resumed.set_state(state)
  assert np.array_equal(next(resumed)["puzzle"], expected["puzzle"])
  rows = {tuple(sudoku.generate(CONFIG, "train", i)["puzzle"]) for i in range(6)}
  assert {tuple(row) for row in first["puzzle"]} <= rows
