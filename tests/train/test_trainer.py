"""The one training loop on one device, driven by the pretraining task: exact resumption, damaged checkpoints,
non-finite losses and parameters, stop signals, the pretrain command, and a sweep member equal to the run alone."""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from energyformer import cli
from energyformer.studies import pretrain
from energyformer.train import population, trainer
from energyformer.train.checkpoint import Checkpointer
from energyformer.train.config import to_dict
from train_fixtures import tiny_config, write_corpus

TESTS = pathlib.Path(__file__).parents[1]


class SimulatedCrash(Exception):
  """Raised from ``on_step`` to drop a run's in-memory state at a chosen step."""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("train")
  return write_corpus(root / "corpus"), root / "datasets"


@pytest.fixture(scope="module")
def straight(corpus, tmp_path_factory):
  """Eight uninterrupted steps (checkpoints at 2, 4, 6, 8; the newest two kept)."""
  out = tmp_path_factory.mktemp("straight")
  config = tiny_config(*corpus)
  return config, out, pretrain.train(config, out, progress=False)


def _leaves(result):
  return [np.asarray(x) for x in jax.tree.leaves((result.state, result.opt_state))]


def _assert_bitwise_equal(result, reference):
  assert all(np.array_equal(a, b) for a, b in zip(_leaves(result), _leaves(reference), strict=True))


def test_training_lowers_the_loss_and_logs_metrics(straight):
  config, out, result = straight
  assert result.start_step == 0 and result.step == 8 and len(result.losses) == 8
  assert result.losses[-1] < result.losses[0]
  assert [step for step, _ in result.history["evaluations"]] == [4, 8]
  lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
  assert {"train/loss", "train/grad_norm", "train/learning_rate"} <= set(lines[0])
  assert [line["step"] for line in lines if "val/loss" in line] == [4, 8]
  assert (out / "tensorboard").is_dir()
  assert Checkpointer(out / "checkpoints", config.trainer.checkpoint).steps() == [6, 8]


def test_resume_after_a_hard_kill_is_bitwise_exact(straight, tmp_path):
  """N steps, the process's state dropped without a final save, then N more from the checkpoint equal 2N steps
  straight: the same losses, parameters, optimizer state and therefore the same batches, bit for bit."""
  config, _, reference = straight

  def crash_at_4(step, metrics):
    if step == 4:
      raise SimulatedCrash

  with pytest.raises(SimulatedCrash):
    pretrain.train(config, tmp_path, progress=False, on_step=crash_at_4)
  resumed = pretrain.train(config, tmp_path, progress=False)
  assert resumed.start_step == 4
  assert resumed.losses == reference.losses[4:]
  _assert_bitwise_equal(resumed, reference)


@pytest.mark.parametrize("damage", ["truncated arrays", "missing optimizer state"])
def test_damaged_latest_checkpoint_warns_and_falls_back(straight, tmp_path, damage):
  config, out, reference = straight
  shutil.copytree(out / "checkpoints", tmp_path / "checkpoints")
  latest = tmp_path / "checkpoints" / "8"
  if damage == "truncated arrays":
    for path in (latest / "state").rglob("*"):
      if path.is_file() and path.stat().st_size > 0:
        path.write_bytes(path.read_bytes()[:7])
  else:
    shutil.rmtree(latest / "opt_state")
  with pytest.warns(RuntimeWarning, match="checkpoint step 8 .* is damaged or incomplete"):
    resumed = pretrain.train(config, tmp_path, progress=False)
  assert resumed.start_step == 6
  assert (tmp_path / "checkpoints" / "8.unreadable").is_dir()
  _assert_bitwise_equal(resumed, reference)


