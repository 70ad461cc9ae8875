"""Training on 8 fake CPU devices, for test_train_mesh.py: ``python train_mesh_worker.py CORPUS DATA_DIR OUT``.

The parent sets ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the device count must be fixed before JAX
starts). Eight steps of the tiny model run on each multi-device mesh preset; the run on ``fsdp_tp`` is then
resumed from its step-4 checkpoint on the ``data`` mesh, and one device trains in bfloat16. Losses, parameter
layouts and the command's messages for meshes that do not fit go to ``OUT/results.json``.
"""
from __future__ import annotations

import contextlib
import io
import json
import pathlib
import shutil
import sys

import jax
import numpy as np

from energyformer import cli
from energyformer.studies import pretrain
from energyformer.train.mesh import PRESETS
from train_fixtures import tiny_config


def layout(state) -> dict:
  """Per parameter of a population of one: the member's shape, logical axes, the mesh axes of its sharding and the
  shape of one device's shard (the leading member axis, split over ``population``, left out), and the leading
  axis' mesh axis."""
  leaves = jax.tree_util.tree_leaves_with_path(state, is_leaf=lambda n: hasattr(n, "get_metadata"))
  return {jax.tree_util.keystr(path): {"shape": list(v.shape[1:]), "axes": list(v.get_metadata()["out_sharding"]),
                                       "members": v[...].sharding.spec[0],
                                       "spec": [list(p) if isinstance(p, tuple) else p
                                                for p in v[...].sharding.spec[1:]],
                                       "shard_shape": list(v[...].addressable_shards[0].data.shape[1:])}
          for path, v in leaves if "out_sharding" in v.get_metadata()}


def record(run) -> dict:
  """A run's first step, losses, mesh shape, parameter layout and state values (flattened), as JSON."""
  return {"start_step": run.start_step, "losses": [losses[0] for losses in run.losses], "mesh": dict(run.mesh.shape),
          "layout": layout(run.state),
          "params": np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(run.state)]).tolist()}


def command_error(argv) -> str:
  """What ``energyformer`` prints to stderr for ``argv``, which must exit with status 2."""
  stderr = io.StringIO()
  with contextlib.redirect_stderr(stderr):
    try:
      cli.main(argv)
    except SystemExit as exit_info:
      assert exit_info.code == 2, exit_info.code
      return stderr.getvalue()
  raise AssertionError(f"{argv} did not fail")


def main(corpus: str, data_dir: str, out: str) -> None:
  out = pathlib.Path(out)
  results = {"device_count": jax.device_count(), "runs": {}}
  for name in ("data", "fsdp", "fsdp_tp"):
    results["runs"][name] = record(pretrain.train(tiny_config(corpus, data_dir, mesh=PRESETS[name], every=4),
                                                  out / name, progress=False))
  moved = out / "fsdp_tp_to_data"
  shutil.copytree(out / "fsdp_tp" / "checkpoints", moved / "checkpoints")
  shutil.rmtree(moved / "checkpoints" / "8")
  resumed = pretrain.train(tiny_config(corpus, data_dir, mesh=PRESETS["data"], every=4), moved, progress=False)
  results["resumed"] = record(resumed)
  bf16 = pretrain.train(tiny_config(corpus, data_dir, every=None, compute_dtype="bfloat16"), out / "bf16",
                        progress=False)
  params = [v for v in jax.tree.leaves((bf16.state, bf16.opt_state)) if not jax.dtypes.issubdtype(v.dtype,
                                                                                                   jax.dtypes.prng_key)]
  results["bf16"] = {**record(bf16), "dtypes": sorted({str(x.dtype) for x in params})}
  data = ["--data", corpus, "--data-dir", data_dir]
  results["errors"] = {name: command_error(["pretrain", *options, *data, "--out", str(out / name)])
                       for name, options in (("bad_batch", ["--mesh", "data", "--batch-size", "12"]),
                                             ("bad_mesh", ["--mesh", "fsdp=3"]))}
  results["written"] = sorted(p.name for p in out.iterdir())
  (out / "results.json").write_text(json.dumps(results))


if __name__ == "__main__":
  main(*sys.argv[1:])
