"""GPT attention variants by name: each a recipe (attention energy, derivation mode, solver).

The built-in variants register themselves below exactly as a user's does::

    variants.register(variants.Variant(
        "elastic_momentum", lambda config: energies.Interaction(config.dim, config.num_heads, config.head_dim,
                                                                 local=energies.elastic, values=True),
        solvers.momentum(beta=0.8), "relaxed", "elastic Helmholtz energy, relaxed values; heavy ball"))
    GPTConfig(vocab_size, context_length, variant="elastic_momentum")

``names()`` lists them (in registration order) for documentation and command-line help; ``get(name)`` gives the
recipe, whose ``solver.hyperparameters`` are the specs (default, range, step size) a sweep may vary.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from energyformer import solvers
from energyformer.energies import Gated, Helmholtz, Interaction, PlainSum, quadratic
from energyformer.layers.derive import MODES


@dataclasses.dataclass(frozen=True)
class Variant:
  """A named attention recipe: ``energy(config)`` builds the energy from a ``GPTConfig`` (sizes, temperature),
  the layer derives its field by ``mode`` and steps along it with ``solver`` (a ``Solver`` or registered name).

  ``description`` is the one-line summary the documentation and command-line help show.
  """

  name: str
  energy: Callable[[Any], Any]
  solver: Any
  mode: str = "relaxed"
  description: str = ""

  def __post_init__(self):
    if not isinstance(self.name, str) or not self.name:
      raise TypeError(f"a variant's name must be a non-empty string, got {self.name!r}.")
    if not callable(self.energy):
      raise TypeError(f"Variant(energy=...) must be a function config -> energy, got {type(self.energy).__name__}; "
                      "write e.g. `lambda config: energies.Interaction(config.dim, config.num_heads, "
                      "config.head_dim, values=True)`.")
    object.__setattr__(self, "solver", solvers.as_solver(self.solver, "Variant(solver=...)"))
    if self.mode not in MODES:
      raise ValueError(f"unknown derivation mode {self.mode!r} for variant {self.name!r}; choose one of {MODES}.")


_VARIANTS: dict[str, Variant] = {}


def register(variant: Variant, *, overwrite: bool = False) -> Variant:
  """Adds ``variant`` under its name (a name already taken raises unless ``overwrite=True``); returns it."""
  if not isinstance(variant, Variant):
    raise TypeError(f"register takes a Variant(name, energy, solver, mode, description), got "
                    f"{type(variant).__name__}.")
  if variant.name in _VARIANTS and not overwrite:
    raise ValueError(f"a variant named {variant.name!r} is already registered; choose another name or pass "
                     "overwrite=True to replace it.")
  _VARIANTS[variant.name] = variant
  return variant


def names() -> tuple[str, ...]:
  """The registered variant names, built-ins first, in registration order."""
  return tuple(_VARIANTS)


def get(name: str) -> Variant:
  """The variant registered under ``name``."""
  if name not in _VARIANTS:
    raise ValueError(f"unknown attention variant {name!r}; choose one of {list(_VARIANTS)} or register yours with "
                     "energyformer.models.variants.register(Variant(...)).")
  return _VARIANTS[name]


def softmax_energy(config, values: bool = True) -> Interaction:
  """The Helmholtz inner-product energy at ``config.temperature`` (default ``√head_dim``): softmax attention."""
  return Interaction(config.dim, config.num_heads, config.head_dim, aggregate=Helmholtz(config.temperature),
                     values=values)


def _linear_energy(config) -> Interaction:
  return Interaction(config.dim, config.num_heads, config.head_dim, local=quadratic, aggregate=PlainSum(), values=True)


def _gated_linear_energy(config) -> Interaction:
  return Interaction(config.dim, config.num_heads, config.head_dim, local=quadratic, aggregate=Gated(), values=True)


register(Variant("standard", softmax_energy, solvers.gradient_descent(), "relaxed",
                 "Helmholtz inner-product energy, relaxed values; gradient descent (multi-head attention)"))
register(Variant("tied", lambda config: softmax_energy(config, values=False), solvers.gradient_descent(), "tied",
                 "Helmholtz inner-product energy, exact gradient; gradient descent"))
register(Variant("momentum", softmax_energy, solvers.momentum(), "relaxed", "as standard; heavy ball (MomenMHA)"))
register(Variant("nesterov", softmax_energy, solvers.nesterov(), "relaxed", "as standard; Nesterov (NagMHA)"))
register(Variant("newton", softmax_energy, solvers.newton(), "relaxed", "as standard; Neumann-Newton (MHA2nd1st)"))
register(Variant("light_newton", softmax_energy, solvers.light_newton(), "relaxed",
                 "as standard; secant Newton (LightMHA2nd1st, this project's design)"))
register(Variant("linear", _linear_energy, solvers.gradient_descent(), "relaxed",
                 "quadratic local energy, plain sum, relaxed values; gradient descent (linear attention)"))
register(Variant("gated_linear", _gated_linear_energy, solvers.gradient_descent(), "relaxed",
                 "quadratic local energy, gated sum, relaxed values; gradient descent (gated linear attention)"))
