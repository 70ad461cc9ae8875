"""Hyperparameter studies: a whole population of training runs as one ``jax.vmap``-ed program.

A *member* is a dict of hyperparameters. Its keys are of four kinds:

* optimiser — ``learning_rate``, ``weight_decay``, ``warmup_steps``: arrays inside the vmapped training step
  (AdamW with gradient clipping and a linear-warmup cosine schedule, ``warmup_cosine``);
* solver and energy — ``eta``, ``beta``, ``temperature``: the task's model stores them in its variables, so a
  stacked population of models carries one value per member;
* seeds — ``seed`` (initialisation) and ``data_seed`` (the order of the training data);
* structural — everything else the task's model takes (``variant``, ``depth``, ...). These change the compiled
  program, so members are grouped by them automatically and each group gets its own program.

A group trains in chunks of at most ``chunk_size`` members (for populations that do not fit in memory); the
members of a chunk share one compiled program, ``jax.vmap(train_step)`` scanned over ``steps_per_call`` batches,
optionally with the population axis laid over a mesh axis (``population_mesh``; on a CPU host with
``mesh.use_cpu_devices`` this puts the members on every core). With ``checkpoint_every`` a chunk saves its
parameters, optimiser state, data iterators and curves with orbax, and a rerun of the same sweep resumes every
chunk from its latest checkpoint.

A task (for instance ``energyformer.studies.lis.LISTask``) provides ``model(member) -> nnx.Module``,
``batches(data_seed, batch_size)`` (a grain dataset of dicts of arrays), ``evaluation_sets()`` (name → one batch;
the first is the validation set), ``metrics(model, batch) -> (loss, metric)``, ``structural`` (the names of its
structural hyperparameters), ``metric_name`` and ``higher_is_better``.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from tqdm import tqdm

from energyformer.checks import check_positive_int
from energyformer.metrics import MetricsWriter
from energyformer.train import sweep_report

OPTIMIZER = ("learning_rate", "weight_decay", "warmup_steps")
SOLVER = ("eta", "beta", "temperature")
SEEDS = ("seed", "data_seed")


@dataclasses.dataclass(frozen=True)
class SweepConfig:
  """The budget every member shares and the defaults of the hyperparameters a member does not set.

  ``steps_per_call``: training steps per call of the compiled program (a ``lax.scan`` over that many batches),
  which divides the host's per-step work — batches, transfers, dispatch — by it; calls stop short at every
  evaluation and checkpoint, so results do not depend on it.
  """

  steps: int = 400
  batch_size: int = 32
  eval_every: int = 25
  learning_rate: float = 3e-3
  weight_decay: float = 0.01
  warmup_steps: int = 40
  clip_norm: float = 1.0
  eval_batch_size: int = 1024
  chunk_size: int | None = None
  checkpoint_every: int | None = None
  steps_per_call: int = 1

  def __post_init__(self):
    for name in ("steps", "batch_size", "eval_every", "eval_batch_size", "steps_per_call"):
      check_positive_int(name, getattr(self, name))
    for name in ("chunk_size", "checkpoint_every"):
      if getattr(self, name) is not None:
        check_positive_int(name, getattr(self, name))

  def optimizer_defaults(self) -> dict:
    return {name: getattr(self, name) for name in OPTIMIZER}


def grid(**axes) -> list[dict]:
  """Every combination of the given values: ``grid(learning_rate=[1e-3, 3e-3], beta=[0, .5])`` → 4 members."""
  for name, values in axes.items():
    if not isinstance(values, (list, tuple)) or not values:
      raise ValueError(f"grid axis {name!r} needs a non-empty list of values, got {values!r}.")
  return [dict(zip(axes, combination)) for combination in itertools.product(*axes.values())]


def random_search(num_members: int, seed: int = 0, **ranges) -> list[dict]:
  """``num_members`` members drawn uniformly from ``name=(low, high)`` ranges, or log-uniformly from
  ``name=(low, high, "log")``."""
  check_positive_int("num_members", num_members)
  rng = np.random.default_rng(seed)
  members = [{} for _ in range(num_members)]
  for name, spec in ranges.items():
    low, high, *scale = spec
    if not low < high or scale not in ([], ["log"]) or (scale and low <= 0):
      raise ValueError(f"range {name!r} must be (low, high) or (low, high, 'log') with low < high (and low > 0 "
                       f"for 'log'), got {spec!r}.")
    draw = (np.exp(rng.uniform(np.log(low), np.log(high), num_members)) if scale
            else rng.uniform(low, high, num_members))
    for member, value in zip(members, draw):
      member[name] = float(value)
  return members


def cross(members: list[dict], **axes) -> list[dict]:
  """Every member combined with every point of ``grid(**axes)``."""
  return [{**member, **point} for member in members for point in grid(**axes)]


def member_name(member: dict) -> str:
  """A stable, readable id: ``beta=0.5,learning_rate=0.003,seed=0``."""
  return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(member.items()))


def group_members(members: list[dict], structural) -> dict[tuple, list[int]]:
  """Indices of the members that share their structural hyperparameters (one compiled program per group)."""
  groups: dict[tuple, list[int]] = {}
  for index, member in enumerate(members):
    key = tuple(sorted((k, v) for k, v in member.items() if k in structural))
    groups.setdefault(key, []).append(index)
  return groups


def check_members(members: list[dict], structural) -> None:
  """Refuses unknown hyperparameter names, naming the ones that can be swept."""
  known = set(OPTIMIZER) | set(SOLVER) | set(SEEDS) | set(structural)
  for member in members:
    unknown = set(member) - known
    if unknown:
      raise ValueError(f"cannot sweep {sorted(unknown)}: vmapped hyperparameters are {OPTIMIZER + SOLVER + SEEDS}, "
                       f"structural ones (grouped into separate programs) are {tuple(structural)}.")


def warmup_cosine(count, peak, warmup, total):
  """``η(t) = peak·t/w`` for ``t < w``, then ``peak·½(1 + cos(π·min(t − w, T − w)/(T − w)))``.

  The same schedule as ``optax.warmup_cosine_decay_schedule(0, peak, w, T)``, written with arrays so that
  ``peak`` and ``w`` can differ across a vmapped population.
  """
  count = jnp.asarray(count, jnp.float32)
  decay_steps = jnp.maximum(total - warmup, 1.0)
  progress = jnp.minimum(count - warmup, decay_steps) / decay_steps
  cosine = 0.5 * peak * (1.0 + jnp.cos(jnp.pi * progress))
  return jnp.where(count < warmup, peak * count / jnp.maximum(warmup, 1.0), cosine)


def optimizer(hparams, total_steps: int, clip_norm: float) -> optax.GradientTransformation:
  """Clip to ``clip_norm``, then AdamW at ``warmup_cosine(t, lr, warmup, total)`` with decoupled weight decay."""
  schedule = lambda count: warmup_cosine(count, hparams["learning_rate"], hparams["warmup_steps"], total_steps)
  return optax.chain(optax.clip_by_global_norm(clip_norm),
                     optax.adamw(schedule, weight_decay=hparams["weight_decay"]))


def _stack(trees):
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _population_arrays(members: list[dict], defaults: dict) -> dict:
  return {name: jnp.asarray([float(m.get(name, defaults[name])) for m in members], jnp.float32) for name in defaults}


@dataclasses.dataclass
class _Chunk:
  """One chunk's training state: stacked parameters, other variables, optimiser states, optimiser
  hyperparameters (each with a leading population axis) and one data iterator per member."""

  graphdef: object
  params: object
  rest: object
  opt_state: object
  hparams: dict
  iterators: list


def _init_chunk(task, members, config: SweepConfig, placement) -> _Chunk:
  models = [task.model(member) for member in members]
  graphdef = nnx.graphdef(models[0])
  params, rest = (_stack(parts) for parts in zip(*(nnx.split(m, nnx.Param, ...)[1:] for m in models)))
  hparams = _population_arrays(members, config.optimizer_defaults())
  template = optimizer(jax.tree.map(lambda v: v[0], hparams), config.steps, config.clip_norm)
  opt_state = jax.vmap(template.init)(params)
  iterators = [iter(task.batches(int(m.get("data_seed", 0)), config.batch_size)) for m in members]
  return _Chunk(graphdef, *placement((params, rest, opt_state, hparams)), iterators)


_PROGRAMS: dict = {}


def _programs(task, structure: tuple, graphdef, total_steps: int, clip_norm: float):
  """The vmapped, jitted train step and evaluation of one structure, cached by ``(task, structure, budget)`` so
  that chunks and reruns reuse the compiled programs (the structural hyperparameters fix the model's graph)."""
  key = (task, structure, total_steps, clip_norm)
  if key not in _PROGRAMS:
    _PROGRAMS[key] = _build_programs(task, graphdef, total_steps, clip_norm)
  return _PROGRAMS[key]


def _build_programs(task, graphdef, total_steps: int, clip_norm: float):

  def metrics(params, rest, batch):
    return task.metrics(nnx.merge(graphdef, params, rest), batch)

  def train_step(params, rest, opt_state, batch, hparams):
    (loss, _), grads = jax.value_and_grad(metrics, has_aux=True)(params, rest, batch)
    updates, opt_state = optimizer(hparams, total_steps, clip_norm).update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  population_step = jax.vmap(train_step)

  def train_steps(params, rest, opt_state, batches, hparams):
    """``len(batches)`` population steps (batches: (steps, population, ...)); the losses (steps, population)."""
    def body(carry, batch):
      params, opt_state = carry
      params, opt_state, loss = population_step(params, rest, opt_state, batch, hparams)
      return (params, opt_state), loss

    (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), batches)
    return params, opt_state, losses

  steps = jax.jit(train_steps, donate_argnums=(0, 2))
  evaluate = jax.jit(jax.vmap(metrics, in_axes=(0, 0, None)))
  return steps, evaluate


