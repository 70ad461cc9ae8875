"""Element-wise gated energy whose tied gradient step is a gated MLP with shared up/down projections (CEM).

This project's reading of the Causal Energy Minimization MLP energy (the paper's exact form is not public): each
token is scored against M hidden units by the shared projection ``W`` (M, D), and each unit's potential is gated by
the layer input, the context ``c``:

``F(x; c) = −Σ_n Σ_μ g(c_n·v_μ) Φ(x_n·w_μ)``,

with ``Φ' = φ``. The tied derivation holds the context, hence the gate, fixed, and the step is

``−∂F/∂x_n = Wᵀ [g(V c_n) ⊙ φ(W x_n)]``:

a gated MLP whose down projection is the up projection transposed and whose gate projection ``V`` (M, D) reads
the layer input. With the default quadratic potential ``Φ(h) = h²/2`` (``φ`` the identity) and SiLU gate this is
SwiGLU with ``W_down = W_upᵀ``; ``potential="relu"`` or ``"gelu"`` puts the activation on the up path
(``Φ = ½ReLU²`` or the GELU potential of ``energies.Potential``), ``gate="sigmoid"`` or ``"gelu"`` (exact) changes
the gate.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from energyformer.checks import check_positive_int
from energyformer.energies.memory import POTENTIALS
from energyformer.energies.params import ParamSpec, normal


def _quadratic(h):
  """``Φ(h) = h²/2``, so ``Φ'`` is the identity."""
  return 0.5 * jnp.square(h)


GATED_POTENTIALS = {"quadratic": _quadratic, **POTENTIALS}
GATES = {"silu": jax.nn.silu, "sigmoid": jax.nn.sigmoid, "gelu": functools.partial(jax.nn.gelu, approximate=False)}


@dataclasses.dataclass(frozen=True)
class GatedPotential:
  """``F(x; c) = −Σ_n Σ_μ g(c_n·v_μ) Φ(x_n·w_μ)`` (module docstring): shared projection ``up`` = ``W`` (M, D),
  gate projection ``gate`` = ``V`` (M, D). ``x`` (N, D) and the context ``c`` (N, D) pair token by token (the
  gate of token n reads ``c_n``); the mask is ignored (the energy is a sum of per-token terms)."""

  dim: int
  hidden: int
  potential: str = "quadratic"
  gate: str = "silu"

  def __post_init__(self):
    check_positive_int("dim", self.dim)
    check_positive_int("hidden", self.hidden)
    if self.potential not in GATED_POTENTIALS:
      raise ValueError(f"unknown potential {self.potential!r}; choose one of {sorted(GATED_POTENTIALS)}.")
    if self.gate not in GATES:
      raise ValueError(f"unknown gate {self.gate!r}; choose one of {sorted(GATES)}.")

  def specs(self):
    """The shared up/down projection ``up`` (M, D) and the gate projection ``gate`` (M, D)."""
    return {"up": ParamSpec((self.hidden, self.dim), ("mlp", "embed"), normal(self.dim ** -0.5)),
            "gate": ParamSpec((self.hidden, self.dim), ("mlp", "embed"), normal(self.dim ** -0.5))}

  def gates(self, params, context):
    """``g(c Vᵀ)`` (N, M): the gate of every token and hidden unit, read from the context."""
    return GATES[self.gate](context @ params["gate"].T)

  def __call__(self, params, x, context, mask=None):
    del mask
    if jnp.shape(context)[:-1] != jnp.shape(x)[:-1]:
      raise ValueError(f"GatedPotential gates each token by its own context token, so x and context need the same "
                       f"number of tokens; got x {jnp.shape(x)} and context {jnp.shape(context)}.")
    return -jnp.sum(self.gates(params, context) * GATED_POTENTIALS[self.potential](x @ params["up"].T))
