"""``energyformer compare``: a tiny comparison's outputs, each population member against the same member trained
alone (both end to end, marked slow: two compilations of populations), and the summary against hand-computed
values."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from energyformer.data import tokenizers
from energyformer.data.text import ByteTokenizer
from energyformer.models import GPTConfig
from energyformer.studies import compare
from energyformer.train import trainer
from train_fixtures import write_corpus


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp("compare")
  corpus = write_corpus(root / "corpus", num_files=10)
  study = dataclasses.replace(
      compare.PRESETS["tiny"], arms=("standard", "momentum"),
      model=GPTConfig(320, 8, dim=8, num_heads=2, head_dim=4, depth=1, mlp_hidden=8, remat=False, scan_unroll=True),
      data=dataclasses.replace(compare.PRESETS["tiny"].data, corpus=str(corpus), data_dir=str(root / "datasets"),
                               sequence_length=8, validation_percent=20),
      steps=4, eval_every=2, steps_per_call=2, eval_sequences=4)
  rows = compare.run(study, root / "out")
  return study, rows, root / "out"


@pytest.mark.slow
def test_compare_writes_curves_intervals_and_the_table(tiny, capsys):
  study, rows, out = tiny
  results = json.loads((out / "results.json").read_text())
  assert [r["arm"] for r in results["runs"]] == ["standard", "momentum"] == [r["arm"] for r in rows]
  for run, row in zip(results["runs"], rows):
    assert run["eval_steps"] == [2, 4] and np.shape(run["val_loss"]) == (2, 2) == np.shape(run["val_energy"])
    final = [losses[-1] for losses in run["val_loss"]]
    assert row["final_val_loss"] == pytest.approx(np.mean(final))
    assert min(final) <= row["final_val_loss_low"] <= row["final_val_loss"] <= row["final_val_loss_high"] <= max(final)
    assert row["tokens_per_second"] == pytest.approx(2 * 4 * 8 / run["seconds_per_step"])
  assert rows[0]["difference"] == rows[0]["difference_low"] == rows[0]["difference_high"] == 0.0
  assert rows[0]["steps_to_reference"] == 4                  # the reference reaches its own final mean at the end
  assert results["unit"] == "nats / byte" and tokenizers.load_tokenizer(out) == ByteTokenizer()
  for name in ("results.csv", "results.md", "val_loss.png", "standard/metrics.jsonl", "momentum/metrics.jsonl"):
    assert (out / name).stat().st_size > 0
  assert "| momentum |" in (out / "results.md").read_text()


@pytest.mark.slow
def test_each_member_equals_the_same_member_trained_alone(tiny):
  study, _, out = tiny
  results = json.loads((out / "results.json").read_text())
  momentum = results["runs"][1]
  member = compare.members(study, "momentum")[1]
  alone = trainer.train(compare.arm_task(study, "momentum", ByteTokenizer()), study.trainer_config(),
                        members=[member], progress=False)
  np.testing.assert_allclose([losses[0] for losses in alone.history["loss"]], momentum["train_loss"][1], rtol=2e-5)
  np.testing.assert_allclose([values["val"]["loss"][0] for _, values in alone.history["evaluations"]],
                             momentum["val_loss"][1], rtol=2e-5)


def test_arms_name_their_variant_and_energy_weight():
  study = dataclasses.replace(compare.PRESETS["tiny"], energy_weight=0.25)
  task = compare.arm_task(study, "nesterov+energy", tokenizers.train_bpe(["a b c d e f"] * 4, 300))
  assert (task.model.variant, task.energy_weight, task.model.vocab_size) == ("nesterov", 0.25, 320)
  assert compare.arm_task(study, "nesterov", ByteTokenizer()).energy_weight == 0.0
  with pytest.raises(ValueError, match="unknown attention variant"):
    dataclasses.replace(study, arms=("standard", "nope+energy"))
  with pytest.raises(ValueError, match="positive energy_weight"):
    dataclasses.replace(study, energy_weight=0.0)


def test_summary_against_hand_computed_values():
  study = dataclasses.replace(compare.PRESETS["tiny"], arms=("standard", "momentum"), resamples=4000)
  runs = [{"arm": "standard", "eval_steps": [10, 20], "val_loss": [[3.0, 2.0], [3.0, 2.2]],
           "val_energy": [[-1.0, -2.0], [-1.0, -4.0]], "seconds_per_step": 0.5},
          {"arm": "momentum", "eval_steps": [10, 20], "val_loss": [[2.5, 2.0], [2.0, 1.9]],
           "val_energy": [[-1.0, -3.0], [-1.0, -3.0]], "seconds_per_step": 0.25}]
  standard, momentum = compare.summarize(runs, study)          # target: standard's final mean loss, 2.1
  assert standard["final_val_loss"] == pytest.approx(2.1) and standard["difference"] == 0.0
  assert standard["steps_to_reference_per_seed"] == [20, None] and standard["steps_to_reference"] == 20
  assert standard["final_val_energy"] == -3.0 and (standard["final_val_energy_low"], standard["final_val_energy_high"]
                                                   ) == (-4.0, -2.0)
  assert momentum["steps_to_reference_per_seed"] == [20, 10] and momentum["steps_to_reference"] == 20
  assert momentum["median_steps_to_reference"] == 15.0
  # paired differences 0 and −0.3: resampled means −0.3, −0.15, 0 with probabilities 1/4, 1/2, 1/4
  assert momentum["difference"] == pytest.approx(-0.15)
  assert (momentum["difference_low"], momentum["difference_high"]) == pytest.approx((-0.3, 0.0))
  assert compare.verdict(momentum) == "no detectable difference" and compare.verdict(standard) == "reference"
  assert compare.verdict({**momentum, "difference_high": -0.1}) == "lower"
  alone = compare.summarize(runs[1:], study)[0]                # without standard, the first arm is the reference
  assert alone["reference"] and compare.verdict(alone) == "reference" and alone["steps_to_reference"] == 20
  assert momentum["tokens_per_second"] == 2 * study.tokens_per_step / 0.25
