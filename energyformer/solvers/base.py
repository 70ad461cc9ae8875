"""The solver protocol: a pair of pure functions over token states, in the style of optax.

``init(x) -> state``; ``step(grad_fn, x, state, hparams) -> (x, state)``, where ``grad_fn(x)`` is the (exact or
relaxed) energy gradient at ``x`` and ``hparams`` is a dict of arrays — fixed, learnable or vmapped, never a
Python float baked into a trace. A solver may call ``grad_fn`` at a look-ahead point or differentiate it
(Hessian-vector products ``jax.jvp(grad_fn, (x,), (v,))``).

Each solver declares its hyperparameters itself: a ``HparamSpec`` per name gives the default, the valid interval
and whether the value scales the step (halved by a Strang half step). Nothing outside the solver lists them. A
learned hyperparameter is trained as an unconstrained raw value that ``HparamSpec.constrain`` maps into the
interval, so no optimiser step can leave it.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from energyformer.checks import check_range

GradFn = Callable[[jax.Array], jax.Array]

# How far inside a closed end a learned value on that end starts (relative to the interval's width, or absolute on
# a half-line): the maps of ``HparamSpec.constrain`` reach an end only in the limit.
EDGE = 1e-6


class HparamSpec(NamedTuple):
  """One solver hyperparameter: its default and valid interval ``[low, high]`` (ends open where asked).

  ``step_size``: the value scales the step, so a half step (Strang splitting) halves it. ``fix`` is the advice an
  out-of-range error gives. ``None`` bounds are unbounded.
  """

  default: float
  low: float | None = None
  high: float | None = None
  low_open: bool = False
  high_open: bool = False
  step_size: bool = False
  fix: str = ""

  def check(self, name: str, value) -> None:
    """Raises a ``ValueError`` naming ``name`` where ``value`` is concrete and outside the interval."""
    check_range(name, value, self.low, self.high, low_open=self.low_open, high_open=self.high_open, fix=self.fix)

  def constrain(self, raw) -> jax.Array:
    """The value in the interval of the unconstrained ``raw`` (any real, any shape), increasing in ``raw``:
    ``low + softplus(raw)`` on ``(low, ∞)``, ``high − softplus(−raw)`` on ``(−∞, high)``,
    ``low + (high − low)·sigmoid(raw)`` on a bounded interval, ``raw`` on the real line. Where rounding would reach
    an open end (``softplus`` underflowing, ``sigmoid`` saturating), the value is held one representable step
    inside it."""
    raw = jnp.asarray(raw)
    if self.low is None and self.high is None:
      return raw
    if self.high is None:
      value = self.low + jax.nn.softplus(raw)
    elif self.low is None:
      value = self.high - jax.nn.softplus(-raw)
    else:
      value = self.low + (self.high - self.low) * jax.nn.sigmoid(raw)
    return jnp.clip(value, *self._representable(value.dtype))

  def unconstrain(self, value) -> jax.Array:
    """The raw value ``constrain`` maps to ``value`` (its inverse): ``log(expm1(value − low))``,
    ``−log(expm1(high − value))``, ``logit((value − low)/(high − low))`` or ``value``. A value on a closed end
    (reached by the map only in the limit) starts ``EDGE`` inside it (times the width of a bounded interval)."""
    value = jnp.asarray(value, jnp.result_type(value, jnp.float32))
    if self.low is None and self.high is None:
      return value
    if self.low is not None and self.high is not None:
      fraction = jnp.clip((value - self.low) / (self.high - self.low), EDGE, 1.0 - EDGE)
      return jnp.log(fraction) - jnp.log1p(-fraction)
    gap = jnp.maximum(value - self.low if self.high is None else self.high - value, EDGE)
    inverse_softplus = gap + jnp.log(-jnp.expm1(-gap))          # log(expm1(gap)) without overflow
    return inverse_softplus if self.high is None else -inverse_softplus

  def _representable(self, dtype) -> tuple:
    """The interval's ends in ``dtype``, an open end moved one step inside (``None`` where unbounded)."""
    info = np.finfo(dtype)
    step = lambda end: max(abs(end) * float(info.eps), float(info.tiny))
    low = None if self.low is None else self.low + (step(self.low) if self.low_open else 0.0)
    high = None if self.high is None else self.high - (step(self.high) if self.high_open else 0.0)
    return low, high


