"""Solvers: pure ``(init, step)`` transforms of token states, one step per layer, registered by name."""
from energyformer.solvers.base import GradFn, HparamSpec, Solver, momentum_coefficient, step_size, time_constant
from energyformer.solvers.registry import as_solver, get, names, register
from energyformer.solvers.first_order import euler, gradient_descent, momentum, nesterov
from energyformer.solvers.second_order import hessian_vector_product, light_newton, neumann_direction, newton
from energyformer.solvers.stochastic import langevin
from energyformer.solvers.yurii import velocity_norm, yurii_nesterov, yurii_polyak
from energyformer.solvers.adaptive import accumulated_momentum, adaptive_rmsprop, adaptive_rmsprop_momentum
from energyformer.solvers.preconditioned import (apply_preconditioner, precondition, preconditioner_matrix,
                                                preconditioner_specs)
from energyformer.solvers.recursive import recursive, repeat
