"""The attention-variant registry: the built-ins' recipes, a user's variant with a user solver inside GPT, and
the hyperparameter overrides of ``GPTConfig``."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from energyformer import energies, solvers
from energyformer.layers import Hyperparameter
from energyformer.models import GPT, GPTConfig, Variant, attention_layer, mlp_layer, variants
from energyformer.solvers import registry

TINY = dict(vocab_size=11, context_length=8, dim=16, num_heads=2, head_dim=8, depth=2, mlp_hidden=32)
BUILT_IN = ("standard", "tied", "momentum", "nesterov", "newton", "light_newton", "linear", "gated_linear")


def decayed_momentum(eta: float = 1.0, damping: float = 0.3) -> solvers.Solver:
  """``m⁺ = (1 − d) m − η ∇F(x)``, ``x⁺ = x + m⁺``: momentum with its own hyperparameter, the damping d."""

  def step(grad_fn, x, velocity, hparams):
    velocity = (1.0 - hparams["damping"]) * velocity - hparams["eta"] * grad_fn(x)
    return x + velocity, velocity

  damping = solvers.HparamSpec(damping, 0.0, 1.0, fix="Use a damping in [0, 1].")
  return solvers.Solver("decayed_momentum", jnp.zeros_like, step, {"eta": solvers.step_size(eta), "damping": damping})


@pytest.fixture
def user_variant(monkeypatch):
  """A user solver and a user variant using it (elastic Helmholtz energy, relaxed), registered for one test."""
  monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))
  monkeypatch.setattr(variants, "_VARIANTS", dict(variants._VARIANTS))
  solvers.register("decayed_momentum", decayed_momentum)
  energy = lambda config: energies.Interaction(config.dim, config.num_heads, config.head_dim, local=energies.elastic,
                                               aggregate=energies.Helmholtz(config.temperature), values=True)
  return variants.register(Variant("elastic_damped", energy, "decayed_momentum", "relaxed", "elastic; damped"))


def test_built_in_variants_are_registered_recipes():
  """The eight built-ins come first in the registry; each recipe gives the documented solver and mode."""
  assert variants.names()[:8] == BUILT_IN
  solver_of = {name: variants.get(name).solver.name for name in BUILT_IN}
  assert solver_of == {"standard": "gd", "tied": "gd", "momentum": "momentum", "nesterov": "nesterov",
                       "newton": "newton", "light_newton": "light_newton", "linear": "gd", "gated_linear": "gd"}
  assert [variants.get(name).mode for name in BUILT_IN] == ["relaxed", "tied"] + ["relaxed"] * 6
  layer = attention_layer(GPTConfig(**TINY, variant="linear"))
  assert isinstance(layer.energy.aggregate, energies.PlainSum) and layer.energy.local is energies.quadratic


def test_user_variant_with_user_solver_in_gpt(user_variant):
  """GPTConfig finds the user's variant; its hyperparameter override lands in the model's Hyperparameter
  variables and changes the logits; a few Adam steps lower the loss."""
  assert "elastic_damped" in variants.names()
  model = GPT(GPTConfig(**TINY, variant="elastic_damped", hparams={"damping": 0.6}), rngs=nnx.Rngs(0))
  attention = nnx.state(model.blocks, Hyperparameter)["hparams"][0]
  assert float(attention["damping"][...]) == pytest.approx(0.6) and float(attention["eta"][...]) == 1.0
  tokens = jax.random.randint(jax.random.key(3), (4, 8), 0, 11)
  graphdef, hparams, rest = nnx.split(model, Hyperparameter, ...)
  logits = jax.jit(lambda h: nnx.merge(graphdef, h, rest)(tokens))
  undamped = jax.tree_util.tree_map_with_path(
      lambda path, v: 0.0 * v if "damping" in jax.tree_util.keystr(path) else v, hparams)
  assert not np.allclose(logits(hparams), logits(undamped))  # the damping reaches the depth loop

  optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer):
    def loss_fn(m):
      return optax.softmax_cross_entropy_with_integer_labels(m(tokens[:, :-1]), tokens[:, 1:]).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(step(model, optimizer)) for _ in range(8)]
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.05


def test_hparams_overrides_are_checked_and_hashable(user_variant):
  """Overrides are stored as sorted pairs (hashable), checked against the variant's solver: unknown names and
  out-of-range values raise naming them."""
  config = GPTConfig(**TINY, variant="momentum", hparams={"beta": 0.9, "eta": 0.5})
  assert config.hparams == (("beta", 0.9), ("eta", 0.5)) and hash(config) == hash(GPTConfig(**{**TINY},
      variant="momentum", hparams=[("eta", 0.5), ("beta", 0.9)]))
  with pytest.raises(ValueError, match="'decayed_momentum' has no hyperparameter.*beta"):
    GPTConfig(**TINY, variant="elastic_damped", hparams={"beta": 0.5})
  with pytest.raises(ValueError, match="damping"):
    GPTConfig(**TINY, variant="elastic_damped", hparams={"damping": 1.5})


def test_registry_errors_name_the_fix(user_variant):
  """Unknown names list the registered variants; duplicates, non-Variants and uncalled solver factories raise."""
  with pytest.raises(ValueError, match="'flash'.*elastic_damped.*register"):
    GPTConfig(**TINY, variant="flash")
  with pytest.raises(ValueError, match="already registered"):
    variants.register(user_variant)
  with pytest.raises(TypeError, match="Variant"):
    variants.register("standard")
  with pytest.raises(TypeError, match=r"solvers\.momentum\(\)"):
    Variant("bad", variants.softmax_energy, solvers.momentum)
  with pytest.raises(ValueError, match="sideways"):
    Variant("bad", variants.softmax_energy, "gd", "sideways")


def test_variant_block_and_learned_hyperparameters(monkeypatch):
  """A variant's ``block`` builds the depth step around its attention layer (here Strang with the potential MLP);
  ``learn_hparams`` makes each layer's hyperparameters trained parameters of shape (depth,), set by ``hparams``
  and moved by training."""
  from energyformer.layers import Split
  monkeypatch.setattr(variants, "_VARIANTS", dict(variants._VARIANTS))
  block = lambda config, attention: Split((mlp_layer(config), attention), "strang")
  variants.register(Variant("strang_momentum", variants.softmax_energy, solvers.momentum(), block=block,
                            learn_hparams=True))
  model = GPT(GPTConfig(**TINY, variant="strang_momentum", mlp="potential", hparams={"beta": 0.3}), rngs=nnx.Rngs(0))
  layer = model.blocks.layer
  assert isinstance(layer, Split) and layer.scheme == "strang" and layer.parts[0].solver.name == "gd"
  learned, used = nnx.state(model.blocks, nnx.Param)["hparams"], model.blocks.solver_hparams()
  assert learned[1]["beta"][...].shape == (TINY["depth"],) and np.allclose(used[1]["beta"], 0.3)
  assert np.allclose(used[0]["eta"], 1.0)
  tokens = jax.random.randint(jax.random.key(3), (4, 8), 0, 11)
  loss = lambda m: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(m(tokens[:, :-1]), tokens[:, 1:]))
  grads = nnx.grad(loss)(model)
  assert float(jnp.max(jnp.abs(grads.blocks.hparams[1]["beta"][...]))) > 0.0
  with pytest.raises(ValueError, match="block must be"):
    variants.register(Variant("detached", variants.softmax_energy, "gd", block=lambda config, attention:
                              mlp_layer(config)))
    GPT(GPTConfig(**TINY, variant="detached"), rngs=nnx.Rngs(0))
