"""A grain random-access data source whose records are generated from ``(config, split, index)``."""
from __future__ import annotations


class GeneratedSource:
  """Record ``i`` of ``split`` is ``self.record(i)``; the split has ``config.split_size(split)`` records (which also
  checks the split's name). Subclasses define ``record`` and may name their records with ``noun``."""

  noun = "records"

  def __init__(self, config, split: str):
    self.size = config.split_size(split)
    self.config, self.split = config, split

  def __len__(self) -> int:
    return self.size

  def __getitem__(self, index: int):
    if not 0 <= index < self.size:
      raise IndexError(f"index {index} out of range for the {self.size} {self.noun} of split {self.split!r}.")
    return self.record(index)

  def record(self, index: int):
    """Record ``index`` (in range)."""
    raise NotImplementedError

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self.config!r}, {self.split!r})"
