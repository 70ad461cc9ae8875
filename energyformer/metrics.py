"""Metrics for long-running commands: one JSON object per line in ``metrics.jsonl`` and TensorBoard scalars.

TensorBoard gets one run per prefix (``tensorboard/<prefix>/``: one per member of a population, named by its
hyperparameters, so TensorBoard overlays the members' curves of each metric); scalars without a prefix go to
``tensorboard/`` itself. The event files are written with tensorboardX; viewing them needs the ``tensorboard``
package (``pip install energyformer[tensorboard]``; ``tensorboard --logdir OUT/tensorboard``).
"""
from __future__ import annotations

import json
import pathlib


class MetricsWriter:
  """Appends ``{"step": s, **scalars}`` to ``out_dir/metrics.jsonl`` (names prefixed ``prefix/``) and writes each
  scalar to the TensorBoard run of its prefix."""

  def __init__(self, out_dir, *, tensorboard: bool = True):
    self.out_dir = pathlib.Path(out_dir)
    self.out_dir.mkdir(parents=True, exist_ok=True)
    self._jsonl = open(self.out_dir / "metrics.jsonl", "a")
    self._tensorboard = tensorboard
    self._boards: dict = {}

  def write(self, step: int, scalars: dict, prefix: str = "") -> None:
    """Records ``scalars`` (name → number) at ``step``: in the JSONL file as ``prefix/name``, in TensorBoard as
    ``name`` in the run ``tensorboard/<prefix>``."""
    values = {name: float(value) for name, value in scalars.items()}
    named = {f"{prefix}/{k}" if prefix else k: v for k, v in values.items()}
    self._jsonl.write(json.dumps({"step": int(step), **named}) + "\n")
    self._jsonl.flush()
    if self._tensorboard:
      board = self._board(prefix)
      for name, value in values.items():
        board.add_scalar(name, value, int(step))

  def _board(self, prefix: str):
    if prefix not in self._boards:
      from tensorboardX import SummaryWriter
      self._boards[prefix] = SummaryWriter(str(self.out_dir / "tensorboard" / prefix))
    return self._boards[prefix]

  def close(self) -> None:
    """Closes the JSONL file and the TensorBoard writer."""
    self._jsonl.close()
    for board in self._boards.values():
      board.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
