"""The Energy Transformer (Hoover et al. 2023): one weight-shared block, applied as T steps of energy descent.

Tokens ``x`` (N, D) are layer-normalised by the gradient of a Lagrangian, ``g = ∇L(x) = γ (x − x̄)/σ(x) + δ``
(scalar γ, vector δ). The energy of the activations is the sum of

* attention: ``E^ATT = −Σ_h (1/β_h) Σ_C log Σ_{B ∈ mask(C)} exp(β_h K_hB·Q_hC)`` with ``K_hB = g_B W^K_h``,
  ``Q_hC = g_C W^Q_h`` (no value matrices), per-head ``β_h`` (default ``1/√Y``), optionally learned;
* Hopfield memory: ``E^HN = −½ Σ_B Σ_μ ReLU(ξ_μ·g_B)²`` or ``−(1/β_m) Σ_B log Σ_μ exp(β_m ξ_μ·g_B)``.

The dynamics are the Euler steps ``x ← x − α ∂E/∂g |_{g = LN(x)}`` of ``τ dx/dt = −∂E/∂g``, with the *full*
derivation (every token differentiated in its query and its key role), so ``dE/dt ≤ 0``: the energy never rises
for small α. ``self_exclusion`` removes ``B = C`` from each token's sum (the paper's form; the released image
model attends to itself too). With ``temperature > 0`` each step adds Langevin noise,
``x ← x − α ∂E/∂g + √(2α T) ξ`` (an option of this library, not the paper's image recipe). One parameter set
serves all T steps (``EnergyStack(..., shared=True)``: one ``lax.scan``), and a rollout records the energy
before and after every step.
"""
from __future__ import annotations

import dataclasses
import math

import jax
from flax import nnx

from energyformer import solvers
from energyformer.checks import check_positive_int, check_range
from energyformer.energies import (EnergySum, Helmholtz, HopfieldLogSumExp, HopfieldReLU2, Interaction,
                                   LayerNormLagrangian, masks)
from energyformer.layers import EnergyStack, Layer, Rollout, unwrap

MEMORIES = ("relu2", "logsumexp")


@dataclasses.dataclass(frozen=True)
class ETConfig:
  """Sizes and options of the Energy Transformer block.

  ``beta``: attention inverse temperature per head (``None``: ``1/√head_dim``); ``learn_beta`` trains it.
  ``memory``: ``"relu2"`` (ReLU² Hopfield energy) or ``"logsumexp"`` (softmax memory with learned
  ``memory_beta``). ``step_size`` is α = dt/τ, ``depth`` the number T of recurrent steps, ``temperature`` the
  Langevin noise temperature (0: none). ``equilibrium``: run the steps to their fixed point instead (this library's
  option, ``layers.equilibrium``): at most ``max_steps`` steps to relative tolerance ``tol``, each anchored to the
  input tokens by ``anchor`` (descent on ``E + (anchor/2α)‖x − x₀‖²``), differentiated implicitly.
  """

  dim: int = 64
  num_heads: int = 4
  head_dim: int = 16
  num_memories: int = 256
  depth: int = 12
  step_size: float = 0.1
  memory: str = "relu2"
  memory_beta: float = 0.01
  beta: float | None = None
  learn_beta: bool = False
  self_exclusion: bool = False
  temperature: float = 0.0
  remat: bool = True
  equilibrium: bool = False
  max_steps: int = 100
  tol: float = 1e-3
  anchor: float = 0.5

  def __post_init__(self):
    if self.equilibrium and self.temperature > 0:
      raise ValueError("Langevin noise (temperature > 0) has no fixed point; use equilibrium=False or temperature=0.")
    for name in ("dim", "num_heads", "head_dim", "num_memories", "depth", "max_steps"):
      check_positive_int(name, getattr(self, name))
    if self.memory not in MEMORIES:
      raise ValueError(f"unknown memory {self.memory!r}; choose one of {MEMORIES}.")
    check_range("step_size", self.step_size, 0.0, low_open=True, fix="Use a positive step size alpha (0.1 in ET).")
    if self.beta is not None:
      check_range("beta", self.beta, 0.0, low_open=True, fix="Use an inverse temperature beta > 0, e.g. 1/sqrt(head_dim).")
    check_range("temperature", self.temperature, 0.0, fix="Use a noise temperature >= 0 (0 turns the noise off).")

  @property
  def attention_beta(self) -> float:
    """β of every head at initialisation: ``beta`` or ``1/√head_dim``."""
    return 1.0 / math.sqrt(self.head_dim) if self.beta is None else self.beta


