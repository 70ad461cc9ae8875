"""Diagonal-plus-low-rank causal interaction energy (Causal Energy Minimization, CEM).

CEM reads weight-tied multi-head attention as one gradient step on a causal interaction energy of per-head
interaction matrices ``A_h`` (D, D). This project's reading of that energy (the paper's exact equations are not
public):

``F(x; c) = −Σ_h T_h Σ_n log Σ_{m visible from n} exp(x_n A_h c_mᵀ / T_h)``,  ``A_h = W^Q_h W^K_hᵀ + diag(d_h)``,

with the causal mask making each token's term a conditional energy ``E(x_n | c_{≤n})``. With ``d = 0`` the
interaction matrix is the low-rank ``W^Q_h W^K_hᵀ`` and the energy is ``Interaction(values=False)`` itself, whose
tied field (context held) is weight-tied attention: values the key projection, output the query projection
transposed. The diagonal adds a rank-D term to every head's scores, ``(x_n ⊙ d_h)·c_m``, and to its tied field a
second value path of raw context tokens (below).
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from energyformer.energies.attention import Interaction
from energyformer.energies.local import inner_product
from energyformer.energies.params import ParamSpec, constant


@dataclasses.dataclass(frozen=True)
class DPLRInteraction(Interaction):
  """Interaction energy of diagonal-plus-low-rank interaction matrices ``A_h = W^Q_h W^K_hᵀ + diag(d_h)``.

  The per-head queries and keys are extended by the diagonal term, ``q̃_hn = [x_n W^Q_h, x_n ⊙ d_h]`` and
  ``k̃_hm = [c_m W^K_h, c_m]`` (H, N, Dh + D), so that ``q̃_hn·k̃_hm = x_n A_h c_mᵀ`` and every path of
  ``Interaction`` (energy, tied and relaxed fields, blockwise evaluation) applies unchanged. Under the Helmholtz
  inner-product energy the tied field (context held) is

  ``∂F/∂x_n = −Σ_h [(Σ_m p_hnm k_hm) W^Q_hᵀ + d_h ⊙ Σ_m p_hnm c_m]``,  ``p_hnm = softmax_m(x_n A_h c_mᵀ / T_h)``:

  weight-tied attention plus, per head, attention over the raw context scaled feature-wise by ``d_h``. The
  diagonal ``d`` (H, D) starts at ``diagonal_init`` (default 0: the low-rank energy at initialisation).
  """

  diagonal_init: float = 0.0

  def __post_init__(self):
    super().__post_init__()
    if self.local is not inner_product:
      raise ValueError("DPLRInteraction is the bilinear energy of scores x A cᵀ: it takes the inner-product local "
                       "energy (the default); use Interaction for other local energies.")

  def specs(self):
    """``Interaction``'s parameters plus the per-head diagonal ``d`` (H, D)."""
    diagonal = ParamSpec((self.num_heads, self.dim), ("heads", "embed"), constant(self.diagonal_init))
    return {**super().specs(), "diagonal": diagonal}

  def queries(self, params, x):
    """``q̃ = [x W^Q, x ⊙ d]`` (H, N, Dh + D)."""
    scaled = x[None] * params["diagonal"][:, None, :]
    return jnp.concatenate([super().queries(params, x), scaled], axis=-1)

  def keys(self, params, context):
    """``k̃ = [c W^K, c]`` (H, M, Dh + D)."""
    low_rank = super().keys(params, context)
    tokens = jnp.broadcast_to(context[None], (self.num_heads,) + context.shape)
    return jnp.concatenate([low_rank, tokens.astype(low_rank.dtype)], axis=-1)

  def query_out(self, params, per_head):
    """``Σ_h (u_hn[:Dh] W^Q_hᵀ + u_hn[Dh:] ⊙ d_h)`` (N, D): ``∂F/∂x`` from ``∂F/∂q̃`` for ``u`` (H, N, Dh + D)."""
    low_rank, diagonal = per_head[..., :self.head_dim], per_head[..., self.head_dim:]
    return super().query_out(params, low_rank) + jnp.einsum("hnd,hd->nd", diagonal, params["diagonal"])