def step_size(default: float, name: str = "step size") -> HparamSpec:
  """A positive step size ``η ∈ (0, ∞)`` (scaled by half steps)."""
  return HparamSpec(default, 0.0, None, low_open=True, step_size=True, fix=f"Use a positive {name}.")


def momentum_coefficient(default: float) -> HparamSpec:
  """A momentum coefficient ``β ∈ [0, 1)``."""
  return HparamSpec(default, 0.0, 1.0, high_open=True,
                    fix="Use a momentum beta in [0, 1); beta >= 1 makes the momentum stream diverge.")


def time_constant(default: float) -> HparamSpec:
  """A positive time constant ``τ`` (it divides the step but is not halved by a half step)."""
  return HparamSpec(default, 0.0, None, low_open=True, fix="Use a positive time constant tau.")


class Solver(NamedTuple):
  """A solver: ``init``/``step`` and its hyperparameters, each declared by a ``HparamSpec``.

  ``init(x) -> state`` and ``step(grad_fn, x, state, hparams) -> (x, state)``: ``x`` is one sequence of token
  states (N, D), floating point; ``grad_fn(z)`` returns the field at ``z``, same shape and dtype (the mask is
  already inside it: the layer closes over it); ``state`` is a pytree of arrays (a velocity shaped like ``x``,
  per-token statistics, ...) or empty; ``hparams`` maps each name of ``hyperparameters`` to an array (a scalar,
  or traced: learned or vmapped). The new ``x`` has ``x``'s shape and dtype.

  ``fixed_context``: the solver differentiates ``grad_fn`` (curvature), and a layer should hold the context
  (keys, values) at the step's input while it does, giving the query-side Hessian.
  """

  name: str
  init: Callable[[jax.Array], Any]
  step: Callable[[GradFn, jax.Array, Any, Mapping[str, jax.Array]], tuple[jax.Array, Any]]
  hyperparameters: Mapping[str, HparamSpec]
  fixed_context: bool = False

  @property
  def defaults(self) -> dict[str, float]:
    """``{name: default}`` of every hyperparameter."""
    return {name: spec.default for name, spec in self.hyperparameters.items()}

  @property
  def step_sizes(self) -> tuple[str, ...]:
    """The names of the hyperparameters that scale the step."""
    return tuple(name for name, spec in self.hyperparameters.items() if spec.step_size)

  def hparams(self, **overrides) -> dict[str, jax.Array]:
    """The solver's hyperparameters as float32 arrays: defaults updated by ``overrides``, checked."""
    unknown = set(overrides) - set(self.hyperparameters)
    if unknown:
      raise ValueError(f"solver {self.name!r} has no hyperparameter(s) {sorted(unknown)}; "
                       f"its hyperparameters are {sorted(self.hyperparameters)}.")
    values = {name: jnp.asarray(overrides.get(name, default), jnp.float32) for name, default in self.defaults.items()}
    self.check_hparams(values)
    return values

  def check_hparams(self, hparams: Mapping[str, Any]) -> None:
    """Raises when a hyperparameter is missing or unknown or, where its value is concrete, out of its range."""
    missing, unknown = set(self.hyperparameters) - set(hparams), set(hparams) - set(self.hyperparameters)
    if missing:
      raise ValueError(f"solver {self.name!r} needs hyperparameter(s) {sorted(missing)}; "
                       f"pass them or start from solver.hparams().")
    if unknown:
      raise ValueError(f"solver {self.name!r} has no hyperparameter(s) {sorted(unknown)}; "
                       f"its hyperparameters are {sorted(self.hyperparameters)}.")
    for name, spec in self.hyperparameters.items():
      spec.check(name, hparams[name])


def zeros_like_state(x):
  """A zero momentum buffer shaped like the tokens."""
  return jnp.zeros_like(x)


def no_state(x):
  """The empty state of a solver that carries nothing between steps."""
  del x
  return ()
