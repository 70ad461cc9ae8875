"""The GPT-style decoder: causality, training for every variant, generation and bad options."""
import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

from energyformer.energies import masks
from energyformer.layers.modules import unwrap
from energyformer.models import GPT, GPTConfig, generate, variants

TINY = dict(vocab_size=11, context_length=8, dim=16, num_heads=2, head_dim=8, depth=2, mlp_hidden=32)


# The paper's variants and one of each later family run in the default suite; the rest of the registry (each
# variant compiling its own programs) with the slow tests (`pytest -m slow`).
DEFAULT_SUITE = ("standard", "tied", "momentum", "nesterov", "newton", "light_newton", "linear", "gated_linear", "cem",
                 "yurii_nesterov")
EVERY_VARIANT = [name if name in DEFAULT_SUITE else pytest.param(name, marks=pytest.mark.slow)
                 for name in variants.names()]


def _model(variant, **overrides):
  return GPT(GPTConfig(**{**TINY, "variant": variant, **overrides}), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("variant", EVERY_VARIANT)
def test_blocks_are_causal(variant):
  """d(block output at t)/d(input at s) is exactly zero for every s > t, and non-zero for some s ≤ t."""
  model = _model(variant)
  x = jax.random.normal(jax.random.key(1), (1, 6, TINY["dim"]))
  jacobian = jax.jacrev(lambda z: model.blocks(z, masks.causal(6)))(x)[0, :, :, 0]  # (t, D, s, D)
  later = jnp.triu(jnp.ones((6, 6), bool), k=1)
  assert float(jnp.max(jnp.abs(jnp.where(later[:, None, :, None], jacobian, 0.0)))) == 0.0
  assert float(jnp.max(jnp.abs(jacobian[5, :, 0]))) > 0.0


@pytest.mark.parametrize("variant", ["standard", "momentum", "newton"])
def test_logits_ignore_later_tokens(variant):
  """Changing tokens after position t leaves the logits at positions ≤ t bitwise unchanged."""
  model = _model(variant, mlp="potential")
  tokens = jax.random.randint(jax.random.key(2), (2, 8), 0, 11)
  changed = tokens.at[:, 5:].set((tokens[:, 5:] + 3) % 11)
  assert jnp.array_equal(model(tokens)[:, :5], model(changed)[:, :5])
  assert not jnp.array_equal(model(tokens)[:, 5:], model(changed)[:, 5:])


def test_unrolled_depth_loop_gives_the_same_logits():
  """scan_unroll=True (no depth loop) computes the same logits as the scanned stack (momentum carries state)."""
  tokens = jax.random.randint(jax.random.key(3), (2, 8), 0, 11)
  scanned, unrolled = (_model("momentum", depth=3, scan_unroll=u)(tokens) for u in (1, True))
  assert jnp.allclose(scanned, unrolled, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", EVERY_VARIANT)
def test_every_variant_trains(variant):
  """Twelve Adam steps on a fixed batch lower the next-token loss."""
  model = _model(variant)
  tokens = jax.random.randint(jax.random.key(3), (4, 8), 0, 11)
  optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer):
    def loss_fn(m):
      logits = m(tokens[:, :-1])
      return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(step(model, optimizer)) for _ in range(12)]
  assert all(jnp.isfinite(jnp.asarray(losses)))
  assert losses[-1] < losses[0] - 0.05


def test_untied_head_and_strang_splitting_run():
  """An untied output head and Strang splitting give logits of the right shape."""
  model = _model("standard", tie_embeddings=False, splitting="strang")
  assert model(jnp.zeros((2, 8), jnp.int32)).shape == (2, 8, 11)


