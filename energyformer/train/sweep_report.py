"""What a sweep reports: a row per member, the best member, and a plot of the metric against the hyperparameters."""
from __future__ import annotations

import csv
import json
import pathlib

import numpy as np


def member_rows(results: list[dict]) -> list[dict]:
  """One row per member: its hyperparameters, final train loss (mean of the last 10 steps) and, per evaluation
  set, the final value of each metric (``<set>_<metric>``)."""
  rows = []
  for result in results:
    row = {"member": result["name"], **result["member"],
           "train_loss": float(np.mean(result["train_loss"][-10:]))}
    for name, curve in result["curves"].items():
      for metric, values in curve.items():
        row[f"{name}_{metric}"] = values[-1]
    row["ms_per_step"] = 1000 * result["seconds_per_step"]
    rows.append(row)
  return rows


def best_member(rows: list[dict], key: str, higher_is_better: bool) -> dict:
  """The row with the best ``key`` (ties: the first)."""
  values = np.array([row[key] for row in rows], dtype=float)
  return rows[int(np.nanargmax(values) if higher_is_better else np.nanargmin(values))]


def swept_axes(rows: list[dict], names, exclude=()) -> list[str]:
  """The hyperparameters among ``names`` (but not in ``exclude``) that take more than one value."""
  return [n for n in names if n not in exclude and len({row.get(n) for row in rows}) > 1]


def mean_over_seeds(rows: list[dict], axes: list[str], key: str) -> dict[tuple, float]:
  """``key`` averaged over every member sharing the same values of ``axes``."""
  groups: dict[tuple, list[float]] = {}
  for row in rows:
    groups.setdefault(tuple(row.get(a) for a in axes), []).append(row[key])
  return {k: float(np.mean(v)) for k, v in groups.items()}


def plot(rows: list[dict], axes: list[str], key: str, path, structural=()) -> None:
  """A heatmap of ``key`` over the last two numeric axes (one panel per value of the others), or a line plot
  over one numeric axis (a line per value of the others), or one bar per value of the other axes (a single bar
  when nothing but seeds varies). Seeds are averaged."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  numeric = [a for a in axes if all(isinstance(row.get(a), (int, float)) for row in rows) and a not in structural]
  panels = [a for a in axes if a not in numeric[-2:]]
  means = mean_over_seeds(rows, panels + numeric[-2:], key)
  panel_values = sorted({k[:len(panels)] for k in means}, key=str)
  if len(numeric) >= 2:
    x_name, y_name = numeric[-1], numeric[-2]
    xs = sorted({row[x_name] for row in rows})
    ys = sorted({row[y_name] for row in rows})
    fig, grid_axes = plt.subplots(1, len(panel_values), figsize=(4.5 * len(panel_values), 4), squeeze=False)
    for ax, panel in zip(grid_axes[0], panel_values):
      image = np.array([[means.get(panel + (y, x), np.nan) for x in xs] for y in ys])
      shown = ax.imshow(image, origin="lower", aspect="auto", cmap="viridis")
      for (i, j), value in np.ndenumerate(image):
        ax.text(j, i, f"{value:.3f}", ha="center", va="center", color="w", fontsize=7)
      ax.set(xticks=range(len(xs)), xticklabels=[f"{x:g}" for x in xs], yticks=range(len(ys)),
             yticklabels=[f"{y:g}" for y in ys], xlabel=x_name, ylabel=y_name,
             title=", ".join(f"{a}={v}" for a, v in zip(panels, panel)) or key)
      fig.colorbar(shown, ax=ax, label=key)
  else:
    fig, ax = plt.subplots(figsize=(6, 4))
    x_name = numeric[-1] if numeric else None
    for panel in panel_values:
      points = sorted((k[-1], v) for k, v in means.items() if k[:len(panels)] == panel) if x_name else []
      label = ", ".join(f"{a}={v}" for a, v in zip(panels, panel)) or "mean over seeds"
      if points:
        ax.plot(*zip(*points), marker="o", label=label)
      else:
        ax.bar(label, means[panel])
    ax.set(xlabel=x_name or "member", ylabel=key)
    if x_name and any(isinstance(row[x_name], float) for row in rows):
      ax.set_xscale("log" if min(row[x_name] for row in rows) > 0 else "linear")
    if points:
      ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def format_table(rows: list[dict], columns: list[str]) -> str:
  """Rows as a fixed-width text table of ``columns``."""
  cells = [[f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in columns] for row in rows]
  widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
  lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
  lines += ["  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in cells]
  return "\n".join(lines)


def write(rows: list[dict], results: list[dict], out_dir) -> None:
  """``members.csv`` (the rows) and ``results.json`` (rows and full curves)."""
  out = pathlib.Path(out_dir)
  fields = list(dict.fromkeys(k for row in rows for k in row))
  with open(out / "members.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
  (out / "results.json").write_text(json.dumps({"members": rows, "runs": results}, indent=1))
