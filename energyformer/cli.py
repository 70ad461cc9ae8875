"""The ``energyformer`` command line."""
from __future__ import annotations

import argparse
import dataclasses

from energyformer.studies import et_commands
from energyformer.train import command as train_command


def _demo(parser, args) -> None:
  from energyformer import demo
  demo.run(args.out, args.seed)


def _lis_study(parser, args):
  from energyformer.studies import lis
  if args.preset not in lis.PRESETS:
    parser.error(f"unknown preset {args.preset!r}; choose one of {sorted(lis.PRESETS)}")
  overrides = {k: v for k, v in {"seeds": args.seeds, "steps": args.steps, "steps_per_call": args.steps_per_call,
                                 "variants": tuple(args.variants) if args.variants else None}.items() if v}
  return dataclasses.replace(lis.PRESETS[args.preset], **overrides)


def _population_mesh(parser, args):
  """The mesh ``--devices`` asks for (None for one device); on a CPU host the CPU is split into that many devices."""
  if args.devices < 1:
    parser.error(f"--devices must be at least 1, got {args.devices}")
  if args.devices == 1:
    return None
  from energyformer.train import mesh, sweep
  mesh.use_cpu_devices(args.devices)
  return sweep.population_mesh(args.devices)


def _lis(parser, args) -> None:
  from energyformer.studies import lis
  mesh = _population_mesh(parser, args)
  lis.run(_lis_study(parser, args), args.out, mesh=mesh)


def _value(text: str):
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return text


def _assignments(parser, items, option: str) -> dict[str, list[str]]:
  parsed = {}
  for item in items or ():
    name, _, values = item.partition("=")
    if not name or not values:
      parser.error(f"{option} expects NAME=VALUES (e.g. {option} learning_rate=1e-3,3e-3), got {item!r}")
    parsed[name] = values
  return parsed


def _sweep(parser, args) -> None:
  from energyformer.studies import lis
  from energyformer.train import sweep
  mesh = _population_mesh(parser, args)
  study = _lis_study(parser, args)
  if args.random:
    ranges = {name: tuple(_value(v) for v in spec.split(":"))
              for name, spec in _assignments(parser, args.range, "--range").items()}
    members = sweep.random_search(args.random, args.sample_seed, **ranges)
  else:
    members = sweep.grid(**{name: [_value(v) for v in values.split(",")]
                            for name, values in _assignments(parser, args.grid, "--grid").items()})
  members = sweep.cross(members, variant=args.variants or ["standard"], seed=list(range(args.seeds or 1)))
  members = [{**member, "data_seed": member["seed"]} for member in members]
  config = dataclasses.replace(study.sweep_config(), chunk_size=args.chunk_size, checkpoint_every=args.checkpoint_every)
  axis = None if mesh is None else "population"
  sweep.run(lis.LISTask(study), members, config, args.out, mesh=mesh, mesh_axis=axis, description="LIS sweep")


def _add_lis_options(command, variants_help: str) -> None:
  command.add_argument("--preset", default="default", help="default (CPU, minutes), tiny (seconds) or paper (GPU)")
  command.add_argument("--variants", nargs="+", help=variants_help)
  command.add_argument("--seeds", type=int, help="models per variant (seeds 0, 1, ...)")
  command.add_argument("--steps", type=int, help="training steps per model")
  command.add_argument("--steps-per-call", type=int,
                       help="training steps per call of the compiled program (fewer host round trips)")
  command.add_argument("--devices", type=int, default=1,
                       help="lay each population over this many devices; on a CPU host the CPU is split into as many "
                            "devices (e.g. one per core), which puts the members on every core")


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="energyformer", description=__doc__)
  commands = parser.add_subparsers(dest="command", required=True)
  demo = commands.add_parser("demo", help="build layers from several energies; print their outputs and energies")
  demo.add_argument("--out", default="runs/demo", help="directory for energies.jsonl and energy_traces.png")
  demo.add_argument("--seed", type=int, default=0)
  demo.set_defaults(handler=_demo)

  lis = commands.add_parser("lis", help="train every attention variant on the LIS task over several seeds")
  _add_lis_options(lis, "attention variants to train (default: all)")
  lis.add_argument("--out", default="runs/lis", help="directory for results.csv/json, metrics and plots")
  lis.set_defaults(handler=_lis)

  sweep = commands.add_parser("sweep", help="train a grid or random set of hyperparameters on LIS as one vmapped "
                                            "program per structure")
  _add_lis_options(sweep, "attention variants (structural: one program each; default: standard)")
  sweep.add_argument("--grid", action="append", metavar="NAME=V1,V2",
                     help="a grid axis, e.g. learning_rate=1e-3,3e-3 or beta=0,0.5,0.9 (repeatable)")
  sweep.add_argument("--random", type=int, metavar="N", help="draw N members from the --range options instead")
  sweep.add_argument("--range", action="append", metavar="NAME=LOW:HIGH[:log]",
                     help="a random-search range, e.g. learning_rate=1e-4:1e-2:log (repeatable)")
  sweep.add_argument("--sample-seed", type=int, default=0, help="seed of the random search")
  sweep.add_argument("--chunk-size", type=int, help="train at most this many members at once")
  sweep.add_argument("--checkpoint-every", type=int, help="save every N steps; rerunning resumes")
  sweep.add_argument("--out", default="runs/sweep", help="directory for members.csv, results.json, metrics, plot")
  sweep.set_defaults(handler=_sweep)

  et_commands.add_commands(commands)
  train_command.add_commands(commands)
  return parser


def main(argv=None) -> None:
  parser = _parser()
  args = parser.parse_args(argv)
  args.handler(parser, args)


if __name__ == "__main__":
  main()