def test_resume_refuses_checkpoints_of_another_run(straight, tmp_path):
  config, out, _ = straight
  shutil.copytree(out / "checkpoints", tmp_path / "checkpoints")
  with pytest.raises(ValueError, match="different members.*new output directory"):
    pretrain.train(dataclasses.replace(config, seed=1), tmp_path, progress=False)
  other_data = dataclasses.replace(config.task.data, sequence_length=8)
  with pytest.raises(ValueError, match="different task.*new output directory"):
    pretrain.train(dataclasses.replace(config, task=dataclasses.replace(config.task, data=other_data)), tmp_path,
                   progress=False)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["6", "8"]


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(straight, tmp_path, monkeypatch):
  config, _, _ = straight
  real_programs = trainer.programs

  def diverging(*args):
    compiled = real_programs(*args)

    def steps(state, opt_state, batches, hparams, seeds, first, total_steps):
      state, opt_state, metrics = compiled.steps(state, opt_state, batches, hparams, seeds, first, total_steps)
      bad = (first + np.arange(len(metrics["loss"])) + 1 >= 5)[:, None]
      return state, opt_state, {**metrics, "loss": np.where(bad, np.nan, metrics["loss"]),
                                "finite": ~bad & np.asarray(metrics["finite"])}

    return dataclasses.replace(compiled, steps=steps)

  monkeypatch.setattr(trainer, "programs", diverging)
  with pytest.raises(trainer.NonFiniteLossError, match=r"step 5 .*last good checkpoint \(step 4\)"):
    pretrain.train(config, tmp_path, progress=False)
  assert Checkpointer(tmp_path / "checkpoints", config.trainer.checkpoint).steps() == [2, 4]
  monkeypatch.undo()
  resumed = pretrain.train(config, tmp_path, progress=False)
  assert resumed.start_step == 4 and all(np.isfinite(leaf).all() for leaf in _leaves(resumed))


def test_ctrl_c_finishes_the_step_saves_and_returns(straight, tmp_path):
  config, _, _ = straight

  def interrupt_at_3(step, metrics):
    if step == 3:
      os.kill(os.getpid(), signal.SIGINT)

  result = pretrain.train(config, tmp_path, progress=False, on_step=interrupt_at_3)
  assert (result.stopped_by, result.step) == ("SIGINT", 4)
  assert Checkpointer(tmp_path / "checkpoints", config.trainer.checkpoint).steps() == [2, 4]
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is restored


def test_sigterm_saves_a_restorable_checkpoint_and_exits_cleanly(straight, tmp_path):
  """A run in another process gets SIGTERM mid-training: it saves the current step and exits with status 0; the
  run resumed from that checkpoint ends bitwise where the uninterrupted run did."""
  config, _, reference = straight
  (tmp_path / "config.json").write_text(json.dumps(to_dict(config)))
  script = ("import json, sys, time; from energyformer.studies import pretrain; "
            "from energyformer.train.config import from_dict; "
            "config = from_dict(pretrain.Pretraining, json.load(open(sys.argv[1]))); "
            "result = pretrain.train(config, sys.argv[2], progress=False, on_step=lambda *_: time.sleep(0.3)); "
            "print('stopped by', result.stopped_by, 'at step', result.step)")
  process = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "config.json"), str(tmp_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "JAX_PLATFORMS": "cpu"})
  metrics = tmp_path / "metrics.jsonl"
  deadline = time.monotonic() + 120
  while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
    assert process.poll() is None and time.monotonic() < deadline, process.communicate()
    time.sleep(0.05)
  process.send_signal(signal.SIGTERM)
  stdout, stderr = process.communicate(timeout=120)
  assert process.returncode == 0, stderr
  assert "stopped by SIGTERM" in stdout
  step = int(stdout.split()[-1])
  assert 3 <= step < config.trainer.steps
  assert Checkpointer(tmp_path / "checkpoints", config.trainer.checkpoint).steps()[-1] == step
  resumed = pretrain.train(config, tmp_path, progress=False)
  assert resumed.start_step == step
  assert resumed.losses == reference.losses[step:]
  _assert_bitwise_equal(resumed, reference)


def test_pretrain_run_writes_the_validation_plot_and_summary(straight, tmp_path, capsys):
  config, _, reference = straight
  summary = pretrain.run(config, tmp_path, progress=False)
  assert summary["steps"] == 8 and summary["first_train_loss"] == reference.losses[0][0]
  assert summary["final_val_loss"] == reference.history["evaluations"][-1][1]["val"]["loss"][0]
  assert (tmp_path / "val_loss.png").stat().st_size > 0 and (tmp_path / "summary.json").exists()
  assert "8 steps: training loss" in capsys.readouterr().out


def test_pretrain_presets_take_command_line_overrides():
  config = pretrain.configure("tiny", variant="nesterov", steps=20, mesh="fsdp=2", bf16=True, corpus="/data/text",
                              patterns=["*.md"])
  task, settings = config.task, config.trainer
  assert task.model.variant == "nesterov" and settings.steps == 20 and settings.optimizer.warmup_steps == 2
  assert task.data.patterns == ("*.md",)
  assert (settings.mesh.data, settings.mesh.fsdp, settings.compute_dtype, task.data.corpus) == (-1, 2, "bfloat16",
                                                                                              "/data/text")
  assert pretrain.configure("gpt2-124m").task.model.dim == 768
  with pytest.raises(ValueError, match="unknown pretraining preset 'huge'"):
    pretrain.configure("huge")


