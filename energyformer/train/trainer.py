"""The training loop: one loop for every task and every population, a single run being the population of one.

``train(task, config, out_dir, members=[...])`` trains the members together as one ``jax.vmap``-ed program on a
mesh (members over its ``population`` axis, each member's batch and parameters over ``data``/``fsdp``/``tensor``):
the same steps on their own batches, each with its own optimiser hyperparameters and seeds. When
``out_dir/checkpoints`` holds a checkpoint of the same run it continues from the newest one exactly: model and
optimiser states, every member's data position and the history of losses and evaluations are restored, so the run
takes the same steps on the same batches as one that was never interrupted (bitwise on CPU). SIGTERM or SIGINT
saves a checkpoint at the current step and returns. A NaN or infinite loss, gradient or parameter raises
``NonFiniteLossError`` before anything is saved, leaving the last good checkpoint in place.

Resuming is explicit about the schedule: a checkpoint is resumed only with the schedule it was trained with (the
number of steps and the optimiser settings), else refused with the fix (``UsageError``); ``extend=True`` continues
it to another number of steps (``resumed_config``). A resumed run prints "resuming from step N", a finished one
"already complete (N steps)" and trains nothing.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from energyformer.checks import UsageError
from energyformer.metrics import MetricsWriter
from energyformer.train.checkpoint import Checkpointer
from energyformer.train.config import TrainerConfig, check_warmup, from_dict, to_dict
from energyformer.train.interrupt import StopRequest
from energyformer.train.mesh import make_mesh
from energyformer.train.optim import HYPERPARAMETERS, check_hyperparameters, hyperparameters, learning_rate
from energyformer.train.programs import evaluation_sharding, programs
from energyformer.train.sharding import batch_sharding, batch_shards
from energyformer.train.task import SEEDS, PopulationBatches


class NonFiniteLossError(FloatingPointError):
  """The training loss, gradient or parameters became NaN or infinite."""


class RunStopped(Exception):
  """A stop signal (SIGTERM, Ctrl-C) ended a study made of several runs (a population's chunks, a study's models)
  after the running one saved what it saves; the message says where."""


@dataclasses.dataclass
class TrainResult:
  """What a call of ``train`` did.

  ``history["loss"]`` holds every step's training loss per member (steps before ``start_step`` restored from the
  checkpoint), ``history["evaluations"]`` the ``[step, {set: {metric: [per member]}}]`` of every evaluation.
  ``seconds_per_step`` is the median time of a training call per step, compilations, evaluations and checkpoints
  excluded (NaN when no call was timed). ``stopped_by`` names the signal that stopped the run early, if any.
  ``state`` and ``opt_state`` are the final sharded states (a leading member axis, padding members included).
  ``config`` is the configuration the run trained with (the saved schedule's when it was resumed), ``schedule``
  the ``{"from_step": s, "steps": T}`` segments it ran (more than one when it was extended).
  """

  members: list
  start_step: int
  step: int
  history: dict
  seconds_per_step: float
  seconds: float
  stopped_by: str | None
  state: object
  opt_state: object
  mesh: object
  graphdef: object
  config: TrainerConfig = None
  schedule: list = dataclasses.field(default_factory=list)

  @property
  def losses(self) -> list:
    """The training losses of the steps this call ran (one list over the members per step)."""
    return self.history["loss"][self.start_step:]

  def model(self, index: int = 0):
    """Member ``index``'s trained model."""
    return nnx.merge(self.graphdef, jax.tree.map(lambda x: x[index], self.state))


def member_name(member: dict) -> str:
  """A stable, readable id: ``beta=0.5,learning_rate=0.003,seed=0`` (empty for the member ``{}``)."""
  return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(member.items()))


def structure_of(member: dict, structural) -> tuple:
  """The member's structural hyperparameters as sorted items (members sharing them share a program)."""
  return tuple(sorted((k, v) for k, v in member.items() if k in structural))


