"""vmapped hyperparameter sweeps: members equal their runs alone, chunking, grouping, resume, bad input."""
import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from energyformer import cli
from energyformer.studies import lis
from energyformer.train import mesh as train_mesh
from energyformer.train import sweep
from train_fixtures import KilledAfter

STUDY = dataclasses.replace(lis.PRESETS["tiny"], depth=1, eval_every=3)
TASK = lis.LISTask(STUDY)
CONFIG = sweep.SweepConfig(steps=6, batch_size=8, eval_every=3, learning_rate=3e-3, warmup_steps=2)
MEMBERS = [{"variant": "momentum", "learning_rate": 1e-3, "beta": 0.0, "seed": 0, "data_seed": 0},
           {"variant": "momentum", "learning_rate": 1e-2, "beta": 0.8, "seed": 1, "data_seed": 2},
           {"variant": "momentum", "learning_rate": 3e-3, "beta": 0.5, "seed": 2, "data_seed": 1, "weight_decay": 0.1}]


@pytest.fixture(scope="module")
def population():
  return sweep.train_population(TASK, MEMBERS, CONFIG)


def _alone(member):
  """The member trained by a plain, un-vmapped loop: its own model, optax's AdamW schedule, its own data order."""
  model = TASK.model(member)
  schedule = optax.warmup_cosine_decay_schedule(0.0, member["learning_rate"], CONFIG.warmup_steps, CONFIG.steps)
  tx = optax.chain(optax.clip_by_global_norm(CONFIG.clip_norm),
                   optax.adamw(schedule, weight_decay=member.get("weight_decay", CONFIG.weight_decay)))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  opt_state = tx.init(params)
  loss_fn = lambda p, batch: TASK.metrics(nnx.merge(graphdef, p, rest), batch)

  @jax.jit
  def step(params, opt_state, batch):
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  batches = iter(TASK.batches(member["data_seed"], CONFIG.batch_size))
  losses = []
  for _ in range(CONFIG.steps):
    batch = {k: v for k, v in next(batches).items() if k in ("tokens", "loss_mask")}
    params, opt_state, loss = step(params, opt_state, batch)
    losses.append(float(loss))
  val_loss, val_accuracy = loss_fn(params, TASK.evaluation_sets()["val"])
  return losses, float(val_loss), float(val_accuracy)


def test_steps_per_call_does_not_change_results(population):
  """Two steps per call (cut at the evaluations every 3 steps: calls of 2, 1, 2, 1 steps) train every member as one
  step per call does (rtol 1e-5), losses and evaluations."""
  fused = sweep.train_population(TASK, MEMBERS, dataclasses.replace(CONFIG, steps_per_call=2))
  for one, two in zip(population, fused):
    np.testing.assert_allclose(two["train_loss"], one["train_loss"], rtol=1e-5)
    assert two["eval_steps"] == one["eval_steps"] == [3, 6]
    for name, curves in one["curves"].items():
      for kind, values in curves.items():
        np.testing.assert_allclose(two["curves"][name][kind], values, rtol=1e-5)


def test_calls_stop_at_every_evaluation_and_checkpoint():
  """Calls of at most steps_per_call steps end at every multiple of eval_every and checkpoint_every and at the end."""
  config = sweep.SweepConfig(steps=10, eval_every=4, checkpoint_every=3, steps_per_call=5)
  lengths, done = [], 0
  while done < config.steps:
    lengths.append(sweep._call_length(done, config, checkpointing=True))
    done += lengths[-1]
  assert lengths == [3, 1, 2, 2, 1, 1]  # stops at 3, 4, 6, 8, 9, 10
  assert sweep._call_length(0, config, checkpointing=False) == 4


