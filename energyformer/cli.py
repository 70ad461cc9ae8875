"""The ``energyformer`` command line."""
from __future__ import annotations

import argparse


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="energyformer", description=__doc__)
  commands = parser.add_subparsers(dest="command", required=True)
  demo = commands.add_parser("demo", help="build layers from several energies; print their outputs and energies")
  demo.add_argument("--out", default="runs/demo", help="directory for energies.jsonl and energy_traces.png")
  demo.add_argument("--seed", type=int, default=0)
  lis = commands.add_parser("lis", help="train every attention variant on the LIS task over several seeds")
  lis.add_argument("--preset", default="default", help="default (CPU, minutes), tiny (seconds) or paper (GPU)")
  lis.add_argument("--variants", nargs="+", help="attention variants to train (default: all)")
  lis.add_argument("--seeds", type=int, help="models per variant")
  lis.add_argument("--steps", type=int, help="training steps per model")
  lis.add_argument("--out", default="runs/lis", help="directory for results.csv/json, metrics and plots")
  args = parser.parse_args(argv)
  if args.command == "demo":
    from energyformer import demo as demo_lib
    demo_lib.run(args.out, args.seed)
  elif args.command == "lis":
    import dataclasses
    from energyformer.studies import lis as lis_study
    if args.preset not in lis_study.PRESETS:
      parser.error(f"unknown preset {args.preset!r}; choose one of {sorted(lis_study.PRESETS)}")
    overrides = {k: v for k, v in {"seeds": args.seeds, "steps": args.steps,
                                   "variants": tuple(args.variants) if args.variants else None}.items() if v}
    lis_study.run(dataclasses.replace(lis_study.PRESETS[args.preset], **overrides), args.out)


if __name__ == "__main__":
  main()
