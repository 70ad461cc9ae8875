"""Autoregressive decoding of the GPT decoder: sampling rules, and incremental decoding against cached contexts.

Every sub-step of a depth step (the attention step, the MLP step) is a solver step along a field whose value at
token ``t`` depends, under the causal mask, on the context rows ``c_s`` (``s ≤ t``): the pre-normalised states
``g = ∇L(z)`` of the points ``z`` where the solver takes the field (the step's input, Nesterov's look-ahead point
``x + βm``, or, under ``fixed_context``, the step's input for every Hessian-vector product of a Newton step).
Causality makes ``c_s`` a function of tokens ``≤ s`` alone, unchanged when later tokens arrive. So
``generate(cache=True)`` keeps, for every depth step and sub-step, a buffer of the context rows of all earlier
positions; a new token is one pass through the depth with its own row as the only query against the buffer (its
row placed there too), its solver state (momentum, secant memory) travelling with it through the depth. The
per-token cost is linear in the length instead of the quadratic cost of recomputing the whole prefix. Newton-type
solvers differentiate the query side with the context held (``fixed_context``): their Hessian-vector products
see only the new token's row, so they are exact from the cache.

Where the cache cannot reproduce the field, ``generate`` recomputes the whole prefix for every token instead
(``cache_support`` says why):

* the ``"full"`` derivation, whose field at token ``s`` carries ``s``'s key role in the energies of later tokens;
* an energy that reads the row index of its queries rather than the mask alone, declared by
  ``indexes_positions = True`` on the energy or its aggregator (``Discounted``, ``Gated``: the decay between
  query ``n`` and key ``m`` runs over rows ``m … n``), as in the ``gated_linear`` variant;
* a solver taking its field at more than one point per step with a moving context (found while tracing);
* a depth step that is not a ``Layer`` or a ``Split`` of ``Layer`` s (a variant's own ``block``).

The buffers hold context rows, not projected keys and values: the energy's projections of the cached rows are
recomputed for each new token (linear in the length), which keeps the cache valid for any energy.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from energyformer.checks import check_positive_int, check_range
from energyformer.energies.base import EnergySum
from energyformer.layers import Layer, Split
from energyformer.layers.modules import unwrap


class NotCacheable(Exception):
  """Raised while tracing the cached path when a solver's field cannot be served from the cache."""


def _energy_terms(energy):
  return tuple(energy.terms.values()) if isinstance(energy, EnergySum) else (energy,)


def _indexes_positions(energy) -> bool:
  return any(getattr(term, "indexes_positions", False) or getattr(getattr(term, "aggregate", None),
                                                                  "indexes_positions", False)
             for term in _energy_terms(energy))


def cache_support(model) -> str | None:
  """``None`` when ``model``'s blocks can decode from cached contexts; otherwise the reason they cannot."""
  layer = model.blocks.layer
  parts = layer.parts if isinstance(layer, Split) else (layer,)
  if not all(isinstance(part, Layer) for part in parts):
    return f"the depth step {type(layer).__name__} is not a Layer or a Split of Layers, which take a context"
  for part in parts:
    if part.mode == "full":
      return "the full derivation makes a token's field depend on later tokens' energies"
    if _indexes_positions(part.energy):
      return (f"the energy {type(part.energy).__name__} reads its queries' row indices (indexes_positions), so a "
              "new token cannot be a lone query row")
  return None


class _ContextSlot:
  """One sub-step's context buffer (C, D): called with the activations ``g`` (n, D) of the new rows, it places
  them at ``offset`` and returns the context they see; ``updated`` is that buffer, the cache of the next call."""

  def __init__(self, rows, offset):
    self.rows, self.offset, self.placed = rows, offset, []

  def __call__(self, g):
    context = jax.lax.dynamic_update_slice_in_dim(self.rows, g.astype(self.rows.dtype), self.offset, axis=0)
    self.placed.append(context)
    return context

  def updated(self):
    if len(self.placed) != 1:
      raise NotCacheable(f"a solver took its field with a moving context {len(self.placed)} times in one step")
    return self.placed[0]


