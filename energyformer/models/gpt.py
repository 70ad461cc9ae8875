"""A GPT-style decoder whose blocks are solver steps on energies.

Each depth step is a Lie–Trotter (or Strang) splitting: a step on the attention energy, then a step on the MLP's
potential energy, each taken at the pre-normalised tokens ``g = ∇L(x)`` of its own energy-LayerNorm Lagrangian
(so ``x ← x − η G(LN(x))`` is pre-norm attention plus residual). The attention variant chooses the energy, the
derivation and the solver:

========================  ====================================================  =================
variant                   energy                                                solver
========================  ====================================================  =================
``standard``              Helmholtz inner-product, relaxed values               gradient descent
``tied``                  Helmholtz inner-product, exact gradient               gradient descent
``momentum``              as ``standard``                                       heavy ball (MomenMHA)
``nesterov``              as ``standard``                                       Nesterov (NagMHA)
``newton``                as ``standard``                                       Neumann-Newton (MHA2nd1st)
``light_newton``          as ``standard``                                       secant Newton (LightMHA2nd1st, ours)
``linear``                quadratic local energy, plain sum, relaxed values     gradient descent
``gated_linear``          quadratic local energy, gated sum, relaxed values     gradient descent
========================  ====================================================  =================
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from energyformer import solvers
from energyformer.checks import check_positive_int, check_range
from energyformer.energies import (Gated, Helmholtz, Interaction, LayerNormLagrangian, PlainSum, Potential, masks,
                                   quadratic)
from energyformer.layers import EnergyStack, Layer, Split, unwrap

VARIANTS = ("standard", "tied", "momentum", "nesterov", "newton", "light_newton", "linear", "gated_linear")
MLPS = ("plain", "potential", "none")


@dataclasses.dataclass(frozen=True)
class GPTConfig:
  """Sizes and choices of the decoder.

  ``mlp``: ``"plain"`` is the standard MLP (the relaxed step on a GELU potential: untied output projection),
  ``"potential"`` the exact gradient step on that potential (tied weights), ``"none"`` attention only.
  ``eta`` and ``beta`` are the attention solver's step size and momentum; ``temperature`` is the softmax
  variants' Helmholtz temperature (default ``√head_dim``, standard attention). ``remat`` and ``scan_unroll``
  (``True``: the depth loop unrolled, fastest for shallow models) are the depth scan's (``layers.unroll``);
  ``batch_axes`` are the mesh axes the batch is split over in sharded training (``EnergyStack``; the training
  programs set them from the sharding rules).
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
  eta: float = 1.0
  beta: float = 0.5
  temperature: float | None = None
  splitting: str = "lie_trotter"
  tie_embeddings: bool = True
  remat: bool = True
  scan_unroll: int | bool = 1
  batch_axes: tuple[str, ...] = ()

  def __post_init__(self):
    object.__setattr__(self, "batch_axes", tuple(self.batch_axes))
    for name in ("vocab_size", "context_length", "dim", "num_heads", "head_dim", "depth", "mlp_hidden"):
      check_positive_int(name, getattr(self, name))
    if self.variant not in VARIANTS:
      raise ValueError(f"unknown attention variant {self.variant!r}; choose one of {VARIANTS}.")
    if self.mlp not in MLPS:
      raise ValueError(f"unknown mlp {self.mlp!r}; choose one of {MLPS}.")
    check_range("eta", self.eta, 0.0, low_open=True, fix="Use a positive attention step size.")
    check_range("beta", self.beta, 0.0, 1.0, high_open=True, fix="Use a momentum beta in [0, 1).")
    if self.temperature is not None and self.variant in ("linear", "gated_linear"):
      raise ValueError(f"variant {self.variant!r} has no softmax temperature; leave temperature=None.")


def attention_layer(config: GPTConfig) -> Layer:
  """The attention step of one block for ``config.variant`` (module table), at pre-normalised tokens."""
  sizes = (config.dim, config.num_heads, config.head_dim)
  if config.variant == "linear":
    energy = Interaction(*sizes, local=quadratic, aggregate=PlainSum(), values=True)
  elif config.variant == "gated_linear":
    energy = Interaction(*sizes, local=quadratic, aggregate=Gated(), values=True)
  else:
    energy = Interaction(*sizes, aggregate=Helmholtz(config.temperature), values=config.variant != "tied")
  solver = {
      "momentum": lambda: solvers.momentum(config.eta, config.beta),
      "nesterov": lambda: solvers.nesterov(config.eta, config.beta),
      "newton": lambda: solvers.newton(config.eta),
      "light_newton": lambda: solvers.light_newton(config.eta),
  }.get(config.variant, lambda: solvers.gradient_descent(config.eta))()
  mode = "tied" if config.variant == "tied" else "relaxed"
  return Layer(energy, solver, mode, lagrangian=LayerNormLagrangian(config.dim))


