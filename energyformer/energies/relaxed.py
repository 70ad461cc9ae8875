"""The relaxed form of an energy: how an energy of bilinear scores declares ``mode="relaxed"``.

An energy that depends on the tokens ``x`` through scores ``s`` bilinear in a query side and a key side (plus
terms of the query alone), ``F(x; c) = A(s(x, c), x)``, declares its relaxed form by implementing ``ScoreEnergy``:

* ``values``: ``True`` when it owns the free value/output projections (``False`` leaves it tied-only);
* ``scores(params, x, context) -> s``: the scores, any array shape (``(H, N, M)`` for attention);
* ``energy_of_scores(params, s, x, context, mask) -> scalar``: ``A(s, x)`` with the scores given apart from the
  tokens; equal to ``energy(params, x, context, mask)`` at ``s = scores(params, x, context)``;
* ``values_out(params, weights, context) -> (N, D)``: the free value path applied to weights shaped like ``s``,
  ``Σ_h Σ_m w_hnm v_hm W^O_h`` for attention.

The relaxed field is then ``G(x) = ∂A/∂x|_s + values_out(∂A/∂s)`` (``layers.relaxed_gradient``): the weights
``−∂A/∂s`` are the energy's exact attention weights, the values and output projection are free. An energy may
add ``relaxed_field(params, x, mask, context) -> (N, D)`` computing the same field faster (a closed form, a
blockwise evaluation); the layer then calls it instead.

``Interaction`` (``s = q·k``; its ``relaxed_field`` is the softmax closed form, or one gradient of a probe energy
evaluated tile by tile) and ``Potential`` (``s = x ξᵀ + b``, against learned memories) implement it.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax


@runtime_checkable
class ScoreEnergy(Protocol):
  """An energy ``F(x; c) = A(s(x, c), x)`` of bilinear scores that declares its relaxed form (module docstring)."""

  values: bool

  def scores(self, params, x: jax.Array, context: jax.Array) -> jax.Array:
    """The scores ``s(x, c)``."""

  def energy_of_scores(self, params, scores: jax.Array, x: jax.Array, context: jax.Array, mask: Any) -> jax.Array:
    """``A(s, x)``: the energy with the scores given apart from the tokens."""

  def values_out(self, params, weights: jax.Array, context: jax.Array) -> jax.Array:
    """The free value/output path applied to score-shaped weights: an (N, D) field."""


def has_relaxed_form(energy) -> bool:
  """Whether ``energy`` implements ``ScoreEnergy`` and owns its value/output projections (``values=True``)."""
  return isinstance(energy, ScoreEnergy) and bool(energy.values)
