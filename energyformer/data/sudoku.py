"""Sudoku puzzles with a unique solution at a controlled number of clues, generated with no download.

Puzzle ``i`` of a split is a pure function of ``(seed, split, index)`` (``numpy.random.default_rng([seed,
split id, index])``):

1. a solved grid, filled by randomised depth-first search (``solved_grid``; this project's generator: varied
   grids, though not drawn uniformly from all of them);
2. clues removed one cell at a time in a random order, a removal kept only if the puzzle still has exactly one
   solution (no solution with another digit in the emptied cell), until ``clues`` remain; the clue count is drawn
   uniformly from ``[min_clues, max_clues]`` per puzzle. Where the greedy removal gets stuck above the target, the puzzle is drawn
   again from the next attempt's stream (deterministic).

Cells are encoded row-major: ``puzzle`` (81,) int32 with 0 for a blank and 1–9 for a clue, ``solution`` (81,) in
1–9. ``sudoku_dataset`` serves batches of a split held in memory through grain (like ``data.lis``).
"""
from __future__ import annotations

import dataclasses
import functools
import grain
import numpy as np

from energyformer.checks import check_positive_int
from energyformer.data.lis import EpochShuffled
from energyformer.data.sources import GeneratedSource

SPLITS = ("train", "val", "test")
CELLS = 81
_ALL = 0x3FE  # bits 1..9
_UNITS = [[r * 9 + c for c in range(9)] for r in range(9)] + [[r * 9 + c for r in range(9)] for c in range(9)] + [
    [(3 * (b // 3) + i // 3) * 9 + 3 * (b % 3) + i % 3 for i in range(9)] for b in range(9)]
_PEERS = [sorted({p for unit in _UNITS if cell in unit for p in unit} - {cell}) for cell in range(CELLS)]


@dataclasses.dataclass(frozen=True)
class SudokuConfig:
  """The puzzles of each split: ``*_size`` puzzles with ``min_clues``–``max_clues`` clues (17 ≤ min ≤ max ≤ 80;
  below about 24 clues the greedy removal often gets stuck and generation slows), from ``seed``."""

  seed: int = 0
  train_size: int = 2000
  val_size: int = 200
  test_size: int = 200
  min_clues: int = 30
  max_clues: int = 36
  max_attempts: int = 50

  def __post_init__(self):
    for name in ("train_size", "val_size", "test_size", "max_attempts"):
      check_positive_int(name, getattr(self, name))
    if not 17 <= self.min_clues <= self.max_clues <= 80:
      raise ValueError(f"clue counts must satisfy 17 <= min_clues <= max_clues <= 80 (no 9x9 Sudoku with fewer than "
                       f"17 clues has a unique solution), got min_clues={self.min_clues}, max_clues={self.max_clues}.")

  def split_size(self, split: str) -> int:
    """The number of puzzles of ``split`` (``train``, ``val`` or ``test``)."""
    _check_split(split)
    return {"train": self.train_size, "val": self.val_size, "test": self.test_size}[split]


def _check_split(split) -> None:
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")


def is_valid_solution(grid) -> bool:
  """Every row, column and 3×3 box of ``grid`` (81,) holds the digits 1–9 once."""
  grid = np.asarray(grid).reshape(-1)
  return grid.shape == (CELLS,) and all(sorted(grid[unit].tolist()) == list(range(1, 10)) for unit in _UNITS)


_ROW = [cell // 9 for cell in range(CELLS)]
_COL = [9 + cell % 9 for cell in range(CELLS)]
_BOX = [18 + 3 * (cell // 27) + (cell % 9) // 3 for cell in range(CELLS)]


def _toggle(grid, used, cell, digit):
  """Places ``digit`` at ``cell`` (or, for a placed one, takes it back): the cell and its three units' masks."""
  bit = 1 << digit
  used[_ROW[cell]] ^= bit
  used[_COL[cell]] ^= bit
  used[_BOX[cell]] ^= bit
  grid[cell] = digit if grid[cell] == 0 else 0


def _search(grid, used, forbidden, limit: int) -> int:
  """Solutions of ``grid`` (0 = blank; ``used``: the digit mask of each row, column and box), counted up to
  ``limit``, with ``forbidden[cell]`` digits excluded: naked singles, then a branch on the blank cell with the
  fewest candidates. Leaves ``grid`` and ``used`` as it found them."""
  filled, total = [], None
  while total is None:
    best, best_count, progress = -1, 10, False
    for cell in range(CELLS):
      if grid[cell]:
        continue
      options = _ALL & ~(used[_ROW[cell]] | used[_COL[cell]] | used[_BOX[cell]] | forbidden[cell])
      if options == 0:
        total = 0
        break
      if options & (options - 1) == 0:
        _toggle(grid, used, cell, options.bit_length() - 1)
        filled.append(cell)
        progress = True
      elif bin(options).count("1") < best_count:
        best, best_count = cell, bin(options).count("1")
    if total is None and not progress:
      total = 1 if best < 0 else _branch(grid, used, forbidden, limit, best)
  for cell in reversed(filled):
    _toggle(grid, used, cell, grid[cell])
  return total


def _branch(grid, used, forbidden, limit: int, cell: int) -> int:
  total = 0
  options = _ALL & ~(used[_ROW[cell]] | used[_COL[cell]] | used[_BOX[cell]] | forbidden[cell])
  for digit in range(1, 10):
    if options >> digit & 1:
      _toggle(grid, used, cell, digit)
      total += _search(grid, used, forbidden, limit - total)
      _toggle(grid, used, cell, digit)
      if total >= limit:
        break
  return total


def _prepared(puzzle):
  """``(grid, used)`` for ``_search``; ``None`` where two clues clash."""
  grid = [int(v) for v in np.asarray(puzzle).reshape(-1)]
  if len(grid) != CELLS or any(not 0 <= v <= 9 for v in grid):
    raise ValueError(f"a puzzle is 81 cells of 0 (blank) to 9, got shape {np.shape(puzzle)}.")
  used, clues = [0] * 27, grid
  grid = [0] * CELLS
  for cell, digit in enumerate(clues):
    if digit:
      if (used[_ROW[cell]] | used[_COL[cell]] | used[_BOX[cell]]) >> digit & 1:
        return None
      _toggle(grid, used, cell, digit)
  return grid, used


def count_solutions(puzzle, limit: int = 2) -> int:
  """The number of solutions of ``puzzle`` (81,) (0 = blank), counted up to ``limit`` (2 decides uniqueness)."""
  prepared = _prepared(puzzle)
  return 0 if prepared is None else _search(*prepared, [0] * CELLS, limit)


def _still_unique(puzzle, cell: int, digit: int) -> bool:
  """Whether ``puzzle``, uniquely solved with ``digit`` at the blank ``cell``, has no solution with another digit
  there (so its solution stays unique): one search for a solution with ``digit`` forbidden at ``cell``."""
  forbidden = [0] * CELLS
  forbidden[cell] = 1 << int(digit)
  return _search(*_prepared(puzzle), forbidden, 1) == 0


def solved_grid(rng: np.random.Generator) -> np.ndarray:
  """A random valid solved grid (81,): the empty grid filled by depth-first search, each step at the blank cell
  with the fewest candidates (the first such in row-major order), trying its digits in a random order."""
  grid, used = [0] * CELLS, [0] * 27

  def fill() -> bool:
    best, best_options, best_count = -1, 0, 10
    for cell in range(CELLS):
      if not grid[cell]:
        options = _ALL & ~(used[_ROW[cell]] | used[_COL[cell]] | used[_BOX[cell]])
        if bin(options).count("1") < best_count:
          best, best_options, best_count = cell, options, bin(options).count("1")
    if best < 0:
      return True
    for digit in rng.permutation(9) + 1:
      if best_options >> int(digit) & 1:
        _toggle(grid, used, best, int(digit))
        if fill():
          return True
        _toggle(grid, used, best, int(digit))
    return False

  fill()
  return np.asarray(grid, np.int32)


def _remove_clues(solution: np.ndarray, clues: int, rng: np.random.Generator) -> np.ndarray | None:
  """Greedy removal to ``clues`` clues keeping the solution unique; ``None`` if it gets stuck above."""
  puzzle = solution.copy()
  remaining = CELLS
  for cell in rng.permutation(CELLS):
    if remaining == clues:
      return puzzle
    puzzle[cell] = 0
    if _still_unique(puzzle, cell, solution[cell]):
      remaining -= 1
    else:
      puzzle[cell] = solution[cell]
  return puzzle if remaining == clues else None


def generate(config: SudokuConfig, split: str, index: int) -> dict[str, np.ndarray]:
  """Puzzle ``index`` of ``split``: ``{"puzzle": (81,), "solution": (81,)}`` int32 (module docstring)."""
  _check_split(split)
  for attempt in range(config.max_attempts):
    rng = np.random.default_rng([config.seed, SPLITS.index(split), int(index), attempt])
    clues = int(rng.integers(config.min_clues, config.max_clues + 1))
    solution = solved_grid(rng)
    puzzle = _remove_clues(solution, clues, rng)
    if puzzle is not None:
      return {"puzzle": puzzle, "solution": solution}
  raise RuntimeError(f"no puzzle with {config.min_clues}-{config.max_clues} clues found in {config.max_attempts} "
                     "attempts; raise min_clues (about 24 or more) or max_attempts.")


class SudokuSource(GeneratedSource):
  """A grain random-access data source over one split: record ``i`` is ``generate(config, split, i)``."""

  noun = "puzzles"

  def record(self, index: int) -> dict[str, np.ndarray]:
    return generate(self.config, self.split, index)


@functools.lru_cache(maxsize=8)
def numpy_split(config: SudokuConfig, split: str) -> dict[str, np.ndarray]:
  """All of ``split`` in index order: ``{"puzzle": (n, 81), "solution": (n, 81)}`` (cached; treat as read-only)."""
  source = SudokuSource(config, split)
  records = [source[index] for index in range(len(source))]
  return {key: np.stack([record[key] for record in records]) for key in ("puzzle", "solution")}


class _Rows:
  """Row ``i`` of in-memory arrays as a record (a grain data source)."""

  def __init__(self, arrays: dict[str, np.ndarray]):
    self.arrays = arrays

  def __len__(self) -> int:
    return len(next(iter(self.arrays.values())))

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {key: values[index] for key, values in self.arrays.items()}


def sudoku_dataset(config: SudokuConfig, split: str, *, batch_size: int, shuffle_seed: int,
                   num_epochs: int | None = None, shard_index: int = 0, shard_count: int = 1) -> grain.IterDataset:
  """Batches ``{"puzzle": (batch, 81), "solution": (batch, 81)}`` of this shard's puzzles of ``split`` (records
  ``shard_index, shard_index + shard_count, …``), reshuffled every epoch (``EpochShuffled``; ``num_epochs=None``
  repeats forever), as a grain dataset whose iterators resume exactly (``get_state`` / ``set_state``). The split
  is generated once and held in memory (``numpy_split``)."""
  check_positive_int("batch_size", batch_size)
  check_positive_int("shard_count", shard_count)
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index must be in [0, shard_count={shard_count}), got {shard_index}.")
  rows = grain.MapDataset.source(_Rows(numpy_split(config, split)))[shard_index::shard_count]
  records = EpochShuffled(rows, shuffle_seed, num_epochs)
  return (records.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
          .batch(batch_size, drop_remainder=True))
