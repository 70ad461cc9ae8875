"""Causal Energy Minimization (CEM) variants: every sublayer a derived step on a causal energy, fewer free weights.

Attention is the exact (tied) gradient step on the causal interaction energy, weight-tied attention whose values
are the key projection and whose output is the query projection transposed (``cem_dplr``: interaction matrices
``W^Q W^Kᵀ + diag(d)``, ``energies.DPLRInteraction``); the MLP is the tied step on the gated element-wise energy
``energies.GatedPotential``, a SwiGLU-type gated MLP whose down projection is its up projection transposed.
``cem_precond`` steps each sublayer along ``P ∇E`` with its own learned ``P = D + U Uᵀ``
(``layers.Preconditioned``); ``cem_recursive`` takes each sublayer's step twice with the same weights, the
context held at the sublayer's input (``solvers.repeat``). Both sublayers act on pre-normalised tokens (energy
LayerNorm). The MLP replaces whatever ``GPTConfig.mlp`` names, except ``"none"`` (attention only); its width is
``GPTConfig.mlp_hidden``. How the paper parameterises each piece is not public: these are this project's readings
(``energies/dplr.py``, ``energies/gated_potential.py``, ``solvers/preconditioned.py``, ``solvers/recursive.py``).
"""
from __future__ import annotations

from energyformer import solvers
from energyformer.energies import DPLRInteraction, GatedPotential, Helmholtz, LayerNormLagrangian
from energyformer.layers import Layer, Preconditioned, Split
from energyformer.models.variants import Variant, register, softmax_energy

PRECONDITIONER_RANK = 4
RECURSIVE_STEPS = 2


def tied_energy(config):
  """The causal interaction energy of CEM attention: the Helmholtz inner-product energy without value projections
  (``A_h = W_Qh W_Khᵀ``), whose tied gradient is weight-tied attention."""
  return softmax_energy(config, values=False)


def _dplr_energy(config) -> DPLRInteraction:
  return DPLRInteraction(config.dim, config.num_heads, config.head_dim, aggregate=Helmholtz(config.temperature))


def gated_mlp_layer(config, solver=None) -> Layer:
  """The tied gradient step (``solver``, default unit gradient descent) on ``GatedPotential(dim, mlp_hidden)`` at
  pre-normalised tokens: ``x ← x + η Wᵀ[silu(V LN(x)) ⊙ W LN(x)]``."""
  solver = solvers.gradient_descent(1.0) if solver is None else solver
  return Layer(GatedPotential(config.dim, config.mlp_hidden), solver, "tied",
               lagrangian=LayerNormLagrangian(config.dim))


def cem_block(config, attention, mlp=None):
  """``attention`` then ``mlp`` (default ``gated_mlp_layer``) by ``config.splitting``; attention alone for
  ``mlp="none"``."""
  if config.mlp == "none":
    return attention
  return Split((attention, gated_mlp_layer(config) if mlp is None else mlp), config.splitting)


def _preconditioned_block(config, attention):
  if config.mlp == "none":
    return Preconditioned.of(attention, PRECONDITIONER_RANK)
  parts = (attention, gated_mlp_layer(config))
  return Split(tuple(Preconditioned.of(part, PRECONDITIONER_RANK) for part in parts), config.splitting)


def _recursive_block(config, attention):
  return cem_block(config, attention, gated_mlp_layer(config, solvers.repeat(solvers.gradient_descent(1.0),
                                                                          RECURSIVE_STEPS)))


register(Variant("cem", tied_energy, solvers.gradient_descent(), "tied",
                 "CEM: weight-tied attention (exact gradient) + gated MLP with shared up/down projection", cem_block))
register(Variant("cem_dplr", _dplr_energy, solvers.gradient_descent(), "tied",
                 "as cem; diagonal-plus-low-rank interaction matrices W_Q W_K^T + diag(d)", cem_block))
register(Variant("cem_precond", tied_energy, solvers.gradient_descent(), "tied",
                 "as cem; each step along P grad E, learned P = D + U U^T (rank 4)", _preconditioned_block))
register(Variant("cem_recursive", tied_energy, solvers.repeat(solvers.gradient_descent(), RECURSIVE_STEPS), "tied",
                 "as cem; each sublayer's step taken twice with shared weights", _recursive_block))
