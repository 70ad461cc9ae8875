"""The command registry: every study module registers its own commands; a new study is one new module."""
import argparse

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
