"""The ``energyformer`` command line: every module of ``energyformer.studies`` registers its own subcommands.

A study adds a command with the ``command`` decorator, in its own module; ``main`` imports every module of the
``energyformer.studies`` package, so a new study is one new file there::

    @cli.command("my-study", help="...", options=add_options)
    def run_my_study(args): ...

Bad settings end with the message and exit status 2, a run stopped by a non-finite loss with exit status 1, a
study stopped by a signal (after saving) with exit status 0; none prints a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import pkgutil
import sys
from typing import Callable


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


def _demo_options(parser) -> None:
  parser.add_argument("--out", default="runs/demo", help="directory for energies.jsonl and energy_traces.png")
  parser.add_argument("--seed", type=int, default=0)


@command("demo", help="build layers from several energies; print their outputs and energies", options=_demo_options)
def _demo(args) -> None:
  from energyformer import demo
  demo.run(args.out, args.seed)


def parser() -> argparse.ArgumentParser:
  """The parser of every registered command."""
  root = argparse.ArgumentParser(prog="energyformer", description="Transformer layers as optimisation steps on "
                                 "energies of the token states: studies, pretraining and sweeps.")
  commands = root.add_subparsers(dest="command", required=True)
  for spec in sorted(discover().values(), key=lambda c: c.name):
    sub = commands.add_parser(spec.name, help=spec.help, description=spec.description or spec.help)
    spec.options(sub)
    sub.set_defaults(run=spec.run, parser=sub)
  return root


def main(argv=None) -> None:
  """Runs the command ``argv`` names (default: the process's arguments)."""
  from energyformer.train.trainer import NonFiniteLossError, RunStopped
  args = parser().parse_args(argv)
  try:
    args.run(args)
  except (ValueError, FileNotFoundError) as error:
    args.parser.error(str(error))
  except NonFiniteLossError as error:
    print(f"energyformer {args.command}: stopped: {error}", file=sys.stderr)
    raise SystemExit(1) from None
  except RunStopped as error:
    print(f"energyformer {args.command}: {error}", file=sys.stderr)


if __name__ == "__main__":
  from energyformer import cli  # the registry the studies fill is that module's, not this __main__'s
  cli.main()