def population_mesh(num_devices: int | None = None, axis: str = "population") -> jax.sharding.Mesh:
  """A one-axis mesh over the first ``num_devices`` devices (all of them by default) to lay populations over."""
  devices = jax.devices()
  count = len(devices) if num_devices is None else num_devices
  check_positive_int("num_devices", count)
  if count > len(devices):
    raise ValueError(f"a population mesh of {count} devices needs {count} devices, but JAX sees {len(devices)}; on a "
                     f"CPU host call energyformer.train.mesh.use_cpu_devices({count}) before any JAX computation.")
  return jax.sharding.Mesh(np.asarray(devices[:count]), (axis,))


def padded(members: list[dict], multiple: int) -> list[dict]:
  """``members`` followed by copies of the last one, up to a multiple of ``multiple`` (a mesh axis' size)."""
  return members + [members[-1]] * (-len(members) % multiple)


def _placement(mesh, axis: str | None, leading: int = 0):
  """Puts a pytree whose axis ``leading`` is the population onto ``mesh`` split along ``axis`` (identity without a
  mesh)."""
  if mesh is None:
    return lambda tree: tree
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*[None] * leading, axis))
  return lambda tree: jax.device_put(tree, sharding)


def _next_batches(iterators, batch_keys, steps: int) -> dict:
  """The next ``steps`` batches of every member, stacked as (steps, population, ...)."""
  batches = [[next(it) for it in iterators] for _ in range(steps)]
  return {k: np.stack([np.stack([b[k] for b in step]) for step in batches]) for k in batch_keys}


