"""Solvers: pure ``(init, step)`` transforms of token states, one step per layer."""
from energyformer.solvers.base import GradFn, Solver, check_hparams
from energyformer.solvers.first_order import euler, gradient_descent, momentum, nesterov
from energyformer.solvers.second_order import hessian_vector_product, light_newton, neumann_direction, newton
from energyformer.solvers.stochastic import langevin

SOLVERS = {
    "gd": gradient_descent,
    "momentum": momentum,
    "nesterov": nesterov,
    "newton": newton,
    "light_newton": light_newton,
    "euler": euler,
    "langevin": langevin,
}


def get(name: str, **options) -> Solver:
  """The solver registered under ``name`` (one of ``SOLVERS``), built with ``options`` as its defaults."""
  if name not in SOLVERS:
    raise ValueError(f"unknown solver {name!r}; choose one of {sorted(SOLVERS)}.")
  return SOLVERS[name](**options)
