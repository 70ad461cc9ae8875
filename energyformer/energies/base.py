"""The energy protocol, sums of energies, and energies written as plain functions.

An *energy* is any object with

* ``__call__(params, x, context, mask) -> scalar``: a pure function of the tokens being updated ``x`` (N, D),
  the context ``c`` (M, D), and a boolean mask (N, M) or ``None``; a float scalar of ``x``'s dtype. One sequence:
  layers and stacks vmap over batches. ``params`` is the pytree of arrays its ``specs()`` declares;
* ``specs() -> dict`` of ``ParamSpec``: the parameters it needs (possibly none).

**Masks are the energy's job.** ``mask[n, m]`` True means query token n may interact with context token m;
``None`` means all pairs. A layer passes the mask through and never applies it itself: an energy must leave the
hidden pairs out of its value (a causal decoder otherwise sees the future). The library's energies do:
``Interaction`` hands it to its aggregator (``Helmholtz``, ``PlainSum``, ``Discounted``, ``Gated``), which drops
hidden pairs, so a local energy — a user's ``energies.pairwise`` function included — never sees a mask and needs
no mask handling; memories and potentials act on each token alone and have no pairs to mask. An energy written as
a whole function (``energy(fn)``, ``FunctionEnergy``, or a class of your own) that couples tokens must apply the
mask itself, e.g. ``jnp.where(mask, pair_terms, 0)`` before summing (with ``mask=None`` meaning all pairs).

That is all the ``"tied"`` and ``"full"`` derivations need. An energy of bilinear scores also takes the
``"relaxed"`` one by declaring its relaxed form (``energies.relaxed.ScoreEnergy``). An energy may also compute its
tied field ``∂F(z; c)/∂z`` at ``z = x`` itself, ``tied_field(params, x, mask, context) -> (N, D)`` (a closed form,
one blockwise sweep; exact to every order), which the layer then calls instead of ``jax.grad``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax

from energyformer.energies.params import ParamSpec


@dataclasses.dataclass(frozen=True)
class EnergySum:
  """``F = Σ_i F_i``, each term with its own parameters under its name: ``params = {name: params_i}``."""

  terms: Mapping[str, Any]

  def specs(self):
    """``{name: term.specs()}``: each term's parameters under its name."""
    return {name: term.specs() for name, term in self.terms.items()}

  def __call__(self, params, x, context, mask=None):
    return sum(term(params[name], x, context, mask) for name, term in self.terms.items())


@dataclasses.dataclass(frozen=True)
class FunctionEnergy:
  """An energy written as a plain function ``fn(params, x, context, mask) -> scalar`` with declared parameters.

  ``x`` (N, D), ``context`` (M, D), ``mask`` boolean (N, M) or ``None``; ``fn`` must apply the mask itself (the
  module docstring: masks are the energy's job).
  """

  fn: Callable[..., jax.Array]
  param_specs: Mapping[str, ParamSpec] = dataclasses.field(default_factory=dict)

  def specs(self):
    """The declared parameters, ``{name: ParamSpec}``."""
    return dict(self.param_specs)

  def __call__(self, params, x, context, mask=None):
    return self.fn(params, x, context, mask)


def energy(fn=None, /, **param_specs: ParamSpec):
  """Turns ``fn(params, x, context, mask) -> scalar`` into an energy; usable as ``@energy`` or ``energy(fn, w=spec)``."""
  if fn is None:
    return lambda f: FunctionEnergy(f, param_specs)
  return FunctionEnergy(fn, param_specs)
