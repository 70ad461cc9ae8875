"""Statistics over the seeds of a study: percentile-bootstrap intervals, paired differences, steps to a threshold.

Pure NumPy functions of per-seed values. A seed's value is one observation; intervals resample the seeds with
replacement (``resamples`` times, from ``numpy.random.default_rng(seed)``, so a table is reproducible) and read the
percentile interval off the resampled statistics. Steps to a threshold that a seed never reaches are ``inf``: the
median over seeds stays finite while at least half of them reach it, and the intervals then say so (``inf``).
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Interval:
  """A statistic of the observed values and its percentile-bootstrap interval ``[low, high]`` at ``level``."""

  estimate: float
  low: float
  high: float
  level: float

  def covers(self, value: float) -> bool:
    """Whether ``low <= value <= high``."""
    return bool(self.low <= value <= self.high)

  def as_dict(self, prefix: str) -> dict:
    """``{prefix: estimate, prefix_low: low, prefix_high: high}`` (for tables and JSON)."""
    return {prefix: self.estimate, f"{prefix}_low": self.low, f"{prefix}_high": self.high}


def _check_values(name: str, values) -> np.ndarray:
  array = np.asarray(values, np.float64)
  if array.ndim != 1 or array.size == 0 or np.isnan(array).any():
    raise ValueError(f"{name} must be a non-empty 1-D sequence of numbers (one per seed, no NaN), got {values!r}.")
  return array


def bootstrap_interval(values, *, statistic=np.mean, level: float = 0.95, resamples: int = 10_000,
                       seed: int = 0) -> Interval:
  """The percentile bootstrap of ``statistic`` over ``values`` (n per-seed numbers).

  With ``s_b = statistic(values[i_b])`` for ``resamples`` index vectors ``i_b`` drawn uniformly from ``0 … n−1``
  with replacement, and ``F`` the empirical distribution function of the ``s_b``:
  ``low = min{s : F(s) ≥ (1 − level)/2}``, ``high = min{s : F(s) ≥ (1 + level)/2}`` (no interpolation, so
  ``inf`` values stay ``inf``). ``estimate = statistic(values)``.
  """
  values = _check_values("values", values)
  if not 0 < level < 1:
    raise ValueError(f"level must lie in (0, 1), got {level!r}; e.g. 0.95 for a 95 % interval.")
  if not isinstance(resamples, int) or resamples < 1:
    raise ValueError(f"resamples must be a positive integer, got {resamples!r}.")
  indices = np.random.default_rng(seed).integers(0, values.size, size=(resamples, values.size))
  resampled = np.asarray(statistic(values[indices], axis=1), np.float64)
  low, high = np.quantile(resampled, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
  return Interval(float(statistic(values)), float(low), float(high), level)


def paired_difference(values, baseline, **bootstrap) -> Interval:
  """The mean of the per-seed differences ``d_s = values_s − baseline_s`` and its bootstrap interval
  (``bootstrap_interval`` of the ``d_s``: seeds are resampled as pairs, so what the two arms share per seed —
  initialisation, data order — cancels). Both arms need the same seeds in the same order."""
  values, baseline = _check_values("values", values), _check_values("baseline", baseline)
  if values.shape != baseline.shape:
    raise ValueError(f"paired values need one value per seed in both arms, got {values.size} and {baseline.size}; "
                     "train both arms with the same seeds.")
  return bootstrap_interval(values - baseline, statistic=np.mean, **bootstrap)


def steps_to_threshold(steps, curves, threshold: float, *, higher_is_better: bool = True) -> np.ndarray:
  """Per seed, the first evaluated step whose value reaches ``threshold`` (``≥`` it, or ``≤`` it for a loss with
  ``higher_is_better=False``); ``inf`` where no evaluation does.

  ``steps``: (E,) increasing evaluation steps; ``curves``: (E, S) the value of each of S seeds at each step.
  Returns (S,) float64.
  """
  steps = np.asarray(steps, np.float64)
  curves = np.asarray(curves, np.float64)
  if steps.ndim != 1 or curves.ndim != 2 or curves.shape[0] != steps.size or np.any(np.diff(steps) <= 0):
    raise ValueError(f"steps must be (E,) increasing and curves (E, seeds), got shapes {steps.shape} and "
                     f"{curves.shape}.")
  reached = curves >= threshold if higher_is_better else curves <= threshold
  first = np.argmax(reached, axis=0)
  return np.where(reached.any(axis=0), steps[first], np.inf)
