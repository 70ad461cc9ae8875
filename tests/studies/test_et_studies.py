"""The et-images and et-graphs commands: option handling, and (slow) end-to-end runs of their tiny presets."""
import json

import pytest

from energyformer.cli import _parser, main
from energyformer.studies import et_commands, et_graphs, et_images


def _parse(argv):
  parser = _parser()
  return parser, parser.parse_args(argv)


def test_images_options_replace_the_preset():
  parser, args = _parse(["et-images", "--preset", "tiny", "--steps", "7", "--masking", "mask75", "--self-exclusion",
                         "--temperature", "0.01", "--no-baseline", "--dataset", "folder", "--data-dir", "/images"])
  study = et_commands.images_study(parser, args)
  assert (study.recipe.steps, study.recipe.optimizer.warmup_steps) == (7, 0)
  assert (study.masking, study.dataset, study.data_dir, study.baseline) == ("mask75", "folder", "/images", False)
  assert study.et.self_exclusion and study.et.temperature == 0.01
  assert study.image == et_images.PRESETS["tiny"].image


def test_graphs_options_choose_the_source():
  parser, args = _parse(["et-graphs", "--mat", "YelpChi.mat", "--steps", "50"])
  study = et_commands.graphs_study(parser, args)
  assert (study.source, study.paths, study.recipe.steps) == ("mat", ("YelpChi.mat",), 50)
  parser, args = _parse(["et-graphs", "--edge-list", "e.txt", "f.npy", "l.txt"])
  assert et_commands.graphs_study(parser, args).paths == ("e.txt", "f.npy", "l.txt")


def test_bad_options_raise():
  with pytest.raises(SystemExit):
    main(["et-images", "--preset", "huge"])
  with pytest.raises(ValueError, match="masking"):
    et_commands.images_study(*_parse(["et-images", "--masking", "half"]))
  with pytest.raises(ValueError, match="path"):
    et_graphs.ETGraphsStudy(source="mat")


@pytest.mark.slow
def test_et_images_tiny_run_writes_its_outputs(tmp_path):
  main(["et-images", "--preset", "tiny", "--out", str(tmp_path)])
  results = json.loads((tmp_path / "results.json").read_text())
  assert {"et", "transformer", "mean_patch"} <= set(results)
  assert results["energy_monotone_fraction"] == 1.0
  for name in ("completion.png", "energy.png", "metrics.jsonl"):
    assert (tmp_path / name).stat().st_size > 0


@pytest.mark.slow
def test_et_graphs_tiny_run_writes_its_outputs(tmp_path):
  main(["et-graphs", "--preset", "tiny", "--out", str(tmp_path)])
  final = json.loads((tmp_path / "results.json").read_text())["final"]
  assert 0.0 <= final["test_auc"] <= 1.0 and 0.0 <= final["test_macro_f1"] <= 1.0