@pytest.mark.parametrize("options, message", [
    (["--config", "huge"], "unknown pretraining preset"),
    (["--mesh", "model=2"], "unknown mesh axis 'model'"),
    (["--variant", "adam"], "unknown attention variant(s) ['adam']"),
    (["--data", "/no/such/folder"], "'/no/such/folder' does not exist"),
    (["--steps", "-5"], "steps must be a positive integer, got -5"),
    (["--learning-rate", "1e39"], "learning_rate must lie in (0.0, 3.4"),
])
def test_pretrain_command_reports_bad_options(options, message, corpus, tmp_path, capsys):
  """Every bad setting: a message naming it and the fix, exit status 2, no traceback, nothing written (meshes
  that do not fit 8 devices: test_train_mesh.py)."""
  data = [] if "--data" in options else ["--data", str(corpus[0]), "--data-dir", str(corpus[1])]
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["pretrain", *options, *data, "--out", str(tmp_path / "out")])
  err = capsys.readouterr().err
  assert exit_info.value.code == 2 and message in err and "Traceback" not in err
  assert not (tmp_path / "out" / "checkpoints").exists()


def test_a_sweep_member_equals_the_pretrain_run_with_its_hyperparameters(straight, tmp_path):
  """Two members (learning rate, weight decay, warmup, b2 and seed varied) trained as one vmapped population
  follow, each, the single pretraining run with the same hyperparameters (loss curves to rtol 1e-5)."""
  config, _, _ = straight
  members = [{"seed": 1, "learning_rate": 3e-3, "weight_decay": 0.3},
             {"seed": 2, "learning_rate": 2e-2, "warmup_steps": 4, "b2": 0.99}]
  settings = dataclasses.replace(config.trainer, checkpoint=dataclasses.replace(config.trainer.checkpoint, every=None))
  results = population.train_population(config.task, members, settings)
  for member, result in zip(members, results):
    optimizer = dataclasses.replace(settings.optimizer, **{k: v for k, v in member.items() if k != "seed"})
    alone = pretrain.train(dataclasses.replace(config, trainer=dataclasses.replace(settings, optimizer=optimizer),
                                               seed=member["seed"]), None, progress=False)
    np.testing.assert_allclose(result["train_loss"], [losses[0] for losses in alone.losses], rtol=1e-5)
  assert len({round(r["train_loss"][-1], 5) for r in results}) == 2


@pytest.mark.slow
def test_tiny_pretrain_command_end_to_end_and_resumed_longer(corpus, tmp_path):
  """The command as a user runs it (the tiny preset), then the same command extended to more steps continues."""
  command = [sys.executable, str(TESTS.parent / "experiments" / "pretrain.py"), "--config", "tiny", "--data",
             str(corpus[0]), "--data-dir", str(corpus[1]), "--out", str(tmp_path), "--checkpoint-every", "20"]
  subprocess.run([*command, "--steps", "40"], check=True, capture_output=True)
  first = json.loads((tmp_path / "summary.json").read_text())
  subprocess.run([*command, "--steps", "60", "--extend"], check=True, capture_output=True)
  second = json.loads((tmp_path / "summary.json").read_text())
  assert (first["steps"], second["resumed_from"], second["steps"]) == (40, 40, 60)
  assert second["final_val_loss"] < first["first_train_loss"]


def test_a_diverging_command_ends_with_the_message_and_exit_status_1(straight, tmp_path, capsys, monkeypatch):
  """``energyformer pretrain`` (on the tiny test model) at a learning rate float32 holds but the parameters
  overflow: the run stops at the first non-finite loss, gradient or parameter with a message and exit status 1,
  not a traceback, and every checkpoint it saved holds finite parameters."""
  config, _, _ = straight
  monkeypatch.setattr(pretrain, "presets", lambda: {"tiny": config})
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["pretrain", "--learning-rate", "3e38", "--checkpoint-every", "1", "--out", str(tmp_path)])
  err = capsys.readouterr().err
  assert exit_info.value.code == 1 and "non-finite training loss" in err and "Traceback" not in err
  checkpointer = Checkpointer(tmp_path / "checkpoints", config.trainer.checkpoint)
  assert checkpointer.steps()
  for step in checkpointer.steps():
    restored = checkpointer.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored["state"])), step


def _checkpoints_of(straight, tmp_path):
  config, out, reference = straight
  shutil.copytree(out / "checkpoints", tmp_path / "checkpoints")
  return config, reference