def test_schedule_matches_optax():
  """The array-valued warmup-cosine schedule equals optax's at every step, warmup included."""
  for peak, warmup, total in [(3e-3, 40, 400), (1e-2, 0, 50), (5e-4, 7, 30)]:
    reference = optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total)
    for count in [0, 1, warmup - 1, warmup, warmup + 1, total // 2, total - 1, total, total + 5]:
      np.testing.assert_allclose(sweep.warmup_cosine(max(count, 0), peak, warmup, total),
                                 reference(max(count, 0)), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("index", [1, 2])
def test_every_member_equals_its_run_alone(population, index):
  """A member of the vmapped population follows its own un-vmapped training run (float32, rtol 1e-4 on the
  loss at every step and on the final validation loss; batching the matmuls reorders float sums)."""
  losses, val_loss, val_accuracy = _alone(MEMBERS[index])
  result = population[index]
  np.testing.assert_allclose(result["train_loss"], losses, rtol=1e-4)
  np.testing.assert_allclose(result["curves"]["val"]["loss"][-1], val_loss, rtol=1e-4)
  assert result["curves"]["val"]["metric"][-1] == pytest.approx(val_accuracy, abs=1 / 64)


def test_members_differ(population):
  """Different hyperparameters give different trajectories (the population really is heterogeneous)."""
  first = [r["train_loss"][-1] for r in population]
  assert len(set(np.round(first, 6))) == len(MEMBERS)


def test_chunked_and_unchunked_sweeps_agree(population):
  """Chunks of two and one members give the trajectories of the whole population at once (rtol 1e-5)."""
  chunked = sweep.train_population(TASK, MEMBERS, dataclasses.replace(CONFIG, chunk_size=2))
  for a, b in zip(chunked, population):
    np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(a["curves"]["test"]["loss"], b["curves"]["test"]["loss"], rtol=1e-5)


def test_structural_hyperparameters_are_grouped():
  """Members differing in variant or depth go to separate programs; results come back in member order."""
  members = [{"variant": "standard", "seed": 0}, {"variant": "nesterov", "beta": 0.5, "seed": 0},
             {"variant": "standard", "seed": 1}, {"variant": "standard", "depth": 2, "seed": 0}]
  assert sorted(sweep.group_members(members, TASK.structural).values()) == [[0, 2], [1], [3]]
  results = sweep.train_population(TASK, members[:3], dataclasses.replace(CONFIG, steps=1, eval_every=1))
  assert [r["member"] for r in results] == members[:3]
  assert results[0]["train_loss"] != results[2]["train_loss"]


@pytest.mark.parametrize("steps_per_call", [1, 2])
def test_resume_from_checkpoint_is_exact(tmp_path, steps_per_call):
  """A sweep killed after step 4 and rerun resumes from its step-3 checkpoint and ends bitwise where an
  uninterrupted sweep ends, data order included, one or two steps per call; another sweep refuses to resume from
  those checkpoints."""
  config = dataclasses.replace(CONFIG, checkpoint_every=3, steps_per_call=steps_per_call)
  straight = sweep.train_population(TASK, MEMBERS, config, checkpoint_dir=tmp_path / "straight")
  with pytest.raises(KeyboardInterrupt):
    sweep.train_population(TASK, MEMBERS, config, checkpoint_dir=tmp_path / "resumed", progress=KilledAfter(4))
  resumed = sweep.train_population(TASK, MEMBERS, config, checkpoint_dir=tmp_path / "resumed")
  for a, b in zip(straight, resumed):
    assert a["train_loss"] == b["train_loss"]
    assert a["curves"] == b["curves"]
  other = [{**member, "learning_rate": 2e-3} for member in MEMBERS]
  with pytest.raises(ValueError, match="different sweep"):
    sweep.train_population(TASK, other, config, checkpoint_dir=tmp_path / "resumed")


def test_evaluation_in_slices_equals_one_pass():
  """Slice-size-weighted averages of per-example means equal the means over the whole set (uneven last slice)."""
  batch = {"x": np.arange(10.0)}
  evaluate = lambda params, rest, b: (np.array([b["x"].mean(), 2 * b["x"].mean()]),
                                      np.array([(b["x"] > 4).mean(), (b["x"] > 6).mean()]))
  whole = sweep.evaluate_in_slices(evaluate, None, None, batch, 10)
  sliced = sweep.evaluate_in_slices(evaluate, None, None, batch, 3)
  np.testing.assert_allclose(sliced["loss"], [4.5, 9.0])
  np.testing.assert_allclose(sliced["metric"], whole["metric"])
  np.testing.assert_allclose(whole["metric"], [0.5, 0.3])


def test_grid_and_random_search():
  """grid is the Cartesian product; random_search stays inside its (log-)uniform ranges, reproducibly."""
  members = sweep.grid(learning_rate=[1e-3, 3e-3], beta=[0.0, 0.5, 0.9])
  assert len(members) == 6 and {"learning_rate": 3e-3, "beta": 0.9} in members
  drawn = sweep.random_search(50, 3, learning_rate=(1e-4, 1e-2, "log"), beta=(0.0, 0.9))
  rates = np.array([m["learning_rate"] for m in drawn])
  assert rates.min() >= 1e-4 and rates.max() <= 1e-2 and np.mean(rates < 1e-3) > 0.3  # log-uniform: half below
  assert drawn == sweep.random_search(50, 3, learning_rate=(1e-4, 1e-2, "log"), beta=(0.0, 0.9))


def test_bad_sweeps_are_refused():
  """Unknown or unvmappable hyperparameters, empty grids, bad ranges, a bad budget and a bad mesh axis name the fix."""
  with pytest.raises(ValueError, match="steps_per_call"):
    sweep.SweepConfig(steps_per_call=0)
  with pytest.raises(ValueError, match="cannot sweep.*num_layers"):
    sweep.train_population(TASK, [{"num_layers": 3}], CONFIG)
  with pytest.raises(ValueError, match="non-empty list"):
    sweep.grid(beta=[])
  with pytest.raises(ValueError, match="low < high"):
    sweep.random_search(4, learning_rate=(1e-2, 1e-4))
  with pytest.raises(ValueError, match="at least one member"):
    sweep.train_population(TASK, [], CONFIG)
  mesh = jax.make_mesh((1,), ("population",))
  with pytest.raises(ValueError, match="not an axis"):
    sweep.train_population(TASK, MEMBERS, CONFIG, mesh=mesh, mesh_axis="data")
  with pytest.raises(SystemExit):
    cli.main(["sweep", "--preset", "tiny", "--grid", "beta"])


def test_sweep_command_writes_table_plot_and_curves(tmp_path, capsys):
  """``energyformer sweep`` prints the member table and best member and writes CSV, JSON, JSONL and a heatmap."""
  cli.main(["sweep", "--preset", "tiny", "--variants", "momentum", "--grid", "learning_rate=1e-3,1e-2",
            "--grid", "beta=0,0.5", "--steps", "3", "--out", str(tmp_path)])
  out = capsys.readouterr().out
  assert "best member" in out
  rows = json.loads((tmp_path / "results.json").read_text())["members"]
  assert {(r["learning_rate"], r["beta"]) for r in rows} == {(1e-3, 0), (1e-3, 0.5), (1e-2, 0), (1e-2, 0.5)}
  assert (tmp_path / "members.csv").read_text().count("\n") == 5
  assert (tmp_path / "val_accuracy.png").stat().st_size > 0
  assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 4  # members × evaluations


def test_sweep_command_builds_grid_and_random_members(monkeypatch, tmp_path):
  """``--grid`` axes multiply, ``--range`` draws ``--random`` members (``:log`` log-uniformly), and both are
  crossed with the variants and seeds (each seed also the data seed)."""
  calls = []
  monkeypatch.setattr(sweep, "run", lambda task, members, config, out, **_: calls.append((members, config)))
  cli.main(["sweep", "--preset", "tiny", "--variants", "momentum", "nesterov", "--seeds", "2", "--grid",
            "beta=0,0.5", "--grid", "learning_rate=1e-3,3e-3", "--chunk-size", "4", "--steps-per-call", "5",
            "--out", str(tmp_path)])
  members, config = calls[-1]
  assert len(members) == 2 * 2 * 2 * 2 and config.chunk_size == 4 and config.steps_per_call == 5
  assert {"beta": 0.5, "learning_rate": 3e-3, "variant": "nesterov", "seed": 1, "data_seed": 1} in members
  cli.main(["sweep", "--preset", "tiny", "--random", "5", "--range", "learning_rate=1e-4:1e-2:log",
            "--range", "eta=0.5:1.5", "--out", str(tmp_path)])
  members, _ = calls[-1]
  assert len(members) == 5 and all(1e-4 <= m["learning_rate"] <= 1e-2 and 0.5 <= m["eta"] <= 1.5
                                   and m["variant"] == "standard" for m in members)


def test_population_axis_over_a_mesh(tmp_path):
  """On 4 CPU devices (``use_cpu_devices``), a population laid over ``population_mesh`` trains the same members as
  on one device (rtol 1e-5); 5 members are padded to 8 and only the 5 come back; so do ``energyformer sweep
  --devices 4`` and ``energyformer lis --devices 4`` with 3 members. A sweep killed after step 2 over 4 devices
  (padded to 8) resumes over 2 (padded to 6) and ends where the single-device sweep ends (rtol 1e-5)."""
  script = textwrap.dedent(f"""
      import dataclasses, json, sys, jax
      sys.path.insert(0, {os.path.dirname(os.path.dirname(__file__))!r})
      from train_fixtures import KilledAfter
      from energyformer.train import mesh, sweep
      mesh.use_cpu_devices(4)
      from energyformer import cli
      from energyformer.studies import lis
      task = lis.LISTask(dataclasses.replace(lis.PRESETS["tiny"], depth=1))
      config = sweep.SweepConfig(steps=3, batch_size=4, eval_every=3)
      members = [{{"variant": "standard", "seed": s, "data_seed": s, "learning_rate": 1e-3 * (s + 1)}} for s in range(5)]
      sharded = sweep.train_population(task, members, config, mesh=sweep.population_mesh(4), mesh_axis="population")
      single = sweep.train_population(task, members, config)

      saving, checkpoints = dataclasses.replace(config, checkpoint_every=1), {str(tmp_path / "checkpoints")!r}
      over = lambda n, **kw: sweep.train_population(task, members, saving, checkpoint_dir=checkpoints,
                                                    mesh=sweep.population_mesh(n), mesh_axis="population", **kw)
      try:
        over(4, progress=KilledAfter(2))
      except KeyboardInterrupt:
        pass
      resumed = over(2)
      cli.main(["sweep", "--preset", "tiny", "--devices", "4", "--grid", "learning_rate=1e-3,2e-3,3e-3", "--steps", "2",
                "--out", {str(tmp_path)!r}])
      cli.main(["lis", "--preset", "tiny", "--variants", "standard", "--seeds", "3", "--steps", "2", "--devices", "4",
                "--out", {str(tmp_path / "lis")!r}])
      print(json.dumps([jax.device_count()] + [[r["train_loss"] for r in rs] for rs in (sharded, single, resumed)]))
  """)
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True).stdout
  devices, sharded, single, resumed = json.loads(out.splitlines()[-1])
  assert devices == 4 and len(sharded) == len(single) == len(resumed) == 5
  np.testing.assert_allclose(sharded, single, rtol=1e-5)
  np.testing.assert_allclose(resumed, single, rtol=1e-5)
  rows = json.loads((tmp_path / "results.json").read_text())["members"]  # energyformer sweep --devices 4: 3 of 4
  assert sorted(r["learning_rate"] for r in rows) == [1e-3, 2e-3, 3e-3]
  run = json.loads((tmp_path / "lis" / "results.json").read_text())["runs"][0]  # energyformer lis --devices 4
  assert len(run["val_accuracy"]) == len(run["test_accuracy"]) == 3


def test_population_mesh_and_cpu_devices_name_the_fix(capsys):
  """Asking for more devices than JAX sees, for no device, or splitting the CPU after JAX started, names the fix."""
  with pytest.raises(ValueError, match="use_cpu_devices"):
    sweep.population_mesh(jax.device_count() + 1)
  jax.numpy.zeros(1).block_until_ready()
  with pytest.raises(RuntimeError, match="before any JAX computation"):
    train_mesh.use_cpu_devices(2)
  assert sweep.padded([{"a": 1}, {"a": 2}, {"a": 3}], 4) == [{"a": 1}, {"a": 2}, {"a": 3}, {"a": 3}]
  for command in ("lis", "sweep"):
    with pytest.raises(SystemExit):
      cli.main([command, "--preset", "tiny", "--devices", "0"])
    assert "--devices must be at least 1, got 0" in capsys.readouterr().err
