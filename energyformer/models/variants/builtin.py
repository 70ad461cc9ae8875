"""The built-in attention variants: softmax attention under gradient descent, momentum, Nesterov and Newton-type
solvers (Transformers as Intrinsic Optimizers), the tied exact gradient, and linear and gated linear attention."""
from __future__ import annotations

from energyformer import solvers
from energyformer.energies import Gated, Interaction, PlainSum, quadratic
from energyformer.models.variants import Variant, register, softmax_energy


def _linear_energy(config) -> Interaction:
  return Interaction(config.dim, config.num_heads, config.head_dim, local=quadratic, aggregate=PlainSum(), values=True)


def _gated_linear_energy(config) -> Interaction:
  return Interaction(config.dim, config.num_heads, config.head_dim, local=quadratic, aggregate=Gated(), values=True)


register(Variant("standard", softmax_energy, solvers.gradient_descent(), "relaxed",
                 "Helmholtz inner-product energy, relaxed values; gradient descent (multi-head attention)"))
register(Variant("tied", lambda config: softmax_energy(config, values=False), solvers.gradient_descent(), "tied",
                 "Helmholtz inner-product energy, exact gradient; gradient descent"))
register(Variant("momentum", softmax_energy, solvers.momentum(), "relaxed", "as standard; heavy ball (MomenMHA)"))
register(Variant("nesterov", softmax_energy, solvers.nesterov(), "relaxed", "as standard; Nesterov (NagMHA)"))
register(Variant("newton", softmax_energy, solvers.newton(), "relaxed", "as standard; Neumann-Newton (MHA2nd1st)"))
register(Variant("light_newton", softmax_energy, solvers.light_newton(), "relaxed",
                 "as standard; secant Newton (LightMHA2nd1st, this project's design)"))
register(Variant("linear", _linear_energy, solvers.gradient_descent(), "relaxed",
                 "quadratic local energy, plain sum, relaxed values; gradient descent (linear attention)"))
register(Variant("gated_linear", _gated_linear_energy, solvers.gradient_descent(), "relaxed",
                 "quadratic local energy, gated sum, relaxed values; gradient descent (gated linear attention)"))
