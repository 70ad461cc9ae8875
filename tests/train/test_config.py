"""Configuration of training: meshes, sharding rules, the optimiser, and clear errors for bad settings."""
from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, PartitionSpec

from energyformer.models import GPT, GPTConfig
from energyformer.studies import pretrain
from energyformer.train import trainer
from energyformer.train.config import TrainerConfig, from_dict, to_dict
from energyformer.train.mesh import PRESETS, MeshConfig, mesh_shape, parse_mesh
from energyformer.train.optim import OptimizerConfig, decay_mask, hyperparameters, learning_rate, make_optimizer
from energyformer.train.sharding import DEFAULT_RULES, MESH_AXES, partition_spec
from train_fixtures import tiny_config


def _mesh(data=1, fsdp=1, tensor=1):
  return AbstractMesh((1, data, fsdp, tensor), MESH_AXES)


def test_mesh_presets_and_sizes():
  assert parse_mesh("fsdp_tp") == PRESETS["fsdp_tp"]
  assert parse_mesh("fsdp=4,tensor=2") == MeshConfig(data=-1, fsdp=4, tensor=2)  # data takes the other devices
  assert mesh_shape(parse_mesh("fsdp=4,tensor=2"), 16) == (1, 2, 4, 2)
  assert parse_mesh("data=2,fsdp=-1") == MeshConfig(data=2, fsdp=-1, tensor=1)
  assert mesh_shape(PRESETS["fsdp_tp"], 8) == (1, 1, 4, 2)
  assert mesh_shape(PRESETS["data"], 8) == (1, 8, 1, 1)
  assert mesh_shape(PRESETS["single"], 8) == (1, 1, 1, 1)
  assert mesh_shape(parse_mesh("population=4"), 8) == (4, 2, 1, 1)


def test_unknown_mesh_axis_names_the_axis_and_the_valid_ones():
  with pytest.raises(ValueError, match=r"unknown mesh axis 'model'.*population, data, fsdp, tensor.*fsdp=4,tensor=2"):
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
  config = tiny_config(tmp_path, tmp_path, batch_size=6, eval_batch_size=6).trainer
  trainer.check_batch(config, _mesh(data=2, fsdp=1, tensor=4))
  with pytest.raises(ValueError, match=r"batch_size 6 is not divisible by the data-parallel size 4 .*multiple of 4"):
    trainer.check_batch(config, _mesh(data=2, fsdp=2, tensor=2))


def test_missing_data_directory_fails_before_any_work(tmp_path):
  config = tiny_config(tmp_path / "no_such_corpus", tmp_path / "datasets")
  with pytest.raises(FileNotFoundError, match=r"no_such_corpus' does not exist.*'stdlib' for the built-in corpus"):
    pretrain.train(config, tmp_path / "out", progress=False)
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change, message", [
    (dict(steps=2), r"warmup_steps \(2\) must be smaller than steps \(2\)"),
    (dict(steps=-5), r"steps must be a positive integer, got -5"),
    (dict(compute_dtype="float16"), r"compute_dtype must be one of"),
    (dict(batch_size=0), r"batch_size must be a positive integer"),
    (dict(steps_per_call=0), r"steps_per_call must be a positive integer"),
])
def test_inconsistent_training_settings_are_refused(tmp_path, change, message):
  with pytest.raises(ValueError, match=message):
    tiny_config(tmp_path, tmp_path, **change)


def test_model_must_fit_the_tokenizer_and_the_sequences(tmp_path):
  task = tiny_config(tmp_path, tmp_path).task
  with pytest.raises(ValueError, match=r"vocab_size \(100\).*use vocab_size >= 257"):
    dataclasses.replace(task, model=dataclasses.replace(task.model, vocab_size=100))
  with pytest.raises(ValueError, match=r"context_length \(8\) is shorter than the data's sequence_length \(16\)"):
    dataclasses.replace(task, model=dataclasses.replace(task.model, context_length=8))


def test_config_round_trips_through_json_form(tmp_path):
  config = tiny_config(tmp_path, tmp_path, mesh=PRESETS["fsdp_tp"])
  assert from_dict(pretrain.Pretraining, to_dict(config)) == config
  assert from_dict(TrainerConfig, to_dict(config.trainer)) == config.trainer


def _hparams(**values):
  return {name: v[0] for name, v in hyperparameters(OptimizerConfig(**values), [{}]).items()}


@pytest.mark.parametrize("peak, warmup, final, total", [(1.0, 10, 0.1, 110), (3e-3, 40, 0.0, 400), (1e-2, 0, 0.5, 50),
                                                        (5e-4, 7, 0.1, 30)])
