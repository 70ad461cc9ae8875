"""Energies: pure scalar functions of token states, built from local energies, aggregators, heads and masks."""
from energyformer.energies import masks
from energyformer.energies.aggregate import Discounted, Gated, Helmholtz, PlainSum, decayed_sum
from energyformer.energies.attention import Interaction
from energyformer.energies.base import EnergySum, FunctionEnergy, energy
from energyformer.energies.dplr import DPLRInteraction
from energyformer.energies.gated_potential import GatedPotential
from energyformer.energies.lagrangians import LayerNormLagrangian, RMSLagrangian, activation
from energyformer.energies.local import elastic, huber, inner_product, lp, pairwise, quadratic
from energyformer.energies.memory import HopfieldLogSumExp, HopfieldReLU2, Potential
from energyformer.energies.relaxed import ScoreEnergy, has_relaxed_form
from energyformer.energies.params import ParamSpec, constant, init_params, normal, param_axes, param_trainable
from energyformer.energies.hyperspherical import (SphereAttention, SphereFeedForward, sphere, sphere_energy,
                                                  symmetric_attention)
