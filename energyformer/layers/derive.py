"""Energy + solver → layer: the gradient field a solver follows, derived by ``jax.grad``.

Three derivations of the field ``G(x)`` a layer's solver descends:

* ``"tied"`` (query side): ``G(x) = ∂F(z; c)/∂z`` at ``z = c = x`` — the context is held constant, as in standard
  attention, where each token is updated against fixed keys.
* ``"full"``: ``G(x) = ∇_x F(x; x)`` — every token's query and key roles are differentiated (Energy Transformer).
* ``"relaxed"``: the query-side field with the score path untied: for an energy ``F = A(s, x)`` of bilinear
  scores ``s = q·k``, ``G(x) = ∂A/∂x|_s + Σ_h (∂A/∂s_h) v_h W^O_h``. The attention weights ``−∂A/∂s`` are exact;
  the tied values ``k W^Qᵀ`` are replaced by independent projections. On the Helmholtz inner-product energy,
  ``x − G(x)`` is standard multi-head attention plus residual. A ``Potential`` energy ``−Σ Φ(ξ x + b)`` relaxes
  the same way: hidden activations ``σ(h)`` with an independent output projection, the standard MLP. An energy
  takes this mode by declaring its relaxed form (``energies.ScoreEnergy``), as both of those do.

With a Lagrangian ``L`` the field is taken with respect to the activations ``g = ∇L(x)``:
``G(x) = ∂E/∂g |_{g = ∇L(x)}`` (the Energy Transformer's ``τ dx/dt = −∂E/∂g``).

An energy may compute its fields itself, through the optional hooks ``tied_field(params, x, mask, context)`` and
``relaxed_field(params, x, mask, context)`` (each (N, D), exact to every order); the layer calls them where
present. ``Interaction`` has both: on the Helmholtz inner-product energy the tied field is
``−Σ_h (Σ_m p_hnm k_hm) W^Q_hᵀ`` and the relaxed one ``−Σ_h (Σ_m p_hnm v_hm) W^O_h``, each one softmax-attention
pass of the aggregator (dense, chunked or a fused kernel); a pairwise energy's tied field is one online-softmax
sweep over key tiles. Any other energy, a user's own included, takes ``jax.grad`` (of the energy, or of its
relaxed form's ``energy_of_scores``).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from energyformer import solvers as solver_lib
from energyformer.energies import masks
from energyformer.energies.base import EnergySum
from energyformer.energies.lagrangians import activation
from energyformer.energies.relaxed import ScoreEnergy, has_relaxed_form

MODES = ("tied", "full", "relaxed")


def checked_energy_value(energy, params, x, context, mask):
  """``F(x; c)``, with a clear error when the energy does not return a scalar."""
  value = energy(params, x, context, mask)
  if jnp.shape(value) != ():
    raise ValueError(
        f"an energy must return a scalar, but {_name(energy)} returned shape {jnp.shape(value)}; "
        "sum it over tokens (and heads), e.g. `return jnp.sum(...)`.")
  return value


def _name(energy) -> str:
  fn = getattr(energy, "fn", energy)
  return getattr(fn, "__name__", type(energy).__name__)


def tied_gradient(energy, params, x, mask, context=None):
  """``∂F(z; c)/∂z`` at ``z = x`` with the context ``c`` held constant (``c = x`` unless given). The energy's own
  ``tied_field(params, x, mask, context) -> (N, D)`` (``Interaction``'s: a closed form or one sweep) replaces
  ``jax.grad`` where present."""
  context = x if context is None else context
  if isinstance(energy, EnergySum):
    return sum(tied_gradient(term, params[name], x, mask, context) for name, term in energy.terms.items())
  if hasattr(energy, "tied_field"):
    return energy.tied_field(params, x, mask, context)
  return jax.grad(checked_energy_value, argnums=2)(energy, params, x, context, mask)


def full_gradient(energy, params, x, mask, context=None):
  """``∇_x F(x; x)`` (query and key roles both differentiated, so there is no separate context)."""
  if context is not None:
    raise ValueError("the full derivation differentiates the context too; it takes no fixed context.")
  return jax.grad(lambda z: checked_energy_value(energy, params, z, z, mask))(x)


def score_relaxed_field(energy, params, x, mask, context):
  """``G(x) = ∂A/∂x|_s + values_out(∂A/∂s)`` for a ``ScoreEnergy`` ``F = A(s, x)``, by ``jax.grad`` of
  ``energy_of_scores`` at ``s = scores(x, c)`` with the context held constant."""
  scores = energy.scores(params, x, context)

  def energy_of_scores(s, z):
    return energy.energy_of_scores(params, s, z, context, mask)

  score_grad, direct_grad = jax.grad(energy_of_scores, argnums=(0, 1))(scores, x)
  return direct_grad + energy.values_out(params, score_grad, context)


def _relaxed_term(energy, params, x, mask, context):
  """A term's share of the relaxed field: relaxed if it declares a relaxed form, else its exact tied field."""
  if isinstance(energy, EnergySum) or has_relaxed_form(energy):
    return relaxed_gradient(energy, params, x, mask, context)
  return tied_gradient(energy, params, x, mask, context)


def relaxed_gradient(energy, params, x, mask, context=None):
  """The relaxed field (module docstring) of an energy declaring its relaxed form (``energies.ScoreEnergy`` with
  ``values=True``); in an ``EnergySum`` the terms without one take their exact tied field. The energy's own
  ``relaxed_field`` (``Interaction``'s: closed form or tile by tile) replaces the generic ``score_relaxed_field``
  where present."""
  context = x if context is None else context
  if isinstance(energy, EnergySum):
    return sum(_relaxed_term(term, params[name], x, mask, context) for name, term in energy.terms.items())
  if not has_relaxed_form(energy):
    raise _relaxed_form_error(energy)
  if hasattr(energy, "relaxed_field"):
    return energy.relaxed_field(params, x, mask, context)
  return score_relaxed_field(energy, params, x, mask, context)


def _relaxed_form_error(energy) -> Exception:
  """The error for ``mode="relaxed"`` on an energy without a relaxed form, saying how to declare one."""
  if isinstance(energy, ScoreEnergy):
    return ValueError(f"mode='relaxed' needs the value/output projections of {_name(energy)}: build it with "
                      "values=True, or use mode='tied'.")
  return TypeError(
      f"mode='relaxed' needs an energy that declares its relaxed form, and {_name(energy)} does not. Declare it by "
      "implementing energyformer.energies.ScoreEnergy: values=True, scores(params, x, context) -> s, "
      "energy_of_scores(params, s, x, context, mask) -> scalar and values_out(params, weights, context) -> (N, D) "
      "(README, 'Extending energyformer'); or build an Interaction or Potential with values=True; or use "
      "mode='tied'.")


def _relaxes(energy) -> bool:
  if isinstance(energy, EnergySum):
    return any(_relaxes(term) for term in energy.terms.values())
  return has_relaxed_form(energy)


_FIELDS = {"tied": tied_gradient, "full": full_gradient, "relaxed": relaxed_gradient}


@dataclasses.dataclass(frozen=True)
class Layer:
  """A layer is the triple (energy, solver, derivation): one solver step on the energy's gradient field.

  ``Layer(energy, solver="gd", mode="tied", lagrangian=None)``, a frozen dataclass (hashable: compiled programs are
  shared between equal layers). It holds no parameters; ``EnergyLayer`` / ``EnergyStack`` create them.

  * ``energy``: any energy, ``energy(params, x, context, mask) -> scalar`` with ``specs()`` (``energies.base``).
  * ``solver``: a ``Solver`` or a registered name (``solvers.names()``: ``"gd"``, ``"momentum"``, ...).
  * ``mode``: the field the solver follows, ``"tied"`` (``∂F(z; c)/∂z`` at ``z = c = x``), ``"full"``
    (``∇_x F(x; x)``) or ``"relaxed"`` (exact attention weights, free value/output projections; the energy must
    declare its relaxed form). See the module docstring for the equations.
  * ``lagrangian``: optional; the field is then taken with respect to the activations ``g = ∇L(x)``.

  Shapes and conventions, for every method: ``x`` is one sequence of token states, shape (N, D) — batch with
  ``jax.vmap`` or use ``EnergyStack``, which takes (B, N, D) —, floating point (float32 by default, float64 under
  ``jax_enable_x64``); ``mask`` is ``None`` (every token sees every token) or a boolean (N, N) array,
  ``mask[n, m]`` True where token n may see token m (e.g. ``energies.masks.causal(N)``); an additive float mask
  is refused. The layer passes the mask to the energy, whose job it is: ``Interaction`` applies it through its
  aggregator (so local energies, a user's ``pairwise`` one included, need nothing), memories and potentials have
  no pairs to mask, and an energy written as a plain function must apply it itself (``energies.base``). ``params = {"energy": ...,
  "lagrangian": ...}`` (the second only with a Lagrangian), as ``specs()`` declares; ``hparams`` is the solver's
  dict of arrays (``default_hparams()``). ``step`` returns the new tokens (N, D), same dtype, and the new solver
  state.
  """

  energy: Any
  solver: Any = "gd"
  mode: str = "tied"
  lagrangian: Any = None

  def __post_init__(self):
    object.__setattr__(self, "solver", solver_lib.as_solver(self.solver, "Layer(solver=...)"))
    if self.mode not in MODES:
      raise ValueError(f"unknown derivation mode {self.mode!r}; choose one of {MODES}.")
    if self.mode == "relaxed" and not _relaxes(self.energy):
      raise _relaxed_form_error(self.energy)
    if not callable(self.energy) or not hasattr(self.energy, "specs"):
      raise TypeError(f"energy must be callable as energy(params, x, context, mask) and declare specs(), got "
                      f"{type(self.energy).__name__}; wrap a plain function with energyformer.energies.energy(fn).")

  def specs(self):
    """Parameter declarations of the energy (and Lagrangian)."""
    specs = {"energy": self.energy.specs()}
    if self.lagrangian is not None:
      specs["lagrangian"] = self.lagrangian.specs()
    return specs

  def activations(self, params, x):
    """``g = ∇L(x)``, or ``x`` itself without a Lagrangian."""
    return x if self.lagrangian is None else activation(self.lagrangian, params["lagrangian"], x)

  def energy_value(self, params, x, mask=None):
    """``E(g; g)`` at ``g = ∇L(x)`` (or ``F(x; x)``)."""
    masks.check_boolean(mask)
    g = self.activations(params, x)
    return checked_energy_value(self.energy, params["energy"], g, g, mask)

  def gradient(self, params, x, mask=None, context=None):
    """The field ``G(x)`` the solver descends (module docstring); ``context`` fixes the keys' tokens."""
    masks.check_boolean(mask)
    return _FIELDS[self.mode](self.energy, params["energy"], self.activations(params, x), mask, context)

  def init_state(self, x):
    """The solver's state for tokens ``x`` (N, D) before the first step (a velocity of zeros, or nothing)."""
    return self.solver.init(x)

  def step(self, params, hparams, x, state, mask=None, context=None):
    """One solver step: ``(x, state) → solver.step(G, x, state, hparams)``.

    A solver with ``fixed_context`` (Newton) sees the query-side field ``z ↦ G(z; c = x)``, so its curvature is
    the Hessian with the keys and values held at the step's input; in the full derivation, and for all other
    solvers, ``G(z)`` moves the context with ``z`` (Nesterov's look-ahead moves every token).

    ``context`` (tied and relaxed derivations): a function ``g ↦ c`` from the activations ``g`` (N, D) at which the
    field is taken (the step's input under ``fixed_context``, else the solver's evaluation point) to the context
    ``c`` (M, D) those tokens see, ``mask`` then being (N, M); by default ``c = g``. Incremental decoding passes
    the earlier tokens' cached context rows with ``g`` placed after them, so new tokens step against their prefix.
    """
    if context is not None and self.mode == "full":
      raise ValueError("the full derivation differentiates every token's key role, so its step takes no given "
                       "context; use mode 'tied' or 'relaxed' to step tokens against a context.")
    if self.solver.fixed_context and self.mode != "full":
      fixed = self.activations(params, x)
      fixed = fixed if context is None else context(fixed)
      return self.solver.step(lambda z: self.gradient(params, z, mask, fixed), x, state, hparams)
    if context is None:
      return self.solver.step(lambda z: self.gradient(params, z, mask), x, state, hparams)

    def field(z):
      masks.check_boolean(mask)
      g = self.activations(params, z)
      return _FIELDS[self.mode](self.energy, params["energy"], g, mask, context(g))

    return self.solver.step(field, x, state, hparams)

  def default_hparams(self, **overrides):
    """The solver's hyperparameters (defaults updated by ``overrides``) as arrays."""
    return self.solver.hparams(**overrides)
