"""Training on 8 fake CPU devices, for test_train_mesh.py: ``python train_mesh_worker.py CORPUS DATA_DIR OUT``.

The parent sets ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the device count must be fixed before JAX
starts). Eight steps of the tiny model run on each multi-device mesh preset; the run on ``fsdp_tp`` is then
resumed from its step-4 checkpoint on the ``data`` mesh, and one device trains in bfloat16. Losses, parameter
layouts and error messages go to ``OUT/results.json``.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import sys

import jax
import numpy as np

from energyformer.train import loop
from energyformer.train.mesh import PRESETS
from train_fixtures import tiny_config


def layout(params) -> dict:
  """Per parameter: shape, logical axes, the mesh axes of its sharding, and the shape of one device's shard."""
  leaves = jax.tree_util.tree_leaves_with_path(params, is_leaf=lambda n: hasattr(n, "get_metadata"))
  return {jax.tree_util.keystr(path): {"shape": list(v.shape), "axes": list(v.get_metadata()["out_sharding"]),
                                       "spec": [list(p) if isinstance(p, tuple) else p for p in v[...].sharding.spec],
                                       "shard_shape": list(v[...].addressable_shards[0].data.shape)}
          for path, v in leaves}


def record(run: loop.TrainResult) -> dict:
  """A run's first step, losses, mesh shape, parameter layout and parameter values (flattened), as JSON."""
  return {"start_step": run.start_step, "losses": run.losses, "mesh": dict(run.mesh.shape), "layout": layout(run.params),
          "params": np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(run.params)]).tolist()}


def main(corpus: str, data_dir: str, out: str) -> None:
  out = pathlib.Path(out)
  results = {"device_count": jax.device_count(), "runs": {}}
  for name in ("data", "fsdp", "fsdp_tp"):
    results["runs"][name] = record(loop.train(tiny_config(corpus, data_dir, mesh=PRESETS[name], every=4), out / name,
                                              progress=False))
  moved = out / "fsdp_tp_to_data"
  shutil.copytree(out / "fsdp_tp" / "checkpoints", moved / "checkpoints")
  shutil.rmtree(moved / "checkpoints" / "8")
  resumed = loop.train(tiny_config(corpus, data_dir, mesh=PRESETS["data"], every=4), moved, progress=False)
  results["resumed"] = record(resumed)
  bf16 = loop.train(tiny_config(corpus, data_dir, every=None, compute_dtype="bfloat16"), out / "bf16", progress=False)
  results["bf16"] = {**record(bf16), "dtypes": sorted({str(x.dtype) for x in jax.tree.leaves((bf16.params,
                                                                                             bf16.opt_state))})}
  try:
    loop.train(dataclasses.replace(tiny_config(corpus, data_dir, mesh=PRESETS["data"]), batch_size=12),
               out / "bad_batch", progress=False)
  except ValueError as error:
    results["bad_batch_error"] = str(error)
  (out / "results.json").write_text(json.dumps(results))


if __name__ == "__main__":
  main(*sys.argv[1:])