def test_greedy_generation_follows_argmax():
  """Each greedily generated token is the argmax of the model's logits at the previous position."""
  model = _model("standard")
  prompt = jnp.array([[1, 2, 3], [4, 5, 6]], jnp.int32)
  out = generate(model, prompt, 4)
  assert out.shape == (2, 7) and jnp.array_equal(out[:, :3], prompt)
  logits = model(out)
  assert jnp.array_equal(out[:, 3:], jnp.argmax(logits[:, 2:6], axis=-1))


def test_sampling_is_seeded_and_temperature_matters():
  """Sampling is reproducible from its key; a different key gives different tokens."""
  model = _model("standard")
  prompt = jnp.zeros((8, 2), jnp.int32)
  a = generate(model, prompt, 5, temperature=2.0, key=jax.random.key(0))
  b = generate(model, prompt, 5, temperature=2.0, key=jax.random.key(0))
  c = generate(model, prompt, 5, temperature=2.0, key=jax.random.key(1))
  assert jnp.array_equal(a, b) and not jnp.array_equal(a, c)


@pytest.mark.parametrize("options, message", [
    (dict(variant="flash"), "variant"),
    (dict(mlp="moe"), "mlp"),
    (dict(variant="momentum", hparams={"beta": 1.0}), "beta"),
    (dict(hparams={"beta": 0.5}), "beta"),
    (dict(depth=0), "depth"),
    (dict(variant="linear", temperature=2.0), "temperature"),
])
def test_bad_options_are_named(options, message):
  """Unknown variants or MLPs and out-of-range hyperparameters raise errors naming the option."""
  with pytest.raises(ValueError, match=message):
    GPTConfig(**{**TINY, **options})


def test_temperature_option_sets_every_attention_temperature():
  """``GPTConfig(temperature=T)`` puts T (not the default √head_dim) into every layer's and head's Helmholtz
  temperature, and changes the logits."""
  temperatures = lambda model: [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(model))
                                if "temperature" in jax.tree_util.keystr(path)]
  hot, default = _model("standard", temperature=4.0), _model("standard")
  assert temperatures(hot) and all(jnp.all(t == 4.0) for t in temperatures(hot))
  assert all(jnp.allclose(t, TINY["head_dim"] ** 0.5) for t in temperatures(default))
  tokens = jnp.arange(8)[None] % 11
  assert not jnp.allclose(hot(tokens), default(tokens))


def test_sequence_longer_than_context_is_refused():
  """A sequence longer than the context, or generation past it, raises an error naming context_length."""
  model = _model("standard")
  with pytest.raises(ValueError, match="context_length"):
    model(jnp.zeros((1, 9), jnp.int32))
  with pytest.raises(ValueError, match="context_length"):
    generate(model, jnp.zeros((1, 6), jnp.int32), 3)
  with pytest.raises(ValueError, match="key"):
    generate(model, jnp.zeros((1, 2), jnp.int32), 3, temperature=1.0)


@pytest.mark.parametrize("variant", [pytest.param("standard", marks=pytest.mark.slow), "nesterov"])
def test_shared_depth_runs_any_number_of_steps(variant):
  """A weight-shared stack trained at depth L runs 2L steps as 2L explicit block steps with the one parameter set,
  the solver state carried across them; a per-layer stack refuses another depth."""
  model = _model(variant, shared=True)
  x = jax.random.normal(jax.random.key(2), (6, TINY["dim"]))
  layer, params, hparams = model.blocks.layer, unwrap(model.blocks.params), unwrap(model.blocks.hparams)
  tokens, state = x, layer.init_state(x)
  for _ in range(2 * TINY["depth"]):
    tokens, state = layer.step(params, hparams, tokens, state, masks.causal(6))
  assert jnp.allclose(model.blocks(x, masks.causal(6), num_steps=2 * TINY["depth"]), tokens, atol=1e-5)
  prompt = jnp.arange(12).reshape(2, 6) % 11
  assert jnp.array_equal(model(prompt, depth=TINY["depth"]), model(prompt))
  with pytest.raises(ValueError, match="shared=True"):
    _model(variant)(prompt, depth=4)