def num_substeps(layer) -> int:
  """Solver steps per depth step: the splitting's sub-steps, or 1 for a single layer."""
  return layer.num_substeps if isinstance(layer, Split) else 1


def empty_cache(model, capacity: int, dtype=jnp.float32):
  """The context buffers of one sequence: zeros (depth, sub-steps, capacity, D)."""
  blocks = model.blocks
  return jnp.zeros((blocks.depth, num_substeps(blocks.layer), capacity, model.config.dim), dtype)


def forward_rows(model, tokens, offset, cache):
  """``(logits, cache)`` for the tokens (n,) at positions ``offset … offset + n − 1`` of one sequence, given the
  context buffers ``cache`` (depth, sub-steps, C, D) of every earlier position: logits (n, V), and the buffers
  with the new rows' contexts written at ``offset``. Each new row sees the rows ``≤`` its own position."""
  blocks, layer = model.blocks, model.blocks.layer
  count, capacity = tokens.shape[0], cache.shape[-2]
  x = model.embed[...][tokens] + jax.lax.dynamic_slice_in_dim(model.positions[...], offset, count)
  mask = jnp.arange(capacity)[None, :] <= offset + jnp.arange(count)[:, None]
  params, hparams = unwrap(blocks.params), blocks.solver_hparams()
  per_step = {"params": None if blocks.shared else params, "hparams": hparams if blocks.stacked_hparams else None,
              "cache": cache}

  def body(carry, xs):
    tokens_state, solver_state = carry
    theta = params if xs["params"] is None else xs["params"]
    h = hparams if xs["hparams"] is None else xs["hparams"]
    slots = [_ContextSlot(rows, offset) for rows in xs["cache"]]
    context = slots if isinstance(layer, Split) else slots[0]
    tokens_state, solver_state = layer.step(theta, h, tokens_state, solver_state, mask, context)
    return (tokens_state, solver_state), jnp.stack([slot.updated() for slot in slots])

  (x, _), cache = jax.lax.scan(body, (x, layer.init_state(x)), per_step, length=blocks.depth)
  return model.readout(x), cache


def check_sampling(temperature: float, top_k: int | None, top_p: float | None, vocab_size: int) -> None:
  """Raises unless ``temperature ≥ 0``, ``1 ≤ top_k ≤ vocab_size`` and ``top_p ∈ (0, 1]`` (both only when
  sampling: greedy decoding has no use for them)."""
  check_range("temperature", temperature, 0.0, fix="Use temperature 0 for greedy decoding or > 0 to sample.")
  if temperature == 0 and (top_k is not None or top_p is not None):
    raise ValueError("top_k and top_p restrict sampling, but temperature 0 decodes greedily; pass a temperature "
                     "> 0 to sample, or leave top_k and top_p unset.")
  if top_k is not None:
    check_positive_int("top_k", top_k)
    if top_k > vocab_size:
      raise ValueError(f"top_k={top_k} exceeds the vocabulary of {vocab_size} tokens; use top_k <= {vocab_size}.")
  if top_p is not None:
    check_range("top_p", top_p, 0.0, 1.0, low_open=True, fix="Use a nucleus probability top_p in (0, 1].")


def sample_logits(logits, key, *, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None):
  """Next tokens (B,) int32 from logits (B, V).

  ``temperature = 0``: ``argmax``. Otherwise a draw from ``softmax(logits / temperature)`` restricted to the
  ``top_k`` largest logits (ties at the k-th value kept), then to the nucleus: the fewest most probable tokens
  whose probability (renormalised after top-k) reaches ``top_p``.
  """
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if top_k is not None:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits >= kth, logits, -jnp.inf)
  if top_p is not None:
    order = jnp.argsort(-logits, axis=-1)
    probabilities = jax.nn.softmax(jnp.take_along_axis(logits, order, axis=-1), axis=-1)
    before = jnp.cumsum(probabilities, axis=-1) - probabilities
    keep_sorted = before < top_p
    keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
    logits = jnp.where(keep, logits, -jnp.inf)
  return jax.random.categorical(key, logits).astype(jnp.int32)


