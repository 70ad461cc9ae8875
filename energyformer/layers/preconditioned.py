"""A layer stepping along ``P G(x)`` with its own learned positive-definite ``P = diag(softplus(ρ)) + U Uᵀ``
(``solvers.preconditioned``): with gradient descent, ``x ← x − η P ∇E(x)``."""
from __future__ import annotations

import dataclasses
import functools

from energyformer.checks import check_positive_int
from energyformer.energies.base import EnergySum
from energyformer.layers.derive import Layer
from energyformer.solvers.preconditioned import apply_preconditioner, precondition, preconditioner_specs


@dataclasses.dataclass(frozen=True)
class Preconditioned(Layer):
  """A ``Layer`` whose solver follows ``P G`` instead of the field ``G``, P of rank ``rank`` learned beside the
  energy's parameters (``params["preconditioner"]``). ``Preconditioned.of(layer, rank)`` preconditions a layer."""

  rank: int = 4

  def __post_init__(self):
    super().__post_init__()
    check_positive_int("rank", self.rank)

  @classmethod
  def of(cls, layer: Layer, rank: int = 4) -> "Preconditioned":
    """``layer`` (same energy object, solver, derivation and Lagrangian) preconditioned by a rank-``rank`` P."""
    return cls(layer.energy, layer.solver, layer.mode, layer.lagrangian, rank)

  def specs(self):
    """The layer's parameters plus P's: ``diagonal`` ρ (D,) and ``low_rank`` U (D, rank)."""
    return {**super().specs(), "preconditioner": preconditioner_specs(self._width(), self.rank)}

  def _width(self) -> int:
    """The token width the energy (or a term of it, or the Lagrangian) declares."""
    terms = self.energy.terms.values() if isinstance(self.energy, EnergySum) else ()
    for part in (self.energy, *terms, self.lagrangian):
      if getattr(part, "dim", None) is not None:
        return part.dim
    raise ValueError("Preconditioned needs the token width: give it an energy or Lagrangian that has a `dim`.")

  def gradient(self, params, x, mask=None, context=None):
    """The field the solver follows: ``P G(x)``."""
    return apply_preconditioner(params["preconditioner"], super().gradient(params, x, mask, context))

  def step(self, params, hparams, x, state, mask=None, context=None):
    """``Layer.step`` (``context`` likewise) with the solver following ``P G`` (``solvers.precondition``)."""
    solver = precondition(self.solver, functools.partial(apply_preconditioner, params["preconditioner"]))
    return Layer(self.energy, solver, self.mode, self.lagrangian).step(params, hparams, x, state, mask, context)
