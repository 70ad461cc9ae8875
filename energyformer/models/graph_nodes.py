"""Node classification with the Energy Transformer: graph nodes are tokens, attention runs along edges only.

Node features (…, N, F) are encoded linearly to tokens of width D, plus a learned embedding of each node's hop
distance from a centre node when given (ego-graphs: 0 for the centre, 1, 2, … for its neighbourhood). The
interaction mask is the adjacency: node C's attention energy sums over its neighbours B only
(``E^ATT = −Σ_h (1/β_h) Σ_C log Σ_{B ∈ N(C)} exp(β_h K_hB·Q_hC)``), with each node also in its own
neighbourhood unless the ET excludes self-pairs. A linear head on the ET read-out ``LN(x_T)`` gives per-node
class logits.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from energyformer.checks import check_positive_int
from energyformer.energies import masks
from energyformer.models.energy_transformer import EnergyTransformer, ETConfig


def edge_mask(adjacency, valid=None):
  """``A_CB ≠ 0 ∨ C = B``, restricted to valid (non-padding) nodes: (…, N, N) booleans."""
  adjacency = jnp.asarray(adjacency) != 0
  mask = adjacency | jnp.eye(adjacency.shape[-1], dtype=bool)
  return mask if valid is None else mask & masks.padding(valid)


class GraphNodeClassifier(nnx.Module):
  """Features → tokens (+ hop embedding) → ET along edges → per-node logits (module docstring)."""

  def __init__(self, feature_dim: int, num_classes: int, et: ETConfig, *, rngs: nnx.Rngs, max_hops: int = 0):
    check_positive_int("feature_dim", feature_dim)
    check_positive_int("num_classes", num_classes)
    self.feature_dim, self.max_hops = feature_dim, max_hops
    self.encoder = nnx.Linear(feature_dim, et.dim, rngs=rngs)
    self.hop_embedding = nnx.Param(0.02 * jax.random.normal(rngs.params(), (max_hops + 1, et.dim)))
    self.et = EnergyTransformer(et, rngs=rngs)
    self.head = nnx.Linear(et.dim, num_classes, rngs=rngs)

  def tokens(self, features, hops=None):
    """``x_C = W f_C + b (+ P[hop_C])``."""
    if jnp.shape(features)[-1] != self.feature_dim:
      raise ValueError(f"features must have shape (..., nodes, {self.feature_dim}), got {jnp.shape(features)}; "
                       "build the model with feature_dim equal to the graph's feature width.")
    x = self.encoder(features)
    return x if hops is None else x + self.hop_embedding[...][jnp.clip(hops, 0, self.max_hops)]

  def __call__(self, features, adjacency, *, hops=None, valid=None, key=None):
    """Per-node logits (…, N, num_classes) for features (…, N, F) and adjacency (…, N, N)."""
    return self.head(self.et(self.tokens(features, hops), edge_mask(adjacency, valid), key=key))
