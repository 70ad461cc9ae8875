"""What every benchmark prints with its figures: when and under what load they were taken, and their spread.

A figure on a shared machine means little without the load it was taken under, so every benchmark prints
``conditions()`` when it starts and when it ends (date, ``os.getloadavg()``), and every time or ratio as the median
of at least three repeats with their range (``spread``). A ratio is taken repeat by repeat — ours and the
reference timed back to back within one repeat — so that load from elsewhere falls on both alike.
"""
from __future__ import annotations

import datetime
import os
import statistics

MIN_REPEATS = 3


def conditions(label: str) -> str:
  """``"<label> 2026-11-30 15:21:07 UTC, load average 1.71 1.53 1.54 (1, 5, 15 min), 2 CPUs"``."""
  now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
  load = " ".join(f"{value:.2f}" for value in os.getloadavg())
  return f"{label} {now}, load average {load} (1, 5, 15 min), {os.cpu_count()} CPUs"


def check_repeats(repeats: int) -> int:
  """``repeats``, refused below ``MIN_REPEATS`` (a median and a range need at least three)."""
  if repeats < MIN_REPEATS:
    raise SystemExit(f"--repeats {repeats}: a median and its spread need at least {MIN_REPEATS} repeats; "
                     f"use --repeats {MIN_REPEATS} or more.")
  return repeats


def spread(values) -> dict:
  """Median, minimum and maximum of ``values`` (a list of floats)."""
  values = list(values)
  return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def ratios(numerators, denominators) -> list[float]:
  """Repeat-by-repeat ratios ``numerators[i] / denominators[i]`` of two interleaved series of times."""
  return [a / b for a, b in zip(numerators, denominators)]


def show(stats: dict, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
  """``"0.62× (0.58–0.70)"``-style text of a ``spread``: the median and, in brackets, the range."""
  fmt = lambda v: f"{scale * v:.{digits}f}{unit}"
  return f"{fmt(stats['median'])} ({fmt(stats['min'])}–{fmt(stats['max'])})"
