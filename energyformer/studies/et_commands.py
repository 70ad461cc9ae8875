"""The ``et-images`` and ``et-graphs`` commands: their options, and the study each one runs.

Heavy modules are imported only when a command runs, so ``energyformer --help`` stays fast.
"""
from __future__ import annotations

import dataclasses


def _preset(parser, presets: dict, name: str):
  if name not in presets:
    parser.error(f"unknown preset {name!r}; choose one of {sorted(presets)}")
  return presets[name]


def _with_steps(study, steps):
  if steps is None:
    return study
  optimizer = study.recipe.optimizer
  optimizer = dataclasses.replace(optimizer, warmup_steps=min(optimizer.warmup_steps, steps // 10))
  return dataclasses.replace(study, recipe=dataclasses.replace(study.recipe, steps=steps, optimizer=optimizer))


def images_study(parser, args):
  """The image study of ``args``: a preset with the given options replaced."""
  from energyformer.studies import et_images
  study = _with_steps(_preset(parser, et_images.PRESETS, args.preset), args.steps)
  overrides = {"dataset": args.dataset, "data_dir": args.data_dir, "masking": args.masking, "seed": args.seed}
  study = dataclasses.replace(study, **{k: v for k, v in overrides.items() if v is not None})
  if args.no_baseline:
    study = dataclasses.replace(study, baseline=False)
  if args.self_exclusion or args.temperature is not None:
    et = dataclasses.replace(study.et, self_exclusion=args.self_exclusion or study.et.self_exclusion,
                             temperature=study.et.temperature if args.temperature is None else args.temperature)
    study = dataclasses.replace(study, et=et)
  return study


def graphs_study(parser, args):
  """The graph study of ``args``: a preset, on a ``.mat`` file or edge list when given."""
  from energyformer.studies import et_graphs
  study = _with_steps(_preset(parser, et_graphs.PRESETS, args.preset), args.steps)
  if args.mat and args.edge_list:
    parser.error("give either --mat or --edge-list, not both")
  if args.mat:
    study = dataclasses.replace(study, source="mat", paths=(args.mat,))
  elif args.edge_list:
    study = dataclasses.replace(study, source="edge_list", paths=tuple(args.edge_list))
  return study if args.seed is None else dataclasses.replace(study, seed=args.seed)


def _run_images(parser, args) -> None:
  from energyformer.studies import et_images
  et_images.run(images_study(parser, args), args.out)


def _run_graphs(parser, args) -> None:
  from energyformer.studies import et_graphs
  et_graphs.run(graphs_study(parser, args), args.out)


def add_commands(commands) -> None:
  """Registers ``et-images`` and ``et-graphs`` on an argparse subparsers object."""
  images = commands.add_parser("et-images", help="Energy Transformer masked image completion vs a mean-patch "
                                                 "baseline and a standard Transformer (digits on the CPU by default)")
  images.add_argument("--preset", default="default", help="default (digits, CPU minutes), tiny (seconds) or paper "
                                                          "(ImageNet recipe, accelerator)")
  images.add_argument("--dataset", help="digits, folder (images under --data-dir) or a tfds name (cifar10, "
                                        "imagenet2012) prepared under --data-dir")
  images.add_argument("--data-dir", help="tfds data directory, or the image folder for --dataset folder")
  images.add_argument("--masking", help="paper (100/196 scored, 90%% of those replaced), mask25 or mask75")
  images.add_argument("--steps", type=int, help="training steps per model")
  images.add_argument("--seed", type=int)
  images.add_argument("--self-exclusion", action="store_true", help="exclude each token from its own attention")
  images.add_argument("--temperature", type=float, help="Langevin noise temperature of the ET dynamics (0: none)")
  images.add_argument("--no-baseline", action="store_true", help="train the ET only")
  images.add_argument("--out", default="runs/et_images", help="directory for results, metrics and PNGs")
  images.set_defaults(handler=_run_images)

  graphs = commands.add_parser("et-graphs", help="Energy Transformer graph anomaly detection (macro-F1, AUC) on a "
                                                 "generated graph, a .mat benchmark file or an edge list")
  graphs.add_argument("--preset", default="default", help="default (generated graph, CPU) or tiny")
  graphs.add_argument("--mat", help="a benchmark .mat file (e.g. YelpChi.mat, Amazon.mat)")
  graphs.add_argument("--edge-list", nargs=3, metavar=("EDGES", "FEATURES", "LABELS"),
                      help="edge list, feature table and label list files")
  graphs.add_argument("--steps", type=int, help="training steps")
  graphs.add_argument("--seed", type=int)
  graphs.add_argument("--out", default="runs/et_graphs", help="directory for results and metrics")
  graphs.set_defaults(handler=_run_graphs)
