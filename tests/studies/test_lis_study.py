"""The LIS study: metrics, bookkeeping, outputs and option errors."""
import dataclasses
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from energyformer import cli
from energyformer.studies import lis


def test_masked_metrics_match_a_per_example_loop():
  """Loss is the cross-entropy averaged over answer positions; accuracy counts wholly correct answers."""
  logits = jax.random.normal(jax.random.key(0), (3, 5, 7))
  tokens = jax.random.randint(jax.random.key(1), (3, 6), 0, 7)
  tokens = tokens.at[0, 3:5].set(jnp.argmax(logits[0, 2:4], -1))  # example 0: answer correct
  loss_mask = jnp.zeros((3, 6)).at[:, 2:4].set(1.0)
  loss, accuracy = lis.masked_metrics(logits, tokens, loss_mask)
  ce = [float(optax.softmax_cross_entropy_with_integer_labels(logits[b, t], tokens[b, t + 1]))
        for b in range(3) for t in (2, 3)]
  correct = [all(int(jnp.argmax(logits[b, t])) == int(tokens[b, t + 1]) for t in (2, 3)) for b in range(3)]
  assert np.isclose(float(loss), np.mean(ce), rtol=1e-6)
  assert np.isclose(float(accuracy), np.mean(correct)) and correct[0]


def test_steps_to_target_per_seed():
  """The first evaluated step at or above the target, per seed; None where never reached."""
  curve = [(10, [0.1, 0.6]), (20, [0.5, 0.7]), (30, [0.4, 0.9])]
  assert lis._steps_to_target(curve, 0.5, 2) == [20, 10]
  assert lis._steps_to_target(curve, 0.95, 2) == [None, None]


def test_tiny_study_writes_table_and_files(tmp_path, capsys):
  """Two variants × two seeds train end to end and write consistent CSV, JSON, JSONL and PNG outputs."""
  study = dataclasses.replace(lis.PRESETS["tiny"], variants=("standard", "nesterov"), steps=6, eval_every=3,
                              depth=1)
  rows = lis.run(study, tmp_path)
  assert [r["variant"] for r in rows] == ["standard", "nesterov"]
  assert "held-out acc" in capsys.readouterr().out
  saved = json.loads((tmp_path / "results.json").read_text())
  for run in saved["runs"]:
    assert [step for step, _ in run["curve"]] == [3, 6]
    assert len(run["val_accuracy"]) == len(run["test_accuracy"]) == study.seeds
  lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  evaluations = [line for line in lines if any(key.endswith("val/accuracy") for key in line)]
  assert len(evaluations) == 2 * 2 * 2  # variants × seeds × evaluations
  assert (tmp_path / "results.csv").read_text().count("\n") == 3
  assert (tmp_path / "val_accuracy.png").stat().st_size > 0
  assert any((tmp_path / "tensorboard").iterdir())


def test_bad_study_options_are_named(capsys):
  """Unknown variants, a zero seed count and an unknown preset are refused with the option's name."""
  with pytest.raises(ValueError, match="variant"):
    lis.LISStudy(variants=("standard", "flash"))
  with pytest.raises(ValueError, match="seeds"):
    lis.LISStudy(seeds=0)
  for options, message in ((["--preset", "huge"], "unknown preset 'huge'"),
                           (["--devices", "0"], "--devices must be at least 1, got 0"),
                           (["--steps", "-5"], "--steps must be at least 1, got -5")):
    with pytest.raises(SystemExit) as exit_info:
      cli.main(["lis", *options])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "Traceback" not in err


def test_the_study_trains_with_the_one_optimiser():
  """The study's budget is the trainer's: AdamW with the decay mask, its b2, decaying to final_fraction."""
  config = lis.PRESETS["default"].trainer_config(devices=2)
  assert (config.optimizer.b2, config.optimizer.final_fraction, config.mesh.population) == (0.999, 0.0, 2)
  assert config.steps == lis.PRESETS["default"].steps and not config.stop_on_non_finite


def test_experiment_script_is_the_cli(tmp_path):
  """``python experiments/lis.py`` runs the same study as ``energyformer lis`` (its options included)."""
  script = pathlib.Path(__file__).parents[2] / "experiments" / "lis.py"
  out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, check=True).stdout
  assert "--preset" in out and "--variants" in out
