"""Stop requests: SIGTERM (pre-emption, ``kill``) and SIGINT (Ctrl-C) ask a training loop to save and stop."""
from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
  """A context manager that turns SIGTERM and SIGINT into a flag the loop polls (``requested()``).

  The first signal only sets the flag; a second one of the same kind gets Python's default behaviour (a second
  Ctrl-C interrupts at once). Handlers are installed only in the main thread and restored on exit.
  """

  def __init__(self):
    self.signal_name: str | None = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def _handle(self, signum, frame):
    self.signal_name = signal.Signals(signum).name
    signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

  def requested(self) -> bool:
    """Whether any process received a stop signal (an all-gather across processes in a multi-host run, so that
    every process stops at the same step)."""
    local = self.signal_name is not None
    if jax.process_count() == 1:
      return local
    return bool(np.any(multihost_utils.process_allgather(np.array(local))))
