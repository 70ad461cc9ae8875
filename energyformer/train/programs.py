"""The compiled programs of a run on a mesh: state initialisation, the training step and evaluation.

The model state and optimizer state are described abstractly first (shapes and, through the rules table, their
shardings on the mesh), then created directly in those shardings under ``jax.jit``; nothing is materialised on
one device first. Programs are cached per (model, optimizer, budget, precision, seed, mesh), so a second run in
the same process, for instance a resumption, reuses the compiled executables.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
from flax import nnx

from energyformer.models.gpt import GPT
from energyformer.train.config import TrainConfig
from energyformer.train.optim import make_optimizer
from energyformer.train.sharding import batch_sharding, tree_shardings
from energyformer.train.step import jit_eval_step, jit_train_step, make_eval_step, make_train_step

# The initialisation runs once; on CPU, LLVM's optimisations would spend seconds on it for nothing.
_INIT_OPTIONS = {"cpu": {"xla_backend_optimization_level": 0}}


@dataclasses.dataclass(frozen=True)
class Programs:
  """Abstract states and their shardings, and the jitted ``init() → (params, opt_state)``,
  ``step(params, opt_state, batch) → (params, opt_state, metrics)`` and ``evaluate(params, batch) → loss``."""

  graphdef: object
  param_shapes: object
  opt_shapes: object
  param_shardings: object
  opt_shardings: object
  batch_sharding: object
  init: object
  step: object
  evaluate: object

  def restore_targets(self):
    """``jax.ShapeDtypeStruct`` trees of the model and optimizer states in this mesh's shardings."""
    return _targets(self.param_shapes, self.param_shardings), _targets(self.opt_shapes, self.opt_shardings)


def _targets(shapes, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)


def _trainable(params):
  return nnx.split_state(params, nnx.Param, ...)[0]


def programs(config: TrainConfig, mesh) -> Programs:
  """The programs of ``config`` on ``mesh`` (cached: only model, optimizer, steps, precision, seed and mesh
  matter)."""
  return _programs(config.model, config.optimizer, config.steps, config.compute_dtype, config.seed, config.mesh, mesh)


@functools.lru_cache(maxsize=8)
def _programs(model, optimizer_config, steps, compute_dtype, seed, mesh_config, mesh) -> Programs:
  # The token states keep the batch's layout inside the depth loop (EnergyStack's batch_axes).
  model = dataclasses.replace(model, batch_axes=tuple(dict(mesh_config.rules).get("batch", ())))
  create = lambda: GPT(model, rngs=nnx.Rngs(seed))
  # Outside jax.set_mesh: NNX would otherwise read the logical axis names as mesh axes.
  graphdef, param_shapes = nnx.split(nnx.eval_shape(create))
  optimizer = make_optimizer(optimizer_config, steps)
  opt_shapes = jax.eval_shape(optimizer.init, _trainable(param_shapes))
  param_shardings = tree_shardings(param_shapes, mesh, mesh_config.rules)
  opt_shardings = tree_shardings(opt_shapes, mesh, mesh_config.rules)
  batches = batch_sharding(mesh, mesh_config.rules)

  def init():
    params = nnx.split(create())[1]
    return params, optimizer.init(_trainable(params))

  init = jax.jit(init, out_shardings=(param_shardings, opt_shardings),
                 compiler_options=_INIT_OPTIONS.get(mesh.devices.flat[0].platform))
  step = jit_train_step(make_train_step(graphdef, optimizer, compute_dtype), param_shardings, opt_shardings, batches)
  evaluate = jit_eval_step(make_eval_step(graphdef, compute_dtype), param_shardings, batches)
  return Programs(graphdef, param_shapes, opt_shapes, param_shardings, opt_shardings, batches, init, step, evaluate)
