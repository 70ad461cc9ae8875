"""Operator splitting: one depth step made of solver steps on several energies in turn.

Lie–Trotter ``x ← S_K ∘ … ∘ S_1 (x)``; Strang ``S_1^{½} ∘ … ∘ S_{K−1}^{½} ∘ S_K ∘ S_{K−1}^{½} ∘ … ∘ S_1^{½}``,
where a half step halves the solver's step-size hyperparameters. A GPT block is Lie–Trotter gradient descent on
an attention energy, then on a potential (MLP) energy.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

SCHEMES = ("lie_trotter", "strang")


def _state_signature(state):
  """The shapes and dtypes of a solver state's leaves, in its tree structure."""
  return jax.tree.map(lambda leaf: (jnp.shape(leaf), jnp.result_type(leaf)), state)


def _halved(layer, hparams):
  return {name: value * 0.5 if name in layer.solver.step_sizes else value for name, value in hparams.items()}


@dataclasses.dataclass(frozen=True)
class Split:
  """Splitting over ``parts`` (each a ``Layer``); params, hparams and solver state are tuples, one entry per part.

  ``shared_state``: the parts share one solver state (e.g. one velocity carried through the attention and MLP
  sub-steps, YuriiFormer), passed from each sub-step to the next; their solvers' states must have one structure.
  """

  parts: tuple
  scheme: str = "lie_trotter"
  shared_state: bool = False

  def __post_init__(self):
    if self.scheme not in SCHEMES:
      raise ValueError(f"unknown splitting scheme {self.scheme!r}; choose one of {SCHEMES}.")
    if len(self.parts) < 2:
      raise ValueError(f"a splitting needs at least two parts, got {len(self.parts)}; use the Layer itself.")
    object.__setattr__(self, "parts", tuple(self.parts))

  def specs(self):
    """One parameter declaration per part, in order."""
    return tuple(part.specs() for part in self.parts)

  def default_hparams(self):
    """One hyperparameter dict per part, in order (the parts' solvers' defaults)."""
    return tuple(part.default_hparams() for part in self.parts)

  def init_state(self, x):
    """One solver state per part (each part's solver keeps its own: a momentum stream per energy), or, with
    ``shared_state``, the one state all parts carry."""
    states = tuple(part.init_state(x) for part in self.parts)
    if not self.shared_state:
      return states
    signatures = [_state_signature(state) for state in states]
    if any(signature != signatures[0] for signature in signatures[1:]):
      names = [part.solver.name for part in self.parts]
      raise ValueError(f"Split(shared_state=True) needs parts whose solvers carry one state, but solvers {names} "
                       f"carry {signatures}; give every part one solver family (e.g. all yurii_nesterov) or "
                       "share none.")
    return states[0]

  def energy_value(self, params, x, mask=None):
    """``Σ_k E_k(x)``: the composite energy the splitting descends."""
    return sum(part.energy_value(p, x, mask) for part, p in zip(self.parts, params))

  @property
  def num_substeps(self) -> int:
    """Solver steps in one step of the splitting: one per part (Lie–Trotter), ``2K − 1`` for Strang."""
    return len(self.parts) if self.scheme == "lie_trotter" else 2 * len(self.parts) - 1

  def schedule(self, hparams):
    """The sub-steps ``[(part index, hyperparameters), ...]`` of one step, in order (Strang: halved steps)."""
    if self.scheme == "lie_trotter":
      return [(i, hparams[i]) for i in range(len(self.parts))]
    half = [(i, _halved(self.parts[i], hparams[i])) for i in range(len(self.parts) - 1)]
    return half + [(len(self.parts) - 1, hparams[-1])] + half[::-1]

  def step(self, params, hparams, x, state, mask=None, context=None):
    """The sub-steps' solver steps in turn. ``context``: ``None``, or one ``Layer.step`` context per sub-step
    (``num_substeps`` of them, in ``schedule`` order)."""
    schedule = self.schedule(hparams)
    if context is not None and len(context) != len(schedule):
      raise ValueError(f"a {self.scheme} step of {len(self.parts)} parts takes {len(schedule)} contexts, one per "
                       f"sub-step, got {len(context)}.")
    contexts = [None] * len(schedule) if context is None else context
    if self.shared_state:
      for (i, h), c in zip(schedule, contexts):
        x, state = self.parts[i].step(params[i], h, x, state, mask, c)
      return x, state
    state = list(state)
    for (i, h), c in zip(schedule, contexts):
      x, state[i] = self.parts[i].step(params[i], h, x, state[i], mask, c)
    return x, tuple(state)
