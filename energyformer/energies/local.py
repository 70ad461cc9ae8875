"""Local energies ``E(q_n, k_m)`` between an updated token's query and a context token's key, per head.

Every local energy has the signature ``local(scores, q, k) -> E`` with

* ``q`` of shape (H, N, Dh): the projected tokens being updated (``q_hn = x_n W^Q_h``),
* ``k`` of shape (H, M, Dh): the projected context (``k_hm = c_m W^K_h``),
* ``scores`` of shape (H, N, M): the bilinear scores ``s_hnm = q_hn · k_hm``,
* ``E`` of shape (H, N, M).

A local energy that depends on the tokens only through ``scores`` (plus terms in ``q`` alone) has a *relaxed*
form: the attention weights ``-∂F/∂s`` with independent value and output projections.

Every local energy is used the same way, as a value: ``Interaction(..., local=energies.elastic)``,
``local=energies.huber``. Those with parameters (``huber``: δ, ``lp``: p) are their default form and are called
with their parameters for another: ``local=energies.huber(delta=0.5)``. A user's function of one (query, key) pair
becomes one with ``energies.pairwise``.

Masks never reach a local energy: it gives an energy for every (query, key) pair, and the aggregator (``Helmholtz``,
``PlainSum``, ...) leaves out the pairs the mask hides, so a local energy — the library's or a user's — needs no
mask handling.
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


class Pairwise:
  """A local energy ``E_hnm = pair(q_hn, k_hm)`` from a function of one (query, key) pair of vectors.

  The Interaction recognises it (``per_pair``) and, for long sequences, evaluates it in small tiles of pairs: its
  work per pair is a vector, an (H, N, M, Dh) tensor if formed densely. Subclasses define ``pair(q, k)``: ``q`` and
  ``k`` of shape (Dh,), a scalar result.
  """

  def pair(self, q, k):
    """The energy of one (query, key) pair: ``q``, ``k`` of shape (Dh,) → a scalar."""
    raise NotImplementedError

  def __call__(self, scores, q, k):
    del scores
    energies = over_pairs(self.pair)(q, k)
    if energies.shape != q.shape[:-1] + (k.shape[-2],):
      raise ValueError(
          f"a pairwise local energy must return a scalar per (query, key) pair, got shape {energies.shape[3:]} "
          "per pair; reduce it with jnp.sum or similar.")
    return energies

  def with_query_gradients(self, q, k):
    """``(E, ∇_q E)``: the energies ``E_hnm = pair(q_hn, k_hm)`` (H, N, M) and their gradients in the query
    ``∂pair(q_hn, k_hm)/∂q_hn`` (H, N, M, Dh), one ``jax.value_and_grad`` of ``pair`` per pair."""
    return over_pairs(jax.value_and_grad(self.pair))(q, k)


@dataclasses.dataclass(frozen=True)
class PairFunction(Pairwise):
  """``E_hnm = fn(q_hn, k_hm)`` for a user's function ``fn(q: (Dh,), k: (Dh,)) -> scalar`` (``pairwise``)."""

  fn: Callable[[jax.Array, jax.Array], jax.Array]

  def pair(self, q, k):
    """``fn(q, k)``."""
    return self.fn(q, k)


class ParameterisedPairwise(Pairwise):
  """A built-in pairwise energy with named parameters, usable as is (its defaults) or called to set them.

  ``energies.huber`` *is* the Huber energy with δ = 1: ``Interaction(..., local=energies.huber)``. Called with its
  parameters, positionally or by name, it returns the same energy with those values: ``energies.huber(0.5)``,
  ``energies.huber(delta=0.5)``. Called with the three arrays ``(scores, q, k)`` it evaluates the energy, as every
  local energy does. Instances are frozen dataclasses, equal (and hashed) by their parameters, so two equal
  energies share compiled programs.
  """

  def __call__(self, *args, **params):
    if len(args) == 3 and not params:
      return super().__call__(*args)
    names = [field.name for field in dataclasses.fields(self)]
    if len(args) > len(names):
      raise TypeError(f"{type(self).__name__} takes the parameters {names} (or the arrays scores, q, k to evaluate "
                      f"it), got {len(args)} positional arguments.")
    unknown = sorted(set(params) - set(names))
    if unknown:
      raise TypeError(f"{type(self).__name__} has no parameter {unknown[0]!r}; its parameters are {names}.")
    return dataclasses.replace(self, **dict(zip(names, args)), **params)


def over_pairs(pair_fn):
  """Lifts ``pair_fn(q: (Dh,), k: (Dh,))`` to every head and (query, key) pair: ``(H, N, Dh), (H, M, Dh) → (H, N,
  M, ...)``."""
  over_keys = jax.vmap(pair_fn, in_axes=(None, 0))
  return jax.vmap(jax.vmap(over_keys, in_axes=(0, None)), in_axes=(0, 0))


def pairwise(fn: Callable[[jax.Array, jax.Array], jax.Array]) -> LocalEnergy:
  """Lifts ``fn(q: (Dh,), k: (Dh,)) -> scalar`` to a local energy over all heads and pairs: ``E_hnm = fn(q_hn,
  k_hm)``.

  The result depends on the tokens through ``q`` and ``k`` directly, so its only derived layer is the exact (tied)
  gradient. Long sequences are evaluated tile by tile (``Helmholtz(chunk_size=...)``). The mask is not the
  function's concern: it sees one pair at a time, and the aggregator leaves out the pairs the mask hides.
  """
  return PairFunction(fn)


@dataclasses.dataclass(frozen=True)
class Lp(ParameterisedPairwise):
  """``E_nm = Σ_j |q_nj − k_mj|^p``: the robust l_p energy (p ≥ 1; default p = 1, least absolute deviations).

  ``energies.lp`` is this energy with p = 1; ``energies.lp(1.5)`` sets p. Below p = 2 its second derivative is
  unbounded where a query and a key coincide in a coordinate.
  """

  p: float = 1.0

  def __post_init__(self):
    check_range("p", self.p, 1.0, fix="Use p >= 1 so the energy has a gradient at coincident points.")

  def pair(self, q, k):
    """``Σ_j |q_j − k_j|^p``."""
    return jnp.sum(jnp.abs(q - k) ** self.p)


@dataclasses.dataclass(frozen=True)
class Huber(ParameterisedPairwise):
  """``E_nm = Σ_j huber_δ(q_nj − k_mj)``, ``huber_δ(r) = ½r²`` for ``|r| ≤ δ`` and ``δ(|r| − ½δ)`` beyond (δ > 0).

  ``energies.huber`` is this energy with δ = 1; ``energies.huber(0.5)`` sets δ.
  """

  delta: float = 1.0

  def __post_init__(self):
    check_range("delta", self.delta, 0.0, low_open=True, fix="Use a positive Huber threshold.")

  def pair(self, q, k):
    """``Σ_j huber_δ(q_j − k_j)``."""
    r = jnp.abs(q - k)
    return jnp.sum(jnp.where(r <= self.delta, 0.5 * r * r, self.delta * (r - 0.5 * self.delta)))


lp = Lp()
huber = Huber()
