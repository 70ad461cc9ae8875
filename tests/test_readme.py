"""The README's Python examples run as written, in order, in one namespace."""
import pathlib
import re

README = pathlib.Path(__file__).parent.parent / "README.md"


def test_readme_examples_run():
  """Executes every ```python block of the README; the first one's stack output has the documented shape."""
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
  assert blocks, "the README has no Python example"
  namespace = {}
  for block in blocks:
    exec(compile(block, str(README), "exec"), namespace)
  assert namespace["y"].shape == (2, 10, 64)
  assert namespace["trace"].shape == (2, 6)
