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
  gate projection ``gate`` = ``V`` (M, D). The gate of token n reads its own context row ``c_n``: without a mask
  the context is the tokens' own (L = N rows), with a mask (N, L) it is the last row token n sees (under a causal
  mask its own position, in a layer as in incremental decoding from cached rows), and a token that sees no row
  contributes nothing. The energy is a sum of per-token terms: token n's field depends on no other token."""

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
    gates = self.gates(params, own_rows(x, context, mask))
    if mask is not None:
      gates = jnp.where(jnp.any(mask, axis=-1, keepdims=True), gates, 0.0)
    return -jnp.sum(gates * GATED_POTENTIALS[self.potential](x @ params["up"].T))


def own_rows(x, context, mask):
  """Each token's own context row (N, D): ``context`` itself without a mask (then L = N), else row
  ``max{m : mask[n, m]}`` for token n (the diagonal of a causal mask)."""
  if mask is None:
    if jnp.shape(context)[0] != jnp.shape(x)[0]:
      raise ValueError(f"without a mask each token's context row is its own, so x and context need the same number "
                       f"of tokens; got x {jnp.shape(x)} and context {jnp.shape(context)}. Pass the (N, L) mask "
                       "saying which rows each token sees.")
    return context
  last_visible = jnp.shape(mask)[-1] - 1 - jnp.argmax(mask[:, ::-1], axis=-1)
  return context[last_visible]
