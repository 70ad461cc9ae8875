"""The energy protocol, sums of energies, and energies written as plain functions.

An *energy* is any object with

* ``__call__(params, x, context, mask) -> scalar``: a pure function of the tokens being updated ``x`` (N, D),
  the context ``c`` (M, D), and a boolean mask (N, M) or ``None``;
* ``specs() -> dict`` of ``ParamSpec``: the parameters it needs (possibly none).

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
    return {name: term.specs() for name, term in self.terms.items()}

  def __call__(self, params, x, context, mask=None):
    return sum(term(params[name], x, context, mask) for name, term in self.terms.items())


@dataclasses.dataclass(frozen=True)
class FunctionEnergy:
  """An energy written as a plain function ``fn(params, x, context, mask) -> scalar`` with declared parameters."""

  fn: Callable[..., jax.Array]
  param_specs: Mapping[str, ParamSpec] = dataclasses.field(default_factory=dict)

  def specs(self):
    return dict(self.param_specs)

  def __call__(self, params, x, context, mask=None):
    return self.fn(params, x, context, mask)


def energy(fn=None, /, **param_specs: ParamSpec):
  """Turns ``fn(params, x, context, mask) -> scalar`` into an energy; usable as ``@energy`` or ``energy(fn, w=spec)``."""
  if fn is None:
    return lambda f: FunctionEnergy(f, param_specs)
  return FunctionEnergy(fn, param_specs)
