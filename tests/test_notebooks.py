"""Every tutorial notebook runs top to bottom (its own asserts check what it shows)."""
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path):
  """Executes the notebook in a fresh kernel; any failing cell fails the test."""
  notebook = nbformat.read(path, as_version=4)
  NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_executed_with_its_plots(path):
  """The stored notebook shows what it computes: every code cell was executed, in order, and its figures are kept
  (a reader on GitHub sees them without running anything)."""
  cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
  assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1)), "execute it top to bottom and save"
  assert any("image/png" in output.get("data", {}) for c in cells for output in c.outputs), "no figure stored"
