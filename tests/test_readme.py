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
  assert "token_rmsprop" in registry.names() and "memory_rmsprop" in variants.names()
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


def test_readme_says_what_the_library_is_and_cites_its_sources():
  """A paragraph says what the library is before the two commands; the papers are cited by arXiv id; the LICENSE
  (Apache-2.0) and the API reference it links exist."""
  text = README.read_text()
  before_commands = text[:text.index("```bash")]
  assert "energyformer is a JAX" in before_commands and "Transformer layer is one step of an optimiser" in (
      " ".join(before_commands.split()))
  references = text[text.index("## References"):]
  for arxiv_id in ("2511.00907", "2302.07253", "2605.07588", "2601.23236", "2502.11646"):
    assert arxiv_id in references, arxiv_id
  for link in re.findall(r"\]\(([^)#:]+)\)", text):
    assert (README.parent / link).exists(), f"README links {link}, which does not exist"
  license_text = (README.parent / "LICENSE").read_text()
  assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
  assert "END OF TERMS AND CONDITIONS" in license_text
