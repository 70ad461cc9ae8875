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


def _undocumented_defaults(parser) -> list[str]:
  """The options of ``parser`` whose help, as ``--help`` prints it, states no default."""
  formatter = parser._get_formatter()
  missing = []
  for action in parser._actions:
    if not action.option_strings or action.default == argparse.SUPPRESS:
      continue
    shown = formatter._expand_help(action) if action.help else ""
    if "default" not in shown.lower():
      missing.append(f"{action.option_strings[-1]}: {shown!r}")
  return missing


@pytest.mark.parametrize("name", sorted(cli.discover()))
def test_every_help_states_every_default(name):
  """In every command's ``--help`` each option states its default: the value, or for an option that is unset by
  default (``None``) what that means (the preset's value, none, detected)."""
  missing = _undocumented_defaults(_commands()[name])
  assert not missing, f"energyformer {name} --help: options that state no default: {missing}"


def test_top_level_help_states_every_default():
  assert not _undocumented_defaults(cli.parser())


def test_an_unset_option_without_its_meaning_is_reported():
  """The check catches an option whose default is ``None`` and whose help does not say what that means (the
  formatter adds no default for it), and passes it once the help says."""
  parser = argparse.ArgumentParser(formatter_class=cli.HelpFormatter)
  parser.add_argument("--steps", type=int, help="training steps")
  parser.add_argument("--rate", type=float, default=0.1, help="learning rate")
  assert _undocumented_defaults(parser) == ["--steps: 'training steps'"]
  parser._actions[-2].help = "training steps (default: the preset's)"
  assert not _undocumented_defaults(parser)