def _checkpoint_manager(directory, config: SweepConfig):
  options = ocp.CheckpointManagerOptions(max_to_keep=2, save_interval_steps=config.checkpoint_every,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options)


def _run_identity(members: list[dict], config: SweepConfig) -> dict:
  """What a checkpoint must match to be resumed: the chunk's members and the training budget."""
  return json.loads(json.dumps({"members": members, "steps": config.steps, "batch_size": config.batch_size}))


def _save(manager, step, chunk: _Chunk, log: dict, run: dict, count: int):
  """Saves the first ``count`` members (the chunk without its padding), so that a rerun may pad differently."""
  data = [json.loads(json.dumps(it.get_state(), default=lambda v: np.asarray(v).tolist()))
          for it in chunk.iterators[:count]]
  params, opt_state = (jax.tree.map(lambda x: np.asarray(x[:count]), tree) for tree in (chunk.params, chunk.opt_state))
  manager.save(step, args=ocp.args.Composite(
      params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
      log=ocp.args.JsonSave({**log, "data": data, "run": run})))


def _restore(manager, chunk: _Chunk, members: list[dict], config: SweepConfig, placement) -> tuple[int, dict]:
  """Restores the latest checkpoint of ``members`` into ``chunk``, padding it again as the chunk is padded (copies
  of the last member: its state and its data iterator's)."""
  count, size = len(members), len(chunk.iterators)
  template = lambda tree: jax.tree.map(lambda x: np.zeros((count,) + x.shape[1:], x.dtype), tree)
  step = manager.latest_step()
  restored = manager.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(template(chunk.params)),
      opt_state=ocp.args.StandardRestore(template(chunk.opt_state)), log=ocp.args.JsonRestore()))
  log = dict(restored["log"])
  saved_run = log.pop("run")
  if saved_run != _run_identity(members, config):
    raise ValueError(f"{manager.directory} holds checkpoints of a different sweep (members or budget differ: saved "
                     f"{saved_run}); write this sweep to a new output directory or delete that one.")
  pad = lambda x: np.concatenate([x, np.repeat(np.asarray(x)[-1:], size - count, axis=0)])
  chunk.params, chunk.opt_state = placement(jax.tree.map(pad, (restored["params"], restored["opt_state"])))
  data = log.pop("data")
  for iterator, state in zip(chunk.iterators, data + [data[-1]] * (size - count)):
    iterator.set_state(state)
  return step, log


