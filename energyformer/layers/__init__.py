"""Layers: an energy and a solver become a layer; ``lax.scan`` over depth makes a stack."""
from energyformer.layers.derive import (MODES, Layer, full_gradient, relaxed_gradient, score_relaxed_field,
                                       tied_gradient)
from energyformer.layers.equilibrium import Anchored, NotConvergedWarning, equilibrium
from energyformer.layers.modules import EnergyLayer, EnergyStack, Fixed, Hyperparameter, unwrap
from energyformer.layers.preconditioned import Preconditioned
from energyformer.layers.reversible import HeavyBall, check_reversible, reversible_unroll
from energyformer.layers.split import Split
from energyformer.layers.stack import Rollout, unroll
