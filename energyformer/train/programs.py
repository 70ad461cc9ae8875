"""The compiled programs of a population on a mesh: initialisation, the training steps and the evaluation.

Every member's state carries a leading member axis, split over the mesh's ``population`` axis; within a member,
arrays are laid out by the rules table (``energyformer.train.sharding``). The states are described abstractly first
(shapes and shardings), then created directly in those shardings under ``jax.jit``: nothing is materialised on one
device first. Programs are cached per (task, structure, precision, mesh), so chunks of a sweep and a resumed run
in the same process reuse the compiled executables (the number of steps is an argument, not a constant).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from energyformer.train.optim import HYPERPARAMETERS, learning_rate, make_optimizer
from energyformer.train.sharding import batch_sharding, batch_shards, population_shardings
from energyformer.train.task import SEEDS

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# The initialisation runs once; on CPU, LLVM's optimisations would spend seconds on it for nothing.
_INIT_OPTIONS = {"cpu": {"xla_backend_optimization_level": 0}}


def cast_floating(tree, dtype):
  """Every floating-point array of ``tree`` cast to ``dtype`` (integers and keys untouched)."""
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def model_settings(member: dict) -> dict:
  """The part of a member that builds its model: everything but the optimiser's hyperparameters and the seeds."""
  return {k: v for k, v in member.items() if k not in HYPERPARAMETERS and k not in SEEDS}


@dataclasses.dataclass(frozen=True)
class Programs:
  """Abstract states and shardings of a population, and its jitted programs.

  ``steps(state, opt_state, batches, hparams, seeds, first, total_steps) → (state, opt_state, metrics)`` runs one
  training step per leading entry of ``batches`` (steps, members, examples, ...), the first being step ``first``
  (0-based), on the learning-rate schedule of a ``total_steps``-step run;
  ``metrics`` holds ``loss``, ``grad_norm``, ``learning_rate`` and ``finite`` (loss, gradient and updated
  parameters all finite) per step and member. ``evaluate(state, batch) → {metric: (members,)}``.
  """

  task: object
  graphdef: object
  state_shapes: object
  opt_shapes: object
  state_shardings: object
  opt_shardings: object
  batch_axes: tuple
  mesh: object
  steps: object
  evaluate: object

  def restore_targets(self, members: int):
    """``jax.ShapeDtypeStruct`` trees of the model and optimizer states of ``members`` members in this mesh's
    shardings."""
    return (_targets(self.state_shapes, self.state_shardings, members),
            _targets(self.opt_shapes, self.opt_shardings, members))

  def init(self, members: list[dict]):
    """``(state, opt_state)`` of ``members``: each initialised from its ``seed``, created in its shardings."""
    groups: dict[tuple, list[int]] = {}
    for index, member in enumerate(members):
      groups.setdefault(tuple(sorted(model_settings(member).items())), []).append(index)
    whole = len(groups) == 1
    pieces, order = [], []
    for settings, indices in groups.items():
      seeds = jnp.asarray([int(members[i].get("seed", 0)) for i in indices], jnp.uint32)
      create = _initializer(self.task, settings, self.batch_axes, self.mesh,
                            (self.state_shardings, self.opt_shardings) if whole else None)
      pieces.append(create(seeds))
      order += indices
    if whole:
      return pieces[0]
    position = jnp.argsort(jnp.asarray(order))
    merged = jax.tree.map(lambda *parts: jnp.concatenate(parts)[position], *pieces)
    return jax.device_put(merged, (self.state_shardings, self.opt_shardings))


def _targets(shapes, shardings, members: int):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct((members, *x.shape[1:]), x.dtype, sharding=s), shapes,
                      shardings)


def _member_state(task, settings: dict, batch_axes, seed):
  """One member's model state and optimizer state, its parameters drawn from ``seed``."""
  state = nnx.split(task.create_model(settings, nnx.Rngs(jax.random.key(seed)), batch_axes))[1]
  params = nnx.split_state(state, nnx.Param, ...)[0]
  template = make_optimizer({name: jnp.float32(0.5) for name in HYPERPARAMETERS}, 1)
  return state, template.init(params)