def _full_decode(model, prompt, num_new_tokens: int, sample, keys):
  """Every new token from the model run on the whole buffer (prompt and tokens so far)."""
  batch, prompt_length = prompt.shape
  total = prompt_length + num_new_tokens
  buffer = jnp.zeros((batch, total), jnp.int32).at[:, :prompt_length].set(prompt)

  def next_token(t, buffer):
    logits = model(buffer)[:, t - 1]
    return buffer.at[:, t].set(sample(logits, keys[t - prompt_length]))

  return jax.lax.fori_loop(prompt_length, total, next_token, buffer)


def _cached_decode(model, prompt, num_new_tokens: int, sample, keys):
  """The prompt in one pass filling the context buffers, then one row per new token against them."""
  batch, prompt_length = prompt.shape
  caches = jnp.zeros((batch,) + empty_cache(model, prompt_length + num_new_tokens).shape)
  forward = jax.vmap(functools.partial(forward_rows, model), in_axes=(0, None, 0))
  logits, caches = forward(prompt, 0, caches)
  new = jnp.zeros((batch, num_new_tokens), jnp.int32).at[:, 0].set(sample(logits[:, -1], keys[0]))

  def next_token(i, carry):
    new, caches = carry
    logits, caches = forward(jax.lax.dynamic_slice_in_dim(new, i - 1, 1, axis=1), prompt_length + i - 1, caches)
    return new.at[:, i].set(sample(logits[:, 0], keys[i])), caches

  new, _ = jax.lax.fori_loop(1, num_new_tokens, next_token, (new, caches))
  return jnp.concatenate([prompt, new], axis=1)


def generate(model, prompt, num_new_tokens: int, *, temperature: float = 0.0, top_k: int | None = None,
             top_p: float | None = None, key=None, cache: bool = True):
  """Extends ``prompt`` (B, P) int by ``num_new_tokens`` tokens of the GPT ``model``; returns (B, P + new) int32.

  Each token is ``sample_logits`` of the logits after the tokens so far: greedy for ``temperature = 0``, else
  drawn (``top_k``, ``top_p`` nucleus) with the i-th new token's key ``jax.random.split(key, new)[i]``, so both
  paths draw alike. ``cache=True`` decodes incrementally against cached contexts (module docstring) where the
  model allows (``cache_support``), else, and with ``cache=False``, recomputes the prefix for every token.
  """
  check_positive_int("num_new_tokens", num_new_tokens)
  prompt = jnp.asarray(prompt, jnp.int32)
  if prompt.ndim != 2 or prompt.shape[1] == 0:
    raise ValueError(f"prompt must be integer tokens of shape (batch, length >= 1), got shape {prompt.shape}; "
                     "add a batch axis with prompt[None].")
  prompt_length = prompt.shape[1]
  if prompt_length + num_new_tokens > model.config.context_length:
    raise ValueError(f"prompt length {prompt_length} + {num_new_tokens} new tokens exceeds context_length "
                     f"{model.config.context_length}; generate fewer tokens or shorten the prompt.")
  check_sampling(temperature, top_k, top_p, model.config.vocab_size)
  if temperature > 0 and key is None:
    raise ValueError("sampling with temperature > 0 needs a PRNG key: pass key=jax.random.key(seed).")
  keys = jax.random.split(jax.random.key(0) if key is None else key, num_new_tokens)
  decode = functools.partial(_decode, model, prompt, keys, num_new_tokens=num_new_tokens, temperature=temperature,
                             top_k=top_k, top_p=top_p)
  if cache and cache_support(model) is None:
    try:
      return decode(cached=True)
    except NotCacheable:
      pass
  return decode(cached=False)


@functools.partial(nnx.jit, static_argnames=("num_new_tokens", "temperature", "top_k", "top_p", "cached"))
def _decode(model, prompt, keys, *, num_new_tokens, temperature, top_k, top_p, cached):
  sample = functools.partial(sample_logits, temperature=temperature, top_k=top_k, top_p=top_p)
  return (_cached_decode if cached else _full_decode)(model, prompt, num_new_tokens, sample, keys)
