"""Graphs with node labels: a generator with injected anomalies, loaders for benchmark files, splits and ego-graphs.

A ``Graph`` holds node features (N, F), a symmetric binary adjacency without self-loops (scipy CSR) and integer
node labels (N,) (1 = anomaly for anomaly detection).

Loaders:

* ``load_mat``: the MATLAB files of the graph anomaly-detection benchmarks (``YelpChi.mat``, ``Amazon.mat``:
  keys ``homo``/``net_*``, ``features``, ``label``; injected-anomaly sets such as ``BlogCatalog.mat``:
  ``Network``, ``Attributes``, ``Label``), read with ``scipy.io.loadmat``;
* ``load_edge_list``: a plain edge list (one ``source target`` pair per line, whitespace or comma separated,
  ``#`` comments) with features (``.npy`` or text, one row per node) and labels (``.npy`` or text, one per node).

``ego_graphs`` cuts a fixed-size neighbourhood around each node (itself, up to k₁ sampled neighbours, up to k₂
sampled neighbours of those), so graphs of any size train in small batches of dense (K, K) masks.
"""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import scipy.io
import scipy.sparse as sp

from energyformer.checks import check_positive_int, check_range


@dataclasses.dataclass(frozen=True)
class Graph:
  """Node features (N, F) float32, symmetric 0/1 adjacency (N, N) CSR without self-loops, labels (N,) int32."""

  features: np.ndarray
  adjacency: sp.csr_matrix
  labels: np.ndarray

  @property
  def num_nodes(self) -> int:
    return self.features.shape[0]


def make_graph(features, adjacency, labels) -> Graph:
  """A checked ``Graph``: the adjacency (dense or sparse, any weights) symmetrised, binarised, self-loops removed."""
  features = np.asarray(features.toarray() if sp.issparse(features) else features, np.float32)
  labels = np.asarray(labels).reshape(-1).astype(np.int32)
  if features.ndim != 2:
    raise ValueError(f"features must have shape (nodes, feature_dim), got {features.shape}.")
  adjacency = sp.csr_matrix(adjacency)
  n = features.shape[0]
  if adjacency.shape != (n, n) or labels.shape != (n,):
    raise ValueError(f"adjacency must be ({n}, {n}) and labels ({n},) to match the {n} feature rows, got "
                     f"{adjacency.shape} and {labels.shape}; check that the files describe the same nodes.")
  adjacency = ((adjacency + adjacency.T) != 0).astype(np.float32).tolil()
  adjacency.setdiag(0)
  adjacency = adjacency.tocsr()
  adjacency.eliminate_zeros()
  return Graph(features, adjacency, labels)


@dataclasses.dataclass(frozen=True)
class AnomalyGraphConfig:
  """Sizes of a generated graph with injected anomalies (see ``generate_anomaly_graph``)."""

  num_nodes: int = 1000
  num_communities: int = 5
  feature_dim: int = 16
  p_in: float = 0.03
  p_out: float = 0.001
  centre_scale: float = 2.0
  noise_scale: float = 1.0
  num_cliques: int = 4
  clique_size: int = 10
  num_contextual: int = 40
  candidates: int = 50
  seed: int = 0

  def __post_init__(self):
    for name in ("num_nodes", "num_communities", "feature_dim", "clique_size", "candidates"):
      check_positive_int(name, getattr(self, name))
    for name in ("p_in", "p_out"):
      check_range(name, getattr(self, name), 0.0, 1.0, fix="Use an edge probability in [0, 1].")
    anomalies = self.num_cliques * self.clique_size + self.num_contextual
    if self.num_cliques < 0 or self.num_contextual < 0 or anomalies > self.num_nodes // 2:
      raise ValueError(f"num_cliques * clique_size + num_contextual = {anomalies} anomalies must be >= 0 and at "
                       f"most half of num_nodes={self.num_nodes}; inject fewer anomalies or generate more nodes.")