def block(config: GPTConfig):
  """One depth step: the attention step, then (unless ``mlp="none"``) the MLP step, by splitting."""
  attention = attention_layer(config)
  if config.mlp == "none":
    return attention
  potential = Potential(config.dim, config.mlp_hidden, "gelu", bias=True, values=config.mlp == "plain")
  mlp = Layer(potential, solvers.gradient_descent(1.0), "relaxed" if config.mlp == "plain" else "tied",
              lagrangian=LayerNormLagrangian(config.dim))
  return Split((attention, mlp), config.splitting)


def _param(rngs, shape, axes, stddev):
  return nnx.Param(stddev * jax.random.normal(rngs.params(), shape), out_sharding=axes, eager_sharding=False)


class GPT(nnx.Module):
  """Token + position embeddings → ``depth`` energy blocks (one ``lax.scan``) → LayerNorm → logits."""

  def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.embed = _param(rngs, (config.vocab_size, config.dim), ("vocab", "embed"), 0.02)
    self.positions = _param(rngs, (config.context_length, config.dim), (None, "embed"), 0.02)
    self.blocks = EnergyStack(block(config), config.depth, rngs=rngs, remat=config.remat,
                              scan_unroll=config.scan_unroll, batch_axes=config.batch_axes)
    self.norm_scale = nnx.Param(jnp.ones(config.dim), out_sharding=("embed",), eager_sharding=False)
    self.norm_bias = nnx.Param(jnp.zeros(config.dim), out_sharding=("embed",), eager_sharding=False)
    if not config.tie_embeddings:
      self.head = _param(rngs, (config.dim, config.vocab_size), ("embed", "vocab"), config.dim ** -0.5)

  def __call__(self, tokens):
    """Logits (B, T, V) for integer tokens (B, T), T ≤ ``context_length``; position t sees tokens ≤ t only."""
    if jnp.ndim(tokens) != 2:
      raise ValueError(f"tokens must have shape (batch, length), got {jnp.shape(tokens)}.")
    length = tokens.shape[1]
    if length > self.config.context_length:
      raise ValueError(f"sequence length {length} exceeds the model's context_length "
                       f"{self.config.context_length}; shorten the input or build the model with a longer context.")
    x = self.embed[...][tokens] + self.positions[...][:length]
    x = self.blocks(x, masks.causal(length))
    mean = jnp.mean(x, axis=-1, keepdims=True)
    x = (x - mean) * jax.lax.rsqrt(jnp.var(x, axis=-1, keepdims=True) + 1e-5) * self.norm_scale[...] + self.norm_bias[...]
    head = self.embed[...].T if self.config.tie_embeddings else self.head[...]
    return x @ head


def generate(model: GPT, prompt, num_new_tokens: int, *, temperature: float = 0.0, key=None):
  """Extends ``prompt`` (B, P) by ``num_new_tokens``: greedy for ``temperature = 0``, else sampling from
  ``softmax(logits / temperature)``. Returns (B, P + num_new_tokens)."""
  batch, prompt_length = jnp.shape(prompt)
  total = prompt_length + num_new_tokens
  if total > model.config.context_length:
    raise ValueError(f"prompt length {prompt_length} + {num_new_tokens} new tokens exceeds context_length "
                     f"{model.config.context_length}; generate fewer tokens.")
  check_range("temperature", temperature, 0.0, fix="Use temperature 0 for greedy decoding or > 0 to sample.")
  if temperature > 0 and key is None:
    raise ValueError("sampling with temperature > 0 needs a PRNG key: pass key=jax.random.key(seed).")
  graph, state = nnx.split(model)
  buffer = jnp.zeros((batch, total), jnp.int32).at[:, :prompt_length].set(prompt)
  keys = jax.random.split(jax.random.key(0) if key is None else key, max(num_new_tokens, 1))

  def next_token(t, buffer):
    logits = nnx.merge(graph, state)(buffer)[:, t - 1]
    if temperature > 0:
      token = jax.random.categorical(keys[t - prompt_length], logits / temperature)
    else:
      token = jnp.argmax(logits, axis=-1)
    return buffer.at[:, t].set(token.astype(jnp.int32))

  return jax.jit(lambda b: jax.lax.fori_loop(prompt_length, total, next_token, b))(buffer)
