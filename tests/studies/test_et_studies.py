"""The et-images and et-graphs commands: option handling, and (slow) end-to-end runs of their tiny presets."""
import json

import pytest
from flax import nnx

from energyformer.cli import main, parser
from energyformer.studies import et_graphs, et_images


def _parse(argv):
  return parser().parse_args(argv)


def test_images_options_replace_the_preset():
  args = _parse(["et-images", "--preset", "tiny", "--steps", "7", "--masking", "mask75", "--self-exclusion",
                 "--temperature", "0.01", "--no-baseline", "--dataset", "folder", "--data-dir", "/images"])
  study = et_images.study_from_args(args)
  assert (study.training.steps, study.training.optimizer.warmup_steps) == (7, 5)
  assert et_images.study_from_args(_parse(["et-images", "--preset", "tiny", "--steps", "4"])).training.optimizer \
      .warmup_steps == 0
  assert (study.masking, study.dataset, study.data_dir, study.baseline) == ("mask75", "folder", "/images", False)
  assert study.et.self_exclusion and study.et.temperature == 0.01
  assert study.image == et_images.PRESETS["tiny"].image
  assert not study.equilibrium and et_images.study_from_args(_parse(["et-images", "--equilibrium"])).equilibrium


def test_equilibrium_core_is_the_et_block_run_to_its_fixed_point():
  """The study's equilibrium model has the ET's parameters and an equilibrium stack; the table lists it with its
  convergence beside the mean-patch baseline."""
  study = et_images.PRESETS["tiny"]
  task = et_images.CompletionTask(study, "et_equilibrium")
  model = nnx.eval_shape(lambda: task.create_model({}, nnx.Rngs(0), ()))
  plain = nnx.eval_shape(lambda: et_images.et_model(study, nnx.Rngs(0)))
  assert model.core.stack.mode == "equilibrium" and plain.core.stack.mode == "unrolled"
  assert et_images.count_params(model) == et_images.count_params(plain)
  row = {"test_rmse": 0.2, "core_params": 10, "seconds": 1.0}
  table = et_images.format_table({"mean_patch": {"test_rmse": 0.3}, "et": row, "et_equilibrium": {
      **row, "convergence": {"mean_steps": 30.0, "max_steps": 41, "max_residual": 9e-4, "unconverged": 2, "images": 64,
                             "tol": 1e-3}}})
  assert "mean patch" in table and "ET equilibrium" in table and "max 41" in table and "2 of 64 not" in table
  solve = et_images.study_from_args(_parse(["et-images", "--equilibrium", "--eq-max-steps", "7", "--eq-tol", "0.05"]))
  config = nnx.eval_shape(lambda: et_images.et_model(solve, nnx.Rngs(0), equilibrium=True)).core.config
  assert (config.max_steps, config.tol, config.depth) == (7, 0.05, solve.et.depth)
  with pytest.raises(ValueError, match="equilibrium_tol"):
    et_images.study_from_args(_parse(["et-images", "--eq-tol", "0"]))


def test_graphs_options_choose_the_source():
  study = et_graphs.study_from_args(_parse(["et-graphs", "--mat", "YelpChi.mat", "--steps", "50"]))
  assert (study.source, study.paths, study.training.steps) == ("mat", ("YelpChi.mat",), 50)
  args = _parse(["et-graphs", "--edge-list", "e.txt", "f.npy", "l.txt"])
  assert et_graphs.study_from_args(args).paths == ("e.txt", "f.npy", "l.txt")


def test_bad_options_raise(capsys):
  for argv, message in ((["et-images", "--preset", "huge"], "unknown preset 'huge'"),
                        (["et-images", "--steps", "0"], "--steps must be a positive integer"),
                        (["et-graphs", "--mat", "a.mat", "--edge-list", "e", "f", "l"], "either --mat or --edge-list")):
    with pytest.raises(SystemExit) as exit_info:
      main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "Traceback" not in err
  with pytest.raises(ValueError, match="masking"):
    et_images.study_from_args(_parse(["et-images", "--masking", "half"]))
  with pytest.raises(ValueError, match="path"):
    et_graphs.ETGraphsStudy(source="mat")


