"""``energyformer --version`` and every command's ``--help`` showing its options' defaults."""
import argparse
from importlib import metadata

import pytest

from energyformer import __version__, cli


def test_version_is_the_installed_distribution(capsys):
  """``--version`` prints the distribution's version from its metadata (the package's own where not installed)."""
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["--version"])
  assert exit_info.value.code == 0
  try:
    expected = metadata.version("energyformer")
  except metadata.PackageNotFoundError:
    expected = __version__
  assert capsys.readouterr().out.strip() == f"energyformer {expected}"


def _commands():
  root = cli.parser()
  subparsers = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
  return subparsers.choices


@pytest.mark.parametrize("name", sorted(cli.discover()))
def test_every_help_shows_the_defaults(name):
  """In every command's ``--help``, each option with a default (other than ``None``) shows it."""
  sub = _commands()[name]
  formatter = sub._get_formatter()
  for action in sub._actions:
    if not action.option_strings or action.default in (None, argparse.SUPPRESS) or action.dest == "help":
      continue
    shown = formatter._expand_help(action) if action.help else ""
    assert "default" in shown.lower(), f"{name} --help: {action.option_strings[-1]} shows no default: {shown!r}"
