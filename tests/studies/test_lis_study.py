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

from flax import nnx

from energyformer import cli
from energyformer.models import GPT
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


def _result(variant, val_curve, test_accuracy):
  """A variant's results as ``train_variant`` returns them: evaluations at steps 10, 20, 30 of three seeds."""
  val_curve = np.asarray(val_curve, float)
  return {"variant": variant, "steps": [10, 20, 30], "curves": {"val": {"accuracy": val_curve.tolist()}},
          "val_accuracy": val_curve[-1].tolist(), "test_accuracy": list(test_accuracy), "seconds_per_step": 0.002}


def test_paired_comparisons_and_table_from_per_seed_results():
  """Differences are per seed against the baseline variant; steps to a threshold are compared only where every
  seed of both reached it; an interval covering 0 is printed as "no detectable difference"."""
  study = dataclasses.replace(lis.PRESETS["tiny"], seeds=3, thresholds=(0.5, 0.8), variants=("standard", "momentum"))
  standard = _result("standard", [[0.2, 0.3, 0.1], [0.5, 0.6, 0.4], [0.6, 0.9, 0.5]], [0.30, 0.35, 0.25])
  momentum = _result("momentum", [[0.5, 0.6, 0.5], [0.8, 0.9, 0.8], [0.9, 0.95, 0.85]], [0.31, 0.33, 0.27])
  comparisons = {c["measure"]: c for c in lis.paired_comparisons([standard, momentum], study)}
  # Seeds 1 and 3 of standard never reach 80 %: no paired steps to 80 %.
  assert set(comparisons) == {"val accuracy", "held-out accuracy", "steps to 50%"}
  assert comparisons["val accuracy"]["difference"] == pytest.approx((0.3 + 0.05 + 0.35) / 3)
  assert comparisons["val accuracy"]["detectable"] and not comparisons["held-out accuracy"]["detectable"]
  assert comparisons["steps to 50%"]["difference"] == pytest.approx(((10 - 20) + (10 - 20) + (10 - 30)) / 3)
  rows = [lis.summarize(r, study) for r in (standard, momentum)]
  assert (rows[0]["steps_to_80pct"], rows[0]["steps_to_80pct_seeds"]) == (np.inf, 1)  # median of inf, 30, inf
  assert (rows[1]["steps_to_80pct"], rows[1]["steps_to_80pct_seeds"]) == (20, 3)
  table = lis.format_table(rows, study, list(comparisons.values()), {"constant": {"val": 0.4, "test": 0.3}})
  held_out = next(line for line in table.splitlines() if "held-out accuracy" in line)
  assert "no detectable difference" in held_out
  assert "no detectable difference" not in next(line for line in table.splitlines() if "val accuracy" in line)
  assert "(constant)" in table


def test_shared_depth_extrapolation_runs_the_stack_longer():
  """The study's evaluation at depth 2L of a weight-shared momentum population (solver state carried across steps)
  equals, member by member, a shared model built with depth 2L holding the same parameters (its stack runs 2L
  steps by default)."""
  study = dataclasses.replace(lis.PRESETS["tiny"], shared=True, depth=1)
  task = lis.LISTask(study)
  trained = study.model_config("momentum")
  members = [nnx.split(GPT(trained, rngs=nnx.Rngs(seed)))[1] for seed in range(2)]
  graphdef = nnx.graphdef(GPT(trained, rngs=nnx.Rngs(0)))
  results = lis.evaluate_at_depths(task, graphdef, jax.tree.map(lambda *x: jnp.stack(x), *members), (2,))[2]
  deep = nnx.graphdef(GPT(dataclasses.replace(trained, depth=2), rngs=nnx.Rngs(0)))
  metrics = jax.jit(lambda state, tokens, mask: lis.masked_metrics(nnx.merge(deep, state)(tokens[:, :-1]), tokens,
                                                                   mask))
  for index, state in enumerate(members):
    for name, split in task.evaluation_sets(0, 1).items():
      loss, accuracy = metrics(state, split["tokens"], split["loss_mask"])
      assert results[name]["loss"][index] == pytest.approx(float(loss), rel=1e-5)
      assert results[name]["accuracy"][index] == pytest.approx(float(accuracy))


def test_tiny_study_writes_table_and_files(tmp_path, capsys):
  """Two variants × two seeds train end to end and write consistent CSV, JSON, JSONL and PNG outputs."""
  study = dataclasses.replace(lis.PRESETS["tiny"], variants=("standard", "nesterov"), steps=6, eval_every=3,
                              depth=1)
  rows = lis.run(study, tmp_path)
  assert [r["variant"] for r in rows] == ["standard", "nesterov"]
  out = capsys.readouterr().out
  assert "held-out acc" in out and "paired against standard" in out and "(majority per length)" in out
  saved = json.loads((tmp_path / "results.json").read_text())
  for run in saved["runs"]:
    assert run["steps"] == [3, 6] and np.shape(run["curves"]["val"]["accuracy"]) == (2, study.seeds)
    assert run["val_accuracy"] == run["curves"]["val"]["accuracy"][-1]
    assert len(run["val_accuracy"]) == len(run["test_accuracy"]) == study.seeds
  assert set(saved["baselines"]) == {"majority per length", "constant"}
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
