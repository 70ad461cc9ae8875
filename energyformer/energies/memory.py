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
  return ParamSpec((num_memories, dim), ("mlp", "embed"), normal(dim ** -0.5))


def _with_derivative(potential, derivative):
  """``potential`` whose derivative is computed by ``derivative`` (a ``custom_jvp``: ``Φ̇ = σ(h) ḣ``), so that the
  gradient of a potential energy is the activation function itself and its derivatives are the activation's."""
  wrapped = jax.custom_jvp(potential)
  wrapped.defjvp(lambda primals, tangents: (wrapped(primals[0]), derivative(primals[0]) * tangents[0]))
  return wrapped


def _relu_potential(h):
  """``Φ(h) = ½ ReLU(h)²``, so ``Φ' = ReLU``."""
  return 0.5 * jnp.square(jax.nn.relu(h))


def _gelu_potential(h):
  """``Φ(h) = ½((h² − 1) N(h) + h n(h)) + ¼`` with N, n the normal cdf and pdf, so ``Φ' = h N(h) = GELU``.

  Computed in at least float32 (the normal cdf has no bfloat16 implementation) and returned in ``h``'s dtype.
  """
  x = h.astype(jnp.promote_types(h.dtype, jnp.float32))
  cdf = jax.scipy.stats.norm.cdf(x)
  pdf = jax.scipy.stats.norm.pdf(x)
  return (0.5 * ((x * x - 1.0) * cdf + x * pdf) + 0.25).astype(h.dtype)


def _gelu(h):
  """``σ(h) = h N(h)``, exact GELU, in at least float32 like its potential."""
  return jax.nn.gelu(h.astype(jnp.promote_types(h.dtype, jnp.float32)), approximate=False).astype(h.dtype)


POTENTIALS = {"relu": _with_derivative(_relu_potential, jax.nn.relu), "gelu": _with_derivative(_gelu_potential, _gelu)}


@dataclasses.dataclass(frozen=True)
class Potential:
  """Element-wise potential energy ``E = −Σ_n Σ_μ Φ(ξ_μ·x_n + b_μ)`` with ``Φ' = σ`` (ReLU or exact GELU).

  ``−∇E = ξᵀ σ(ξ x + b)``: a tied-weight MLP. It is a ``ScoreEnergy`` of the scores ``h = ξ x + b``: with
  ``values=True`` the relaxed derivation keeps the hidden activations ``σ(h) = −∂E/∂h`` and projects them with an
  independent ``W^out`` (M, D): ``−G = σ(h) W^out``, the standard two-layer MLP.
  """

  dim: int
  num_memories: int
  activation: str = "relu"
  bias: bool = False
  values: bool = False

  def __post_init__(self):
    check_positive_int("dim", self.dim)
    check_positive_int("num_memories", self.num_memories)
    if self.activation not in POTENTIALS:
      raise ValueError(f"unknown activation {self.activation!r}; choose one of {sorted(POTENTIALS)} "
                       "(each is the derivative of a closed-form potential).")

  def specs(self):
    """The memories ``ξ`` (M, D), the bias (M,) when ``bias``, and the output projection when relaxed."""
    specs = {"memories": _memory_spec(self.dim, self.num_memories)}
    if self.bias:
      specs["bias"] = ParamSpec((self.num_memories,), ("mlp",), constant(0.0))
    if self.values:
      specs["output"] = ParamSpec((self.num_memories, self.dim), ("mlp", "embed"), normal(self.num_memories ** -0.5))
    return specs

  def scores(self, params, x, context=None):
    """Pre-activations ``h = x ξᵀ + b`` of shape (N, M): the scores of the tokens against the memories."""
    h = x @ params["memories"].T
    return h + params["bias"] if self.bias else h

  def energy_of_scores(self, params, scores, x=None, context=None, mask=None):
    """``E = −Σ Φ(h)`` at pre-activations ``h``; ``∂E/∂h = −σ(h)`` (``ScoreEnergy``)."""
    return -jnp.sum(POTENTIALS[self.activation](scores))

  def values_out(self, params, weights, context=None):
    """``w W^out`` (N, D) for weights ``w`` (N, M): the relaxed field ``−σ(h) W^out`` at ``w = ∂E/∂h``."""
    return weights @ params["output"]

  def __call__(self, params, x, context=None, mask=None):
    return self.energy_of_scores(params, self.scores(params, x))


def HopfieldReLU2(dim: int, num_memories: int) -> Potential:
  """The Energy Transformer's Hopfield energy ``E = −½ Σ_n Σ_μ ReLU(ξ_μ·x_n)²``: a bias-free ReLU ``Potential``."""
  return Potential(dim, num_memories, "relu")


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
    """The memories ``ξ`` (M, D) and the inverse temperature ``beta`` (scalar; trained when ``learnable``)."""
    return {"memories": _memory_spec(self.dim, self.num_memories),
            "beta": ParamSpec((), (), constant(self.beta), self.learnable)}

  def __call__(self, params, x, context=None, mask=None):
    beta = params["beta"]
    return -jnp.sum(jax.nn.logsumexp(beta * (x @ params["memories"].T), axis=-1)) / beta