def _sbm_edges(rng, communities, p_in, p_out, chunk=1024):
  """Upper-triangle edges of a stochastic block model, sampled a block of rows at a time."""
  n = len(communities)
  rows, cols = [], []
  for start in range(0, n, chunk):
    stop = min(start + chunk, n)
    same = communities[start:stop, None] == communities[None, :]
    r, c = np.nonzero(rng.random((stop - start, n)) < np.where(same, p_in, p_out))
    keep = c > r + start
    rows.append(r[keep] + start)
    cols.append(c[keep])
  return np.concatenate(rows), np.concatenate(cols)


def generate_anomaly_graph(config: AnomalyGraphConfig) -> tuple[Graph, np.ndarray]:
  """A stochastic-block-model graph with Gaussian features and injected anomalies; returns (graph, kind).

  * Normal nodes: community ``c_i`` uniform over C communities; an edge between i and j with probability ``p_in``
    when ``c_i = c_j`` and ``p_out`` otherwise; features ``x_i = μ_{c_i} + ε_i``, ``μ_c ~ N(0, s_c² I)``,
    ``ε_i ~ N(0, s_ε² I)`` (``centre_scale``, ``noise_scale``).
  * Structural anomalies: ``num_cliques`` groups of ``clique_size`` random nodes, each group made a clique.
  * Contextual anomalies: ``num_contextual`` other random nodes; each draws ``candidates`` random nodes and takes
    the features of the one farthest from its own (Euclidean), keeping its edges.

  Labels are 1 for both kinds of anomaly; ``kind`` is 0 (normal), 1 (structural) or 2 (contextual).
  """
  rng = np.random.default_rng(config.seed)
  n = config.num_nodes
  communities = rng.integers(0, config.num_communities, n)
  centres = config.centre_scale * rng.standard_normal((config.num_communities, config.feature_dim))
  features = centres[communities] + config.noise_scale * rng.standard_normal((n, config.feature_dim))
  rows, cols = _sbm_edges(rng, communities, config.p_in, config.p_out)
  order = rng.permutation(n)
  structural = order[:config.num_cliques * config.clique_size].reshape(config.num_cliques, config.clique_size)
  for clique in structural:
    r, c = np.triu_indices(config.clique_size, k=1)
    rows, cols = np.concatenate([rows, clique[r]]), np.concatenate([cols, clique[c]])
  contextual = order[structural.size:structural.size + config.num_contextual]
  original = features.copy()
  for node in contextual:
    candidates = rng.choice(n, config.candidates, replace=False)
    farthest = candidates[np.argmax(np.linalg.norm(original[candidates] - original[node], axis=1))]
    features[node] = original[farthest]
  kind = np.zeros(n, np.int32)
  kind[structural.reshape(-1)] = 1
  kind[contextual] = 2
  adjacency = sp.coo_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n, n))
  return make_graph(features, adjacency, (kind > 0).astype(np.int32)), kind


MAT_KEYS = {
    "adjacency": ("homo", "Network", "A", "adj", "net"),
    "features": ("features", "Attributes", "X", "feat", "attributes"),
    "labels": ("label", "Label", "gnd", "labels", "y"),
}


def _pick(contents, role, key):
  if key is not None:
    if key not in contents:
      raise KeyError(f"{role}_key={key!r} is not in the .mat file; it holds {sorted(_public(contents))}.")
    return contents[key]
  for candidate in MAT_KEYS[role]:
    if candidate in contents:
      return contents[candidate]
  raise KeyError(f"no {role} found in the .mat file (looked for {MAT_KEYS[role]}); it holds "
                 f"{sorted(_public(contents))}: pass {role}_key=... naming the right one.")


def _public(contents):
  return [k for k in contents if not k.startswith("__")]


