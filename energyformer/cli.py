"""The ``energyformer`` command line."""
from __future__ import annotations

import argparse


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="energyformer", description=__doc__)
  commands = parser.add_subparsers(dest="command", required=True)
  demo = commands.add_parser("demo", help="build layers from several energies; print their outputs and energies")
  demo.add_argument("--out", default="runs/demo", help="directory for energies.jsonl and energy_traces.png")
  demo.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if args.command == "demo":
    from energyformer import demo as demo_lib
    demo_lib.run(args.out, args.seed)


if __name__ == "__main__":
  main()
