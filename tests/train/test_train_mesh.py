"""Sharded training on 8 fake CPU devices: every mesh preset follows the single-device trajectory, parameters are
laid out as the rules say, a checkpoint written on one mesh resumes on another, and bfloat16 compute trains
float32 parameters.

The multi-device runs happen in one subprocess (``train_mesh_worker.py``), because the device count must be fixed
before JAX starts; XLA's backend optimisation is turned off there to keep compilation short. The single-device
reference runs in this process.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from energyformer.data.text import corpus_source
from energyformer.studies import pretrain
from train_fixtures import tiny_config, write_corpus
from train_mesh_worker import record

TESTS = pathlib.Path(__file__).parents[1]
# Sharded runs sum in a different order from the single-device run (and are compiled with other optimisations):
# float32 round-off, measured at most 3e-7 (relative, losses) and 3e-7 (absolute, parameters) after 8 steps.
LOSS_RTOL = 1e-5
PARAM_ATOL = 1e-5
MESH_AXES_OF = {  # logical axis -> the mesh axes the default rules give it (an independent statement of the rules)
    "embed": ("fsdp",), "vocab": ("tensor",), "heads": ("tensor",), "mlp": ("tensor",), "head_dim": (),
    "layers": (), None: (),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("mesh")
  corpus = write_corpus(root / "corpus"), root / "datasets"
  corpus_source(tiny_config(*corpus).task.data, "train")  # built once here, before two processes read it
  return corpus


@pytest.fixture(scope="module")
def results(corpus, tmp_path_factory):
  """The worker's results, with the single-device reference run here added under ``runs["single"]``."""
  root = tmp_path_factory.mktemp("mesh_runs")
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"}
  worker = subprocess.Popen([sys.executable, str(TESTS / "train_mesh_worker.py"), *map(str, corpus), str(root / "out")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=TESTS)
  single = record(pretrain.train(tiny_config(*corpus, every=None), root / "single", progress=False))
  _, stderr = worker.communicate(timeout=600)
  assert worker.returncode == 0, stderr[-3000:]
  results = json.loads((root / "out" / "results.json").read_text())
  results["runs"]["single"] = single
  return results


def _spec_axes(entry):
  return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def test_runs_on_eight_devices(results):
  assert results["device_count"] == 8
  assert {name: run["mesh"] for name, run in results["runs"].items()} == {
      "single": {"population": 1, "data": 1, "fsdp": 1, "tensor": 1},
      "data": {"population": 1, "data": 8, "fsdp": 1, "tensor": 1},
      "fsdp": {"population": 1, "data": 1, "fsdp": 8, "tensor": 1},
      "fsdp_tp": {"population": 1, "data": 1, "fsdp": 4, "tensor": 2}}


@pytest.mark.parametrize("mesh", ["data", "fsdp", "fsdp_tp"])
def test_sharded_runs_follow_the_single_device_trajectory(results, mesh):
  single, run = results["runs"]["single"], results["runs"][mesh]
  np.testing.assert_allclose(run["losses"], single["losses"], rtol=LOSS_RTOL)
  np.testing.assert_allclose(run["params"], single["params"], atol=PARAM_ATOL)
  assert single["losses"][-1] < single["losses"][0]


@pytest.mark.parametrize("mesh", ["single", "data", "fsdp", "fsdp_tp"])
def test_parameters_are_sharded_as_the_rules_say(results, mesh):
  run = results["runs"][mesh]
  for name, param in run["layout"].items():
    assert param["members"] == "population", name
    expected = [MESH_AXES_OF[axis] for axis in param["axes"]]
    assert [_spec_axes(entry) for entry in param["spec"]] == expected, name
    pieces = [math.prod(run["mesh"][a] for a in axes) for axes in expected]
    assert param["shard_shape"] == [size // n for size, n in zip(param["shape"], pieces)], name
  if mesh == "fsdp_tp":
    assert run["layout"]["['embed']"]["shard_shape"] == [160, 4]  # vocab over tensor=2, embed over fsdp=4


def test_checkpoint_from_one_mesh_resumes_on_another(results):
  """Saved at step 4 on the 4 × 2 FSDP × tensor mesh, resumed on the 8-way data-parallel mesh."""
  resumed, single = results["resumed"], results["runs"]["single"]
  assert resumed["start_step"] == 4
  np.testing.assert_allclose(resumed["losses"], single["losses"][4:], rtol=LOSS_RTOL)
  np.testing.assert_allclose(resumed["params"], single["params"], atol=PARAM_ATOL)
  embed = resumed["layout"]["['embed']"]
  assert embed["shard_shape"] == embed["shape"]  # replicated on the data-parallel mesh


def test_bfloat16_compute_keeps_float32_state_and_tracks_float32_losses(results):
  bf16, single = results["bf16"], results["runs"]["single"]
  assert bf16["dtypes"] == ["float32", "int32"]  # parameters, moments and hyperparameters float32; step counts
  np.testing.assert_allclose(bf16["losses"], single["losses"], rtol=1e-2)  # measured: 5e-4


def test_meshes_that_do_not_fit_are_refused_by_the_command_without_a_traceback(results):
  """On 8 devices, ``--batch-size 12 --mesh data`` and ``--mesh fsdp=3`` end with a message naming the setting and
  the fix (exit status 2, checked in the worker), no traceback, and nothing written."""
  batch, mesh = results["errors"]["bad_batch"], results["errors"]["bad_mesh"]
  assert "batch_size 12" in batch and "data-parallel size 8" in batch and "multiple of 8" in batch
  assert "cannot fill mesh" in mesh and "multiple of 3" in mesh
  assert "Traceback" not in batch + mesh
  assert not {"bad_batch", "bad_mesh"} & set(results["written"])


PROCESS_SCRIPT = """
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_num_cpu_devices", 2)
from energyformer.train import mesh
mesh.initialize_distributed(sys.argv[1], 2, int(sys.argv[2]))
from energyformer.studies import pretrain
from train_fixtures import tiny_config
result = pretrain.train(tiny_config(sys.argv[3], sys.argv[4], mesh=mesh.PRESETS["fsdp"], every=4), sys.argv[5],
                        progress=False)
print(json.dumps({"processes": jax.process_count(), "devices": jax.device_count(), "start": result.start_step,
                  "losses": result.losses}))
"""


def _two_processes(corpus, out) -> list[dict]:
  with socket.socket() as probe:
    probe.bind(("localhost", 0))
    address = f"localhost:{probe.getsockname()[1]}"
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  workers = [subprocess.Popen([sys.executable, "-c", PROCESS_SCRIPT, address, str(index), *map(str, corpus), str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=TESTS)
             for index in range(2)]
  outputs = [worker.communicate(timeout=600) for worker in workers]
  assert all(worker.returncode == 0 for worker in workers), outputs[0][1][-3000:] + outputs[1][1][-3000:]
  return [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]


@pytest.mark.slow
def test_two_processes_train_checkpoint_and_resume_together(corpus, tmp_path):
  """Two processes (2 CPU devices each, FSDP over all 4) read their own documents, save one checkpoint holding
  both iterator states, and resume from it exactly."""
  first = _two_processes(corpus, tmp_path)
  assert [r["processes"] for r in first] == [2, 2] and [r["devices"] for r in first] == [4, 4]
  assert first[0]["losses"] == first[1]["losses"]
  assert sorted(p.name for p in (tmp_path / "checkpoints" / "8" / "data").glob("process_*")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
  shutil.rmtree(tmp_path / "checkpoints" / "8")
  resumed = _two_processes(corpus, tmp_path)
  assert [r["start"] for r in resumed] == [4, 4]
  assert resumed[0]["losses"] == first[0]["losses"][4:]