def test_ego_graph_batches_resume_exactly():
  """The graph study's training batches: a copy restored from another's state gives the same next batches."""
  study = et_graphs.PRESETS["tiny"]
  task = et_graphs.GraphTask(study)
  first, second = task.batches({"seed": 3}, 8, 0, 1), task.batches({"seed": 3}, 8, 0, 1)
  for _ in range(40):  # past the end of an epoch of training nodes
    next(first)
  second.set_state(json.loads(json.dumps(first.get_state())))
  for _ in range(3):
    a, b = next(first), next(second)
    assert all((a[k] == b[k]).all() for k in a)


def test_completion_task_evaluates_fixed_masks():
  """The image task's evaluation set holds the held-out images with masks fixed by the study's seed."""
  study = et_images.PRESETS["tiny"]
  sets = et_images.CompletionTask(study).evaluation_sets(0, 1)
  images, replace, score = (sets["test"][k] for k in ("image", "replace", "score"))
  assert len(images) == len(replace) == len(score) == study.eval_images
  assert (replace.sum(1) == replace[0].sum()).all() and (score >= replace).all()


@pytest.mark.slow
def test_et_images_tiny_run_writes_its_outputs(tmp_path):
  main(["et-images", "--preset", "tiny", "--out", str(tmp_path)])
  results = json.loads((tmp_path / "results.json").read_text())
  assert {"et", "transformer", "mean_patch"} <= set(results)
  assert results["energy_monotone_fraction"] == 1.0
  assert results["et"]["evaluations"][-1]["step"] == et_images.PRESETS["tiny"].training.steps
  for name in ("completion.png", "energy.png", "metrics.jsonl"):
    assert (tmp_path / name).stat().st_size > 0


@pytest.mark.slow
def test_et_graphs_tiny_run_writes_its_outputs(tmp_path):
  main(["et-graphs", "--preset", "tiny", "--out", str(tmp_path)])
  final = json.loads((tmp_path / "results.json").read_text())["final"]
  assert 0.0 <= final["test_auc"] <= 1.0 and 0.0 <= final["test_macro_f1"] <= 1.0


def test_a_stop_signal_ends_the_study_with_where_it_stopped(monkeypatch, tmp_path, capsys):
  """A run the trainer reports as stopped by a signal ends the study (no report from a half-trained model); the
  command says where and exits cleanly."""
  stopped = type("Stopped", (), {"stopped_by": "SIGTERM", "step": 7})()
  monkeypatch.setattr(et_graphs.trainer, "train", lambda *args, **kwargs: stopped)
  main(["et-graphs", "--preset", "tiny", "--out", str(tmp_path)])
  assert "stopped by SIGTERM at step 7" in capsys.readouterr().err
  assert not (tmp_path / "results.json").exists()


def test_the_feature_only_baseline_reads_the_features_and_nothing_else(tmp_path):
  """The graph study's trivial baseline (logistic regression on a node's own features): near-perfect AUC when the
  label is a linear function of the features, chance when the features are noise, whatever the edges; the report
  table and plot show it beside the ET."""
  import numpy as np
  import scipy.sparse as sp
  from energyformer.data import graphs as graph_data

  rng = np.random.default_rng(0)
  features = rng.normal(size=(400, 5)).astype(np.float32)
  separable = (features @ np.array([1.0, -2.0, 0.5, 0.0, 0.0]) > 1.2).astype(np.int32)
  edges = sp.random(400, 400, density=0.02, random_state=1, format="csr")
  adjacency = ((edges + edges.T) > 0).astype(np.float32)
  adjacency.setdiag(0)
  splits = graph_data.split_nodes(separable, (0.5, 0.25, 0.25), 0)
  for labels, low, high in ((separable, 0.97, 1.0), (rng.permutation(separable), 0.3, 0.7)):
    graph = graph_data.make_graph(features, adjacency, labels)
    scores = et_graphs.feature_baseline(graph, splits)
    report = et_graphs.detection_report(labels[splits["val"]], scores["val"], labels[splits["test"]], scores["test"])
    assert low <= report["test_auc"] <= high, report
  evaluations = [{"step": 2, "val_loss": 0.6}, {"step": 3, "val_loss": 0.55}]
  results = {"graph": {"nodes": 400, "edges": 10, "anomalies": 50, "feature_dim": 5}, "final": report,
             "baseline": report, "history": {"loss": [0.7, 0.6, 0.5], "seconds": 1.0, "evaluations": evaluations}}
  assert "features only (logistic regression)" in et_graphs.format_table(results)
  et_graphs.plot(results, tmp_path / "et_graphs.png")
  assert (tmp_path / "et_graphs.png").stat().st_size > 0
