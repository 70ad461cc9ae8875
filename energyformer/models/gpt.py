"""A GPT-style decoder whose blocks are solver steps on energies.

Each depth step is a Lie–Trotter (or Strang) splitting: a step on the attention energy, then a step on the MLP's
potential energy, each taken at the pre-normalised tokens ``g = ∇L(x)`` of its own energy-LayerNorm Lagrangian
(so ``x ← x − η G(LN(x))`` is pre-norm attention plus residual). The attention variant — a name in the registry
``energyformer.models.variants`` (``variants.names()``), built-in or registered by the user — chooses the energy,
the derivation and the solver.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from energyformer.checks import check_positive_int
from energyformer.energies import Helmholtz, LayerNormLagrangian, masks
from energyformer.layers import EnergyStack, Layer, Split, check_reversible
from energyformer.models import variants
from energyformer.models.variants import mlp_layer

MLPS = ("plain", "potential", "none")


def _sorted_pairs(hparams) -> tuple[tuple[str, float], ...]:
  """``{name: value}`` (or pairs) as sorted ``(name, float)`` pairs: hashable and JSON-friendly."""
  pairs = hparams.items() if isinstance(hparams, Mapping) else hparams
  return tuple(sorted((str(name), float(value)) for name, value in pairs))


@dataclasses.dataclass(frozen=True)
class GPTConfig:
  """Sizes and choices of the decoder.

  ``variant``: a registered attention variant (``variants.names()``). ``hparams``: values of the variant's solver
  hyperparameters that differ from its defaults, ``{name: value}`` with names from
  ``variants.get(variant).solver.hyperparameters`` (stored as sorted pairs). ``temperature`` is the Helmholtz
  temperature of the variant's energy (default ``√head_dim``, standard attention); variants without a Helmholtz
  aggregator refuse it.
  ``mlp``: ``"plain"`` is the standard MLP (the relaxed step on a GELU potential: untied output projection),
  ``"potential"`` the exact gradient step on that potential (tied weights), ``"none"`` attention only.
  ``shared``: one parameter set for every depth step (a looped, weight-shared Transformer: recurrent depth), which
  ``GPT(tokens, depth=...)`` can run for more or fewer steps than it was trained with.
  ``remat`` and ``scan_unroll`` (``True``: the depth loop unrolled, fastest for shallow models) are the depth
  scan's (``layers.unroll``); ``batch_axes`` are the mesh axes the batch is split over in sharded training
  (``EnergyStack``; the training programs set them from the sharding rules).
  ``reversible``: rebuild activations in the backward pass (``layers.reversible``; a heavy-ball variant, the MLP
  step folded into the velocity); combinations that do not invert raise.
  """

  vocab_size: int
  context_length: int
  dim: int = 64
  num_heads: int = 4
  head_dim: int = 16
  depth: int = 4
  mlp_hidden: int = 256
  variant: str = "standard"
  mlp: str = "plain"
  hparams: tuple[tuple[str, float], ...] = ()
  temperature: float | None = None
  splitting: str = "lie_trotter"
  tie_embeddings: bool = True
  shared: bool = False
  remat: bool = True
  scan_unroll: int | bool = 1
  batch_axes: tuple[str, ...] = ()
  reversible: bool = False

  def __post_init__(self):
    object.__setattr__(self, "batch_axes", tuple(self.batch_axes))
    object.__setattr__(self, "hparams", _sorted_pairs(self.hparams))
    for name in ("vocab_size", "context_length", "dim", "num_heads", "head_dim", "depth", "mlp_hidden"):
      check_positive_int(name, getattr(self, name))
    variant = variants.get(self.variant)
    if self.mlp not in MLPS:
      raise ValueError(f"unknown mlp {self.mlp!r}; choose one of {MLPS}.")
    attention_hparams(self)
    if self.temperature is not None and not isinstance(getattr(variant.energy(self), "aggregate", None), Helmholtz):
      raise ValueError(f"variant {self.variant!r} has no Helmholtz (softmax) temperature; leave temperature=None.")
    if self.reversible:
      check_reversible(block(self))


def attention_hparams(config: GPTConfig) -> dict:
  """The attention solver's hyperparameters: the variant's defaults updated by ``config.hparams`` (checked against
  the solver's ranges; an unknown name raises)."""
  return variants.get(config.variant).solver.hparams(**dict(config.hparams))


def attention_layer(config: GPTConfig) -> Layer:
  """The attention step of one block for ``config.variant`` (its registered recipe), at pre-normalised tokens."""
  variant = variants.get(config.variant)
  return Layer(variant.energy(config), variant.solver, variant.mode, lagrangian=LayerNormLagrangian(config.dim))


def block(config: GPTConfig):
  """One depth step: the variant's own ``block`` around its attention step if it has one; else the attention step,
  then (unless ``mlp="none"``) the MLP step, by splitting."""
  return _block_and_hparams(config)[0]


def _block_and_hparams(config: GPTConfig):
  """The depth step and its hyperparameters: ``attention_hparams`` on the attention part, defaults elsewhere."""
  variant, attention = variants.get(config.variant), attention_layer(config)
  if variant.block is not None:
    layer = variant.block(config, attention)
  elif config.mlp == "none":
    layer = attention
  else:
    layer = Split((attention, mlp_layer(config)), config.splitting)
  hparams = attention_hparams(config)
  if _holds(layer, attention):
    return layer, hparams
  parts = getattr(layer, "parts", ())
  if not any(_holds(part, attention) for part in parts):
    raise ValueError(f"variant {config.variant!r}: its block must be the attention layer it is given (or a layer "
                     "stepping on its energy, e.g. layers.Preconditioned.of(attention)) or a Split with that layer as "
                     "one part.")
  return layer, tuple(hparams if _holds(part, attention) else part.default_hparams() for part in parts)


def _holds(part, attention) -> bool:
  """Whether ``part`` is the attention layer or a layer stepping on its energy object (``Preconditioned.of``)."""
  return part is attention or getattr(part, "energy", None) is attention.energy


def _param(rngs, shape, axes, stddev):
  return nnx.Param(stddev * jax.random.normal(rngs.params(), shape), out_sharding=axes, eager_sharding=False)


class GPT(nnx.Module):
  """Token + position embeddings → ``depth`` energy blocks (one ``lax.scan``) → LayerNorm → logits."""

  def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.embed = _param(rngs, (config.vocab_size, config.dim), ("vocab", "embed"), 0.02)
    self.positions = _param(rngs, (config.context_length, config.dim), (None, "embed"), 0.02)
    layer, hparams = _block_and_hparams(config)
    learned = variants.get(config.variant).learn_hparams
    if learned:
      hparams = jax.tree.map(lambda v: jnp.broadcast_to(v, (config.depth,) + jnp.shape(v)), hparams)
    self.blocks = EnergyStack(layer, config.depth, rngs=rngs, shared=config.shared, hparams=hparams,
                              learn_hparams=learned, stacked_hparams=learned, remat=config.remat,
                              scan_unroll=config.scan_unroll, batch_axes=config.batch_axes,
                              reversible=config.reversible)
    self.norm_scale = nnx.Param(jnp.ones(config.dim), out_sharding=("embed",), eager_sharding=False)
    self.norm_bias = nnx.Param(jnp.zeros(config.dim), out_sharding=("embed",), eager_sharding=False)
    if not config.tie_embeddings:
      self.head = _param(rngs, (config.dim, config.vocab_size), ("embed", "vocab"), config.dim ** -0.5)

  def __call__(self, tokens, depth: int | None = None, *, return_energy: bool = False):
    """Logits (B, T, V) for integer tokens (B, T), T ≤ ``context_length``; position t sees tokens ≤ t only.

    ``depth``: the number of depth steps to run (default ``config.depth``); another value needs ``shared=True``
    (a weight-shared stack can run for any number of steps: test-time depth extrapolation). ``return_energy``:
    also return each sequence's energy before and after every depth step, ``E_l(x_l)`` and ``E_l(x_{l+1})``, each
    of shape (B, depth) (the energy step l descends: the attention energy, plus the MLP's potential when the block
    has one)."""
    if jnp.ndim(tokens) != 2:
      raise ValueError(f"tokens must have shape (batch, length), got {jnp.shape(tokens)}.")
    length = tokens.shape[1]
    if length > self.config.context_length:
      raise ValueError(f"sequence length {length} exceeds the model's context_length "
                       f"{self.config.context_length}; shorten the input or build the model with a longer context.")
    x = self.embed[...][tokens] + self.positions[...][:length]
    rollout = self.blocks.rollout(x, masks.causal(length), record_energy=return_energy, num_steps=depth)
    logits = self.readout(rollout.x)
    return (logits, rollout.energy_before, rollout.energy_after) if return_energy else logits

  def readout(self, x):
    """Logits (..., V) of final token states (..., D): LayerNorm, then the (tied) output projection."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    x = (x - mean) * jax.lax.rsqrt(jnp.var(x, axis=-1, keepdims=True) + 1e-5) * self.norm_scale[...] + self.norm_bias[...]
    head = self.embed[...].T if self.config.tie_embeddings else self.head[...]
    return x @ head

