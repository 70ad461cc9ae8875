"""Shared test set-up: the tests' own helper modules (``references``, ``train_fixtures``) are importable from every
test folder. The folders mirror the package layout (``tests/energies`` tests ``energyformer/energies``, and so on);
test files keep distinct names because pytest imports them by their base names."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