def check_members(task, members: list[dict], config: TrainerConfig) -> None:
  """Refuses, naming the setting and the fix: no members, unknown hyperparameter names, invalid optimiser values,
  and members that differ in structure (they need programs of their own)."""
  if not members:
    raise ValueError("a run needs at least one member; a single run is [{}].")
  known = HYPERPARAMETERS + SEEDS + tuple(task.hyperparameters)
  for member in members:
    unknown = sorted(set(member) - set(known))
    if unknown:
      raise ValueError(f"unknown hyperparameter(s) {unknown}; the hyperparameters are {', '.join(known)} (structural "
                       f"ones, trained in separate programs: {', '.join(task.structural)}).")
    for name, value in member.items():
      if name not in task.structural and (isinstance(value, bool) or not isinstance(value, (int, float, np.number))):
        raise ValueError(f"{name}={value!r} is not a number; {name} takes a number (e.g. {name}=0.5).")
    check_hyperparameters(member)
    check_warmup(member.get("warmup_steps", config.optimizer.warmup_steps), config.steps)
  if len({structure_of(m, task.structural) for m in members}) > 1:
    raise ValueError("the members of one run must share their structural hyperparameters "
                     f"({', '.join(task.structural)}); train them with energyformer.train.population.train_population, "
                     "which groups them.")


def check_batch(config: TrainerConfig, mesh) -> None:
  """Raises unless the global batch splits evenly over the data-parallel devices and over the processes."""
  shards = batch_shards(mesh, config.mesh.rules)
  for name, size in (("batch_size", config.batch_size), ("eval_batch_size", config.evaluation_batch_size)):
    if size % shards:
      raise UsageError(f"{name} {size} is not divisible by the data-parallel size {shards} (mesh axes data × fsdp = "
                       f"{mesh.shape['data']} × {mesh.shape['fsdp']}); use a {name} that is a multiple of {shards}, "
                       "or a mesh with smaller data/fsdp axes (e.g. --mesh single).")
    if size % jax.process_count():
      raise UsageError(f"{name} {size} is not divisible by the {jax.process_count()} processes; use a multiple of "
                       f"{jax.process_count()}.")


def padded(members: list[dict], multiple: int) -> list[dict]:
  """``members`` followed by copies of the last one, up to a multiple of ``multiple`` (the population axis' size)."""
  return members + [members[-1]] * (-len(members) % multiple)


def process_shard() -> tuple[int, int]:
  """This process's ``(shard_index, shard_count)`` of the data: one shard per process."""
  return jax.process_index(), jax.process_count()


def _identity(task, members: list[dict], config: TrainerConfig) -> dict:
  """What a checkpoint must match to be resumed: the task, the members and the batch size."""
  return {"task": task.identity(), "members": members, "batch_size": config.batch_size}


def _resume_check(identity: dict, directory):
  expected = _json(identity)

  def check(run: dict):
    saved = run.get("identity", {})
    different = [name for name in expected if saved.get(name) != expected[name]]
    if different:
      raise UsageError(f"the checkpoints in {directory} belong to a run with different {', '.join(different)} "
                       f"(saved {saved.get(different[0])!r}); resume with the same settings, or train into a new "
                       "output directory.")
  return check


def _schedule(config: TrainerConfig) -> dict:
  return {"steps": config.steps, **_json(to_dict(config.optimizer))}


def resumed_config(config: TrainerConfig, saved: dict, done: int, directory, extend: bool = False) -> TrainerConfig:
  """The configuration a run resumed from the checkpoint ``saved`` (the run saved after ``done`` steps) trains
  with; raises a ``UsageError`` with the fix where it cannot.

  The schedule, ``steps`` and every optimiser setting (peak learning rate, warmup, final fraction, weight decay,
  moments, ε, clipping), must be the saved one. ``extend=True`` instead keeps the saved optimiser settings and
  trains to ``config.steps`` (more than ``done``): the warmup is unchanged and the cosine decay is recomputed to end
  at the new last step, so from step ``done + 1`` on the learning rate is the new length's schedule (a jump from the
  saved schedule's value at that step, which ``train`` prints).
  """
  saved_config = from_dict(TrainerConfig, saved["config"])
  if extend:
    if config.steps <= done:
      raise UsageError(f"the run in {directory} has already trained {done} steps; extending it needs more steps than "
                       f"that (e.g. --steps {2 * done}).")
    return dataclasses.replace(config, optimizer=saved_config.optimizer)
  asked, kept = _schedule(config), _schedule(saved_config)
  different = [name for name in kept if asked[name] != kept[name]]
  if not different:
    return config
  shown = ["steps"] + [name for name in different if name != "steps"]
  listing = lambda values: ", ".join(f"{name}={values[name]:g}" for name in shown)
  complete = ", already complete" if done == saved_config.steps else ""
  extension = (f"extend it to {config.steps} steps (pretrain --extend, or extend=True: the saved optimiser settings "
               "are kept and the cosine decay is recomputed to end at the new last step), "
               if different == ["steps"] and config.steps > done else "")
  raise UsageError(f"the run in {directory} was trained with {listing(kept)} ({done} steps done{complete}); this run "
                   f"asks for {listing(asked)}. Resume with the saved settings, {extension}or train into a new output "
                   "directory.")


