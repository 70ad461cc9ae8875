"""Metrics for long-running commands: one JSON object per line in ``metrics.jsonl`` and TensorBoard scalars."""
from __future__ import annotations

import json
import pathlib


class MetricsWriter:
  """Appends ``{"step": s, **scalars}`` to ``out_dir/metrics.jsonl`` and writes each scalar to TensorBoard."""

  def __init__(self, out_dir, *, tensorboard: bool = True):
    self.out_dir = pathlib.Path(out_dir)
    self.out_dir.mkdir(parents=True, exist_ok=True)
    self._jsonl = open(self.out_dir / "metrics.jsonl", "a")
    self._board = None
    if tensorboard:
      from tensorboardX import SummaryWriter
      self._board = SummaryWriter(str(self.out_dir / "tensorboard"))

  def write(self, step: int, scalars: dict, prefix: str = "") -> None:
    """Records ``scalars`` (name → number) at ``step``; names are prefixed with ``prefix/`` when given."""
    named = {f"{prefix}/{k}" if prefix else k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": int(step), **named}) + "\n")
    self._jsonl.flush()
    if self._board is not None:
      for name, value in named.items():
        self._board.add_scalar(name, value, int(step))

  def close(self) -> None:
    """Closes the JSONL file and the TensorBoard writer."""
    self._jsonl.close()
    if self._board is not None:
      self._board.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
