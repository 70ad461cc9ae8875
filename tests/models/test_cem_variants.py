"""The CEM variants in the GPT: parameter counts against closed forms (what each variant removes or adds relative to
``standard``; cem_precond with mlp="none" is the preconditioned attention alone) and the ``energyformer variants``
command. Causality and training of every registered variant, the CEM ones included, are tests/models/test_gpt.py's."""
import dataclasses

import pytest

from energyformer import cli
from energyformer.models import GPTConfig
from energyformer.models.variants import cem
from energyformer.studies import variants_table

TINY = GPTConfig(vocab_size=11, context_length=8, dim=16, num_heads=2, head_dim=8, depth=3, mlp_hidden=24)


def _count(variant, **changes):
  return variants_table.parameter_count(dataclasses.replace(TINY, variant=variant, **changes))


def test_parameter_counts_are_the_closed_forms():
  """Per layer, against standard, cem drops the value and output projections (2 D H Dh) and the MLP's hidden
  bias (M: its up projection is shared with the down projection, its gate projection replaces the output one);
  cem_dplr adds one diagonal per head (H D), cem_precond one D + D r per sublayer; recursion adds nothing. The
  standard count itself: embeddings, positions, final norm and per layer 4 D H Dh + 2 M D + M + 2 (D + 1)."""
  d, h, dh, m, depth = TINY.dim, TINY.num_heads, TINY.head_dim, TINY.mlp_hidden, TINY.depth
  standard = _count("standard")
  assert standard == (TINY.vocab_size + TINY.context_length + 2) * d + depth * (4 * d * h * dh + 2 * m * d + m
                                                                               + 2 * (d + 1))
  assert standard - _count("cem") == depth * (2 * d * h * dh + m)
  assert _count("cem_dplr") - _count("cem") == depth * h * d
  assert _count("cem_precond") - _count("cem") == depth * 2 * (d + d * cem.PRECONDITIONER_RANK)
  assert _count("cem_recursive") == _count("cem")
  assert _count("cem_precond", mlp="none") - _count("cem", mlp="none") == depth * (d + d * cem.PRECONDITIONER_RANK)


def test_variants_command_prints_counts_against_standard(capsys):
  cli.main(["variants", "--dim", "16", "--num-heads", "2", "--depth", "3", "--mlp-hidden", "24", "--vocab-size", "11",
            "--context-length", "8", "--variants", "standard", "cem_dplr"])
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].split()[:3] == ["variant", "parameters", "vs"]
  standard, dplr = (dict(zip(("variant", "parameters", "ratio"), line.split()[:3])) for line in lines[1:])
  assert standard["parameters"] == f"{_count('standard'):,d}" and standard["ratio"] == "1.000"
  assert dplr["variant"] == "cem_dplr" and dplr["parameters"] == f"{_count('cem_dplr'):,d}"
  assert float(dplr["ratio"]) == pytest.approx(_count("cem_dplr") / _count("standard"), abs=1e-3)
  assert "diagonal-plus-low-rank" in lines[2] and "eta=1" in lines[2]


def test_variants_command_refuses_an_unknown_variant(capsys):
  with pytest.raises(SystemExit):
    cli.main(["variants", "--variants", "no_such_variant"])
  assert "unknown attention variant 'no_such_variant'" in capsys.readouterr().err
