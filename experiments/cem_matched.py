"""CEM variants at the parameter count of ``standard``: the gated MLP widened by the weights CEM removes.

A plugin: ``energyformer --plugin experiments/cem_matched.py lis --variants standard cem cem_pm cem_recursive_pm``
(or ``compare --arms ...``) registers ``cem_pm`` and ``cem_recursive_pm`` and trains them beside the others.
"""
import dataclasses

from energyformer import solvers
from energyformer.models.variants import Variant, cem, register


def matched_mlp_hidden(config) -> int:
  """``M'`` with ``2 D (M' − M) = 2 D H Dh + M``: the value/output projections and MLP bias ``standard`` has and
  ``cem`` lacks, moved into the gated MLP's width."""
  removed = 2 * config.dim * config.num_heads * config.head_dim + config.mlp_hidden
  return config.mlp_hidden + round(removed / (2 * config.dim))


def _widened(config):
  return dataclasses.replace(config, mlp_hidden=matched_mlp_hidden(config))


def _twice():
  return solvers.repeat(solvers.gradient_descent(1.0), 2)


register(Variant("cem_pm", cem.tied_energy, solvers.gradient_descent(), "tied", "cem at standard's parameter count",
                 lambda config, attention: cem.cem_block(config, attention, cem.gated_mlp_layer(_widened(config)))))
register(Variant("cem_recursive_pm", cem.tied_energy, _twice(), "tied", "cem_recursive at standard's parameter count",
                 lambda config, attention: cem.cem_block(config, attention,
                                                         cem.gated_mlp_layer(_widened(config), _twice()))))