def test_a_finished_run_is_reported_complete_and_other_schedules_are_refused(straight, tmp_path, capsys,
                                                                            monkeypatch):
  """Rerun as it was: "already complete", nothing trained, the summary on disk kept. Another number of steps
  (fewer or more) or another optimiser setting: refused from the command line with the saved and asked values and
  the fix (exit status 2), before anything is written."""
  config, reference = _checkpoints_of(straight, tmp_path)
  (tmp_path / "summary.json").write_text(json.dumps({"steps": 8}))
  summary = pretrain.run(config, tmp_path, progress=False)
  assert summary == {"steps": 8} and json.loads((tmp_path / "summary.json").read_text()) == {"steps": 8}
  assert "already complete (8 steps)" in capsys.readouterr().out
  monkeypatch.setattr(pretrain, "presets", lambda: {"tiny": config})
  for options, asked in ((["--steps", "4"], "steps=4"), (["--steps", "16"], "steps=16"),
                         (["--learning-rate", "0.5"], "learning_rate=0.5")):
    with pytest.raises(SystemExit) as exit_info:
      cli.main(["pretrain", *options, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    assert "error: the run in" in err and "steps=8" in err and asked in err, err
    assert ("pretrain --extend" in err) == (asked == "steps=16")
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["6", "8"]


def test_extend_continues_with_the_saved_optimiser_settings_and_a_recomputed_decay(straight, tmp_path, capsys):
  """``extend=True`` from step 8 to 10: the first 8 losses are the saved ones, the learning rate of step 9 is the
  closed-form warmup-cosine value of a 10-step run with the saved peak, warmup and final fraction (not the one
  asked), and summary.json records both segments and a finite or absent throughput."""
  config, reference = _checkpoints_of(straight, tmp_path)
  asked = dataclasses.replace(config, trainer=dataclasses.replace(
      config.trainer, steps=10, optimizer=dataclasses.replace(config.trainer.optimizer, warmup_steps=1)))
  summary = pretrain.run(asked, tmp_path, progress=False, extend=True)
  out = capsys.readouterr().out
  assert "resuming from step 8 of 10" in out and "extending the run from 8 to 10 steps" in out
  assert summary["steps"] == 10 and summary["resumed_from"] == 8
  assert summary["schedule"] == [{"from_step": 0, "steps": 8}, {"from_step": 8, "steps": 10}]
  assert summary["config"]["trainer"]["optimizer"]["warmup_steps"] == 2
  assert summary["tokens_per_second"] is None or np.isfinite(summary["tokens_per_second"])
  saved = config.trainer.optimizer
  peak, final = saved.learning_rate, saved.final_fraction * saved.learning_rate
  expected = final + (peak - final) * 0.5 * (1 + np.cos(np.pi * (8 - 2) / (10 - 2)))
  logged = {r["step"]: r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())}
  np.testing.assert_allclose(logged[9]["train/learning_rate"], expected, rtol=1e-6)
  history = json.loads((tmp_path / "summary.json").read_text())
  assert history["steps"] == 10
  with pytest.raises(ValueError, match="already trained 10 steps; extending it needs more steps"):
    pretrain.train(asked, tmp_path, progress=False, extend=True)


def test_pretrain_reads_a_tfds_dataset_by_name_from_its_data_directory(straight, corpus, tmp_path, monkeypatch):
  """A tfds dataset built on disk by the project's own builder (the directory corpus, array_record) is read back by
  name, ``--data tfds:text_corpus/<config> --data-dir DIR``, with no network: the same records as the builder's own
  splits (validation on its ``validation`` split), and the command pretrains on it."""
  from energyformer.data import text

  config = straight[0]
  builder = text.build_directory_corpus(corpus[0], corpus[1], ("*.txt",), config.task.data.validation_percent)
  name = f"{builder.name}/{builder.builder_config.name}"
  for split in text.SPLITS:
    by_name = text.catalogue_source(name, split, corpus[1])
    assert [r["text"] for r in by_name] == [r["text"] for r in builder.as_data_source(split)] and len(by_name) > 0
  monkeypatch.setattr(pretrain, "presets", lambda: {"tiny": config})
  cli.main(["pretrain", "--data", f"tfds:{name}", "--data-dir", str(corpus[1]), "--steps", "2",
            "--checkpoint-every", "2", "--out", str(tmp_path)])
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["steps"] == 2 and np.isfinite(summary["final_val_loss"])
  assert summary["config"]["task"]["data"]["corpus"] == f"tfds:{name}"
