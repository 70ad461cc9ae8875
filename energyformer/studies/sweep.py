"""Hyperparameter sweeps on the LIS task: the ``energyformer sweep`` command and its report.

The members (a grid or a random search, crossed with the variants and the seeds) train with
``energyformer.train.population.train_population``: one vmapped program per structure, chunked, checkpointed,
resumable. Any optimiser hyperparameter (``energyformer.train.optim.HYPERPARAMETERS``), seed (``seed``,
``data_seed``) or decoder hyperparameter (``energyformer.studies.decoder.hyperparameters``) may be swept.
"""
from __future__ import annotations

import dataclasses
import pathlib

from tqdm import tqdm

from energyformer import cli
from energyformer.metrics import MetricsWriter
from energyformer.studies import decoder, lis
from energyformer.train import population, sweep_report
from energyformer.train.checkpoint import CheckpointConfig
from energyformer.train.task import SEEDS


def run(task, members: list[dict], config, out_dir, *, chunk_size: int | None = None,
        description: str = "sweep") -> list[dict]:
  """Trains the population with a progress bar, then prints the member table and the best setting (by its mean
  over the seeds, as the plot shows it) and writes
  ``members.csv``, ``results.json``, ``metrics.jsonl``, ``tensorboard/`` and ``<set>_<metric>.png`` to ``out_dir``.

  Bad members are refused before anything is written. Checkpoints go to ``out_dir/checkpoints`` when
  ``config.checkpoint.every`` is set; rerunning the same sweep into the same directory resumes from them.
  """
  population.check_population(task, members, config)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  total = population.total_steps(task, members, config, chunk_size)
  with MetricsWriter(out) as writer, tqdm(total=total, desc=description, unit="step") as bar:
    results = population.train_population(task, members, config, chunk_size=chunk_size,
                                          checkpoint_dir=out / "checkpoints", progress=bar, writer=writer)
  rows = sweep_report.member_rows(results)
  names = list(dict.fromkeys(k for m in members for k in m))
  validation = next(iter(results[0]["curves"]))
  key = f"{validation}_{task.metric_name}"
  print("\n" + sweep_report.format_table(rows, names + ["train_loss", f"{validation}_loss", key, "ms_per_step"]))
  axes = sweep_report.swept_axes(rows, names, exclude=SEEDS)
  best = sweep_report.best_setting(rows, axes, key, task.higher_is_better)
  setting = ", ".join(f"{name}={value}" for name, value in best["setting"].items()) or "the only setting"
  print(f"best setting by the mean over its {best['members']} member(s) ({key} = {best['mean']:.4g} ± "
        f"{best['std']:.2g}): {setting}")
  sweep_report.write(rows, results, out, best)
  sweep_report.plot(rows, axes, key, out / f"{key}.png", structural=task.structural)
  print(f"wrote {out / 'members.csv'}, {out / 'results.json'}, {out / 'metrics.jsonl'} and {out / (key + '.png')}")
  return rows


def _value(text: str):
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return text


def _assignments(items, option: str) -> dict[str, str]:
  parsed = {}
  for item in items or ():
    name, _, values = item.partition("=")
    if not name or not values:
      raise ValueError(f"{option} expects NAME=VALUES (e.g. {option} learning_rate=1e-3,3e-3), got {item!r}.")
    if name in parsed:
      raise ValueError(f"{option} {name}=... is given twice; list every value of an axis in one {option}.")
    parsed[name] = values
  return parsed


def members_from_args(args) -> list[dict]:
  """The grid (``--grid``) or random search (``--random``/``--range``), crossed with the variants and, unless the
  members set their own seeds, with ``--seeds`` seeds."""
  if args.random is not None and (args.grid or not args.range):
    raise ValueError("--random N draws N members from --range options: give at least one --range NAME=LOW:HIGH[:log] "
                     "(e.g. --range learning_rate=1e-4:1e-2:log) and no --grid.")
  if args.range and args.random is None:
    raise ValueError("--range needs --random N, the number of members to draw from the ranges.")
  if args.random is not None:
    ranges = {name: tuple(_value(v) for v in spec.split(":"))
              for name, spec in _assignments(args.range, "--range").items()}
    members = population.random_search(args.random, args.sample_seed, **ranges)
  else:
    members = population.grid(**{name: [_value(v) for v in values.split(",")]
                                 for name, values in _assignments(args.grid, "--grid").items()})
  swept = set(members[0])
  if args.variants and "variant" in swept:
    raise ValueError("the variants are given twice, by --variants and by --grid/--range variant=...; use one.")
  if args.seeds and swept & set(SEEDS):
    raise ValueError(f"--seeds and --grid/--range {'/'.join(sorted(swept & set(SEEDS)))}=... both set seeds; drop "
                     "--seeds to train the seeds of the grid, or drop them from the grid.")
  axes = {} if "variant" in swept else {"variant": args.variants or ["standard"]}
  if "seed" not in swept:
    axes["seed"] = list(range(args.seeds or 1))
  return population.cross(members, **axes)


def _options(command) -> None:
  lis.add_study_options(command, "attention variants (structural: one program each; default: standard)")
  command.add_argument("--grid", action="append", metavar="NAME=V1,V2",
                       help="a grid axis, e.g. learning_rate=1e-3,3e-3 or beta=0,0.5,0.9 (repeatable; default: "
                            "none, one member per variant and seed)")
  command.add_argument("--random", type=int, metavar="N",
                       help="draw N members from the --range options instead (default: none, the grid)")
  command.add_argument("--range", action="append", metavar="NAME=LOW:HIGH[:log]",
                       help="a random-search range, e.g. learning_rate=1e-4:1e-2:log (repeatable; default: none)")
  command.add_argument("--sample-seed", type=int, default=0, help="seed of the random search")
  command.add_argument("--chunk-size", type=int, help="train at most this many members at once (default: all of them)")
  command.add_argument("--checkpoint-every", type=int,
                       help="save every N steps; rerunning resumes (default: no checkpoints)")
  command.add_argument("--out", default="runs/sweep", help="directory for members.csv, results.json, metrics, plot")


@cli.command("sweep", help="train a grid or random set of hyperparameters on LIS as one vmapped program per "
                           "structure", options=_options)
def _command(args) -> None:
  with cli.user_settings():
    study = lis.study_from_args(args)
    members = members_from_args(args)
    config = study.trainer_config(args.devices)
    config = dataclasses.replace(config, checkpoint=CheckpointConfig(every=args.checkpoint_every, keep=2))
    population.check_population(lis.LISTask(study), members, config)
    for member in members:
      decoder.check_settings(member, "standard")
  lis.split_cpu(args.devices)
  run(lis.LISTask(study), members, config, args.out, chunk_size=args.chunk_size, description="LIS sweep")