def load_mat(path, *, adjacency_key: str | None = None, features_key: str | None = None,
             labels_key: str | None = None) -> Graph:
  """A graph from a benchmark ``.mat`` file; keys default to the usual names (``MAT_KEYS``), e.g.
  ``adjacency_key="net_rur"`` picks one YelpChi relation instead of the merged ``homo`` graph."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"graph file {str(path)!r} does not exist; pass the path of a .mat file.")
  contents = scipy.io.loadmat(path)
  return make_graph(_pick(contents, "features", features_key), _pick(contents, "adjacency", adjacency_key),
                    _pick(contents, "labels", labels_key))


def _read_table(path, dtype):
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"file {str(path)!r} does not exist.")
  if path.suffix == ".npy":
    return np.load(path).astype(dtype)
  text = path.read_text().replace(",", " ")
  rows = [line.split() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
  return np.asarray(rows, dtype=np.float64).astype(dtype)


def load_edge_list(edges_path, features_path, labels_path) -> Graph:
  """A graph from an edge list (``u v`` per line, 0-based node ids), a feature table and a label list."""
  edges = _read_table(edges_path, np.int64).reshape(-1, 2)
  features = _read_table(features_path, np.float32)
  features = features[:, None] if features.ndim == 1 else features
  labels = _read_table(labels_path, np.int32).reshape(-1)
  n = len(features)
  if edges.size and (edges.min() < 0 or edges.max() >= n):
    raise ValueError(f"edge list names node ids outside [0, {n}) for the {n} feature rows; ids must be 0-based.")
  adjacency = sp.coo_matrix((np.ones(len(edges), np.float32), (edges[:, 0], edges[:, 1])), shape=(n, n))
  return make_graph(features, adjacency, labels)


def split_nodes(labels, fractions=(0.4, 0.2, 0.4), seed: int = 0) -> dict[str, np.ndarray]:
  """Stratified random train/val/test node indices: each class is shuffled and cut by ``fractions``."""
  if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) <= 0:
    raise ValueError(f"fractions must be three positive numbers (train, val, test) summing to 1, got {fractions}.")
  rng = np.random.default_rng(seed)
  parts = {"train": [], "val": [], "test": []}
  for label in np.unique(labels):
    nodes = rng.permutation(np.flatnonzero(labels == label))
    cuts = np.round(np.cumsum(fractions)[:2] * len(nodes)).astype(int)
    for name, chunk in zip(parts, np.split(nodes, cuts)):
      parts[name].append(chunk)
  return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


def _sample(rng, candidates, count):
  return candidates if len(candidates) <= count else rng.choice(candidates, count, replace=False)


def ego_graphs(graph: Graph, nodes, num_neighbors: tuple[int, int] = (8, 8), seed: int = 0) -> dict[str, np.ndarray]:
  """Fixed-size neighbourhoods of ``nodes``: token 0 is the node, then up to k₁ of its neighbours, then up to k₂
  nodes two hops away (neighbours of those sampled, not already included); K = 1 + k₁ + k₂ tokens, padded.

  Returns ``nodes`` (B, K) int64 (the graph's node ids, −1 on padding), ``features`` (B, K, F), ``adjacency``
  (B, K, K) bool (the induced subgraph), ``hops`` (B, K) int32 (0, 1, 2) and ``valid`` (B, K) bool.
  """
  first, second = num_neighbors
  size = 1 + first + second
  rng = np.random.default_rng(seed)
  indptr, indices = graph.adjacency.indptr, graph.adjacency.indices
  nodes = np.asarray(nodes)
  out = {"nodes": np.full((len(nodes), size), -1, np.int64),
         "features": np.zeros((len(nodes), size, graph.features.shape[1]), np.float32),
         "adjacency": np.zeros((len(nodes), size, size), bool),
         "hops": np.zeros((len(nodes), size), np.int32),
         "valid": np.zeros((len(nodes), size), bool)}
  for b, node in enumerate(nodes):
    neighbours = indices[indptr[node]:indptr[node + 1]]
    one = _sample(rng, neighbours, first)
    reach = np.unique(np.concatenate([indices[indptr[v]:indptr[v + 1]] for v in one])) if len(one) else one
    two = _sample(rng, np.setdiff1d(reach, np.concatenate([neighbours, [node]])), second)
    members = np.concatenate([[node], one, two]).astype(np.int64)
    count = len(members)
    out["nodes"][b, :count] = members
    out["features"][b, :count] = graph.features[members]
    out["adjacency"][b, :count, :count] = graph.adjacency[members][:, members].toarray() != 0
    out["hops"][b, :count] = np.concatenate([[0], np.ones(len(one)), np.full(len(two), 2)])
    out["valid"][b, :count] = True
  return out
