"""The GPT decoder as a member of a population: which hyperparameters a member may set, and its model.

The attention variants and their solvers' hyperparameters come from the variant registry
(``energyformer.models.variants``), so a registered variant or solver is trainable, sweepable and on the command
line with no change here.
"""
from __future__ import annotations

import dataclasses

from flax import nnx

from energyformer.models import GPT, GPTConfig, variants

# Hyperparameters that change the decoder's graph: members differing in them train in separate programs.
STRUCTURAL = ("variant", "depth", "dim", "num_heads", "head_dim", "mlp_hidden", "mlp", "splitting")


# The energy's hyperparameters a member may set (stored in the model's variables like the solver's).
ENERGY = ("temperature",)


def variant_names() -> tuple[str, ...]:
  """The registered attention variants."""
  return variants.names()


def solver_hyperparameters() -> tuple[str, ...]:
  """The hyperparameters the registered variants' solvers declare (arrays in the model: vmapped, not
  structural)."""
  names = {name for variant in variants.names() for name in variants.get(variant).solver.hyperparameters}
  return tuple(sorted(names))


def hyperparameters() -> tuple[str, ...]:
  """Every decoder hyperparameter a member may set."""
  return STRUCTURAL + ENERGY + solver_hyperparameters()


def check_variants(variants) -> None:
  """Raises, naming the valid ones, unless every name in ``variants`` is an attention variant."""
  unknown = [v for v in variants if v not in variant_names()]
  if unknown:
    raise ValueError(f"unknown attention variant(s) {unknown}; choose from {variant_names()}.")


def check_settings(settings: dict, variant: str) -> None:
  """Raises, naming the fix, unless every solver hyperparameter in ``settings`` is one the solver of the member's
  variant (``settings["variant"]``, else ``variant``) declares, with a value in its interval."""
  name = settings.get("variant", variant)
  check_variants([name])
  declared = variants.get(name).solver.hyperparameters
  for key, value in settings.items():
    if key in solver_hyperparameters() and key not in declared:
      raise ValueError(f"the variant {name!r} has no hyperparameter {key!r}: its solver "
                       f"{variants.get(name).solver.name!r} has {', '.join(sorted(declared))}; sweep one of those or "
                       "choose a variant whose solver has it.")
    if key in declared:
      declared[key].check(key, value)


def decoder_config(base: GPTConfig, settings: dict) -> GPTConfig:
  """``base`` with a member's decoder ``settings`` (see ``hyperparameters``): the solver's go to ``hparams``."""
  solver = set(solver_hyperparameters())
  hparams = {**dict(base.hparams), **{k: v for k, v in settings.items() if k in solver}}
  fields = {k: v for k, v in settings.items() if k not in solver}
  return dataclasses.replace(base, hparams=tuple(hparams.items()), **fields)


def decoder(base: GPTConfig, settings: dict, rngs: nnx.Rngs, batch_axes: tuple[str, ...]) -> GPT:
  """The decoder of ``decoder_config(base, settings)`` with the batch's mesh axes."""
  return GPT(dataclasses.replace(decoder_config(base, settings), batch_axes=batch_axes), rngs=rngs)
