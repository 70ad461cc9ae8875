"""The ``energyformer`` command line: every module of ``energyformer.studies`` registers its own subcommands.

A study adds a command with the ``command`` decorator, in its own module; ``main`` imports every module of the
``energyformer.studies`` package, so a new study is one new file there::

    @cli.command("my-study", help="...", options=add_options)
    def run_my_study(args): ...

Bad settings end with the message and exit status 2, a run stopped by a non-finite loss with exit status 1, a
study stopped by a signal (after saving) with exit status 0; none prints a traceback. A setting is bad when its
check raises ``energyformer.checks.UsageError`` (or ``FileNotFoundError``), or any ``ValueError`` while a command
reads its settings inside ``with cli.user_settings():``; every other exception is a fault and shows its traceback.

``energyformer --plugin my_variants.py lis --variants mine`` first imports the user's module or file (repeatable),
so the energies, solvers, variants and commands it registers are in the registries the commands read.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.util
import os
import pathlib
import pkgutil
import sys
from typing import Callable

from energyformer.checks import UsageError


@dataclasses.dataclass(frozen=True)
class Command:
  """A subcommand: its name, help line, description, the function adding its options and the one running it."""

  name: str
  help: str
  description: str | None
  options: Callable[[argparse.ArgumentParser], None]
  run: Callable[[argparse.Namespace], None]


_COMMANDS: dict[str, Command] = {}


def command(name: str, *, help: str, options: Callable[[argparse.ArgumentParser], None],
            description: str | None = None):
  """A decorator registering ``run(args)`` as the subcommand ``name``, whose options ``options(parser)`` adds."""

  def register(run):
    if name in _COMMANDS and _COMMANDS[name].run.__qualname__ != run.__qualname__:
      raise ValueError(f"the command {name!r} is registered twice; give the new command another name.")
    _COMMANDS[name] = Command(name, help, description, options, run)
    return run

  return register


def discover() -> dict[str, Command]:
  """Imports every module of ``energyformer.studies`` (each registers its commands); returns the commands."""
  from energyformer import studies
  for module in pkgutil.iter_modules(studies.__path__):
    importlib.import_module(f"energyformer.studies.{module.name}")
  return _COMMANDS


def load_plugin(plugin: str) -> None:
  """Imports ``plugin``: a Python file (``path/to/file.py``) or a module name importable from the working
  directory. Whatever it registers (solvers, variants, commands) is then available by name."""
  path = pathlib.Path(plugin).resolve()
  if path.suffix == ".py":
    if not path.is_file():
      raise FileNotFoundError(f"--plugin {plugin}: no such file; give the path of a Python file or a module name.")
    name = f"energyformer_plugin_{path.stem}"            # never shadows a module of the same base name
    if getattr(sys.modules.get(name), "__file__", None) == str(path):
      return
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return
  if os.getcwd() not in sys.path:
    sys.path.insert(0, os.getcwd())
  if importlib.util.find_spec(plugin) is None:
    raise ModuleNotFoundError(f"--plugin {plugin}: no module of that name is importable from {os.getcwd()}; "
                              "give a module name or the path of a .py file.")
  importlib.import_module(plugin)


@contextlib.contextmanager
def user_settings():
  """Within: a ``ValueError`` is a mistake in the command's settings, raised again as a ``UsageError`` (reported as
  a usage error). Wrap the reading and checking of a command's options in it, not the work itself."""
  try:
    yield
  except UsageError:
    raise
  except ValueError as error:
    raise UsageError(str(error)) from error


def _plugins(argv) -> list[str]:
  """The ``--plugin`` values of ``argv``, read before the parser is built (they add to what it offers)."""
  pre = argparse.ArgumentParser(add_help=False)
  pre.add_argument("--plugin", action="append", default=[])
  return pre.parse_known_args(argv)[0].plugin


def _demo_options(parser) -> None:
  parser.add_argument("--out", default="runs/demo", help="directory for energies.jsonl and energy_traces.png")
  parser.add_argument("--seed", type=int, default=0)


@command("demo", help="build layers from several energies; print their outputs and energies", options=_demo_options)
def _demo(args) -> None:
  from energyformer import demo
  demo.run(args.out, args.seed)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
  """Every option's help ends with its default, unless the help already states one or the default is ``None``
  (what an unset option means — the preset's value, none, detected — is for its help to say, as
  ``tests/test_cli_help.py`` checks)."""

  def _get_help_string(self, action):
    text = action.help or ""
    if action.default is None or "default" in text.lower():
      return text
    return super()._get_help_string(action)


def _show_defaults(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
  """Gives options that have no help line one with their default (argparse lists no default without help)."""
  for action in parser._actions:
    if action.help is None and action.option_strings and action.default not in (None, argparse.SUPPRESS):
      action.help = "default: %(default)s"
  return parser


def version() -> str:
  """The installed distribution's version (``importlib.metadata``), else the package's own ``__version__``."""
  from importlib import metadata
  try:
    return metadata.version("energyformer")
  except metadata.PackageNotFoundError:
    from energyformer import __version__
    return __version__


def parser() -> argparse.ArgumentParser:
  """The parser of every registered command; every ``--help`` shows the options' defaults."""
  root = argparse.ArgumentParser(prog="energyformer", description="Transformer layers as optimisation steps on "
                                 "energies of the token states: studies, pretraining and sweeps.",
                                 formatter_class=HelpFormatter)
  root.add_argument("--version", action="version", version=f"%(prog)s {version()}")
  root.add_argument("--plugin", action="append", metavar="FILE_OR_MODULE",
                    help="import a Python file or module first (its registered solvers, variants and commands "
                         "become available); repeatable (default: none)")
  commands = root.add_subparsers(dest="command", required=True)
  for spec in sorted(discover().values(), key=lambda c: c.name):
    sub = commands.add_parser(spec.name, help=spec.help, description=spec.description or spec.help,
                              formatter_class=HelpFormatter)
    spec.options(sub)
    _show_defaults(sub)
    sub.set_defaults(run=spec.run, parser=sub)
  return root


def main(argv=None) -> None:
  """Runs the command ``argv`` names (default: the process's arguments)."""
  from energyformer.train.trainer import NonFiniteLossError, RunStopped
  argv = sys.argv[1:] if argv is None else list(argv)
  for plugin in _plugins(argv):
    try:
      load_plugin(plugin)
    except (FileNotFoundError, ModuleNotFoundError) as error:
      parser().error(str(error))
  args = parser().parse_args(argv)
  try:
    args.run(args)
  except (UsageError, FileNotFoundError) as error:
    args.parser.error(str(error))
  except NonFiniteLossError as error:
    print(f"energyformer {args.command}: stopped: {error}", file=sys.stderr)
    raise SystemExit(1) from None
  except RunStopped as error:
    print(f"energyformer {args.command}: {error}", file=sys.stderr)


if __name__ == "__main__":
  from energyformer import cli  # the registry the studies fill is that module's, not this __main__'s
  cli.main()
