"""Hyper-SET: one weight-shared layer of hyperspherical energy descent, iterated ``T`` times (recurrent depth).

Each iteration ``t = 1 … T`` takes a solver step on the attention energy, then one on the feed-forward energy
(``energies.hyperspherical``), with step sizes learned as functions of the iteration index::

    (a_t, b_t) = softplus(W₂ GELU(W₁ φ(t) + c₁) + c₂)        φ(t): sinusoidal features of t;  a_t, b_t ∈ ℝᴰ
    x ← solver step on G_att with step a_t,   then   x ← solver step on G_ff with step b_t

(per feature; ``softplus`` keeps them positive; at initialisation ``W₂ = 0`` so every step is
``initial_step``). ``G`` is Hyper-SET's update direction (``symmetric_field``: symmetric attention through the
tied ``Wᵀ``; the feed-forward ``−ReLU(ĥ) Dᵀ``), or with ``exact_gradient`` the exact ``jax.grad`` of the energies.
The solver is any registered one with a single step-size hyperparameter (``gd``; the adaptive
``accumulated_momentum``, ``adaptive_rmsprop``, ``adaptive_rmsprop_momentum``; ``nesterov``, ...): its step size
is scaled by the learned ``a_t`` / ``b_t``, its other hyperparameters keep their defaults, and each energy has its
own solver state.
Tokens are embedded (learned token and position embeddings), and read out by an RMSNorm and a linear head.

This project's reading: the step sizes depend on the iteration only (Hyper-SET's code also feeds the tokens to
the step-size network), and the sphere normalisation has no learned gain.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from energyformer import solvers
from energyformer.checks import check_positive_int
from energyformer.energies import SphereAttention, SphereFeedForward, init_params, sphere


@dataclasses.dataclass(frozen=True)
class HyperSETConfig:
  """Sizes of the model. ``length``: tokens per sequence (position embeddings); ``num_classes``: logits per token;
  ``hidden``: feed-forward units; ``iterations``: default ``T``; ``time_dim``: sinusoidal features of ``t``;
  ``solver``: a registered solver name (``solvers.names()``) with one step-size hyperparameter."""

  vocab_size: int
  length: int
  num_classes: int
  dim: int = 64
  num_heads: int = 4
  head_dim: int = 16
  hidden: int = 256
  iterations: int = 8
  time_dim: int = 32
  solver: str = "gd"
  initial_step: float = 0.5
  exact_gradient: bool = False

  def __post_init__(self):
    for name in ("vocab_size", "length", "num_classes", "dim", "num_heads", "head_dim", "hidden", "iterations",
                 "time_dim"):
      check_positive_int(name, getattr(self, name))
    if self.time_dim % 2:
      raise ValueError(f"time_dim must be even (sine and cosine pairs), got {self.time_dim}.")
    if not self.initial_step > 0:
      raise ValueError(f"initial_step must be positive, got {self.initial_step}.")
    step_sizes = solvers.get(self.solver).step_sizes
    if len(step_sizes) != 1:
      raise ValueError(f"solver {self.solver!r} has step-size hyperparameters {list(step_sizes)}; Hyper-SET scales "
                       "exactly one by its learned per-iteration step: choose e.g. 'gd', 'adaptive_rmsprop' or "
                       "'accumulated_momentum'.")


def iteration_features(t, time_dim: int):
  """Sinusoidal features ``[sin(t ω_k), cos(t ω_k)]``, ``ω_k = 10000^(−k/(K−1))``, ``K = time_dim / 2``;
  ``t`` (T,) → (T, time_dim). Defined for any ``t``, so a model runs for more iterations than it was trained."""
  half = time_dim // 2
  frequencies = jnp.exp(-math.log(10000.0) * jnp.arange(half) / max(half - 1, 1))
  angles = jnp.asarray(t, jnp.float32)[:, None] * frequencies
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def _energy_params(energy, rngs):
  return nnx.data(jax.tree.map(nnx.Param, init_params(energy.specs(), rngs.params())))


class HyperSETLayer(nnx.Module):
  """The recurrent layer alone: token states (B, N, D) → states after ``T`` iterations (module docstring). It reads
  the layer fields of ``config`` (``dim`` … ``exact_gradient``); ``vocab_size``, ``length`` and ``num_classes``
  belong to the model around it. Called as a token core (``layer(x, mask, key=None)``) it returns the states on
  their sphere, ``sphere(x_T)``."""

  def __init__(self, config: HyperSETConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.attention = SphereAttention(config.dim, config.num_heads, config.head_dim)
    self.feedforward = SphereFeedForward(config.dim, config.hidden)
    self.attention_params = _energy_params(self.attention, rngs)
    self.feedforward_params = _energy_params(self.feedforward, rngs)
    self.time_hidden = nnx.Linear(config.time_dim, config.dim, rngs=rngs)
    inverse_softplus = math.log(math.expm1(config.initial_step))
    self.time_out = nnx.Linear(config.dim, 2 * config.dim, kernel_init=nnx.initializers.zeros,
                               bias_init=nnx.initializers.constant(inverse_softplus), rngs=rngs)

  def step_sizes(self, iterations: int):
    """``(a_t, b_t)`` for ``t = 1 … iterations``: (iterations, 2, D), positive."""
    features = iteration_features(jnp.arange(1, iterations + 1), self.config.time_dim)
    raw = self.time_out(jax.nn.gelu(self.time_hidden(features)))
    return jax.nn.softplus(raw).reshape(iterations, 2, self.config.dim)

  def fields(self):
    """The attention and feed-forward fields ``x (N, D), mask ↦ G(x)`` the solver descends."""
    att_params = jax.tree.map(lambda p: p[...], self.attention_params)
    ff_params = jax.tree.map(lambda p: p[...], self.feedforward_params)
    if self.config.exact_gradient:
      return (lambda x, mask: jax.grad(lambda z: self.attention(att_params, z, z, mask))(x),
              lambda x, mask: jax.grad(lambda z: self.feedforward(ff_params, z))(x))
    return (lambda x, mask: self.attention.symmetric_field(att_params, x, mask),
            lambda x, mask: self.feedforward.field(ff_params, x))

  def iterate(self, x, iterations: int | None = None, mask=None):
    """The states (B, N, D) after ``iterations`` (default ``config.iterations``) steps from ``x`` (B, N, D);
    ``mask`` (N, N)."""
    if jnp.ndim(x) != 3 or x.shape[-1] != self.config.dim:
      raise ValueError(f"states must have shape (batch, tokens, dim={self.config.dim}), got {jnp.shape(x)}.")
    iterations = self.config.iterations if iterations is None else iterations
    check_positive_int("iterations", iterations)
    solver = solvers.get(self.config.solver)
    name, defaults = solver.step_sizes[0], solver.hparams()
    attention_field, feedforward_field = self.fields()
    steps = self.step_sizes(iterations)

    def run(x):
      def body(carry, step):
        x, (attention_state, feedforward_state) = carry
        x, attention_state = solver.step(lambda z: attention_field(z, mask), x, attention_state,
                                         {**defaults, name: defaults[name] * step[0]})
        x, feedforward_state = solver.step(lambda z: feedforward_field(z, mask), x, feedforward_state,
                                           {**defaults, name: defaults[name] * step[1]})
        return (x, (attention_state, feedforward_state)), None

      return jax.lax.scan(body, (x, (solver.init(x), solver.init(x))), steps)[0][0]

    return jax.vmap(run)(x)

  def __call__(self, x, mask=None, *, key=None, iterations: int | None = None):
    """``sphere(x_T)`` (B, N, D) for states ``x`` (B, N, D); ``key`` is accepted for a common core signature and
    unused (no noise)."""
    del key
    return sphere(self.iterate(x, iterations, mask))


class HyperSET(HyperSETLayer):
  """Tokens (B, N) → logits (B, N, num_classes) after ``T`` iterations of the shared layer (module docstring)."""

  def __init__(self, config: HyperSETConfig, *, rngs: nnx.Rngs):
    super().__init__(config, rngs=rngs)
    self.embed = nnx.Param(0.02 * jax.random.normal(rngs.params(), (config.vocab_size, config.dim)))
    self.positions = nnx.Param(0.02 * jax.random.normal(rngs.params(), (config.length, config.dim)))
    self.norm_scale = nnx.Param(jnp.ones(config.dim))
    self.head = nnx.Param(config.dim ** -0.5 * jax.random.normal(rngs.params(), (config.dim, config.num_classes)))

  def encode(self, tokens, iterations: int | None = None, mask=None):
    """The token states (B, N, D) after ``iterations`` (default ``config.iterations``) steps; ``mask`` (N, N)."""
    if jnp.ndim(tokens) != 2 or tokens.shape[1] > self.config.length:
      raise ValueError(f"tokens must have shape (batch, length ≤ {self.config.length}), got {jnp.shape(tokens)}.")
    return self.iterate(self.embed[...][tokens] + self.positions[...][:tokens.shape[1]], iterations, mask)

  def __call__(self, tokens, iterations: int | None = None, mask=None):
    """Logits (B, N, num_classes) after ``iterations`` steps (any number: test-time iteration scaling)."""
    return sphere(self.encode(tokens, iterations, mask)) * self.norm_scale[...] @ self.head[...]
