"""A standard pre-norm Transformer encoder (the baseline the Energy Transformer is compared with).

Each of ``depth`` layers (own weights): ``x ← x + MHA(LN(x))``, ``x ← x + W₂ GELU(W₁ LN(x))``; a final LN.
"""
from __future__ import annotations

import jax
from flax import nnx

from energyformer.checks import check_positive_int
from energyformer.energies import masks


class EncoderLayer(nnx.Module):
  """``x + MHA(LN(x))`` then ``x + MLP(LN(x))``, optionally with an attention mask (B, N, N)."""

  def __init__(self, dim: int, num_heads: int, mlp_hidden: int, *, rngs: nnx.Rngs):
    self.attention_norm = nnx.LayerNorm(dim, rngs=rngs)
    self.attention = nnx.MultiHeadAttention(num_heads, dim, decode=False, rngs=rngs)
    self.mlp_norm = nnx.LayerNorm(dim, rngs=rngs)
    self.hidden = nnx.Linear(dim, mlp_hidden, rngs=rngs)
    self.output = nnx.Linear(mlp_hidden, dim, rngs=rngs)

  def __call__(self, x, mask=None):
    x = x + self.attention(self.attention_norm(x), mask=None if mask is None else mask[:, None])
    return x + self.output(jax.nn.gelu(self.hidden(self.mlp_norm(x))))


class TransformerEncoder(nnx.Module):
  """``depth`` ``EncoderLayer`` s and a final LayerNorm over tokens (B, N, D)."""

  def __init__(self, dim: int, num_heads: int, depth: int, mlp_hidden: int, *, rngs: nnx.Rngs):
    for name, value in (("dim", dim), ("num_heads", num_heads), ("depth", depth), ("mlp_hidden", mlp_hidden)):
      check_positive_int(name, value)
    if dim % num_heads:
      raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}; choose heads that divide the width.")
    self.layers = nnx.List([EncoderLayer(dim, num_heads, mlp_hidden, rngs=rngs) for _ in range(depth)])
    self.norm = nnx.LayerNorm(dim, rngs=rngs)

  def __call__(self, x, mask=None, *, key=None):
    """Encoded tokens; ``mask`` is boolean like the energy layers' (``masks.check_boolean``); ``key`` is accepted
    for a common core signature and unused (no noise)."""
    del key
    masks.check_boolean(mask)
    for layer in self.layers:
      x = layer(x, mask)
    return self.norm(x)


def count_params(module: nnx.Module) -> int:
  """The number of trained scalars (``nnx.Param`` entries) in ``module``."""
  return sum(leaf.size for leaf in jax.tree.leaves(nnx.state(module, nnx.Param)))


def matched_mlp_hidden(target_params: int, dim: int, num_heads: int, depth: int) -> int:
  """The MLP width F giving a ``TransformerEncoder`` about ``target_params`` parameters.

  Per layer: attention ``4D² + 4D`` (q/k/v/o with biases), two LayerNorms ``4D``, MLP ``F(2D + 1) + D``; plus the
  final LayerNorm ``2D``. Raises when even F = 1 exceeds the target.
  """
  del num_heads
  fixed = depth * (4 * dim * dim + 9 * dim) + 2 * dim
  hidden = (target_params - fixed) // (depth * (2 * dim + 1))
  if hidden < 1:
    raise ValueError(f"a {depth}-layer encoder of width {dim} already has {fixed} parameters, above the target "
                     f"{target_params}; use fewer layers (depth) for the baseline.")
  return int(hidden)