def _newest_saved_run(checkpointer) -> tuple[int, dict] | None:
  """``(step, run)`` of the newest checkpoint whose run can be read (damaged ones are set aside at restore)."""
  for step in reversed(checkpointer.steps()):
    try:
      return step, checkpointer.saved_run(step)
    except Exception:  # orbax and tensorstore raise many kinds of errors for damaged files
      continue
  return None


def _json(value):
  return json.loads(json.dumps(value, default=lambda v: np.asarray(v).tolist()))


def _global(tree: dict, sharding, global_leading: tuple) -> dict:
  """Process-local NumPy arrays as global arrays: the example axis follows the leading axes ``global_leading``."""
  count = jax.process_count()
  arrays = {}
  for key, local in tree.items():
    axis = len(global_leading)
    shape = (*global_leading, local.shape[axis] * count, *local.shape[axis + 1:])
    arrays[key] = jax.make_array_from_process_local_data(sharding, np.asarray(local), shape)
  return arrays


def call_length(done: int, config: TrainerConfig, checkpointing: bool) -> int:
  """Steps the next call trains after ``done``: ``steps_per_call``, cut short at the next step that evaluates or
  saves."""
  periods = [config.eval_every] + ([config.checkpoint.every] if checkpointing else [])
  next_stop = min([config.steps] + [(done // period + 1) * period for period in periods])
  return min(config.steps_per_call, next_stop - done)


def evaluates(step: int, config: TrainerConfig) -> bool:
  """Whether ``step`` evaluates: every ``eval_every`` steps and the last."""
  return step % config.eval_every == 0 or step == config.steps


def _logs(step: int, config: TrainerConfig) -> bool:
  return step % config.log_every == 0 or step in (1, config.steps)


def evaluate_in_slices(evaluate, state, examples: dict, slice_size: int, place) -> dict:
  """Each metric of ``evaluate(state, slice)`` per member over ``examples``, ``slice_size`` examples (this
  process's share) at a time, averaged with weights proportional to the slices' sizes (exact for per-example
  means). ``place`` turns a slice into global arrays."""
  total = len(next(iter(examples.values())))
  sums: dict = {}
  for start in range(0, total, slice_size):
    piece = {k: v[start:start + slice_size] for k, v in examples.items()}
    weight = len(next(iter(piece.values()))) / total
    for name, values in evaluate(state, place(piece)).items():
      sums[name] = sums.get(name, 0.0) + weight * np.asarray(values, np.float64)
  return {name: values.tolist() for name, values in sums.items()}


class _Timer:
  """Seconds per step of the training calls. Compilation is left out: the first call of each length is not
  sampled, and the time spent dispatching a call of a new length (it compiles) is taken out of the call that was
  running meanwhile."""

  def __init__(self):
    self.lengths, self.samples, self.mark, self.excluded = set(), [], time.perf_counter(), 0.0

  def dispatch(self, length: int, call):
    """``call()``, its time excluded when ``length`` is new (the call compiles)."""
    began = time.perf_counter()
    result = call()
    if length not in self.lengths:
      self.excluded += time.perf_counter() - began
    return result

  def reset(self) -> None:
    self.mark, self.excluded = time.perf_counter(), 0.0

  def record(self, length: int) -> None:
    now = time.perf_counter()
    if length in self.lengths:
      self.samples.append((now - self.mark - self.excluded) / length)
    self.lengths.add(length)
    self.mark, self.excluded = now, 0.0

  def seconds_per_step(self) -> float:
    return float(np.median(self.samples)) if self.samples else float("nan")


@dataclasses.dataclass
class _Run:
  """The state of one call of ``train`` as it goes."""

  task: object
  config: TrainerConfig
  members: list
  compiled: object
  iterators: PopulationBatches
  eval_sets: dict
  checkpointer: object
  writer: object
  bar: object
  on_step: object
  identity: dict
  history: dict
  named: bool
  schedule: list
  state: object = None
  opt_state: object = None

  def finish(self, first: int, metrics, *, stopping: bool = False) -> None:
    """Steps ``first + 1 …`` of one call: checks, records and logs them; at the call's last step evaluates and
    saves where due (and when ``stopping``). Calls ``on_step`` after each step (and its checkpoint)."""
    metrics = {k: np.asarray(v)[:, :len(self.members)] for k, v in jax.device_get(metrics).items()}
    length = len(metrics["loss"])
    for offset in range(length):
      step = first + offset + 1
      values = {k: v[offset] for k, v in metrics.items()}
      if self.config.stop_on_non_finite and not values["finite"].all():
        self._non_finite(step, values)
      self.history["loss"].append(values["loss"].tolist())
      if _logs(step, self.config):
        self._log(step, values)
      if offset == length - 1:
        self.boundary(step, stopping=stopping)
      if self.bar is not None:
        self.bar.update(1)
      if self.on_step is not None:
        self.on_step(step, values)

  def boundary(self, step: int, *, stopping: bool = False) -> None:
    """Evaluates and saves after ``step`` where due (saving also at the last step and when stopping)."""
    if evaluates(step, self.config):
      self.evaluate(step)
    if self.checkpointer is not None and (self.checkpointer.due(step) or step == self.config.steps or stopping):
      self.save(step)

  def evaluate(self, step: int) -> None:
    size = self.config.evaluation_batch_size // jax.process_count()
    mesh, rules = self.compiled.mesh, self.config.mesh.rules
    results = {}
    for name, examples in self.eval_sets.items():
      sharding = evaluation_sharding(mesh, rules, min(size, len(next(iter(examples.values())))) * jax.process_count())
      place = lambda piece, sharding=sharding: _global(piece, sharding, ())
      values = evaluate_in_slices(self.compiled.evaluate, self.state, examples, size, place)
      results[name] = {metric: v[:len(self.members)] for metric, v in values.items()}
    self.history["evaluations"].append([step, results])
    if self.writer is not None:
      for index, member in enumerate(self.members):
        scalars = {f"{name}/{metric}": v[index] for name, values in results.items() for metric, v in values.items()}
        self.writer.write(step, scalars, self._prefix(member))
    if self.bar is not None:
      name, values = next(iter(results.items()))
      metric = next(iter(values))
      self.bar.set_postfix({"loss": f"{np.mean(self.history['loss'][-1]):.3f}",
                            f"{name}_{metric}": f"{np.mean(values[metric]):.3f}"})

  def save(self, step: int) -> None:
    count = len(self.members)
    state, opt_state = self.state, self.opt_state
    if count < len(self.iterators.iterators):
      state, opt_state = jax.tree.map(lambda x: np.asarray(x[:count]), (state, opt_state))
    run = {"identity": self.identity, "config": to_dict(self.config), "history": self.history,
           "schedule": self.schedule}
    self.checkpointer.save(step, state, opt_state, self.iterators, _json(run))

  def _log(self, step: int, values: dict) -> None:
    if self.writer is not None:
      for index, member in enumerate(self.members):
        scalars = {f"train/{k}": float(values[k][index]) for k in ("loss", "grad_norm", "learning_rate")}
        self.writer.write(step, {k: v for k, v in scalars.items() if math.isfinite(v)}, self._prefix(member))
    if self.bar is not None and not self.history["evaluations"]:
      self.bar.set_postfix(loss=f"{np.mean(values['loss']):.3f}")

  def _prefix(self, member: dict) -> str:
    return member_name(member) if self.named else ""

  def _non_finite(self, step: int, values: dict) -> None:
    checkpointer = self.checkpointer
    if checkpointer is not None:
      checkpointer.wait()
    kept = (f"the last good checkpoint (step {checkpointer.steps()[-1]}) is kept in {checkpointer.directory}"
            if checkpointer is not None and checkpointer.steps() else "no checkpoint was saved before it")
    bad = [member_name(m) or "the run" for m, ok in zip(self.members, values["finite"]) if not ok]
    raise NonFiniteLossError(
        f"non-finite training loss, gradient or parameters at step {step} ({', '.join(bad)}: loss "
        f"{values['loss'].tolist()}, gradient norm {values['grad_norm'].tolist()}); training stopped and {kept}. "
        "Resume with a lower learning rate, a longer warmup, a smaller clip_norm, or float32 compute.")


def _restore(checkpointer, compiled, run: _Run, population_size: int, check):
  """Restores the newest checkpoint into ``run`` (padding the members again as the population is padded); returns
  its step, or None when there is none."""
  count = len(run.members)
  state_target, opt_target = compiled.restore_targets(count)
  if count < population_size:
    template = lambda tree: jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), tree)
    state_target, opt_target = template(state_target), template(opt_target)
  restored = checkpointer.restore_latest(state_target, opt_target, run.iterators, check)
  if restored is None:
    return None
  step, state, opt_state, saved = restored
  if count < population_size:
    pad = lambda x: np.concatenate([x, np.repeat(np.asarray(x)[-1:], population_size - count, axis=0)])
    state, opt_state = jax.device_put(jax.tree.map(pad, (state, opt_state)),
                                      (compiled.state_shardings, compiled.opt_shardings))
  run.state, run.opt_state, run.history = state, opt_state, saved["history"]
  run.schedule = saved.get("schedule", [{"from_step": 0, "steps": saved["config"]["steps"]}])
  if run.schedule[-1]["steps"] != run.config.steps:
    run.schedule = run.schedule + [{"from_step": step, "steps": run.config.steps}]
  return step


def train(task, config: TrainerConfig, out_dir=None, *, members=({},), progress=True, on_step=None, devices=None,
          writer=None, metrics: bool = True, member_names: bool | None = None, extend: bool = False) -> TrainResult:
  """Trains ``members`` of ``task`` together for ``config.steps`` steps, resuming from ``out_dir/checkpoints``.

  A checkpoint of another run, or of this run with another schedule, is refused (``UsageError``) unless
  ``extend`` (``resumed_config``); a resumed run prints "resuming from step N", and one already at its last step
  prints "already complete (N steps)" and returns at once (``start_step == step``, nothing trained or written).

  ``members`` share their structural hyperparameters (``energyformer.train.population`` groups others). Metrics go
  to ``writer`` (default: with ``metrics``, a ``MetricsWriter`` on ``out_dir``, process 0 only): ``train/loss``,
  ``train/grad_norm``, ``train/learning_rate`` at step 1 and every ``log_every`` steps, and ``<set>/<metric>`` at
  every evaluation, each prefixed by the member's name (``member_names``; default: when there are several members).
  ``progress``: ``True`` shows a tqdm bar, or
  pass a bar to advance. ``on_step(step, metrics)`` is called after each step (and its checkpoint) with per-member
  arrays. ``devices`` (default ``jax.devices()``) are the devices the mesh is built from. On a population mesh
  axis that does not divide the number of members, copies of the last member pad the population; they are left out
  of the results, metrics and checkpoints.
  """
  began = time.perf_counter()
  members = [dict(member) for member in members]
  check_members(task, members, config)
  mesh = make_mesh(config.mesh, devices)
  check_batch(config, mesh)
  out = None if out_dir is None else pathlib.Path(out_dir)
  lead = jax.process_index() == 0
  saving = out is not None and config.checkpoint.every is not None
  checkpointer = Checkpointer(out / "checkpoints", config.checkpoint) if saving else None
  identity = _identity(task, members, config)
  newest = None if checkpointer is None else _newest_saved_run(checkpointer)
  if newest is not None:
    _resume_check(identity, checkpointer.directory)(newest[1])
    config = resumed_config(config, newest[1], newest[0], checkpointer.directory, extend)
    if lead and config.steps != newest[1]["config"]["steps"]:
      _announce_extension(config, newest, members)
  population = padded(members, mesh.shape["population"])
  compiled = programs(task, structure_of(members[0], task.structural), config, mesh)
  own_writer = writer is None and metrics and out is not None and lead
  own_bar = progress is True and lead
  bar = tqdm(total=config.steps, unit="step") if own_bar else (progress or None)
  shard_index, shard_count = process_shard()
  iterators = PopulationBatches([task.batches(m, config.batch_size // shard_count, shard_index, shard_count)
                                 for m in population], len(members))
  eval_sets = task.evaluation_sets(shard_index, shard_count)
  if own_writer:
    writer = MetricsWriter(out)
  named = len(members) > 1 if member_names is None else member_names
  run = _Run(task, config, members, compiled, iterators, eval_sets, checkpointer, writer, bar, on_step, identity,
             {"loss": [], "evaluations": []}, named, [{"from_step": 0, "steps": config.steps}])
  try:
    start = None if checkpointer is None else _restore(checkpointer, compiled, run, len(population),
                                                       _resume_check(identity, checkpointer.directory))
    if start is None:
      start = 0
      # Outside jax.set_mesh: NNX would otherwise read the models' logical axis names as mesh axes.
      run.state, run.opt_state = compiled.init(population)
    else:
      if lead:
        _say(bar, f"already complete ({start} steps) in {checkpointer.directory}" if start >= config.steps
             else f"resuming from step {start} of {config.steps} ({checkpointer.directory})")
      if own_bar:
        bar.update(start)
    with jax.set_mesh(mesh), StopRequest() as stop:
      result = _loop(run, population, start, stop)
  finally:
    if checkpointer is not None:
      checkpointer.close()
    if own_writer:
      writer.close()
    if own_bar:
      bar.close()
  step, seconds_per_step, stopped_by = result
  return TrainResult(members, start, step, run.history, seconds_per_step, time.perf_counter() - began, stopped_by,
                     run.state, run.opt_state, mesh, compiled.graphdef, config, run.schedule)


def _say(bar, message: str) -> None:
  """Prints ``message`` (above the progress bar when there is one)."""
  (tqdm.write if bar is not None else print)(message)


def _announce_extension(config: TrainerConfig, newest: tuple[int, dict], members) -> None:
  """Prints how extending the saved run changes its learning rate at the next step (first member)."""
  done, saved_steps = newest[0], newest[1]["config"]["steps"]
  rates = hyperparameters(config.optimizer, members[:1])
  before = float(learning_rate(done, rates, saved_steps)[0])
  after = float(learning_rate(done, rates, config.steps)[0])
  print(f"extending the run from {saved_steps} to {config.steps} steps with its saved optimiser settings: the "
        f"cosine decay now ends at step {config.steps}; learning rate at step {done + 1}: {before:.4g} -> {after:.4g}")


def _loop(run: _Run, population: list[dict], start: int, stop: StopRequest):
  """Call ``c + 1`` is dispatched before call ``c``'s metrics are read, so the host's work (data, logging)
  overlaps the device's; a call that ends where the run evaluates, saves or stops is finished before the next.
  Returns the last step, the seconds per step and the signal that stopped the run (or None)."""
  config, compiled = run.config, run.compiled
  members_sharding = jax.sharding.NamedSharding(compiled.mesh, jax.sharding.PartitionSpec("population"))
  hparams = jax.device_put(hyperparameters(config.optimizer, population), members_sharding)
  seeds = jax.device_put(np.asarray([int(m.get("seed", 0)) for m in population], np.uint32), members_sharding)
  sharding = batch_sharding(compiled.mesh, config.mesh.rules, leading=(None, "population"))
  checkpointing = run.checkpointer is not None
  timer, pending, done = _Timer(), None, start

  def complete(first, metrics, length, stopping=False):
    jax.block_until_ready(metrics)
    timer.record(length)
    run.finish(first, metrics, stopping=stopping)

  while done < config.steps:
    length = call_length(done, config, checkpointing)
    batches = _global(run.iterators.take(length), sharding, (length, len(population)))
    run.state, run.opt_state, metrics = timer.dispatch(length, lambda: compiled.steps(
        run.state, run.opt_state, batches, hparams, seeds, done, config.steps))
    if pending is not None:
      complete(*pending)
    pending, done = (done, metrics, length), done + length
    stopping = stop.requested()
    if stopping or evaluates(done, config) or (checkpointing and run.checkpointer.due(done)):
      complete(*pending, stopping=stopping)
      pending = None
      if stopping:
        return done, timer.seconds_per_step(), stop.signal_name or "a signal on another process"
      timer.reset()
  return done, timer.seconds_per_step(), None
