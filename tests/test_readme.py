"""The README's Python examples run as written, in order, in one namespace; its variant table is the registry's."""
import pathlib
import re

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
  registrations have the documented shapes and names."""
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
  assert blocks, "the README has no Python example"
  namespace = {}
  for block in blocks:
    exec(compile(block, str(README), "exec"), namespace)
  assert namespace["y"].shape == (2, 10, 64)
  assert namespace["trace"].shape == (2, 6)
  assert namespace["out"].shape == (2, 10, 64)
  assert namespace["logits"].shape == (2, 16, 32)
  assert "rmsprop" in registry.names() and "sigmoid_rmsprop" in variants.names()


def test_readme_variant_table_is_the_registry():
  """The README's table of built-in variants lists exactly the registered built-ins with their descriptions."""
  rows = re.findall(r"^\| `(\w+)` \| (.+?) \|$", README.read_text(), flags=re.M)
  table = [(name, text) for name, text in rows if name in variants.names()]
  assert table == [(name, variants.get(name).description) for name in variants.names()]
