"""What a sweep reports: a row per member, the best setting (by its mean over the seeds, as plotted), and a plot of
the metric against the hyperparameters."""
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


def swept_axes(rows: list[dict], names, exclude=()) -> list[str]:
  """The hyperparameters among ``names`` (but not in ``exclude``) that take more than one value."""
  return [n for n in names if n not in exclude and len({row.get(n) for row in rows}) > 1]


def seed_groups(rows: list[dict], axes: list[str], key: str) -> dict[tuple, list[float]]:
  """``key`` of every member, grouped by the members' values of ``axes`` (the members of a group differ only in
  what ``axes`` leaves out, e.g. their seeds)."""
  groups: dict[tuple, list[float]] = {}
  for row in rows:
    groups.setdefault(tuple(row.get(a) for a in axes), []).append(row[key])
  return groups


def mean_over_seeds(rows: list[dict], axes: list[str], key: str) -> dict[tuple, float]:
  """``key`` averaged over every member sharing the same values of ``axes``."""
  return {k: float(np.mean(v)) for k, v in seed_groups(rows, axes, key).items()}


def best_setting(rows: list[dict], axes: list[str], key: str, higher_is_better: bool) -> dict:
  """The values of ``axes`` whose mean ``key`` over their members (the seeds) is best, as the heatmap shows it:
  ``{"setting": {axis: value}, "mean": m, "std": s, "members": n}`` (ties: the first; NaN means never win)."""
  groups = seed_groups(rows, axes, key)
  means = np.array([np.mean(v) for v in groups.values()], dtype=float)
  if np.all(np.isnan(means)):
    index = 0
  else:
    index = int(np.nanargmax(means) if higher_is_better else np.nanargmin(means))
  values = list(groups.values())[index]
  return {"setting": dict(zip(axes, list(groups)[index])), "mean": float(means[index]),
          "std": float(np.std(values)), "members": len(values)}


def _labels(panels: list[str], panel: tuple) -> str:
  return ", ".join(f"{a}={v}" for a, v in zip(panels, panel))


def plot(rows: list[dict], axes: list[str], key: str, path, structural=()) -> list[tuple[float, float]]:
  """A heatmap of ``key`` over the last two numeric axes (one panel per value of the others, every panel on one
  colour scale), or a line plot over one numeric axis (a line per value of the others, ± one standard deviation
  over the seeds), or one bar per value of the other axes (a single bar when nothing but seeds varies). Seeds
  are averaged. Returns the colour limits of each heatmap panel (none for the other plots)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  numeric = [a for a in axes if all(isinstance(row.get(a), (int, float)) for row in rows) and a not in structural]
  panels = [a for a in axes if a not in numeric[-2:]]
  groups = seed_groups(rows, panels + numeric[-2:], key)
  means = {k: float(np.mean(v)) for k, v in groups.items()}
  seeds = max(len(v) for v in groups.values())
  panel_values = sorted({k[:len(panels)] for k in means}, key=str)
  limits = []
  if len(numeric) >= 2:
    x_name, y_name = numeric[-1], numeric[-2]
    xs = sorted({row[x_name] for row in rows})
    ys = sorted({row[y_name] for row in rows})
    finite = [v for v in means.values() if np.isfinite(v)] or [0.0]
    scale = matplotlib.colors.Normalize(min(finite), max(finite))
    fig, grid_axes = plt.subplots(1, len(panel_values), figsize=(4.5 * len(panel_values) + 1, 4), squeeze=False,
                                  layout="constrained")
    for ax, panel in zip(grid_axes[0], panel_values):
      image = np.array([[means.get(panel + (y, x), np.nan) for x in xs] for y in ys])
      shown = ax.imshow(image, origin="lower", aspect="auto", cmap="viridis", norm=scale)
      limits.append(shown.get_clim())
      for (i, j), value in np.ndenumerate(image):
        ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=7,
                color="k" if np.isfinite(value) and scale(value) > 0.6 else "w")
      ax.set(xticks=range(len(xs)), xticklabels=[f"{x:g}" for x in xs], yticks=range(len(ys)),
             yticklabels=[f"{y:g}" for y in ys], xlabel=x_name, ylabel=y_name, title=_labels(panels, panel) or key)
    fig.colorbar(shown, ax=list(grid_axes[0]), label=f"{key} (mean over {seeds} seed(s))")
  else:
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    x_name = numeric[-1] if numeric else None
    for panel in panel_values:
      label = _labels(panels, panel) or key
      if x_name:
        points = sorted((k[-1], np.mean(v), np.std(v)) for k, v in groups.items() if k[:len(panels)] == panel)
        x, y, spread = zip(*points)
        ax.errorbar(x, y, yerr=spread, marker="o", capsize=3, label=label)
      else:
        ax.bar(label, means[panel], yerr=np.std(groups[panel]), capsize=3)
    ax.set(xlabel=x_name or "member", ylabel=f"{key} (mean ± std over {seeds} seed(s))")
    if x_name and any(isinstance(row[x_name], float) for row in rows):
      ax.set_xscale("log" if min(row[x_name] for row in rows) > 0 else "linear")
    if x_name:
      ax.legend(title=", ".join(panels) or None, fontsize=8)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return limits


def format_table(rows: list[dict], columns: list[str]) -> str:
  """Rows as a fixed-width text table of ``columns``."""
  cells = [[f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in columns] for row in rows]
  widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
  lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
  lines += ["  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in cells]
  return "\n".join(lines)


def write(rows: list[dict], results: list[dict], out_dir, best: dict | None = None) -> None:
  """``members.csv`` (the rows) and ``results.json`` (rows, full curves and the ``best_setting``)."""
  out = pathlib.Path(out_dir)
  fields = list(dict.fromkeys(k for row in rows for k in row))
  with open(out / "members.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
  (out / "results.json").write_text(json.dumps({"members": rows, "best": best, "runs": results}, indent=1))
