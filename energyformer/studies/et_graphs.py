"""Graph anomaly detection with the Energy Transformer: node classification on ego-graphs, attention along edges.

Each node is classified from its ego-graph (itself, sampled neighbours and two-hop neighbours; tokens carry a hop
embedding, the ET's mask is the induced adjacency). Training minimises class-weighted cross-entropy (weights
inversely proportional to the class frequencies of the training nodes, since anomalies are rare) with the one
trainer (``GraphTask``), which evaluates the weighted loss and the accuracy of the validation and test nodes as it
goes. The anomaly score is the predicted probability of class 1; the final report gives the test ROC AUC and the
test macro-F1 at the threshold that maximises macro-F1 on the validation nodes, beside the same scores of a
trivial baseline that ignores the graph (``feature_baseline``: logistic regression on each node's own features).
The default data is a generated
graph with injected structural and contextual anomalies (``energyformer.data.graphs.generate_anomaly_graph``);
``.mat`` benchmark files and plain edge lists load through the same study.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from energyformer import cli
from energyformer.data import graphs as graph_data
from energyformer.metrics import MetricsWriter
from energyformer.models.energy_transformer import ETConfig
from energyformer.models.graph_nodes import GraphNodeClassifier
from energyformer.studies.detection_metrics import best_threshold, macro_f1, roc_auc
from energyformer.studies.et_images import et_optimizer, recipe, with_steps
from energyformer.train import trainer
from energyformer.train.config import TrainerConfig
from energyformer.train.task import data_seed

SOURCES = ("generated", "mat", "edge_list")


@dataclasses.dataclass(frozen=True)
class ETGraphsStudy:
  """Data source, ego-graph sizes, the ET, and the training recipe.

  ``source``: ``"generated"`` (``graph``), ``"mat"`` (``paths = (file,)``) or ``"edge_list"``
  (``paths = (edges, features, labels)``).
  """

  source: str = "generated"
  paths: tuple[str, ...] = ()
  graph: graph_data.AnomalyGraphConfig = graph_data.AnomalyGraphConfig()
  split: tuple[float, float, float] = (0.4, 0.2, 0.4)
  neighbors: tuple[int, int] = (16, 8)
  et: ETConfig = ETConfig(dim=32, num_heads=4, head_dim=8, num_memories=128, depth=6, learn_beta=True,
                          self_exclusion=True)
  training: TrainerConfig = recipe(400, 64, et_optimizer(3e-3, 40, weight_decay=0.1), eval_every=50)
  seed: int = 0

  def __post_init__(self):
    if self.source not in SOURCES:
      raise ValueError(f"unknown graph source {self.source!r}; choose one of {SOURCES}.")
    needed = {"generated": 0, "mat": 1, "edge_list": 3}[self.source]
    if len(self.paths) != needed:
      raise ValueError(f"source {self.source!r} needs {needed} path(s), got {len(self.paths)}: "
                       "mat takes (file,), edge_list takes (edges, features, labels).")


PRESETS = {
    "default": ETGraphsStudy(),
    "tiny": ETGraphsStudy(graph=graph_data.AnomalyGraphConfig(num_nodes=300, num_cliques=2, clique_size=8,
                                                              num_contextual=15, p_in=0.06),
                          neighbors=(4, 4), et=ETConfig(dim=16, num_heads=2, head_dim=8, num_memories=32, depth=3),
                          training=recipe(40, 32, et_optimizer(5e-3, 5), eval_every=20)),
}


def load_graph(study: ETGraphsStudy) -> graph_data.Graph:
  """The study's graph."""
  if study.source == "generated":
    return graph_data.generate_anomaly_graph(study.graph)[0]
  if study.source == "mat":
    return graph_data.load_mat(study.paths[0])
  return graph_data.load_edge_list(*study.paths)


def class_weights(labels, num_classes: int = 2) -> np.ndarray:
  """``w_c = n / (C n_c)``: each class carries the same total weight."""
  counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
  return (len(labels) / (num_classes * np.maximum(counts, 1))).astype(np.float32)


