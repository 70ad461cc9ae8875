"""The decoder's member hyperparameters come from the variant registry: a user's variant and solver are sweepable
with no change to the studies."""
import jax.numpy as jnp
import numpy as np
import pytest

from energyformer import energies, solvers
from energyformer.models import Variant, attention_hparams, variants
from energyformer.solvers import registry
from energyformer.studies import decoder, lis
from energyformer.train import population
from energyformer.train.config import TrainerConfig
from energyformer.train.optim import OptimizerConfig


def _damped(eta: float = 1.0, damping: float = 0.3) -> solvers.Solver:
  """Heavy ball with its own hyperparameter: ``m⁺ = (1 − d) m − η ∇F(x)``, ``x⁺ = x + m⁺``."""

  def step(grad_fn, x, velocity, hparams):
    velocity = (1.0 - hparams["damping"]) * velocity - hparams["eta"] * grad_fn(x)
    return x + velocity, velocity

  return solvers.Solver("damped", jnp.zeros_like, step,
                        {"eta": solvers.step_size(eta), "damping": solvers.HparamSpec(damping, 0.0, 1.0)})


@pytest.fixture
def user_variant(monkeypatch):
  monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))
  monkeypatch.setattr(variants, "_VARIANTS", dict(variants._VARIANTS))
  solvers.register("damped", _damped)
  energy = lambda config: energies.Interaction(config.dim, config.num_heads, config.head_dim, values=True)
  return variants.register(Variant("damped_softmax", energy, "damped", "relaxed", "softmax; damped heavy ball"))


def test_a_registered_variant_and_its_solver_hyperparameters_are_members(user_variant):
  """After registration the variant is a valid study variant and ``damping`` a vmapped member hyperparameter; a
  population over it trains in one program and its members differ."""
  assert "damped_softmax" in decoder.variant_names() and "damping" in decoder.hyperparameters()
  study = lis.LISStudy(data=lis.PRESETS["tiny"].data, dim=16, num_heads=2, head_dim=8, depth=2, mlp_hidden=32,
                       variants=("damped_softmax",))
  config = decoder.decoder_config(study.model_config("standard"), {"variant": "damped_softmax", "damping": 0.7})
  assert float(attention_hparams(config)["damping"]) == pytest.approx(0.7)
  members = [{"variant": "damped_softmax", "damping": d, "seed": 0} for d in (0.0, 0.9)]
  settings = TrainerConfig(steps=2, batch_size=8, eval_every=2, optimizer=OptimizerConfig(warmup_steps=1))
  results = population.train_population(lis.LISTask(study), members, settings)
  assert len(population.group_members(members, decoder.STRUCTURAL)) == 1
  assert not np.allclose(results[0]["train_loss"][0], results[1]["train_loss"][0])  # depth 2: damping acts