def et_energy(config: ETConfig) -> EnergySum:
  """``E = E^ATT + E^HN`` (module docstring): a Helmholtz inner-product interaction at temperature ``1/β`` plus a
  Hopfield memory."""
  attention = Interaction(config.dim, config.num_heads, config.head_dim,
                          aggregate=Helmholtz(1.0 / config.attention_beta, learnable=config.learn_beta))
  if config.memory == "relu2":
    memory = HopfieldReLU2(config.dim, config.num_memories)
  else:
    memory = HopfieldLogSumExp(config.dim, config.num_memories, config.memory_beta)
  return EnergySum({"attention": attention, "memory": memory})


def et_layer(config: ETConfig) -> Layer:
  """One ET step ``x ← x − α ∂E/∂g(LN(x))`` (+ ``√(2αT) ξ`` when ``temperature > 0``), full derivation."""
  if config.temperature > 0:
    solver = solvers.langevin(config.step_size, 1.0, config.temperature)
  else:
    solver = solvers.euler(config.step_size, 1.0)
  return Layer(et_energy(config), solver, "full", lagrangian=LayerNormLagrangian(config.dim))


def et_mask(config: ETConfig, num_tokens: int, mask=None):
  """The interaction mask: ``mask`` (e.g. graph edges; ``None`` = all pairs), without ``B = C`` under
  ``self_exclusion``."""
  exclusion = masks.self_exclusion(num_tokens) if config.self_exclusion else None
  return masks.combine(mask, exclusion)


class EnergyTransformer(nnx.Module):
  """The ET block: ``config.depth`` Euler (or Langevin) steps of one shared layer over tokens (N, D) or (B, N, D).

  ``mask`` (N, N) or (B, N, N) restricts which tokens interact (query row, key column). With noise
  (``temperature > 0``) a ``key`` is required: one PRNG key for the whole batch.
  """

  def __init__(self, config: ETConfig, *, rngs: nnx.Rngs):
    self.config = config
    steps, mode = (config.max_steps, "equilibrium") if config.equilibrium else (config.depth, "unrolled")
    self.stack = EnergyStack(et_layer(config), steps, rngs=rngs, shared=True, remat=config.remat, mode=mode,
                             tol=config.tol, anchor=config.anchor)

  def _state(self, x, key):
    if self.config.temperature == 0:
      return None
    if key is None:
      raise ValueError("this Energy Transformer adds Langevin noise (temperature > 0): pass key=jax.random.key(seed), "
                       "or build it with temperature=0.")
    return jax.random.split(key, x.shape[0]) if x.ndim == 3 else key

  def rollout(self, x, mask=None, *, key=None, record_energy: bool = False) -> Rollout:
    """The T steps (or the fixed point, with its ``residual`` and ``steps``); ``record_energy`` gives
    ``energy_before``/``energy_after`` of shape (T,) or (B, T) (T = ``max_steps`` in equilibrium mode)."""
    mask = et_mask(self.config, x.shape[-2], mask)
    return self.stack.rollout(x, mask, self._state(x, key), record_energy=record_energy)

  def __call__(self, x, mask=None, *, key=None):
    """The read-out ``g_T = LN(x_T)``: the normalised tokens after T steps (``rollout(...).x`` is ``x_T``)."""
    return self.activations(self.rollout(x, mask, key=key).x)

  def activations(self, x):
    """``g = LN(x) = ∇L(x)``: the normalised tokens the energy sees."""
    return self.stack.layer.activations(unwrap(self.stack.params), x)

  def energy(self, x, mask=None):
    """``E(LN(x))`` summed over a batch."""
    return self.stack.energy(x, et_mask(self.config, x.shape[-2], mask))
