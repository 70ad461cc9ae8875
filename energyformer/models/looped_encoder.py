"""A looped (weight-shared, recurrent-depth) bidirectional encoder built from a GPT variant's depth step.

Tokens (B, N) are embedded (token + position), stepped ``iterations`` times by one shared depth step of
``config.variant`` (its attention and MLP steps, its solver: gradient descent is the recurrent standard
Transformer, ``momentum`` / ``nesterov`` carry their velocity across iterations) with no mask (every token sees
every token), then read out by a LayerNorm and a linear head to ``num_classes`` logits per token.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from energyformer.checks import check_positive_int
from energyformer.models.gpt import GPT, GPTConfig


class LoopedEncoder(nnx.Module):
  """``GPT``'s embeddings and shared depth step (``config.shared`` is set), run without a mask, and a token
  classifier head (D, num_classes). ``config.depth`` is the default number of iterations."""

  def __init__(self, config: GPTConfig, num_classes: int, *, rngs: nnx.Rngs):
    check_positive_int("num_classes", num_classes)
    self.config = dataclasses.replace(config, shared=True)
    self.core = GPT(self.config, rngs=rngs)
    self.head = nnx.Param(config.dim ** -0.5 * jax.random.normal(rngs.params(), (config.dim, num_classes)))

  def __call__(self, tokens, iterations: int | None = None):
    """Logits (B, N, num_classes) after ``iterations`` (default ``config.depth``) steps of the shared block."""
    if jnp.ndim(tokens) != 2 or tokens.shape[1] > self.config.context_length:
      raise ValueError(f"tokens must have shape (batch, length ≤ {self.config.context_length}), got "
                       f"{jnp.shape(tokens)}.")
    x = self.core.embed[...][tokens] + self.core.positions[...][:tokens.shape[1]]
    x = self.core.blocks(x, None, num_steps=iterations)
    x = (x - jnp.mean(x, axis=-1, keepdims=True)) * jax.lax.rsqrt(jnp.var(x, axis=-1, keepdims=True) + 1e-5)
    return (x * self.core.norm_scale[...] + self.core.norm_bias[...]) @ self.head[...]