def weighted_cross_entropy(logits, labels, weights) -> jax.Array:
  """``Σ_b w_{y_b} CE(logits_b, y_b) / Σ_b w_{y_b}``."""
  w = weights[labels]
  return jnp.sum(w * optax.softmax_cross_entropy_with_integer_labels(logits, labels)) / jnp.sum(w)


class EgoGraphBatches:
  """Endless batches of training ego-graphs: nodes reshuffled every epoch (last partial batch dropped), each
  batch's neighbourhoods sampled afresh. ``get_state``/``set_state`` resume it exactly."""

  def __init__(self, graph: graph_data.Graph, nodes, neighbors: tuple[int, int], batch_size: int, seed: int):
    self.graph, self.nodes, self.neighbors = graph, np.asarray(nodes), neighbors
    self.size = min(batch_size, len(self.nodes))
    self.rng = np.random.default_rng(seed)
    self.order, self.start = self.rng.permutation(self.nodes), 0

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self.start + self.size > len(self.order):
      self.order, self.start = self.rng.permutation(self.nodes), 0
    chosen = self.order[self.start:self.start + self.size]
    self.start += self.size
    egos = graph_data.ego_graphs(self.graph, chosen, self.neighbors, int(self.rng.integers(2**31)))
    return {**egos, "label": self.graph.labels[chosen]}

  def get_state(self) -> dict:
    """The random generator's state and the position in this epoch's order."""
    return {"rng": self.rng.bit_generator.state, "order": self.order.tolist(), "start": self.start}

  def set_state(self, state: dict) -> None:
    """Continues from ``get_state``'s state."""
    self.rng.bit_generator.state = state["rng"]
    self.order, self.start = np.asarray(state["order"]), state["start"]


@dataclasses.dataclass(frozen=True)
class GraphTask:
  """Node anomaly classification on ego-graphs (``energyformer.train.task.Task``): class-weighted cross-entropy on
  the centre node; evaluated by the weighted loss and the accuracy on the validation and test nodes."""

  study: ETGraphsStudy
  hyperparameters = ()
  structural = ()

  def create_model(self, member, rngs, batch_axes):
    """The graph ET classifier."""
    graph = prepare(self.study)[0]
    return GraphNodeClassifier(graph.features.shape[1], 2, self.study.et, rngs=rngs, max_hops=2)

  def batches(self, member, batch_size, shard_index, shard_count):
    """``EgoGraphBatches`` of the training nodes (``data_seed``)."""
    graph, splits, _ = prepare(self.study)
    return EgoGraphBatches(graph, splits["train"][shard_index::shard_count], self.study.neighbors, batch_size,
                           data_seed(member))

  def loss(self, model, batch, key):
    """Class-weighted cross-entropy of the centre nodes."""
    return weighted_cross_entropy(_centre_logits(model, batch, key), batch["label"], self._weights())

  def evaluation_sets(self, shard_index, shard_count):
    """The fixed validation and test ego-graphs."""
    arrays = prepare(self.study)[2]
    return {name: {k: v[shard_index::shard_count] for k, v in arrays[name].items()} for name in ("val", "test")}

  def evaluate(self, model, batch):
    """Weighted loss and accuracy of the centre nodes."""
    logits = _centre_logits(model, batch, jax.random.key(0))
    return {"loss": weighted_cross_entropy(logits, batch["label"], self._weights()),
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}

  def identity(self) -> dict:
    """The study."""
    return _study_dict(self.study)

  def _weights(self):
    return jnp.asarray(class_weights(prepare(self.study)[2]["train"]["label"]))


def _centre_logits(model, batch, key):
  return model(batch["features"], batch["adjacency"], hops=batch["hops"], valid=batch["valid"], key=key)[:, 0]


@nnx.jit
def _anomaly_probability(model, batch):
  logits = model(batch["features"], batch["adjacency"], hops=batch["hops"], valid=batch["valid"],
                 key=jax.random.key(0))
  return jax.nn.softmax(logits[:, 0])[:, 1]


def anomaly_scores(model: GraphNodeClassifier, arrays: dict, chunk: int = 512) -> np.ndarray:
  """P(anomaly) of each ego-graph's centre node."""
  count = len(arrays["label"])
  parts = [_anomaly_probability(model, {k: jnp.asarray(arrays[k][s:s + chunk])
                                        for k in ("features", "adjacency", "hops", "valid")})
           for s in range(0, count, chunk)]
  return np.concatenate([np.asarray(p) for p in parts])


