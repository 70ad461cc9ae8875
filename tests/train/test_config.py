"""Configuration of training: meshes, sharding rules, optimizer schedule, and clear errors for bad settings."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, PartitionSpec

from energyformer.models import GPT, GPTConfig
from energyformer.train import loop
from energyformer.train.config import TrainConfig, from_dict, resume_mismatches, to_dict
from energyformer.train.mesh import PRESETS, MeshConfig, mesh_shape, parse_mesh
from energyformer.train.optim import OptimizerConfig, decay_mask, learning_rate_schedule
from energyformer.train.sharding import DEFAULT_RULES, MESH_AXES, partition_spec
from train_fixtures import tiny_config


def _mesh(data=1, fsdp=1, tensor=1):
  return AbstractMesh((data, fsdp, tensor), MESH_AXES)


def test_mesh_presets_and_sizes():
  assert parse_mesh("fsdp_tp") == PRESETS["fsdp_tp"]
  assert parse_mesh("fsdp=4,tensor=2") == MeshConfig(data=-1, fsdp=4, tensor=2)  # data takes the other devices
  assert mesh_shape(parse_mesh("fsdp=4,tensor=2"), 16) == (2, 4, 2)
  assert parse_mesh("data=2,fsdp=-1") == MeshConfig(data=2, fsdp=-1, tensor=1)
  assert mesh_shape(PRESETS["fsdp_tp"], 8) == (1, 4, 2)
  assert mesh_shape(PRESETS["data"], 8) == (8, 1, 1)
  assert mesh_shape(PRESETS["single"], 8) == (1, 1, 1)


def test_unknown_mesh_axis_names_the_axis_and_the_valid_ones():
  with pytest.raises(ValueError, match=r"unknown mesh axis 'model'.*data, fsdp, tensor.*fsdp=4,tensor=2"):
    parse_mesh("data=2,model=4")
  with pytest.raises(ValueError, match=r"unknown mesh axis 'model'; the mesh axes are"):
    MeshConfig(rules=(("embed", ("model",)),))
  with pytest.raises(ValueError, match=r"integer size"):
    parse_mesh("fsdp=four")


def test_mesh_larger_than_the_devices_is_refused():
  with pytest.raises(ValueError, match=r"needs 16 devices but only 8.*shrink the mesh"):
    mesh_shape(MeshConfig(data=4, fsdp=4), 8)
  with pytest.raises(ValueError, match=r"cannot fill mesh.*multiple of 3"):
    mesh_shape(MeshConfig(data=-1, tensor=3), 8)


def test_partition_specs_follow_the_rules():
  mesh = _mesh(fsdp=4, tensor=2)
  spec = partition_spec(("layers", "embed", "heads", "head_dim"), (2, 16, 4, 8), DEFAULT_RULES, mesh)
  assert spec == PartitionSpec(None, ("fsdp",), ("tensor",), None)
  # A mesh axis used by an earlier dimension is not used twice.
  assert partition_spec(("mlp", "heads"), (4, 4), DEFAULT_RULES, mesh) == PartitionSpec(("tensor",), None)
  with pytest.raises(ValueError, match=r"cannot split axis 'embed' of w \(size 6\).*divisible by 4"):
    partition_spec(("embed",), (6,), DEFAULT_RULES, mesh, "w")
  with pytest.raises(ValueError, match=r"no sharding rule for logical axis 'experts'"):
    partition_spec(("experts",), (4,), DEFAULT_RULES, mesh)


def test_batch_not_divisible_by_the_data_parallel_size_names_the_fix(tmp_path):
  config = tiny_config(tmp_path, tmp_path, batch_size=6)
  loop.check_batch(config, _mesh(data=2, fsdp=1, tensor=4))
  with pytest.raises(ValueError, match=r"batch_size 6 is not divisible by the data-parallel size 4 .*multiple of 4"):
    loop.check_batch(config, _mesh(data=2, fsdp=2, tensor=2))


def test_missing_data_directory_fails_before_any_work(tmp_path):
  config = tiny_config(tmp_path / "no_such_corpus", tmp_path / "datasets")
  with pytest.raises(FileNotFoundError, match=r"no_such_corpus' does not exist.*'stdlib' for the built-in corpus"):
    loop.train(config, tmp_path / "out", progress=False)
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change, message", [
    (dict(steps=2), r"warmup_steps \(2\) must be smaller than steps"),
    (dict(compute_dtype="float16"), r"compute_dtype must be one of"),
    (dict(batch_size=0), r"batch_size must be a positive integer"),
])
def test_inconsistent_training_settings_are_refused(tmp_path, change, message):
  with pytest.raises(ValueError, match=message):
    tiny_config(tmp_path, tmp_path, **change)


def test_model_must_fit_the_tokenizer_and_the_sequences(tmp_path):
  config = tiny_config(tmp_path, tmp_path)
  with pytest.raises(ValueError, match=r"vocab_size \(100\).*use vocab_size >= 257"):
    dataclasses.replace(config, model=dataclasses.replace(config.model, vocab_size=100))
  with pytest.raises(ValueError, match=r"context_length \(8\) is shorter than the data's sequence_length \(16\)"):
    dataclasses.replace(config, model=dataclasses.replace(config.model, context_length=8))


def test_config_round_trips_through_json_form(tmp_path):
  config = tiny_config(tmp_path, tmp_path, mesh=PRESETS["fsdp_tp"])
  assert from_dict(TrainConfig, to_dict(config)) == config
  saved = to_dict(dataclasses.replace(config, seed=3, steps=20, mesh=PRESETS["data"]))
  assert resume_mismatches(saved, config) == ["seed"]


def test_learning_rate_warms_up_then_decays_to_the_final_fraction():
  schedule = learning_rate_schedule(OptimizerConfig(learning_rate=1.0, warmup_steps=10, final_fraction=0.1), 110)
  np.testing.assert_allclose([schedule(0), schedule(5), schedule(10), schedule(60), schedule(110)],
                             [0.0, 0.5, 1.0, 0.55, 0.1], atol=1e-6)


def test_weight_decay_applies_to_matrices_only():
  model = nnx.eval_shape(lambda: GPT(GPTConfig(320, 8, dim=8, num_heads=2, head_dim=4, depth=2, mlp_hidden=8),
                                      rngs=nnx.Rngs(0)))
  mask = decay_mask(nnx.state(model, nnx.Param))
  layer = mask["blocks"]["params"]
  assert mask["embed"].get_value() and mask["positions"].get_value() and layer[0]["energy"]["query"].get_value()
  assert not mask["norm_scale"].get_value() and not layer[0]["lagrangian"]["delta"].get_value()
