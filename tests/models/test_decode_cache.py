"""Incremental decoding against cached contexts equals recomputing the prefix, for every registered variant;
sampling rules (top-k, nucleus) against a direct reference."""
import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from energyformer.models import GPT, GPTConfig, attention_layer, generate, variants
from energyformer.models.decode import cache_support, empty_cache, forward_rows, sample_logits

TINY = dict(vocab_size=11, context_length=7, dim=8, num_heads=2, head_dim=4, depth=2, mlp_hidden=16)
TOKENS = jnp.array([3, 1, 4, 1, 5, 9, 2], jnp.int32)


def _model(variant, **overrides):
  return GPT(GPTConfig(**{**TINY, "variant": variant, **overrides}), rngs=nnx.Rngs(0))


@nnx.jit
def _full_and_incremental(model, tokens):
  """Logits (T, V) of the model on the whole sequence, and one row at a time from the cache."""
  length = tokens.shape[0]

  def next_row(t, carry):
    cache, rows = carry
    logits, cache = forward_rows(model, jax.lax.dynamic_slice_in_dim(tokens, t, 1), t, cache)
    return cache, rows.at[t].set(logits[0])

  rows = jnp.zeros((length, model.config.vocab_size))
  return model(tokens[None])[0], jax.lax.fori_loop(0, length, next_row, (empty_cache(model, length), rows))[1]


# Heavy ball and secant Newton are checked under Strang splitting with the MLP (every sub-step cached, state
# crossing sub-steps and layers), variants with their own depth step as they build it, the others with attention
# steps alone, to keep the programs small.
SPLIT = dict(splitting="strang", mlp="plain")


# The default suite checks Newton here (Hessian-vector products with the context held) and Nesterov in the sampling
# test below (a look-ahead context, a velocity crossing the attention and MLP sub-steps and the layers); the rest
# of the registry is checked with the slow tests (`pytest -m slow`), each variant compiling its own programs.
DEFAULT_SUITE = ("newton",)


@pytest.mark.parametrize("variant", [name if name in DEFAULT_SUITE else pytest.param(name, marks=pytest.mark.slow)
                                     for name in variants.names()])
def test_cached_rows_equal_full_recomputation(variant):
  """Where the variant allows caching, each position's logits from the cache match the model run on the whole
  sequence (float32 tolerance) and their argmax (greedy tokens) is the same. Otherwise ``generate`` falls back,
  and its tokens with and without the cache are the same."""
  if variants.get(variant).block is not None:
    model = _model(variant)
  else:
    model = _model(variant, **(SPLIT if variant in ("momentum", "light_newton") else dict(mlp="none")))
  if cache_support(model) is not None:
    assert variant == "gated_linear"
    prompt = TOKENS[None, :3]
    assert jnp.array_equal(generate(model, prompt, 4), generate(model, prompt, 4, cache=False))
    return
  full, incremental = _full_and_incremental(model, TOKENS)
  np.testing.assert_allclose(incremental, full, rtol=1e-5, atol=2e-6)
  assert jnp.array_equal(jnp.argmax(incremental, -1), jnp.argmax(full, -1))


def test_row_indexing_energies_and_full_derivation_are_not_cached():
  """Gated linear attention reads its queries' row indices, and the full derivation differentiates key roles:
  both decode by recomputation, with the reason given."""
  def stack_of(layer):
    return types.SimpleNamespace(blocks=types.SimpleNamespace(layer=layer))

  assert "indexes_positions" in cache_support(stack_of(attention_layer(GPTConfig(**TINY, variant="gated_linear"))))
  full = dataclasses.replace(attention_layer(GPTConfig(**TINY, variant="tied")), mode="full")
  assert "full derivation" in cache_support(stack_of(full))


def test_cached_and_full_generation_draw_the_same_tokens():
  """Nucleus and top-k sampling from the cache (a prompt pass, then a token at a time; Nesterov, attention and
  MLP by Lie–Trotter splitting) give the tokens of recomputation with the same key, for a batch of prompts; the
  prompt is kept."""
  model = _model("nesterov")
  prompt = jnp.array([[1, 2, 3], [7, 7, 0]], jnp.int32)
  options = dict(temperature=1.5, top_k=6, top_p=0.9, key=jax.random.key(4))
  cached, full = generate(model, prompt, 4, **options), generate(model, prompt, 4, cache=False, **options)
  assert cached.shape == (2, 7) and jnp.array_equal(cached[:, :3], prompt)
  assert jnp.array_equal(cached, full)


def _reference_support(logits, temperature, top_k, top_p):
  """The tokens a restricted draw may give, and their probabilities, by sorting in NumPy."""
  logits = np.asarray(logits, np.float64) / temperature
  order = np.argsort(-logits)[:top_k]
  probabilities = np.exp(logits[order] - logits[order].max())
  probabilities /= probabilities.sum()
  count = int(np.searchsorted(np.cumsum(probabilities), top_p) + 1)
  kept = probabilities[:count] / probabilities[:count].sum()
  return order[:count], kept


@pytest.mark.parametrize("top_k, top_p", [(3, 1.0), (6, 0.6)])
def test_top_k_and_nucleus_draw_from_the_reference_support(top_k, top_p):
  """20 000 draws fall only on the reference's kept tokens, with its renormalised frequencies (±0.015)."""
  logits = jnp.array([2.0, -1.0, 0.5, 1.5, 0.0, 1.0, -2.0, 0.7])
  keys = jax.random.split(jax.random.key(0), 20000)
  draw = jax.jit(jax.vmap(lambda k: sample_logits(logits[None], k, temperature=0.8, top_k=top_k, top_p=top_p)[0]))
  draws = draw(keys)
  tokens, probabilities = _reference_support(logits, 0.8, top_k, top_p)
  frequencies = np.bincount(np.asarray(draws), minlength=8) / draws.size
  assert set(np.flatnonzero(frequencies)) == set(tokens.tolist())
  np.testing.assert_allclose(frequencies[tokens], probabilities, atol=0.015)


@pytest.mark.parametrize("options, message", [
    (dict(top_k=3), "temperature"),
    (dict(temperature=1.0, top_k=12, key=jax.random.key(0)), "top_k"),
    (dict(temperature=1.0, top_p=0.0, key=jax.random.key(0)), "top_p"),
    (dict(temperature=1.0), "key"),
])
def test_bad_sampling_options_are_named(options, message):
  """Restrictions without sampling, a top-k past the vocabulary, an empty nucleus and a missing key are refused."""
  with pytest.raises(ValueError, match=message):
    generate(_model("standard"), TOKENS[None, :2], 2, **options)
