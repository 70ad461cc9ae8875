"""``energyformer sweep``: the members it builds, what it writes, and its refusals of contradictory options."""
import json

import pytest

from energyformer import cli
from energyformer.studies import sweep
from energyformer.train import sweep_report
from energyformer.train.task import SEEDS


def test_sweep_command_writes_table_plot_and_curves(tmp_path, capsys):
  """``energyformer sweep`` prints the member table and best setting and writes CSV, JSON, JSONL and a heatmap."""
  cli.main(["sweep", "--preset", "tiny", "--variants", "momentum", "--grid", "learning_rate=1e-3,1e-2",
            "--grid", "beta=0,0.5", "--steps", "3", "--out", str(tmp_path)])
  out = capsys.readouterr().out
  assert "best setting by the mean over its 1 member(s)" in out
  rows = json.loads((tmp_path / "results.json").read_text())["members"]
  assert {(r["learning_rate"], r["beta"]) for r in rows} == {(1e-3, 0), (1e-3, 0.5), (1e-2, 0), (1e-2, 0.5)}
  assert (tmp_path / "members.csv").read_text().count("\n") == 5
  assert (tmp_path / "val_accuracy.png").stat().st_size > 0
  lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert sum(any(key.endswith("/val/accuracy") for key in line) for line in lines) == 4  # members × evaluations


def test_a_population_over_seeds_only_is_plotted(tmp_path):
  """Nothing swept but the seeds (``--seeds 2`` alone): the report plots the mean over the seeds."""
  rows = [{"member": f"seed={s}", "seed": s, "variant": "standard", "val_accuracy": 0.5 + s / 10} for s in (0, 1)]
  axes = sweep_report.swept_axes(rows, ["variant", "seed"], exclude=SEEDS)
  assert axes == []
  sweep_report.plot(rows, axes, "val_accuracy", tmp_path / "plot.png")
  assert (tmp_path / "plot.png").stat().st_size > 0
  assert sweep_report.mean_over_seeds(rows, axes, "val_accuracy") == {(): pytest.approx(0.55)}


def test_best_setting_is_the_best_seed_mean_and_heatmap_panels_share_one_scale(tmp_path):
  """The best setting is the one with the best mean over its seeds, not the one holding the best single member;
  heatmap panels far apart in value share one colour scale spanning them all; a 1-axis sweep plots with a legend."""
  rows = [{"variant": v, "beta": b, "eta": e, "seed": s, "acc": {(0.0, 0): 0.8, (0.0, 1): 0.0}.get((b, s), 0.4)
           + (0.0 if v == "a" else 10.0) + 0.01 * e + 0.1 * b}
          for v in ("a", "b") for b in (0.0, 0.5) for e in (1, 2) for s in (0, 1)]
  only_a = [r for r in rows if r["variant"] == "a"]
  best = sweep_report.best_setting(only_a, ["beta", "eta"], "acc", higher_is_better=True)
  assert best["setting"] == {"beta": 0.5, "eta": 2} and best["members"] == 2
  assert best["mean"] == pytest.approx(0.4 + 0.02 + 0.05)
  assert max(only_a, key=lambda r: r["acc"])["beta"] == 0.0          # the best single member is elsewhere
  limits = sweep_report.plot(rows, ["variant", "beta", "eta"], "acc", tmp_path / "heatmap.png", structural=("variant",))
  means = sweep_report.mean_over_seeds(rows, ["variant", "beta", "eta"], "acc").values()
  assert len(limits) == 2 and limits[0] == limits[1] == pytest.approx((min(means), max(means)))
  assert sweep_report.plot(only_a, ["eta"], "acc", tmp_path / "line.png") == []
  assert (tmp_path / "line.png").stat().st_size > 0


def test_sweep_command_builds_grid_and_random_members(monkeypatch, tmp_path):
  """``--grid`` axes multiply, ``--range`` draws ``--random`` members (``:log`` log-uniformly), and both are
  crossed with the variants and seeds; seeds a grid sets itself are trained as given."""
  calls = []
  monkeypatch.setattr(sweep, "run", lambda task, members, config, out, **options: calls.append((members, config,
                                                                                              options)))
  cli.main(["sweep", "--preset", "tiny", "--variants", "momentum", "nesterov", "--seeds", "2", "--grid",
            "beta=0,0.5", "--grid", "learning_rate=1e-3,3e-3", "--chunk-size", "4", "--steps-per-call", "5",
            "--out", str(tmp_path)])
  members, config, options = calls[-1]
  assert len(members) == 2 * 2 * 2 * 2 and options["chunk_size"] == 4 and config.steps_per_call == 5
  assert {"beta": 0.5, "learning_rate": 3e-3, "variant": "nesterov", "seed": 1} in members
  cli.main(["sweep", "--preset", "tiny", "--random", "5", "--range", "learning_rate=1e-4:1e-2:log",
            "--range", "eta=0.5:1.5", "--out", str(tmp_path)])
  members, _, _ = calls[-1]
  assert len(members) == 5 and all(1e-4 <= m["learning_rate"] <= 1e-2 and 0.5 <= m["eta"] <= 1.5
                                   and m["variant"] == "standard" for m in members)
  cli.main(["sweep", "--preset", "tiny", "--grid", "seed=3,4", "--grid", "data_seed=7", "--out", str(tmp_path)])
  members, _, _ = calls[-1]
  assert [(m["seed"], m["data_seed"]) for m in members] == [(3, 7), (4, 7)]


@pytest.mark.parametrize("options, message", [
    (["--grid", "beta"], "--grid expects NAME=VALUES"),
    (["--grid", "lr=1e-3,3e-3"], "unknown hyperparameter(s) ['lr']"),
    (["--grid", "seed=1,2", "--seeds", "2"], "--seeds and --grid/--range seed=... both set seeds"),
    (["--grid", "data_seed=1,2", "--seeds", "2"], "--seeds and --grid/--range data_seed=... both set seeds"),
    (["--grid", "variant=standard", "--variants", "tied"], "the variants are given twice"),
    (["--grid", "learning_rate=-1"], "learning_rate must lie in"),
    (["--devices", "0"], "--devices must be at least 1, got 0"),
    (["--grid", "beta=0.5", "--variants", "flash"], "unknown attention variant"),
    (["--grid", "beta=0.5"], "the variant 'standard' has no hyperparameter 'beta': its solver 'gd' has eta"),
    (["--grid", "beta=2", "--variants", "momentum"], "beta must lie in [0.0, 1.0)"),
    (["--grid", "learning_rate=abc"], "learning_rate='abc' is not a number"),
    (["--grid", "eta=1", "--grid", "eta=2"], "--grid eta=... is given twice"),
    (["--random", "3"], "--random N draws N members from --range options"),
    (["--random", "2", "--grid", "eta=1", "--range", "eta=1:2"], "and no --grid"),
    (["--range", "eta=0.1:1"], "--range needs --random N"),
    (["--random", "2", "--range", "eta=1"], "range 'eta' must be (low, high)"),
    (["--random", "0", "--range", "eta=0.1:1"], "num_members must be a positive integer"),
    (["--seeds", "0"], "--seeds must be at least 1"),
])
def test_bad_sweeps_end_with_a_message_and_write_nothing(options, message, tmp_path, capsys):
  """A bad option: the message, exit status 2, no traceback, and no metrics.jsonl or tensorboard/ left behind."""
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["sweep", "--preset", "tiny", *options, "--out", str(tmp_path / "out")])
  err = capsys.readouterr().err
  assert exit_info.value.code == 2 and message in err and "Traceback" not in err
  assert not (tmp_path / "out").exists()
