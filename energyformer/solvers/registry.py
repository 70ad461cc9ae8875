"""Solvers by name: ``register`` a factory, ``get`` a solver built from it, ``as_solver`` to accept either.

A *factory* is a function whose keyword arguments are the solver's defaults and which returns a ``Solver``
(``momentum(eta=1.0, beta=0.5)``). The built-in solvers register themselves with the same decorator a user's
solver uses::

    @solvers.register("rmsprop")
    def rmsprop(eta=0.1, decay=0.9) -> solvers.Solver: ...

after which ``solvers.get("rmsprop")``, ``Layer(energy, "rmsprop")`` and variants find it.
"""
from __future__ import annotations

from typing import Callable

from energyformer.solvers.base import Solver

Factory = Callable[..., Solver]

_FACTORIES: dict[str, Factory] = {}


def register(name: str, factory: Factory | None = None, *, overwrite: bool = False):
  """Registers ``factory`` under ``name``; without ``factory``, a decorator doing so (returning the factory).

  A name already taken raises unless ``overwrite=True``.
  """
  if not isinstance(name, str) or not name:
    raise TypeError(f"a solver is registered under a non-empty string name, got {name!r}; "
                    "write @solvers.register(\"my_solver\").")

  def add(factory: Factory) -> Factory:
    if not callable(factory):
      raise TypeError(f"solvers.register({name!r}, ...) takes a factory function returning a Solver, got "
                      f"{type(factory).__name__}; wrap a built solver as `lambda **options: solver`.")
    if name in _FACTORIES and _FACTORIES[name] is not factory and not overwrite:
      raise ValueError(f"a solver named {name!r} is already registered; choose another name or pass "
                       "overwrite=True to replace it.")
    _FACTORIES[name] = factory
    return factory

  return add if factory is None else add(factory)


def names() -> tuple[str, ...]:
  """The registered solver names, in registration order."""
  return tuple(_FACTORIES)


def get(name: str, **options) -> Solver:
  """The solver registered under ``name``, built with ``options`` as its defaults."""
  if name not in _FACTORIES:
    raise ValueError(f"unknown solver {name!r}; choose one of {list(_FACTORIES)} or register yours with "
                     "solvers.register(name, factory).")
  return as_solver(_FACTORIES[name](**options), f"the factory registered as {name!r}")


def as_solver(solver, argument: str = "solver") -> Solver:
  """``solver`` itself if it is a ``Solver``, the registered solver if it is a name; else a ``TypeError`` saying
  what was passed (an uncalled factory, an optax optimiser, ...) and what ``argument`` needs."""
  if isinstance(solver, Solver):
    return solver
  if isinstance(solver, str):
    return get(solver)
  if hasattr(solver, "init") and hasattr(solver, "update"):
    raise TypeError(
        f"{argument} got an optax GradientTransformation (init, update), which updates parameters from their "
        "gradients. A solver moves token states along an energy's gradient field: a Solver(name, init(x), "
        "step(grad_fn, x, state, hparams), hyperparameters). Use a registered one (solvers.names(), e.g. "
        "solvers.momentum(eta=1.0, beta=0.5)) or write your own; optax optimisers train the model's parameters.")
  if callable(solver):
    label = getattr(solver, "__name__", type(solver).__name__)
    raise TypeError(f"{argument} got the function {label!r}, not a Solver; if it is a solver factory, call it: "
                    f"pass {label}() (e.g. solvers.momentum() rather than solvers.momentum).")
  raise TypeError(f"{argument} must be a Solver or a registered solver name (one of {list(_FACTORIES)}), got "
                  f"{type(solver).__name__}.")
