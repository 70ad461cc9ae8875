"""energyformer: Transformer layers as optimisation steps on energies of the token states."""
from energyformer import energies, layers, solvers
from energyformer.energies import Interaction, energy
from energyformer.layers import EnergyLayer, EnergyStack, Layer, Split

__version__ = "0.1.0"
