"""The API reference builds with pdoc from the docstrings, and every public module, class and function has one."""
import importlib
import pathlib
import pkgutil
import pydoc

import pytest

pdoc = pytest.importorskip("pdoc", reason="the API reference needs the docs extra: pip install -e '.[test]'")
import pdoc.doc  # noqa: E402
import pdoc.render  # noqa: E402

import energyformer  # noqa: E402
from energyformer.layers import EnergyStack, Layer  # noqa: E402

ALL_MODULES = ["energyformer"] + sorted(m.name for m in pkgutil.walk_packages(energyformer.__path__,
                                                                              "energyformer."))
# The library's core, which every model and study is built from: rendered by the default suite (a few seconds);
# the whole package with ``pytest -m slow``.
CORE = ("energyformer", "energyformer.energies", "energyformer.solvers", "energyformer.layers")
CORE_MODULES = [name for name in ALL_MODULES if name == "energyformer" or name.startswith(CORE[1:])]


def _public(doc):
  """The public classes and functions of a module or class, recursively (a class's docstring states its call
  convention, ``__call__`` being private to pdoc)."""
  for member in doc.own_members:
    if member.name.startswith("_"):
      continue
    if isinstance(member, pdoc.doc.Class):
      yield member
      yield from _public(member)
    elif isinstance(member, pdoc.doc.Function):
      yield member


def _build(names, directory: pathlib.Path):
  """Renders the modules ``names`` with pdoc into ``directory`` (the configuration of ``docs/api.md``); checks that
  each page carries an anchor for every public class and function, and that each of those, and each module, has a
  docstring."""
  pdoc.render.configure(docformat="restructuredtext")
  modules = {name: pdoc.doc.Module(importlib.import_module(name)) for name in names}
  undocumented, unrendered = [], []
  for name, module in modules.items():
    html = pdoc.render.html_module(module, modules)
    (directory / f"{name}.html").write_text(html)
    if not module.docstring.strip():
      undocumented.append(name)
    for member in _public(module):
      if not member.docstring.strip():
        undocumented.append(member.fullname)
      if f'id="{member.qualname}"' not in html:
        unrendered.append(member.fullname)
  assert not undocumented, f"public names without a docstring: {undocumented}"
  assert not unrendered, f"public names missing from the reference: {unrendered}"
  assert {p.stem for p in directory.glob("*.html")} == set(names)


def test_api_reference_of_the_core_builds_and_documents_every_public_name(tmp_path):
  """The energies, solvers and layers: every module rendered, every public class and function documented."""
  _build(CORE_MODULES, tmp_path)
  assert "EnergyStack" in (tmp_path / "energyformer.layers.modules.html").read_text()


@pytest.mark.slow
def test_api_reference_of_the_whole_package_builds_and_documents_every_public_name(tmp_path):
  """Every module of the package (models, training, data, studies, the command line too)."""
  _build(ALL_MODULES, tmp_path)


@pytest.mark.parametrize("cls, conventions", [
    (Layer, ["(N, D)", "boolean (N, N)", "mask[n, m]", "float32", "energy(params, x, context, mask)"]),
    (EnergyStack, ["(B, N, D)", "boolean (N, N)", "(B, N, N)", "record_energy"]),
])
def test_help_shows_shapes_and_mask_conventions(cls, conventions):
  """``help(Layer)`` and ``help(EnergyStack)`` show the class docstring with the shapes, dtype and mask
  conventions (not only the generated ``__init__``'s "Initialize self")."""
  text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
  missing = [c for c in conventions if c not in " ".join(text.split()).replace("| ", "")]
  assert not missing, f"help({cls.__name__}) does not mention {missing}"


def test_energy_protocol_says_masks_are_the_energys_job():
  """The energy protocol's documentation states who applies the mask."""
  from energyformer.energies import base
  assert "Masks are the energy's job" in base.__doc__