def test_learning_rate_matches_optax_warmup_cosine(peak, warmup, final, total):
  """The array-valued schedule equals optax's warmup-cosine schedule (with its end value) at every step."""
  reference = optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total, end_value=final * peak)
  values = _hparams(learning_rate=peak, warmup_steps=warmup, final_fraction=final)
  for count in sorted({0, 1, max(warmup - 1, 0), warmup, warmup + 1, total // 2, total - 1, total, total + 5}):
    np.testing.assert_allclose(learning_rate(count, values, total), reference(count), rtol=1e-5, atol=1e-9)


def test_optimizer_equals_optax_adamw_with_the_decay_mask():
  """Ten updates of the array-hyperparameter optimiser equal optax's clipped, masked AdamW with Python numbers."""
  params = nnx.state(GPT(GPTConfig(320, 8, dim=8, num_heads=2, head_dim=4, depth=1, mlp_hidden=8), rngs=nnx.Rngs(0)),
                     nnx.Param)
  config = OptimizerConfig(learning_rate=3e-2, warmup_steps=3, final_fraction=0.2, weight_decay=0.3, b1=0.8, b2=0.9,
                           eps=1e-6, clip_norm=0.5)
  reference = optax.chain(optax.clip_by_global_norm(0.5), optax.adamw(
      optax.warmup_cosine_decay_schedule(0.0, 3e-2, 3, 10, end_value=0.2 * 3e-2), 0.8, 0.9, 1e-6,
      weight_decay=0.3, mask=decay_mask))
  ours = make_optimizer(_hparams(**dataclasses.asdict(config)), 10)
  states = [reference.init(params), ours.init(params)]
  trees = [params, params]
  updates = [jax.jit(tx.update) for tx in (reference, ours)]
  for step in range(10):
    grads = jax.tree.map(lambda p: jnp.sin(p * (step + 1)) * 10, params)
    for i, update in enumerate(updates):
      change, states[i] = update(grads, states[i], trees[i])
      trees[i] = optax.apply_updates(trees[i], change)
  for a, b in zip(jax.tree.leaves(trees[0]), jax.tree.leaves(trees[1])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_members_hyperparameters_are_arrays_and_are_checked(tmp_path):
  values = hyperparameters(OptimizerConfig(learning_rate=1e-3), [{}, {"learning_rate": 3e-3, "b2": 0.99}])
  np.testing.assert_allclose(values["learning_rate"], [1e-3, 3e-3])
  np.testing.assert_allclose(values["b2"], [0.95, 0.99])
  task, settings = tiny_config(tmp_path, tmp_path).task, tiny_config(tmp_path, tmp_path).trainer
  with pytest.raises(ValueError, match=r"learning_rate must lie in \(0.0, 3.4"):
    trainer.check_members(task, [{"learning_rate": 1e39}], settings)
  with pytest.raises(ValueError, match=r"warmup_steps \(9\) must be smaller than steps \(8\)"):
    trainer.check_members(task, [{"warmup_steps": 9}], settings)
  with pytest.raises(ValueError, match=r"unknown hyperparameter\(s\) \['lr'\]"):
    trainer.check_members(task, [{"lr": 1e-3}], settings)


def test_weight_decay_applies_to_matrices_only():
  model = nnx.eval_shape(lambda: GPT(GPTConfig(320, 8, dim=8, num_heads=2, head_dim=4, depth=2, mlp_hidden=8),
                                      rngs=nnx.Rngs(0)))
  mask = decay_mask(nnx.state(model, nnx.Param))
  layer = mask["blocks"]["params"]
  assert mask["embed"].get_value() and mask["positions"].get_value() and layer[0]["energy"]["query"].get_value()
  assert not mask["norm_scale"].get_value() and not layer[0]["lagrangian"]["delta"].get_value()


@dataclasses.dataclass(frozen=True)
class _Bytes:
  eos_id: int = 256


@dataclasses.dataclass(frozen=True)
class _Merges:
  serialized: str = ""
  sizes: tuple = ()


@dataclasses.dataclass(frozen=True)
class _Holder:
  tokenizer: _Bytes | _Merges = _Bytes()


def test_a_union_of_dataclasses_round_trips_through_json():
  """A field typed as a union of dataclasses comes back as the member whose fields the saved dict holds."""
  for holder in (_Holder(), _Holder(_Bytes(7)), _Holder(_Merges("abc", (1, 2)))):
    assert from_dict(_Holder, json.loads(json.dumps(to_dict(holder)))) == holder
