"""GPT attention variants by name: each a recipe (attention energy, derivation mode, solver, optionally a block).

Every module of this package registers its variants on import, and importing the package imports them all
(``builtin`` first): a new variant is one new file here. The built-ins register themselves exactly as a user's
does::

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

import importlib
import pkgutil

from energyformer import solvers
from energyformer.energies import Helmholtz, Interaction, LayerNormLagrangian, Potential
from energyformer.layers import Layer
from energyformer.layers.derive import MODES


@dataclasses.dataclass(frozen=True)
class Variant:
  """A named attention recipe: ``energy(config)`` builds the energy from a ``GPTConfig`` (sizes, temperature),
  the layer derives its field by ``mode`` and steps along it with ``solver`` (a ``Solver`` or registered name).

  ``description`` is the one-line summary the documentation and command-line help show.

  ``block(config, attention) -> layer``, if given, builds the whole depth step around ``attention`` (the variant's
  attention ``Layer`` at pre-normalised tokens): a ``Layer``, or a ``Split`` one of whose parts is ``attention``
  (or, in its place, a layer stepping on the same energy object, e.g. ``layers.Preconditioned.of(attention)``).
  Without it the step is ``attention`` then the MLP that ``config.mlp`` names (``models.gpt.block``).
  The variant's hyperparameters (``GPTConfig.hparams``, sweeps) are those of ``solver``: they set the attention
  part's; every other part keeps its own solver's defaults. ``learn_hparams``: each layer learns its own values of
  them (one per layer, trained with the weights; every part's), starting from those values.
  """

  name: str
  energy: Callable[[Any], Any]
  solver: Any
  mode: str = "relaxed"
  description: str = ""
  block: Callable[[Any, Any], Any] | None = None
  learn_hparams: bool = False

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
    if self.block is not None and not callable(self.block):
      raise TypeError(f"Variant(block=...) must be a function (config, attention) -> layer, got "
                      f"{type(self.block).__name__}.")


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


def mlp_layer(config) -> Layer:
  """The MLP step ``config.mlp`` names (``"plain"`` or ``"potential"``), a unit gradient step at pre-normalised
  tokens."""
  potential = Potential(config.dim, config.mlp_hidden, "gelu", bias=True, values=config.mlp == "plain")
  return Layer(potential, solvers.gradient_descent(1.0), "relaxed" if config.mlp == "plain" else "tied",
               lagrangian=LayerNormLagrangian(config.dim))


def _import_recipes() -> None:
  """Imports every module of this package, ``builtin`` first, so each registers its variants."""
  modules = sorted(info.name for info in pkgutil.iter_modules(__path__))
  for name in sorted(modules, key=lambda name: name != "builtin"):
    importlib.import_module(f"{__name__}.{name}")


_import_recipes()
