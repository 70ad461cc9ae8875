"""The README's Python examples run as written, in order, in one namespace; its variant table is the registry's."""
import pathlib
import re

import numpy as np
import pytest

from energyformer.models import variants
from energyformer.solvers import registry

README = pathlib.Path(__file__).parent.parent / "README.md"


@pytest.fixture
def scratch_registries(monkeypatch):
  """The solvers and variants the README registers are forgotten after the test."""
  monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))
  monkeypatch.setattr(variants, "_VARIANTS", dict(variants._VARIANTS))


def test_readme_examples_run(scratch_registries):
  """Executes every ```python block of the README; the stacks' outputs, the extension examples' model logits and
  registrations have the documented shapes and names, and the slot memory's relaxed field is attention to its
  slots, ``−softmax(x W^Q ξᵀ) U``."""
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
  assert blocks, "the README has no Python example"
  namespace = {}
  for block in blocks:
    exec(compile(block, str(README), "exec"), namespace)
  assert namespace["y"].shape == (2, 10, 64)
  assert namespace["trace"].shape == (2, 6)
  assert namespace["out"].shape == (2, 10, 64)
  assert namespace["logits"].shape == (2, 16, 32)
  assert "rmsprop" in registry.names() and "memory_rmsprop" in variants.names()
  memory, energies, jax = namespace["memory"], namespace["energies"], namespace["jax"]
  params = energies.init_params(memory.specs(), jax.random.key(1))
  x = jax.random.normal(jax.random.key(2), (5, 64))
  attention_to_slots = jax.nn.softmax(x @ params["energy"]["query"] @ params["energy"]["slots"].T, axis=-1)
  np.testing.assert_allclose(memory.gradient(params, x), -attention_to_slots @ params["energy"]["value"],
                             rtol=1e-5, atol=1e-6)


def test_readme_variant_table_is_the_registry():
  """The README's table of built-in variants lists exactly the registered built-ins with their descriptions."""
  rows = re.findall(r"^\| `(\w+)` \| (.+?) \|$", README.read_text(), flags=re.M)
  table = [(name, text) for name, text in rows if name in variants.names()]
  assert table == [(name, variants.get(name).description) for name in variants.names()]
