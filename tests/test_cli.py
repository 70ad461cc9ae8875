"""The command registry: every study module registers its own commands; a new study is one new module."""
import argparse
import json
import subprocess
import sys
import textwrap

import pytest

from energyformer import cli


def test_every_study_registers_its_commands():
  commands = cli.discover()
  assert {"demo", "pretrain", "lis", "sweep", "et-images", "et-graphs"} <= set(commands)
  assert commands["pretrain"].run.__module__ == "energyformer.studies.pretrain"
  assert commands["sweep"].run.__module__ == "energyformer.studies.sweep"


def test_a_registered_command_runs_with_its_options(monkeypatch):
  """A command registered with the decorator (as a new study module does) is parsed and run by ``main``."""
  seen = []

  def options(parser: argparse.ArgumentParser):
    parser.add_argument("--size", type=int, default=1)

  monkeypatch.setitem(cli._COMMANDS, "toy-study", cli.Command("toy-study", "a toy", None, options, seen.append))
  cli.main(["toy-study", "--size", "3"])
  assert seen[0].size == 3


def test_a_name_taken_twice_is_refused():
  with pytest.raises(ValueError, match="registered twice"):
    cli.command("pretrain", help="another", options=lambda parser: None)(lambda args: None)


PLUGIN = '''
"""A user's solver (its own hyperparameter name) and the variant that uses it, registered from outside."""
import jax.numpy as jnp
from energyformer import solvers
from energyformer.models import variants


@solvers.register("damped_momentum")
def damped_momentum(eta=1.0, damping=0.2):
  """m⁺ = (1 − damping) m − η g; x⁺ = x + m⁺."""
  def step(grad_fn, x, m, hparams):
    m = (1 - hparams["damping"]) * m - hparams["eta"] * grad_fn(x)
    return x + m, m
  return solvers.Solver("damped_momentum", jnp.zeros_like, step, {
      "eta": solvers.step_size(eta),
      "damping": solvers.HparamSpec(damping, low=0.0, high=1.0, fix="Use a damping in [0, 1].")})


variants.register(variants.Variant("damped", variants.softmax_energy, "damped_momentum", "relaxed",
                                   "softmax attention; a damped heavy ball"))
'''


def test_a_plugin_solver_and_variant_train_and_sweep_from_the_command_line(tmp_path):
  """``--plugin`` imports a user's file: its variant trains under ``lis`` and its solver's own hyperparameter is
  swept by ``sweep``, each member with the damping it was given (no library edit). Runs in a fresh process, so
  the registries of the other tests stay as they are."""
  plugin = tmp_path / "my_variants.py"
  plugin.write_text(PLUGIN)
  script = textwrap.dedent(f"""
      import json, sys
      from energyformer import cli
      common = ["--preset", "tiny", "--variants", "damped", "--steps", "2"]
      cli.main(["--plugin", {str(plugin)!r}, "lis", *common, "--seeds", "1", "--out", {str(tmp_path / "lis")!r}])
      cli.main(["--plugin", {str(plugin)!r}, "sweep", *common, "--grid", "damping=0.1,0.9",
                "--out", {str(tmp_path / "sweep")!r}])
  """)
  run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "damped" in json.dumps(json.loads((tmp_path / "lis" / "results.json").read_text()))
  members = json.loads((tmp_path / "sweep" / "results.json").read_text())["members"]
  assert sorted((m["variant"], m["damping"]) for m in members) == [("damped", 0.1), ("damped", 0.9)]
  assert members[0]["train_loss"] != members[1]["train_loss"]   # each member ran with its own damping


def test_a_missing_plugin_is_a_usage_error(tmp_path, capsys):
  with pytest.raises(SystemExit) as stop:
    cli.main(["--plugin", str(tmp_path / "absent.py"), "demo"])
  assert stop.value.code == 2
  assert "no such file" in capsys.readouterr().err


def test_a_plugin_module_that_does_not_exist_is_a_usage_error(capsys):
  with pytest.raises(SystemExit) as stop:
    cli.main(["--plugin", "no_such_plugin_module_here", "demo"])
  assert stop.value.code == 2
  assert "no module of that name" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["lis", "--seeds", "0", "--steps", "0"], "--seeds must be at least 1, got 0"),
    (["lis", "--steps", "0"], "--steps must be at least 1, got 0"),
    (["lis", "--variants", "foo"], "unknown attention variant(s) ['foo']"),
    (["pretrain", "--variant", "foo"], "unknown attention variant(s) ['foo']"),
    (["pretrain", "--extend"], "--extend continues a run"),
    (["et-graphs", "--steps", "0"], "--steps must be a positive integer"),
    (["et-images", "--preset", "huge"], "unknown preset 'huge'"),
])
def test_mistakes_on_every_command_are_usage_errors(argv, message, tmp_path, capsys):
  """The same for every command: ``error: <message>``, exit status 2, no traceback, nothing written (the sweep's
  own cases: tests/studies/test_sweep_command.py)."""
  with pytest.raises(SystemExit) as exit_info:
    cli.main([*argv, "--out", str(tmp_path / "out")])
  err = capsys.readouterr().err
  assert exit_info.value.code == 2 and f"error: {message}" in err and "Traceback" not in err, err
  assert not (tmp_path / "out").exists()


def test_a_fault_keeps_its_traceback_and_a_bad_setting_does_not(monkeypatch, capsys):
  """A ``ValueError`` while a command reads its settings (inside ``cli.user_settings``) is a usage error; the same
  error raised by the work itself is a fault and propagates with its traceback."""

  def run(args):
    with cli.user_settings():
      if args.size < 0:
        raise ValueError("size must be non-negative")
    raise ValueError("a fault in the work")

  monkeypatch.setitem(cli._COMMANDS, "toy-study", cli.Command(
      "toy-study", "a toy", None, lambda parser: parser.add_argument("--size", type=int), run))
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["toy-study", "--size", "-1"])
  assert exit_info.value.code == 2 and "error: size must be non-negative" in capsys.readouterr().err
  with pytest.raises(ValueError, match="a fault in the work"):
    cli.main(["toy-study", "--size", "1"])
