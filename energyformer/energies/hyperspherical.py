"""Hyperspherical energies (Hyper-SET): tokens projected onto per-head spheres of radius ``√p``.

Per head ``h`` the tokens' points are ``z_iʰ = S(W_hᵀ x_i)`` with ``S(u) = u / √(mean(u²) + ε)`` (RMSNorm without
gain: ``‖z‖ = √p`` for head width ``p``, the sphere constraint). The *attention* energy

    E_att = Σ_h β⁻¹ Σ_i log Σ_j exp(β z_iʰ·z_jʰ)            (β = 1/√p by default; masked pairs left out)

is repulsive: its gradient with respect to the points is the *symmetric* attention
``∂E/∂z_i = Σ_j (A_ij + A_ji) z_j`` with ``A`` the row softmax of ``β z zᵀ`` (row plus column softmax, queries =
keys = values = ``z``), and with respect to the tokens ``∇_{x_i} E = Σ_h W_h J_ih ∂E/∂z_iʰ``, ``J = ∂S/∂u`` (the
projection onto the sphere's tangent, scaled). The *feed-forward* energy, with one projection ``D`` (D, M) used
up and down,

    E_ff = −½ Σ_i Σ_m ReLU(ĥ_im)²,   ĥ_i = S(Dᵀ x_i) (``normalise=True``, Hyper-SET's) or ``Dᵀ x_i``,

is attractive: ``∂E/∂ĥ = −ReLU(ĥ)``. ``symmetric_field`` and ``FeedForward.field`` are the updates Hyper-SET takes:
these gradients carried back through ``W`` (resp. ``D``) without the normalisation's Jacobian (exact for the
feed-forward energy with ``normalise=False``); ``jax.grad`` of the energies gives the exact gradients.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from energyformer.checks import check_positive_int
from energyformer.energies.params import ParamSpec, normal


def sphere(u, eps: float = 1e-6):
  """``S(u) = u / √(mean(u²) + ε)`` over the last axis: a point of norm ``√p`` (RMSNorm without gain)."""
  return u * jax.lax.rsqrt(jnp.mean(u * u, axis=-1, keepdims=True) + eps)


def _masked_scores(z, keys, beta, mask):
  scores = beta * jnp.einsum("hnk,hmk->hnm", z, keys)
  return scores if mask is None else jnp.where(mask[None], scores, -jnp.inf)


def sphere_energy(z, keys, beta, mask=None):
  """``β⁻¹ Σ_h Σ_i log Σ_j exp(β z_iʰ·k_jʰ)`` for points ``z`` (H, N, p), ``keys`` (H, M, p), mask (N, M)."""
  return jnp.sum(jax.nn.logsumexp(_masked_scores(z, keys, beta, mask), axis=-1)) / beta


def symmetric_attention(z, beta, mask=None):
  """``∂/∂z sphere_energy(z, z)``: ``Σ_j (A_ij + A_ji) z_j`` per head, ``A`` the row softmax of ``β z zᵀ``
  (masked pairs get weight 0). ``z`` (H, N, p) → (H, N, p)."""
  weights = jax.nn.softmax(_masked_scores(z, z, beta, mask), axis=-1)
  return jnp.einsum("hnm,hmk->hnk", weights + jnp.swapaxes(weights, -1, -2), z)


@dataclasses.dataclass(frozen=True)
class SphereAttention:
  """The hyperspherical attention energy (module docstring) with one projection ``W`` (D, H, p), tied Q = K = V.

  ``beta`` defaults to ``1/√head_dim``. ``params = {"w": W}``.
  """

  dim: int
  num_heads: int
  head_dim: int
  beta: float | None = None

  def __post_init__(self):
    for name in ("dim", "num_heads", "head_dim"):
      check_positive_int(name, getattr(self, name))
    if self.beta is not None and not self.beta > 0:
      raise ValueError(f"beta must be positive (an inverse temperature), got {self.beta}; leave it None for "
                       "1/sqrt(head_dim).")

  @property
  def inverse_temperature(self) -> float:
    return self.head_dim ** -0.5 if self.beta is None else self.beta

  def specs(self):
    """The one projection ``w`` (D, H, Dh), tied across queries, keys and values."""
    return {"w": ParamSpec((self.dim, self.num_heads, self.head_dim), ("embed", "heads", "head_dim"),
                           normal(self.dim ** -0.5))}

  def points(self, params, x):
    """``z_iʰ = S(W_hᵀ x_i)``: tokens (N, D) → points (H, N, p) on spheres of radius √p."""
    return sphere(jnp.einsum("nd,dhk->hnk", x, params["w"]))

  def __call__(self, params, x, context, mask=None):
    return sphere_energy(self.points(params, x), self.points(params, context), self.inverse_temperature, mask)

  def symmetric_field(self, params, x, mask=None):
    """Hyper-SET's attention update direction ``Σ_h W_h Σ_j (A_ij + A_ji) z_jʰ`` (N, D): the points' gradient
    through the tied output ``Wᵀ``, without the sphere's Jacobian."""
    attended = symmetric_attention(self.points(params, x), self.inverse_temperature, mask)
    return jnp.einsum("hnk,dhk->nd", attended, params["w"])


@dataclasses.dataclass(frozen=True)
class SphereFeedForward:
  """The feed-forward energy ``−½ Σ ReLU(ĥ)²`` (module docstring) with one projection ``D`` (D, M) up and down.

  ``normalise``: ``ĥ = S(Dᵀ x)`` (Hyper-SET's) or ``Dᵀ x``. Per-token: ignores the context and the mask.
  ``params = {"d": D}``.
  """

  dim: int
  hidden: int
  normalise: bool = True

  def __post_init__(self):
    check_positive_int("dim", self.dim)
    check_positive_int("hidden", self.hidden)

  def specs(self):
    """The feed-forward directions ``d`` (D, M)."""
    return {"d": ParamSpec((self.dim, self.hidden), ("embed", "mlp"), normal(self.dim ** -0.5))}

  def hidden_units(self, params, x):
    """``ĥ`` (N, M)."""
    h = x @ params["d"]
    return sphere(h) if self.normalise else h

  def __call__(self, params, x, context=None, mask=None):
    del context, mask
    return -0.5 * jnp.sum(jnp.square(jax.nn.relu(self.hidden_units(params, x))))

  def field(self, params, x, mask=None):
    """Hyper-SET's feed-forward update direction ``−ReLU(ĥ) Dᵀ`` (N, D) (exact gradient without normalisation)."""
    del mask
    return -jax.nn.relu(self.hidden_units(params, x)) @ params["d"].T