def _initializer(task, settings: tuple, batch_axes, mesh, shardings):
  """``seeds → (state, opt_state)`` for members sharing ``settings``, under ``jax.jit`` (into ``shardings``)."""
  create = jax.vmap(functools.partial(_member_state, task, dict(settings), batch_axes))
  return jax.jit(create, out_shardings=shardings, compiler_options=_INIT_OPTIONS.get(mesh.devices.flat[0].platform))


def programs(task, structure: tuple, config, mesh) -> Programs:
  """The programs of ``task``'s models of ``structure`` (its structural hyperparameters, sorted items) trained with
  ``config`` (a ``TrainerConfig``) on ``mesh``."""
  return _programs(task, structure, config.compute_dtype, config.mesh.rules, mesh)


@functools.lru_cache(maxsize=16)
def _programs(task, structure: tuple, compute_dtype: str, rules, mesh) -> Programs:
  batch_axes = tuple(dict(rules).get("batch", ()))
  settings = dict(structure)
  # Outside jax.set_mesh: NNX would otherwise read the logical axis names as mesh axes.
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: task.create_model(settings, nnx.Rngs(0), batch_axes)))
  state_shapes, opt_shapes = jax.eval_shape(jax.vmap(functools.partial(_member_state, task, settings, batch_axes)),
                                            jax.ShapeDtypeStruct((1,), jnp.uint32))
  state_shardings = population_shardings(state_shapes, mesh, rules)
  opt_shardings = population_shardings(opt_shapes, mesh, rules)
  dtype = COMPUTE_DTYPES[compute_dtype]
  steps = _steps_program(task, graphdef, dtype, state_shardings, opt_shardings)
  evaluate = _evaluation_program(task, graphdef, dtype, mesh, rules)
  return Programs(task, graphdef, state_shapes, opt_shapes, state_shardings, opt_shardings, batch_axes, mesh, steps,
                  evaluate)


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _steps_program(task, graphdef, dtype, state_shardings, opt_shardings):

  def member_step(state, opt_state, batch, hparams, seed, index, total_steps):
    params, fixed = nnx.split_state(state, nnx.Param, ...)
    key = jax.random.fold_in(jax.random.key(seed), index)

    def loss_fn(trainable):
      model = nnx.merge(graphdef, cast_floating(trainable, dtype), cast_floating(fixed, dtype))
      return task.loss(model, batch, key).astype(jnp.float32)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = make_optimizer(hparams, total_steps).update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite(params)
    metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": learning_rate(index, hparams, total_steps),
               "finite": finite}
    return nnx.merge_state(params, fixed), opt_state, metrics

  population_step = jax.vmap(member_step, in_axes=(0, 0, 0, 0, 0, None, None), spmd_axis_name="population")

  def steps(state, opt_state, batches, hparams, seeds, first, total_steps):
    def body(carry, inputs):
      batch, index = inputs
      state, opt_state, metrics = population_step(*carry, batch, hparams, seeds, index, total_steps)
      return (state, opt_state), metrics

    indices = first + jnp.arange(len(next(iter(batches.values()))))
    (state, opt_state), metrics = jax.lax.scan(body, (state, opt_state), (batches, indices))
    return state, opt_state, metrics

  return jax.jit(steps, out_shardings=(state_shardings, opt_shardings, None), donate_argnums=(0, 1))


def _evaluation_program(task, graphdef, dtype, mesh, rules):

  def member_evaluation(state, batch):
    return task.evaluate(nnx.merge(graphdef, cast_floating(state, dtype)), batch)

  evaluate = jax.vmap(member_evaluation, in_axes=(0, None), spmd_axis_name="population")
  return jax.jit(evaluate)


def evaluation_sharding(mesh, rules, examples: int):
  """Evaluation batches split over the ``batch`` rule's mesh axes when ``examples`` divides evenly, else replicated."""
  if examples % batch_shards(mesh, rules):
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return batch_sharding(mesh, rules)
