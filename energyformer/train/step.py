"""The pure training and evaluation steps of a language model, and their sharded ``jax.jit`` forms.

The model state is an ``nnx.State`` of all the model's variables; only its ``nnx.Param`` leaves are trained (fixed
energy parameters and solver hyperparameters pass through unchanged). The optimizer state covers the trained
parameters only.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def cast_floating(tree, dtype):
  """Every floating-point array of ``tree`` cast to ``dtype`` (integers untouched)."""
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def next_token_loss(model, tokens) -> jax.Array:
  """Mean cross-entropy ``−(1/BT) Σ_{b,t} log softmax(model(x)_{b,t})[x_{b,t+1}]`` over tokens (B, T + 1),
  computed in float32 whatever the model's compute precision."""
  logits = model(tokens[:, :-1]).astype(jnp.float32)
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]))


def _loss(graphdef, trainable, fixed, tokens, compute_dtype):
  model = nnx.merge(graphdef, cast_floating(trainable, compute_dtype), cast_floating(fixed, compute_dtype))
  return next_token_loss(model, tokens)


def make_train_step(graphdef, optimizer: optax.GradientTransformation, compute_dtype: str = "float32"):
  """The pure step ``(params, opt_state, batch) → (params', opt_state', metrics)``.

  ``params`` is the model state, ``batch = {"tokens": int (B, T + 1)}``. The loss and its gradient are computed
  with the parameters cast to ``compute_dtype`` (float32 master copies are updated: the cast's gradient is
  float32). ``metrics``: ``loss`` and the global gradient norm ``grad_norm`` before clipping.
  """
  dtype = COMPUTE_DTYPES[compute_dtype]

  def step(params, opt_state, batch):
    trainable, fixed = nnx.split_state(params, nnx.Param, ...)
    loss, grads = jax.value_and_grad(_loss, argnums=1)(graphdef, trainable, fixed, batch["tokens"], dtype)
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    return nnx.merge_state(trainable, fixed), opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

  return step


def make_eval_step(graphdef, compute_dtype: str = "float32"):
  """The pure evaluation ``(params, batch) → next_token_loss`` at ``compute_dtype``."""
  dtype = COMPUTE_DTYPES[compute_dtype]

  def evaluate(params, batch):
    trainable, fixed = nnx.split_state(params, nnx.Param, ...)
    return _loss(graphdef, trainable, fixed, batch["tokens"], dtype)

  return evaluate


def jit_train_step(step, param_shardings, opt_shardings, batch_sharding):
  """``step`` under ``jax.jit`` with the state's shardings in and out (metrics replicated); the old state's
  buffers are donated."""
  replicated = jax.sharding.NamedSharding(batch_sharding.mesh, jax.sharding.PartitionSpec())
  return jax.jit(step, in_shardings=(param_shardings, opt_shardings, {"tokens": batch_sharding}),
                 out_shardings=(param_shardings, opt_shardings, replicated), donate_argnums=(0, 1))


def jit_eval_step(evaluate, param_shardings, batch_sharding):
  """``evaluate`` under ``jax.jit`` with the parameters' and the batch's shardings."""
  return jax.jit(evaluate, in_shardings=(param_shardings, {"tokens": batch_sharding}))
