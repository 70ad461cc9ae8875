"""Associative-memory (Hopfield) energies acting on each token independently.

Both ignore the context and the mask: a memory energy is a sum of per-token terms, so its gradient at one token
never depends on another token.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from energyformer.checks import check_positive_int, check_range
from energyformer.energies.params import ParamSpec, constant, normal


def _memory_spec(dim, num_memories):
  return ParamSpec((num_memories, dim), ("memories", "embed"), normal(dim ** -0.5))


@dataclasses.dataclass(frozen=True)
class HopfieldReLU2:
  """``E = −½ Σ_n Σ_μ ReLU(ξ_μ·x_n)²``; ``−∇E`` is a bias-free MLP with tied weights ``ξᵀ ReLU(ξ x)``."""

  dim: int
  num_memories: int

  def __post_init__(self):
    check_positive_int("dim", self.dim)
    check_positive_int("num_memories", self.num_memories)

  def specs(self):
    return {"memories": _memory_spec(self.dim, self.num_memories)}

  def __call__(self, params, x, context=None, mask=None):
    hidden = jax.nn.relu(x @ params["memories"].T)
    return -0.5 * jnp.sum(hidden * hidden)


@dataclasses.dataclass(frozen=True)
class HopfieldLogSumExp:
  """``E = −(1/β) Σ_n log Σ_μ exp(β ξ_μ·x_n)`` (modern Hopfield energy; β > 0, trained when ``learnable``)."""

  dim: int
  num_memories: int
  beta: float = 0.01
  learnable: bool = True

  def __post_init__(self):
    check_positive_int("dim", self.dim)
    check_positive_int("num_memories", self.num_memories)
    check_range("beta", self.beta, 0.0, low_open=True, fix="Use an inverse temperature beta > 0.")

  def specs(self):
    return {"memories": _memory_spec(self.dim, self.num_memories),
            "beta": ParamSpec((), (), constant(self.beta), self.learnable)}

  def __call__(self, params, x, context=None, mask=None):
    beta = params["beta"]
    return -jnp.sum(jax.nn.logsumexp(beta * (x @ params["memories"].T), axis=-1)) / beta
