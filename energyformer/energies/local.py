"""Local energies ``E(q_n, k_m)`` between an updated token's query and a context token's key, per head.

Every local energy has the signature ``local(scores, q, k) -> E`` with

* ``q`` of shape (H, N, Dh): the projected tokens being updated (``q_hn = x_n W^Q_h``),
* ``k`` of shape (H, M, Dh): the projected context (``k_hm = c_m W^K_h``),
* ``scores`` of shape (H, N, M): the bilinear scores ``s_hnm = q_hn · k_hm``,
* ``E`` of shape (H, N, M).

A local energy that depends on the tokens only through ``scores`` (plus terms in ``q`` alone) has a *relaxed*
form: the attention weights ``-∂F/∂s`` with independent value and output projections.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from energyformer.checks import check_range

LocalEnergy = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def inner_product(scores, q, k):
  """``E_nm = -q_n·k_m``: under a Helmholtz aggregator its gradient step is softmax attention."""
  del q, k
  return -scores


def elastic(scores, q, k):
  """``E_nm = ½‖q_n − k_m‖²`` (elastic potential): its gradient step is ``(1−η)z + η·attention``."""
  q_sq = 0.5 * jnp.sum(q * q, axis=-1)[..., :, None]
  k_sq = 0.5 * jnp.sum(k * k, axis=-1)[..., None, :]
  return q_sq - scores + k_sq


def quadratic(scores, q, k):
  """``E_nm = −½(q_n·k_m)²``: with a plain sum its gradient step is unnormalised linear attention."""
  del q, k
  return -0.5 * scores * scores


@dataclasses.dataclass(frozen=True)
class Pairwise:
  """A local energy ``E_hnm = fn(q_hn, k_hm)`` from a function of one (query, key) pair of vectors (``pairwise``).

  The Interaction recognises it (``per_pair``) and, for long sequences, evaluates it in small tiles of pairs: its
  work per pair is a vector, an (H, N, M, Dh) tensor if formed densely.
  """

  fn: Callable[[jax.Array, jax.Array], jax.Array]

  def __call__(self, scores, q, k):
    del scores
    energies = over_pairs(self.fn)(q, k)
    if energies.shape != q.shape[:-1] + (k.shape[-2],):
      raise ValueError(
          f"a pairwise local energy must return a scalar per (query, key) pair, got shape {energies.shape[3:]} "
          "per pair; reduce it with jnp.sum or similar.")
    return energies

  def with_query_gradients(self, q, k):
    """``(E, ∇_q E)``: the energies ``E_hnm = fn(q_hn, k_hm)`` (H, N, M) and their gradients in the query
    ``∂fn(q_hn, k_hm)/∂q_hn`` (H, N, M, Dh), one ``jax.value_and_grad`` of ``fn`` per pair."""
    return over_pairs(jax.value_and_grad(self.fn))(q, k)


def over_pairs(pair_fn):
  """Lifts ``pair_fn(q: (Dh,), k: (Dh,))`` to every head and (query, key) pair: ``(H, N, Dh), (H, M, Dh) → (H, N,
  M, ...)``."""
  over_keys = jax.vmap(pair_fn, in_axes=(None, 0))
  return jax.vmap(jax.vmap(over_keys, in_axes=(0, None)), in_axes=(0, 0))


def pairwise(fn: Callable[[jax.Array, jax.Array], jax.Array]) -> LocalEnergy:
  """Lifts ``fn(q: (Dh,), k: (Dh,)) -> scalar`` to a local energy over all heads and pairs: ``E_hnm = fn(q_hn,
  k_hm)``.

  The result depends on the tokens through ``q`` and ``k`` directly, so its only derived layer is the exact (tied)
  gradient. Long sequences are evaluated tile by tile (``Helmholtz(chunk_size=...)``).
  """
  return Pairwise(fn)


def lp(p: float) -> LocalEnergy:
  """``E_nm = Σ_j |q_nj − k_mj|^p`` (robust l_p energy, p ≥ 1)."""
  check_range("p", p, 1.0, fix="Use p >= 1 so the energy has a gradient at coincident points.")
  return pairwise(lambda q, k: jnp.sum(jnp.abs(q - k) ** p))


def huber(delta: float = 1.0) -> LocalEnergy:
  """``E_nm = Σ_j huber_δ(q_nj − k_mj)``: quadratic within δ, linear beyond (δ > 0)."""
  check_range("delta", delta, 0.0, low_open=True, fix="Use a positive Huber threshold.")

  def huber_pair(q, k):
    r = jnp.abs(q - k)
    return jnp.sum(jnp.where(r <= delta, 0.5 * r * r, delta * (r - 0.5 * delta)))

  return pairwise(huber_pair)
