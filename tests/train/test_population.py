"""Populations: members equal their runs alone, chunking, grouping, resume, padding over devices, bad members."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from energyformer.studies import lis
from energyformer.train import population, trainer
from energyformer.train.checkpoint import CheckpointConfig
from energyformer.train.config import TrainerConfig
from energyformer.train.optim import OptimizerConfig, decay_mask
from energyformer.train.task import data_seed
from train_fixtures import KilledAfter

STUDY = dataclasses.replace(lis.PRESETS["tiny"], depth=1, eval_every=3)
TASK = lis.LISTask(STUDY)
CONFIG = TrainerConfig(steps=6, batch_size=8, eval_every=3, log_every=3, stop_on_non_finite=False,
                       optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=2, weight_decay=0.01))
MEMBERS = [{"variant": "momentum", "learning_rate": 1e-3, "beta": 0.0, "seed": 0, "data_seed": 0},
           {"variant": "momentum", "learning_rate": 1e-2, "beta": 0.8, "seed": 1, "data_seed": 2},
           {"variant": "momentum", "learning_rate": 3e-3, "beta": 0.5, "seed": 2, "data_seed": 1, "weight_decay": 0.1}]


@pytest.fixture(scope="module")
def members_together():
  return population.train_population(TASK, MEMBERS, CONFIG)


def _alone(member):
  """The member trained by a plain, un-vmapped loop: its own model, optax's clipped AdamW with the decay mask and
  warmup-cosine schedule, its own data order."""
  settings = {k: v for k, v in member.items() if k not in ("seed", "data_seed", "learning_rate", "weight_decay")}
  model = TASK.create_model(settings, nnx.Rngs(jax.random.key(member["seed"])), ())
  opt = CONFIG.optimizer
  peak = member["learning_rate"]
  schedule = optax.warmup_cosine_decay_schedule(0.0, peak, opt.warmup_steps, CONFIG.steps,
                                                end_value=opt.final_fraction * peak)
  tx = optax.chain(optax.clip_by_global_norm(opt.clip_norm),
                   optax.adamw(schedule, opt.b1, opt.b2, opt.eps, weight_decay=member.get("weight_decay",
                                                                                          opt.weight_decay),
                               mask=decay_mask))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  opt_state = tx.init(params)
  loss_fn = lambda p, batch: TASK.evaluate(nnx.merge(graphdef, p, rest), batch)["loss"]

  @jax.jit
  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  batches = TASK.batches(member, CONFIG.batch_size, 0, 1)
  losses = []
  for _ in range(CONFIG.steps):
    params, opt_state, loss = step(params, opt_state, next(batches))
    losses.append(float(loss))
  val = TASK.evaluate(nnx.merge(graphdef, params, rest), TASK.evaluation_sets(0, 1)["val"])
  return losses, float(val["loss"]), float(val["accuracy"])


@pytest.mark.parametrize("index", [1, 2])
def test_every_member_equals_its_run_alone(members_together, index):
  """A member of the vmapped population follows its own un-vmapped optax training run (float32, rtol 1e-4 on the
  loss at every step and on the final validation loss; batching the matmuls reorders float sums)."""
  losses, val_loss, val_accuracy = _alone(MEMBERS[index])
  result = members_together[index]
  np.testing.assert_allclose(result["train_loss"], losses, rtol=1e-4)
  np.testing.assert_allclose(result["curves"]["val"]["loss"][-1], val_loss, rtol=1e-4)
  assert result["curves"]["val"]["accuracy"][-1] == pytest.approx(val_accuracy, abs=1 / 64)


def test_a_member_equals_the_single_run_with_its_hyperparameters(members_together):
  """The LIS run of one member (a population of one, as ``energyformer lis`` trains it) follows that member of the
  population: loss curves and evaluations to rtol 1e-5."""
  alone = trainer.train(TASK, CONFIG, members=[MEMBERS[1]], progress=False)
  result = population.member_result(alone, 0)
  np.testing.assert_allclose(members_together[1]["train_loss"], result["train_loss"], rtol=1e-5)
  np.testing.assert_allclose(members_together[1]["curves"]["test"]["loss"], result["curves"]["test"]["loss"],
                             rtol=1e-5)


def test_steps_per_call_does_not_change_results(members_together):
  """Two steps per call (cut at the evaluations every 3 steps: calls of 2, 1, 2, 1 steps) train every member as one
  step per call does (rtol 1e-5), losses and evaluations."""
  fused = population.train_population(TASK, MEMBERS, dataclasses.replace(CONFIG, steps_per_call=2))
  for one, two in zip(members_together, fused):
    np.testing.assert_allclose(two["train_loss"], one["train_loss"], rtol=1e-5)
    assert two["eval_steps"] == one["eval_steps"] == [3, 6]
    for name, curves in one["curves"].items():
      for metric, values in curves.items():
        np.testing.assert_allclose(two["curves"][name][metric], values, rtol=1e-5)


def test_calls_stop_at_every_evaluation_and_checkpoint():
  """Calls of at most steps_per_call steps end at every multiple of eval_every and checkpoint.every and at the end."""
  config = TrainerConfig(steps=10, eval_every=4, checkpoint=CheckpointConfig(every=3), steps_per_call=5,
                         optimizer=OptimizerConfig(warmup_steps=1))
  lengths, done = [], 0
  while done < config.steps:
    lengths.append(trainer.call_length(done, config, checkpointing=True))
    done += lengths[-1]
  assert lengths == [3, 1, 2, 2, 1, 1]  # stops at 3, 4, 6, 8, 9, 10
  assert trainer.call_length(0, config, checkpointing=False) == 4


def test_members_differ(members_together):
  """Different hyperparameters give different trajectories (the population really is heterogeneous)."""
  last = [r["train_loss"][-1] for r in members_together]
  assert len(set(np.round(last, 6))) == len(MEMBERS)


def test_structural_hyperparameters_are_grouped():
  """Members differing in variant or depth go to separate programs; results come back in member order."""
  members = [{"variant": "standard", "seed": 0}, {"variant": "nesterov", "beta": 0.5, "seed": 0},
             {"variant": "standard", "seed": 1}, {"variant": "standard", "depth": 2, "seed": 0}]
  assert sorted(population.group_members(members, TASK.structural).values()) == [[0, 2], [1], [3]]
  config = dataclasses.replace(CONFIG, steps=2, eval_every=1, optimizer=OptimizerConfig(warmup_steps=1))
  results = population.train_population(TASK, members[:3], config)
  assert [r["member"] for r in results] == members[:3]
  assert results[0]["train_loss"] != results[2]["train_loss"]


@pytest.mark.parametrize("steps_per_call", [1, 2])
def test_resume_from_checkpoint_is_exact(tmp_path, steps_per_call):
  """A population killed after step 4 and rerun resumes from its step-3 checkpoint and ends bitwise where an
  uninterrupted one ends, data order included, one or two steps per call; other members refuse to resume from
  those checkpoints."""
  config = dataclasses.replace(CONFIG, checkpoint=CheckpointConfig(every=3, keep=2), steps_per_call=steps_per_call)
  straight = population.train_population(TASK, MEMBERS, config, checkpoint_dir=tmp_path / "straight")
  with pytest.raises(KeyboardInterrupt):
    population.train_population(TASK, MEMBERS, config, checkpoint_dir=tmp_path / "resumed", progress=KilledAfter(4))
  resumed = population.train_population(TASK, MEMBERS, config, checkpoint_dir=tmp_path / "resumed")
  for a, b in zip(straight, resumed):
    assert a["train_loss"] == b["train_loss"]
    assert a["curves"] == b["curves"]
  other = [{**member, "learning_rate": 2e-3} for member in MEMBERS]
  with pytest.raises(ValueError, match="different members"):
    population.train_population(TASK, other, config, checkpoint_dir=tmp_path / "resumed")


def test_a_stop_signal_saves_the_running_chunk_and_stops_the_population(members_together, tmp_path):
  """Ctrl-C (or SIGTERM) in the first of two chunks (of two members and one): it is saved, the second is not
  started, and the rerun resumes and ends where the whole population trained at once ends (rtol 1e-5)."""
  config = dataclasses.replace(CONFIG, checkpoint=CheckpointConfig(every=3, keep=2))
  with pytest.raises(trainer.RunStopped, match=r"stopped by SIGINT at step 2 of group 0, chunk 0"):
    population.train_population(TASK, MEMBERS, config, chunk_size=2, checkpoint_dir=tmp_path,
                                progress=KilledAfter(1, signal.SIGINT))
  assert (tmp_path / "group0_chunk0" / "checkpoints" / "2").is_dir() and not (tmp_path / "group0_chunk1").exists()
  resumed = population.train_population(TASK, MEMBERS, config, chunk_size=2, checkpoint_dir=tmp_path)
  for a, b in zip(resumed, members_together):
    np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(a["curves"]["test"]["loss"], b["curves"]["test"]["loss"], rtol=1e-5)


def test_evaluation_in_slices_equals_one_pass():
  """Slice-size-weighted averages of per-example means equal the means over the whole set (uneven last slice)."""
  examples = {"x": np.arange(10.0)}
  evaluate = lambda state, b: {"loss": np.array([b["x"].mean(), 2 * b["x"].mean()]),
                               "share": np.array([(b["x"] > 4).mean(), (b["x"] > 6).mean()])}
  whole = trainer.evaluate_in_slices(evaluate, None, examples, 10, lambda piece: piece)
  sliced = trainer.evaluate_in_slices(evaluate, None, examples, 3, lambda piece: piece)
  np.testing.assert_allclose(sliced["loss"], [4.5, 9.0])
  np.testing.assert_allclose(sliced["share"], whole["share"])
  np.testing.assert_allclose(whole["share"], [0.5, 0.3])


def test_grid_random_search_and_cross():
  """grid is the Cartesian product; random_search stays inside its (log-)uniform ranges, reproducibly; cross
  refuses an axis the members already set (it would silently replace it)."""
  members = population.grid(learning_rate=[1e-3, 3e-3], beta=[0.0, 0.5, 0.9])
  assert len(members) == 6 and {"learning_rate": 3e-3, "beta": 0.9} in members
  drawn = population.random_search(50, 3, learning_rate=(1e-4, 1e-2, "log"), beta=(0.0, 0.9))
  rates = np.array([m["learning_rate"] for m in drawn])
  assert rates.min() >= 1e-4 and rates.max() <= 1e-2 and np.mean(rates < 1e-3) > 0.3  # log-uniform: half below
  assert drawn == population.random_search(50, 3, learning_rate=(1e-4, 1e-2, "log"), beta=(0.0, 0.9))
  assert len(population.cross(members, seed=[0, 1])) == 12
  with pytest.raises(ValueError, match="beta is set both by the members and by the axes"):
    population.cross(members, beta=[0.1])


def test_bad_populations_are_refused():
  """Unknown hyperparameters, empty grids, bad ranges, bad values and a bad chunk size name the fix."""
  with pytest.raises(ValueError, match=r"unknown hyperparameter\(s\) \['num_layers'\]"):
    population.train_population(TASK, [{"num_layers": 3}], CONFIG)
  with pytest.raises(ValueError, match="non-empty list"):
    population.grid(beta=[])
  with pytest.raises(ValueError, match="low < high"):
    population.random_search(4, learning_rate=(1e-2, 1e-4))
  with pytest.raises(ValueError, match="at least one member"):
    population.train_population(TASK, [], CONFIG)
  with pytest.raises(ValueError, match="weight_decay must lie in"):
    population.train_population(TASK, [{"weight_decay": -1.0}], CONFIG)
  with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
    population.train_population(TASK, MEMBERS, CONFIG, chunk_size=0)


def test_ms_per_step_leaves_out_compilations(monkeypatch):
  """Calls of 5, 5 and 2 steps of 10 ms a step, each new length compiling for 3 s while it is dispatched (during the
  previous call): the timer reports 10 ms per step, not a recompile."""
  clock = [0.0]
  monkeypatch.setattr(trainer.time, "perf_counter", lambda: clock[0])
  timer = trainer._Timer()

  def dispatch(length, compiles):
    def call():
      clock[0] += 3.0 if compiles else 0.0
    timer.dispatch(length, call)

  dispatch(5, True)  # call 1
  dispatch(5, False)  # call 2, while call 1 runs
  clock[0] += 0.05
  timer.record(5)  # call 1 done: its length was new, not sampled
  dispatch(2, True)  # call 3 compiles while call 2 runs
  clock[0] += 0.05
  timer.record(5)  # call 2 done
  clock[0] += 0.02
  timer.record(2)  # call 3 done: a new length, not sampled
  assert timer.seconds_per_step() == pytest.approx(0.01)


def test_population_axis_over_devices(tmp_path):
  """On 4 CPU devices (``use_cpu_devices``), a population laid over the ``population`` mesh axis trains the same
  members as on one device (rtol 1e-5); 5 members are padded to 8 and only the 5 come back; so does ``energyformer
  sweep --devices 4`` with 3 members. A population killed after step 2 over 4 devices (padded to 8) resumes over 2
  (padded to 6) and ends where the single-device one ends (rtol 1e-5)."""
  script = textwrap.dedent(f"""
      import dataclasses, json, sys, jax
      sys.path.insert(0, {os.path.dirname(os.path.dirname(__file__))!r})
      from train_fixtures import KilledAfter
      from energyformer.train import mesh, population
      mesh.use_cpu_devices(4)
      from energyformer import cli
      from energyformer.studies import lis
      from energyformer.train.checkpoint import CheckpointConfig
      study = dataclasses.replace(lis.PRESETS["tiny"], depth=1, steps=3, eval_every=3)
      study = dataclasses.replace(study, optimizer=dataclasses.replace(study.optimizer, warmup_steps=1))
      task = lis.LISTask(study)
      config = dataclasses.replace(study.trainer_config(), batch_size=4)
      over = lambda n, c=config: dataclasses.replace(c, mesh=dataclasses.replace(c.mesh, population=n))
      members = [{{"variant": "standard", "seed": s, "learning_rate": 1e-3 * (s + 1)}} for s in range(5)]
      sharded = population.train_population(task, members, over(4))
      single = population.train_population(task, members, config)

      saving = dataclasses.replace(config, checkpoint=CheckpointConfig(every=1))
      checkpoints = {str(tmp_path / "checkpoints")!r}
      try:
        population.train_population(task, members, over(4, saving), checkpoint_dir=checkpoints,
                                    progress=KilledAfter(2))
      except KeyboardInterrupt:
        pass
      resumed = population.train_population(task, members, over(2, saving), checkpoint_dir=checkpoints)
      cli.main(["sweep", "--preset", "tiny", "--devices", "4", "--grid", "learning_rate=1e-3,2e-3,3e-3", "--steps", "2",
                "--out", {str(tmp_path)!r}])
      print(json.dumps([jax.device_count()] + [[r["train_loss"] for r in rs] for rs in (sharded, single, resumed)]))
  """)
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  devices, sharded, single, resumed = json.loads(out.stdout.splitlines()[-1])
  assert devices == 4 and len(sharded) == len(single) == len(resumed) == 5
  np.testing.assert_allclose(sharded, single, rtol=1e-5)
  np.testing.assert_allclose(resumed, single, rtol=1e-5)
  rows = json.loads((tmp_path / "results.json").read_text())["members"]  # energyformer sweep --devices 4: 3 of 4
  assert sorted(r["learning_rate"] for r in rows) == [1e-3, 2e-3, 3e-3]


def test_padding_and_the_data_seed():
  assert trainer.padded([{"a": 1}, {"a": 2}, {"a": 3}], 4) == [{"a": 1}, {"a": 2}, {"a": 3}, {"a": 3}]
  assert (data_seed({}), data_seed({"seed": 3}), data_seed({"seed": 3, "data_seed": 5})) == (0, 3, 5)


def test_the_progress_bar_names_the_members_being_trained():
  """A bar shared by the chunks of a population shows, after its own description, the member trained or the
  values the chunk's members share and their number."""
  from energyformer.train.population import chunk_label
  assert chunk_label([{"variant": "momentum", "seed": 0}]) == "seed=0,variant=momentum"
  chunk = [{"variant": "momentum", "seed": s, "beta": 0.5} for s in range(3)]
  assert chunk_label(chunk) == "beta=0.5,variant=momentum ×3"
  assert chunk_label([{"seed": 0}, {"seed": 1}]) == "×2"
