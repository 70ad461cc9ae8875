"""Recursive updates: several steps of one solver inside one layer, with the layer's weights shared by every step."""
from __future__ import annotations

from energyformer.checks import check_positive_int
from energyformer.solvers.base import Solver
from energyformer.solvers.registry import as_solver, get, register


def repeat(solver, steps: int, hold_context: bool = True) -> Solver:
  """``solver`` taken ``steps`` = T times per layer: ``(x, s) ← solver.step(G, x, s, h)``, T times.

  Every step follows the field of the same energy (one parameter set) with the same hyperparameters and threads
  the solver state; a step size halved by a Strang half step is halved in each of the T steps.
  ``hold_context=True`` (this project's reading of recursive updates on a conditional energy ``E(x | c)``): the
  layer holds the context (keys, gates) at its input for all T steps, which then descend one energy, and a
  decoder caches one context per layer as for a single step. ``False``: each step sees the context at its own
  input (the layer looped T times); a decoder then recomputes the prefix.
  """
  check_positive_int("steps", steps)
  inner = as_solver(solver, "repeat(solver, ...)")

  def step(grad_fn, x, state, hparams):
    for _ in range(steps):
      x, state = inner.step(grad_fn, x, state, hparams)
    return x, state

  return Solver(f"{inner.name}_x{steps}", inner.init, step, inner.hyperparameters,
                inner.fixed_context or hold_context)


@register("recursive")
def recursive(solver: str = "gd", steps: int = 2, hold_context: bool = True, **defaults) -> Solver:
  """``repeat(get(solver, **defaults), steps, hold_context)``: the registered solver ``solver`` taken ``steps``
  times per layer (CEM's recursive updates), e.g. ``solvers.get("recursive", steps=3, eta=0.5)``."""
  return repeat(get(solver, **defaults), steps, hold_context)
