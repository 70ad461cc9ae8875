"""``energyformer variants``: every registered attention variant with its description, its solver's
hyperparameters and the GPT's trainable parameter count at a given size, against ``standard`` at the same size."""
from __future__ import annotations

import dataclasses
import math

import jax
from flax import nnx

from energyformer import cli
from energyformer.models import GPT, GPTConfig, variants

REFERENCE = "standard"


def parameter_count(config: GPTConfig) -> int:
  """The number of trainable parameters (``nnx.Param`` entries, learned hyperparameters included) of
  ``GPT(config)``, read from shapes alone (``nnx.eval_shape``: nothing is initialised)."""
  model = nnx.eval_shape(lambda: GPT(config, rngs=nnx.Rngs(0)))
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


def hyperparameter_text(name: str) -> str:
  """``"eta=1, beta=0.5"``: the defaults of the variant's solver hyperparameters."""
  specs = variants.get(name).solver.hyperparameters
  return ", ".join(f"{key}={spec.default:g}" for key, spec in specs.items()) or "-"


def variant_rows(base: GPTConfig, names=None) -> list[dict]:
  """One row per variant (default: all registered): name, parameter count of ``base`` with that variant, its
  ratio to ``standard``'s, hyperparameters and description."""
  names = variants.names() if names is None else tuple(names)
  reference = parameter_count(dataclasses.replace(base, variant=REFERENCE))
  rows = []
  for name in names:
    count = parameter_count(dataclasses.replace(base, variant=name))
    rows.append({"variant": name, "parameters": count, "vs_standard": count / reference,
                 "hyperparameters": hyperparameter_text(name), "description": variants.get(name).description})
  return rows


def format_table(rows: list[dict]) -> str:
  """The rows as an aligned text table."""
  width = max(len("variant"), *(len(r["variant"]) for r in rows))
  hp_width = max(len("hyperparameters"), *(len(r["hyperparameters"]) for r in rows))
  lines = [f"{'variant':{width}s} {'parameters':>11s} {'vs ' + REFERENCE:>12s}  {'hyperparameters':{hp_width}s}  "
           "description"]
  for r in rows:
    lines.append(f"{r['variant']:{width}s} {r['parameters']:11,d} {r['vs_standard']:12.3f}  "
                 f"{r['hyperparameters']:{hp_width}s}  {r['description']}")
  return "\n".join(lines)


def config_from_args(args) -> GPTConfig:
  """The GPT size the options give: head_dim defaults to dim / num_heads, mlp_hidden to 4 dim."""
  head_dim = args.head_dim or args.dim // args.num_heads
  if head_dim < 1:
    raise ValueError(f"--num-heads {args.num_heads} exceeds --dim {args.dim}; give fewer heads or --head-dim.")
  return GPTConfig(vocab_size=args.vocab_size, context_length=args.context_length, dim=args.dim,
                   num_heads=args.num_heads, head_dim=head_dim, depth=args.depth,
                   mlp_hidden=args.mlp_hidden or 4 * args.dim)


def _options(command) -> None:
  command.add_argument("--dim", type=int, default=64, help="model width")
  command.add_argument("--depth", type=int, default=4, help="depth steps (blocks)")
  command.add_argument("--num-heads", type=int, default=4)
  command.add_argument("--head-dim", type=int, help="per-head width (default: dim / num_heads)")
  command.add_argument("--mlp-hidden", type=int, help="MLP hidden width (default: 4 dim)")
  command.add_argument("--vocab-size", type=int, default=256, help="vocabulary (default: bytes)")
  command.add_argument("--context-length", type=int, default=256)
  command.add_argument("--variants", nargs="+", help="variants to list (default: every registered one)")


@cli.command("variants", help="list the registered attention variants: description, hyperparameters and "
             "parameter count against standard at one size", options=_options)
def _command(args) -> None:
  with cli.user_settings():
    config = config_from_args(args)
    for name in args.variants or ():
      variants.get(name)                                 # an unknown name is a usage error
  print(format_table(variant_rows(config, args.variants)))