def train_chunk(task, members: list[dict], config: SweepConfig, *, checkpoint_dir=None, mesh=None,
                mesh_axis: str | None = None, on_step=None, writer=None) -> list[dict]:
  """Trains ``members`` (one structural group) together; returns one result dict per member.

  At every evaluation each member's train loss and evaluation losses and metrics go to ``writer`` (a
  ``MetricsWriter``), under the member's name. Over a mesh, a chunk whose size the mesh axis does not divide is
  ``padded`` with copies of its last member, trained alongside and left out of the results and the checkpoints (so
  a rerun over another number of devices resumes them).

  A result holds the member, its ``train_loss`` at every step, ``eval_steps`` (every ``eval_every`` steps and the
  last) with the loss and metric on each of the task's evaluation sets there (``curves[set]["loss" | "metric"]``),
  and ``seconds_per_step`` (median over the chunk's calls after the first of the time from one call's end to the
  next's over its number of steps, evaluations and checkpoints excluded: the throughput of the training loop).
  """
  placement, placement_of_steps = _placement(mesh, mesh_axis), _placement(mesh, mesh_axis, leading=1)
  real, members = members, padded(members, 1 if mesh is None else mesh.shape[mesh_axis])
  chunk = _init_chunk(task, members, config, placement)
  structure = next(iter(group_members(members, task.structural)))
  steps_fn, evaluate = _programs(task, structure, chunk.graphdef, config.steps, config.clip_norm)
  eval_sets = task.evaluation_sets()
  batch_keys = tuple(next(iter(eval_sets.values())))
  manager = _checkpoint_manager(checkpoint_dir, config) if checkpoint_dir and config.checkpoint_every else None
  start, log = 0, {"train_loss": [], "evals": [], "call_seconds": []}
  if manager is not None and manager.latest_step() is not None:
    start, log = _restore(manager, chunk, real, config, placement)
  clock = [time.perf_counter()]

  def finish(first, losses):
    """Logs steps ``first, first + 1, …`` (one call) once their losses are ready; evaluates, reports and saves
    where the last of them asks for it."""
    losses = np.asarray(losses)
    log["call_seconds"].append([len(losses), time.perf_counter() - clock[0]])
    last = first + len(losses) - 1
    for index, loss in enumerate(losses[:, :len(real)], first):
      log["train_loss"].append(loss.tolist())
      evaluation = None
      if index == last and _evaluates(index, config):
        evaluation = {name: _first(len(real), evaluate_in_slices(evaluate, chunk.params, chunk.rest, batch_set,
                                                                 config.eval_batch_size))
                      for name, batch_set in eval_sets.items()}
        log["evals"].append([index, evaluation])
        if writer is not None:
          _write(writer, index, real, loss, evaluation, task.metric_name)
      if on_step is not None:
        on_step(loss, evaluation)
    if manager is not None and last % config.checkpoint_every == 0:
      _save(manager, last, chunk, log, _run_identity(real, config), len(real))
    clock[0] = time.perf_counter()

  # Call c + 1 is dispatched before call c's losses are read, so the host's work (data, logging) overlaps the
  # device's; a call that ends where the task evaluates or saves is finished before the next one starts.
  pending, done = None, start
  while done < config.steps:
    length = _call_length(done, config, manager is not None)
    batches = placement_of_steps(_next_batches(chunk.iterators, batch_keys, length))
    chunk.params, chunk.opt_state, losses = steps_fn(chunk.params, chunk.rest, chunk.opt_state, batches,
                                                     chunk.hparams)
    if pending is not None:
      finish(*pending)
    pending, done = (done + 1, losses), done + length
    if _needs_state(done, config, manager is not None):
      finish(*pending)
      pending = None
  if manager is not None:
    manager.wait_until_finished()
    manager.close()
  return _member_results(real, log)