def feature_baseline(graph: graph_data.Graph, splits: dict) -> dict[str, np.ndarray]:
  """P(anomaly) of the validation and test nodes from their own features alone (no edges): class-balanced
  logistic regression ``σ(w·f + b)`` (scikit-learn, features standardised with the training nodes' statistics)
  fitted on the training nodes."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler

  train = splits["train"]
  model = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=1000))
  model.fit(graph.features[train], graph.labels[train])
  return {name: model.predict_proba(graph.features[splits[name]])[:, 1] for name in ("val", "test")}


def detection_report(val_labels, val_scores, test_labels, test_scores) -> dict:
  """Test AUC, and test macro-F1 at the validation-tuned threshold (with the validation macro-F1 and threshold)."""
  threshold = best_threshold(val_labels, val_scores)
  return {"test_auc": roc_auc(test_labels, test_scores), "val_auc": roc_auc(val_labels, val_scores),
          "test_macro_f1": macro_f1(test_labels, test_scores >= threshold),
          "val_macro_f1": macro_f1(val_labels, val_scores >= threshold), "threshold": threshold}


@functools.lru_cache(maxsize=4)
def prepare(study: ETGraphsStudy) -> tuple[graph_data.Graph, dict, dict]:
  """The graph, its train/val/test node indices, and fixed ego-graph arrays (with labels) of each split."""
  graph = load_graph(study)
  if len(np.unique(graph.labels)) != 2 or set(np.unique(graph.labels)) != {0, 1}:
    raise ValueError(f"anomaly detection needs labels 0 (normal) and 1 (anomaly), got {np.unique(graph.labels)}.")
  splits = graph_data.split_nodes(graph.labels, study.split, study.seed)
  arrays = {}
  for i, (name, nodes) in enumerate(splits.items()):
    arrays[name] = {**graph_data.ego_graphs(graph, nodes, study.neighbors, study.seed + i),
                    "label": graph.labels[nodes]}
  return graph, splits, arrays


def run(study: ETGraphsStudy, out_dir="runs/et_graphs") -> dict:
  """Trains the graph ET and reports AUC and macro-F1 beside the feature-only baseline's; writes results.json,
  et_graphs.png and metrics (JSONL + TensorBoard)."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  graph, splits, arrays = prepare(study)
  with MetricsWriter(out) as writer, tqdm(total=study.training.steps, desc="et-graphs", unit="step") as bar:
    run = trainer.train(GraphTask(study), study.training, members=[{"seed": study.seed}], progress=bar,
                        writer=writer)
  if run.stopped_by is not None:
    raise trainer.RunStopped(f"stopped by {run.stopped_by} at step {run.step}; nothing is reported.")
  model = run.model()
  val, test = (anomaly_scores(model, arrays[s]) for s in ("val", "test"))
  final = detection_report(arrays["val"]["label"], val, arrays["test"]["label"], test)
  history = {"loss": [losses[0] for losses in run.history["loss"]], "seconds": run.seconds,
             "evaluations": [{"step": step, **{f"{name}_{metric}": values[0] for name, metrics in sets.items()
                                               for metric, values in metrics.items()}}
                             for step, sets in run.history["evaluations"]]}
  baseline = feature_baseline(graph, splits)
  results = {"study": _study_dict(study),
             "graph": {"nodes": graph.num_nodes, "edges": int(graph.adjacency.nnz // 2),
                       "anomalies": int(graph.labels.sum()), "feature_dim": int(graph.features.shape[1])},
             "final": final,
             "baseline": detection_report(arrays["val"]["label"], baseline["val"], arrays["test"]["label"],
                                          baseline["test"]),
             "history": history}
  print("\n" + format_table(results))
  (out / "results.json").write_text(json.dumps(results, indent=1))
  plot(results, out / "et_graphs.png")
  print(f"wrote {out / 'results.json'}, {out / 'et_graphs.png'} and {out / 'metrics.jsonl'}")
  return results


def plot(results: dict, path) -> None:
  """Left: the training loss and the validation loss against step. Right: test AUC and macro-F1 of the ET and
  of the feature-only baseline."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  history = results["history"]
  fig, (curves, bars) = plt.subplots(1, 2, figsize=(10, 4))
  curves.plot(range(1, len(history["loss"]) + 1), history["loss"], lw=0.8, alpha=0.7, label="training")
  evaluations = history["evaluations"]
  curves.plot([e["step"] for e in evaluations], [e["val_loss"] for e in evaluations], marker="o", label="validation")
  curves.set(xlabel="step", ylabel="class-weighted cross-entropy", title="Energy Transformer on ego-graphs")
  curves.legend()
  names, width = ("test_auc", "test_macro_f1"), 0.38
  for offset, (label, scores) in zip((-width / 2, width / 2), (("Energy Transformer", results["final"]),
                                                               ("features only (logistic regression)",
                                                                results["baseline"]))):
    bars.bar(np.arange(len(names)) + offset, [scores[n] for n in names], width, label=label)
  bars.set(xticks=range(len(names)), xticklabels=["test AUC", "test macro-F1"], ylim=(0, 1), title="detection")
  bars.legend(fontsize=8, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def format_table(results: dict) -> str:
  """The graph's size and the final detection scores."""
  g = results["graph"]
  lines = [f"graph: {g['nodes']} nodes, {g['edges']} edges, {g['anomalies']} anomalies, {g['feature_dim']} features",
           f"{'':36s} {'val AUC':>8s} {'val F1':>7s} {'test AUC':>9s} {'test F1':>8s} {'threshold':>9s}"]
  for name, f in (("Energy Transformer", results["final"]), ("features only (logistic regression)",
                                                             results["baseline"])):
    lines.append(f"{name:36s} {f['val_auc']:8.4f} {f['val_macro_f1']:7.4f} {f['test_auc']:9.4f} "
                 f"{f['test_macro_f1']:8.4f} {f['threshold']:9.3f}")
  lines.append(f"(macro-F1 at the threshold tuned on val); training: {results['history']['seconds']:.1f} s")
  return "\n".join(lines)


def study_from_args(args) -> ETGraphsStudy:
  """The graph study of ``args``: a preset, on a ``.mat`` file or edge list when given; raises naming a bad
  option."""
  if args.preset not in PRESETS:
    raise ValueError(f"unknown preset {args.preset!r}; choose one of {sorted(PRESETS)}.")
  study = PRESETS[args.preset]
  study = dataclasses.replace(study, training=with_steps(study.training, args.steps))
  if args.mat and args.edge_list:
    raise ValueError("give either --mat or --edge-list, not both.")
  if args.mat:
    study = dataclasses.replace(study, source="mat", paths=(args.mat,))
  elif args.edge_list:
    study = dataclasses.replace(study, source="edge_list", paths=tuple(args.edge_list))
  return study if args.seed is None else dataclasses.replace(study, seed=args.seed)


def _options(command) -> None:
  command.add_argument("--preset", default="default", help="default (generated graph, CPU) or tiny")
  command.add_argument("--mat", help="a benchmark .mat file (e.g. YelpChi.mat, Amazon.mat; default: the preset's "
                                     "generated graph)")
  command.add_argument("--edge-list", nargs=3, metavar=("EDGES", "FEATURES", "LABELS"),
                       help="edge list, feature table and label list files (default: the preset's generated graph)")
  command.add_argument("--steps", type=int, help="training steps (default: the preset's)")
  command.add_argument("--seed", type=int,
                       help="seed of the graph, the initialisation and the data order (default: the preset's)")
  command.add_argument("--out", default="runs/et_graphs", help="directory for results and metrics")


@cli.command("et-graphs", help="Energy Transformer graph anomaly detection (macro-F1, AUC) on a generated graph, a "
                               ".mat benchmark file or an edge list", options=_options)
def _command(args) -> None:
  with cli.user_settings():
    study = study_from_args(args)
    prepare(study)                      # the graph's files and labels are settings too
  run(study, args.out)


def _study_dict(study: ETGraphsStudy) -> dict:
  return json.loads(json.dumps(dataclasses.asdict(study), default=list))
