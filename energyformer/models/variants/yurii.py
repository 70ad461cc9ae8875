"""YuriiFormer (Nesterov-accelerated Transformers): one velocity carried through the attention and MLP sub-steps.

A GPT block is Lie–Trotter gradient descent on an attention (interaction) energy and an MLP (potential) energy;
YuriiFormer replaces each sub-step by a momentum step whose velocity flows through both (``Split`` with
``shared_state=True``), LayerNorm-ed after every sub-step (``solvers.yurii``)::

    x_in = x + μ_a v;    v½ = LN(β_a v + γ_a Attn(LN(x_in)));    x½ = x + v½
    x_in2 = x½ + μ_m v½; v' = LN(β_m v½ + γ_m MLP(LN(x_in2)));   x' = x½ + v'

Each layer learns its own ``(γ, β, μ)`` for each sub-step (``learn_hparams``; six scalars per layer for Nesterov,
four for Polyak). ``yurii_strang`` is this project's Strang form: half an attention step, a full MLP step and half
an attention step (the half steps halve ``γ``), one velocity through all three. The velocity starts at zero (the
paper's learned initial velocity is not modelled: this project's design). ``GPTConfig(mlp="none")`` leaves the
attention step alone.
"""
from __future__ import annotations

import dataclasses

from energyformer import solvers
from energyformer.layers import Split
from energyformer.models.variants import Variant, mlp_layer, register, softmax_energy


def momentum_block(solver_factory, scheme: str):
  """``block(config, attention)``: the attention step, then the MLP step of ``config.mlp`` stepped by
  ``solver_factory()``, split by ``scheme`` with one shared solver state (the velocity)."""

  def block(config, attention):
    if config.mlp == "none":
      return attention
    return Split((attention, dataclasses.replace(mlp_layer(config), solver=solver_factory())), scheme,
                 shared_state=True)

  return block


register(Variant("yurii_nesterov", softmax_energy, solvers.yurii_nesterov(), "relaxed",
                 "softmax attention and MLP; Nesterov velocity through both, LayerNorm-ed, learned per layer "
                 "(YuriiFormer)", block=momentum_block(solvers.yurii_nesterov, "lie_trotter"), learn_hparams=True))
register(Variant("yurii_polyak", softmax_energy, solvers.yurii_polyak(), "relaxed",
                 "as yurii_nesterov without look-ahead (heavy ball; YuriiFormer Polyak)",
                 block=momentum_block(solvers.yurii_polyak, "lie_trotter"), learn_hparams=True))
register(Variant("yurii_strang", softmax_energy, solvers.yurii_nesterov(), "relaxed",
                 "as yurii_nesterov, Strang splitting: half attention, MLP, half attention (this project's design)",
                 block=momentum_block(solvers.yurii_nesterov, "strang"), learn_hparams=True))