def _first(count: int, evaluation: dict) -> dict:
  """An evaluation's losses and metrics of the first ``count`` members (the chunk without its padding)."""
  return {kind: values[:count] for kind, values in evaluation.items()}


def _evaluates(index: int, config: SweepConfig) -> bool:
  """Whether step ``index`` evaluates: every ``eval_every`` steps and the last."""
  return index % config.eval_every == 0 or index == config.steps


def _needs_state(index: int, config: SweepConfig, checkpointing: bool) -> bool:
  """Whether step ``index`` evaluates or saves, and so must finish before step ``index + 1`` starts."""
  return _evaluates(index, config) or (checkpointing and index % config.checkpoint_every == 0)


def _call_length(done: int, config: SweepConfig, checkpointing: bool) -> int:
  """Steps the next call trains after ``done``: ``steps_per_call``, cut short at the next step that evaluates or
  saves (``_needs_state``)."""
  periods = [config.eval_every] + ([config.checkpoint_every] if checkpointing else [])
  next_stop = min([config.steps] + [(done // period + 1) * period for period in periods])
  return min(config.steps_per_call, next_stop - done)


def evaluate_in_slices(evaluate, params, rest, batch: dict, slice_size: int) -> dict:
  """Per-member loss and metric on ``batch``, evaluated ``slice_size`` examples at a time and averaged with
  weights proportional to the slices' sizes (exact for per-example means such as accuracy)."""
  total = len(next(iter(batch.values())))
  sums = np.zeros((2, 1))
  for start in range(0, total, slice_size):
    piece = {k: v[start:start + slice_size] for k, v in batch.items()}
    weight = len(next(iter(piece.values()))) / total
    sums = sums + weight * np.stack([np.asarray(v) for v in evaluate(params, rest, piece)])
  return {"loss": sums[0].tolist(), "metric": sums[1].tolist()}


def _write(writer, step, members, loss, evaluation, metric_name):
  for i, member in enumerate(members):
    scalars = {"train_loss": loss[i]}
    for name, values in evaluation.items():
      scalars.update({f"{name}_loss": values["loss"][i], f"{name}_{metric_name}": values["metric"][i]})
    writer.write(step, scalars, member_name(member))


def _member_results(members, log) -> list[dict]:
  calls = log["call_seconds"][1:] or log["call_seconds"]
  seconds = float(np.median([elapsed / length for length, elapsed in calls])) if calls else float("nan")
  sets = log["evals"][0][1] if log["evals"] else {}
  return [{"member": member, "name": member_name(member),
           "train_loss": [losses[i] for losses in log["train_loss"]],
           "eval_steps": [step for step, _ in log["evals"]],
           "curves": {name: {kind: [evaluation[name][kind][i] for _, evaluation in log["evals"]]
                             for kind in ("loss", "metric")} for name in sets},
           "seconds_per_step": seconds}
          for i, member in enumerate(members)]


def chunks(indices: list[int], chunk_size: int | None) -> list[list[int]]:
  """``indices`` in consecutive pieces of at most ``chunk_size`` (one piece without a size)."""
  size = chunk_size or len(indices)
  return [indices[i:i + size] for i in range(0, len(indices), size)]


def train_population(task, members: list[dict], config: SweepConfig, *, checkpoint_dir=None, mesh=None,
                     mesh_axis: str | None = None, progress=None, writer=None) -> list[dict]:
  """Trains every member: grouped by structure, chunked, each chunk one vmapped program. Results in member order.

  With a ``mesh``, the population axis of each chunk is split over ``mesh_axis`` (chunks are padded to a multiple
  of that axis' size, ``train_chunk``). ``progress`` (a tqdm bar) advances by one per chunk step; ``writer`` receives
  every evaluation (``train_chunk``).
  """
  if not members:
    raise ValueError("a sweep needs at least one member; build them with grid(...) or random_search(...).")
  check_members(members, task.structural)
  if mesh is not None and mesh_axis not in mesh.axis_names:
    raise ValueError(f"mesh_axis {mesh_axis!r} is not an axis of the mesh {mesh.axis_names}; name one of them.")
  results: list = [None] * len(members)
  for g, indices in enumerate(group_members(members, task.structural).values()):
    for c, piece in enumerate(chunks(indices, config.chunk_size)):
      directory = pathlib.Path(checkpoint_dir) / f"group{g}_chunk{c}" if checkpoint_dir else None
      on_step = None if progress is None else functools.partial(_advance, progress, metric_name=task.metric_name)
      for index, result in zip(piece, train_chunk(task, [members[i] for i in piece], config, checkpoint_dir=directory,
                                                  mesh=mesh, mesh_axis=mesh_axis, on_step=on_step,
                                                  writer=writer)):
        results[index] = result
  return results


def _advance(progress, loss, evaluation, *, metric_name: str):
  if evaluation is not None:
    name, first = next(iter(evaluation.items()))
    progress.set_postfix({"loss": f"{np.mean(loss):.3f}", f"{name}_{metric_name}": f"{np.mean(first['metric']):.3f}"})
  progress.update(1)


def total_chunk_steps(task, members, config: SweepConfig) -> int:
  """Steps a progress bar over ``train_population`` counts: ``config.steps`` per chunk."""
  groups = group_members(members, task.structural).values()
  return config.steps * sum(len(chunks(g, config.chunk_size)) for g in groups)


def run(task, members: list[dict], config: SweepConfig, out_dir, *, mesh=None, mesh_axis: str | None = None,
        description: str = "sweep") -> list[dict]:
  """Trains the population with a progress bar, then prints the member table and the best member and writes
  ``members.csv``, ``results.json``, ``metrics.jsonl``, ``tensorboard/`` and ``<metric>.png`` to ``out_dir``.

  Checkpoints go to ``out_dir/checkpoints`` when ``config.checkpoint_every`` is set; rerunning the same sweep
  into the same directory resumes from them.
  """
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  with MetricsWriter(out) as writer, tqdm(total=total_chunk_steps(task, members, config), desc=description,
                                          unit="step") as bar:
    results = train_population(task, members, config, checkpoint_dir=out / "checkpoints", mesh=mesh,
                               mesh_axis=mesh_axis, progress=bar, writer=writer)
  rows = sweep_report.member_rows(results, task.metric_name)
  names = list(dict.fromkeys(k for m in members for k in m))
  validation = next(iter(results[0]["curves"]))
  key = f"{validation}_{task.metric_name}"
  print("\n" + sweep_report.format_table(rows, names + ["train_loss", f"{validation}_loss", key, "ms_per_step"]))
  best = sweep_report.best_member(rows, key, task.higher_is_better)
  print(f"best member ({key} = {best[key]:.4g}): {best['member']}")
  sweep_report.write(rows, results, out)
  axes = sweep_report.swept_axes(rows, names, exclude=SEEDS)
  sweep_report.plot(rows, axes, key, out / f"{key}.png", structural=task.structural)
  print(f"wrote {out / 'members.csv'}, {out / 'results.json'}, {out / 'metrics.jsonl'} and {out / (key + '.png')}")
  return rows
