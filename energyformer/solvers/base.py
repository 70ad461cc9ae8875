"""The solver protocol: a pair of pure functions over token states, in the style of optax.

``init(x) -> state``; ``step(grad_fn, x, state, hparams) -> (x, state)``, where ``grad_fn(x)`` is the (exact or
relaxed) energy gradient at ``x`` and ``hparams`` is a dict of arrays — fixed, learnable or vmapped, never a
Python float baked into a trace. A solver may call ``grad_fn`` at a look-ahead point or differentiate it
(Hessian-vector products ``jax.jvp(grad_fn, (x,), (v,))``).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from energyformer.checks import check_range

GradFn = Callable[[jax.Array], jax.Array]

# name -> (low, high, low_open, high_open, fix)
_RANGES = {
    "eta": (0.0, None, True, False, "Use a positive step size eta."),
    "beta": (0.0, 1.0, False, True, "Use a momentum beta in [0, 1); beta >= 1 makes the momentum stream diverge."),
    "dt": (0.0, None, True, False, "Use a positive Euler step dt."),
    "tau": (0.0, None, True, False, "Use a positive time constant tau."),
    "temperature": (0.0, None, False, False, "Use a noise temperature >= 0 (0 turns the noise off)."),
    "curvature_bias": (None, None, False, False, ""),
    "curvature_scale": (0.0, None, True, False, "Use a positive curvature scale alpha (below 2/lambda_max(H))."),
}


class Solver(NamedTuple):
  """A solver: ``init``/``step``, its default hyperparameters and which of them scale the step size.

  ``fixed_context``: the solver differentiates ``grad_fn`` (curvature), and a layer should hold the context
  (keys, values) at the step's input while it does, giving the query-side Hessian.
  """

  name: str
  init: Callable[[jax.Array], Any]
  step: Callable[[GradFn, jax.Array, Any, Mapping[str, jax.Array]], tuple[jax.Array, Any]]
  defaults: Mapping[str, float]
  step_sizes: tuple[str, ...]
  fixed_context: bool = False

  def hparams(self, **overrides) -> dict[str, jax.Array]:
    """The solver's hyperparameters as float32 arrays: defaults updated by ``overrides``, checked."""
    unknown = set(overrides) - set(self.defaults)
    if unknown:
      raise ValueError(f"solver {self.name!r} has no hyperparameter(s) {sorted(unknown)}; "
                       f"its hyperparameters are {sorted(self.defaults)}.")
    values = {name: jnp.asarray(overrides.get(name, default), jnp.float32) for name, default in self.defaults.items()}
    check_hparams(self, values)
    return values


def check_hparams(solver: Solver, hparams: Mapping[str, Any]) -> None:
  """Raises when a hyperparameter is missing or, where its value is concrete, out of its valid range."""
  missing = set(solver.defaults) - set(hparams)
  if missing:
    raise ValueError(f"solver {solver.name!r} needs hyperparameter(s) {sorted(missing)}; "
                     f"pass them or start from solver.hparams().")
  for name in solver.defaults:
    low, high, low_open, high_open, fix = _RANGES[name]
    check_range(name, hparams[name], low, high, low_open=low_open, high_open=high_open, fix=fix)


def zeros_like_state(x):
  """A zero momentum buffer shaped like the tokens."""
  return jnp.zeros_like(x)
