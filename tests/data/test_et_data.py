"""Image and graph data for the Energy Transformer studies, and the detection metrics."""
import dataclasses

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
from PIL import Image

from energyformer.data import graphs, images
from energyformer.studies.detection_metrics import best_threshold, macro_f1, roc_auc

# ------------------------------------------------------------------------------------------------ images


def test_digits_splits():
  """1500 train + 297 test digits, disjoint, (8, 8, 1) float32 in [0, 1] with labels 0..9."""
  train, test = images.digits("train"), images.digits("test")
  assert (len(train), len(test)) == (1500, 297)
  assert train.images.shape[1:] == (8, 8, 1) and train.images.dtype == np.float32
  assert train.images.min() == 0.0 and train.images.max() == 1.0
  assert set(np.unique(test.labels)) == set(range(10))
  flat = {row.tobytes() for row in train.images}
  assert sum(row.tobytes() in flat for row in test.images) < 5  # the digits set holds a few duplicate images


def test_image_dataset_batches_and_is_deterministic():
  """The grain pipeline yields (B, H, W, C) float32 batches; the same seed gives the same order."""
  source = images.digits("test")
  first = next(iter(images.image_dataset(source, image_size=(8, 8), channels=1, batch_size=5, seed=3)))
  again = next(iter(images.image_dataset(source, image_size=(8, 8), channels=1, batch_size=5, seed=3)))
  other = next(iter(images.image_dataset(source, image_size=(8, 8), channels=1, batch_size=5, seed=4)))
  assert first["image"].shape == (5, 8, 8, 1) and first["label"].shape == (5,)
  np.testing.assert_array_equal(first["image"], again["image"])
  assert not np.array_equal(first["image"], other["image"])


def test_to_image_converts_channels_range_and_size():
  """uint8 RGB → grey [0, 1] resized; grey → RGB by repetition; float pixels kept as they are."""
  rgb = np.full((20, 30, 3), 255, np.uint8)
  rgb[..., 0] = 0
  grey = images.to_image(rgb, (8, 8), 1)
  assert grey.shape == (8, 8, 1)
  np.testing.assert_allclose(grey, 2 / 3, rtol=1e-5)
  colour = images.to_image(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8), (8, 8), 3)
  assert colour.shape == (8, 8, 3)
  np.testing.assert_array_equal(colour[..., 0], colour[..., 2])


def _write_png(path, value, size=(6, 6)):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full(size + (3,), value, np.uint8)).save(path)


def test_folder_source_reads_images_and_class_folders(tmp_path):
  """Images in class subfolders get their folder's index as label; files in the root get 0; others ignored."""
  _write_png(tmp_path / "cats" / "a.png", 10)
  _write_png(tmp_path / "dogs" / "b.png", 200)
  _write_png(tmp_path / "c.png", 255)
  (tmp_path / "notes.txt").write_text("not an image")
  source = images.FolderSource(tmp_path)
  assert len(source) == 3
  records = {source.files[i].name: source[i] for i in range(3)}
  assert records["a.png"]["label"] == 0 and records["b.png"]["label"] == 1 and records["c.png"]["label"] == 0
  batch = next(iter(images.image_dataset(source, image_size=(4, 4), channels=1, batch_size=3, seed=0)))
  assert batch["image"].shape == (3, 4, 4, 1)
  np.testing.assert_allclose(sorted(batch["image"][:, 0, 0, 0]), [10 / 255, 200 / 255, 1.0], rtol=1e-5)
  assert len(images.image_source("folder", "test", tmp_path)) == 1


def test_missing_or_empty_image_folder_raises(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    images.FolderSource(tmp_path / "nowhere")
  with pytest.raises(ValueError, match="no image files"):
    images.FolderSource(tmp_path)
  with pytest.raises(ValueError, match="data_dir"):
    images.image_source("folder", "train")


def test_tfds_source_reads_a_prepared_array_record_dataset(tmp_path):
  """A dataset prepared offline in array_record format is read by directory and by name, without TensorFlow."""
  import tensorflow_datasets as tfds

  class EtTinyImages(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(12, 10, 3)), "label": tfds.features.ClassLabel(num_classes=2)}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(6), "test": self._generate_examples(3)}

    def _generate_examples(self, count):
      for i in range(count):
        yield i, {"image": Image.fromarray(np.full((12, 10, 3), 20 * i, np.uint8)), "label": i % 2}

  builder = EtTinyImages(data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare()
  by_directory = images.tfds_source(str(builder.data_dir), "train")
  by_name = images.tfds_source("et_tiny_images", "test", data_dir=str(tmp_path))
  assert (len(by_directory), len(by_name)) == (6, 3)
  batch = next(iter(images.image_dataset(by_directory, image_size=(8, 8), channels=3, batch_size=6, seed=0)))
  assert batch["image"].shape == (6, 8, 8, 3)
  np.testing.assert_allclose(sorted(batch["image"][:, 0, 0, 0]), np.arange(6) * 20 / 255, rtol=1e-5)
  with pytest.raises(FileNotFoundError, match="not prepared"):
    images.tfds_source("cifar10", "train", data_dir=str(tmp_path))


# ------------------------------------------------------------------------------------------------ graphs


SMALL_GRAPH = graphs.AnomalyGraphConfig(num_nodes=200, num_cliques=2, clique_size=6, num_contextual=10, p_in=0.08,
                                        seed=1)


def test_generator_injects_cliques_and_contextual_anomalies():
  """Labels mark both kinds; each structural group is a clique; each contextual node carries another node's
  original features; the adjacency is symmetric, binary and loop-free."""
  graph, kind = graphs.generate_anomaly_graph(SMALL_GRAPH)
  assert np.bincount(kind).tolist() == [178, 12, 10]
  np.testing.assert_array_equal(graph.labels, kind > 0)
  adjacency = graph.adjacency.toarray()
  np.testing.assert_array_equal(adjacency, adjacency.T)
  assert set(np.unique(adjacency)) <= {0.0, 1.0} and not np.any(np.diag(adjacency))
  structural = np.flatnonzero(kind == 1)
  cliques = adjacency[np.ix_(structural, structural)] + np.eye(len(structural))
  assert cliques.sum() >= 2 * 6 * 6  # two complete groups of six (edges between the groups may also exist)
  original = graphs.generate_anomaly_graph(dataclasses.replace(SMALL_GRAPH, num_contextual=0))[0].features
  np.testing.assert_array_equal(graph.features[kind != 2], original[kind != 2])
  for node in np.flatnonzero(kind == 2):
    sources = np.flatnonzero((original == graph.features[node]).all(axis=1))
    assert len(sources) and node not in sources


def test_too_many_anomalies_raise():
  with pytest.raises(ValueError, match="num_nodes"):
    graphs.AnomalyGraphConfig(num_nodes=50, num_cliques=3, clique_size=10)


def test_mat_round_trip_with_default_and_explicit_keys(tmp_path):
  """A YelpChi-style file (homo, features, label) and a BlogCatalog-style one (Network, Attributes, Label) load."""
  rng = np.random.default_rng(0)
  adjacency = sp.random(30, 30, density=0.1, random_state=1, format="csr")
  features, labels = rng.standard_normal((30, 4)), rng.integers(0, 2, (1, 30))
  scipy.io.savemat(tmp_path / "yelp.mat", {"homo": adjacency, "net_rur": sp.eye(30, format="csr"),
                                           "features": sp.csr_matrix(features), "label": labels})
  scipy.io.savemat(tmp_path / "blog.mat", {"Network": adjacency, "Attributes": features, "Label": labels.T})
  yelp, blog = graphs.load_mat(tmp_path / "yelp.mat"), graphs.load_mat(tmp_path / "blog.mat")
  expected = ((adjacency + adjacency.T) != 0).toarray() & ~np.eye(30, dtype=bool)
  for graph in (yelp, blog):
    np.testing.assert_array_equal(graph.adjacency.toarray() != 0, expected)
    np.testing.assert_allclose(graph.features, features, rtol=1e-6)
    np.testing.assert_array_equal(graph.labels, labels.ravel())
  assert graphs.load_mat(tmp_path / "yelp.mat", adjacency_key="net_rur").adjacency.nnz == 0
  with pytest.raises(KeyError, match="adjacency_key"):
    graphs.load_mat(tmp_path / "blog.mat", adjacency_key="homo")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    graphs.load_mat(tmp_path / "missing.mat")


def test_edge_list_round_trip(tmp_path):
  """Text edges with comments and commas, .npy features, text labels."""
  (tmp_path / "edges.txt").write_text("# source target\n0 1\n1,2\n3 3\n")
  np.save(tmp_path / "features.npy", np.arange(8.0).reshape(4, 2))
  (tmp_path / "labels.txt").write_text("0\n1\n0\n1\n")
  graph = graphs.load_edge_list(tmp_path / "edges.txt", tmp_path / "features.npy", tmp_path / "labels.txt")
  assert graph.adjacency.toarray().tolist() == [[0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
  assert graph.labels.tolist() == [0, 1, 0, 1] and graph.features.shape == (4, 2)
  (tmp_path / "bad.txt").write_text("0 9\n")
  with pytest.raises(ValueError, match="0-based"):
    graphs.load_edge_list(tmp_path / "bad.txt", tmp_path / "features.npy", tmp_path / "labels.txt")


def test_split_nodes_is_stratified_and_disjoint():
  labels = np.array([0] * 90 + [1] * 10)
  split = graphs.split_nodes(labels, (0.4, 0.2, 0.4), seed=0)
  assert sorted(np.concatenate(list(split.values())).tolist()) == list(range(100))
  assert [int(labels[split[s]].sum()) for s in ("train", "val", "test")] == [4, 2, 4]
  with pytest.raises(ValueError, match="fractions"):
    graphs.split_nodes(labels, (0.5, 0.5, 0.5))


def test_ego_graphs_are_induced_neighbourhoods():
  """Token 0 is the node; hop-1 tokens are its neighbours, hop-2 tokens are not; the mask is the induced
  subgraph; padding tokens are invalid and isolated."""
  graph, _ = graphs.generate_anomaly_graph(SMALL_GRAPH)
  nodes = np.arange(40)
  ego = graphs.ego_graphs(graph, nodes, (4, 3), seed=0)
  dense = graph.adjacency.toarray() != 0
  assert ego["features"].shape == (40, 8, graph.features.shape[1])
  for b, node in enumerate(nodes):
    count = int(ego["valid"][b].sum())
    members = ego["nodes"][b, :count]
    np.testing.assert_array_equal(ego["features"][b, :count], graph.features[members])
    assert np.all(ego["nodes"][b, count:] == -1)
    assert members[0] == node and ego["hops"][b, 0] == 0
    for t in range(1, count):
      assert dense[node, members[t]] == (ego["hops"][b, t] == 1)
    np.testing.assert_array_equal(ego["adjacency"][b, :count, :count], dense[np.ix_(members, members)])
    assert not ego["adjacency"][b, count:].any() and not ego["valid"][b, count:].any()


# --------------------------------------------------------------------------------------- detection metrics


def test_metrics_match_scikit_learn():
  from sklearn.metrics import f1_score, roc_auc_score
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 300)
  scores = np.round(labels * 0.4 + rng.random(300), 1)  # rounded: many ties
  np.testing.assert_allclose(roc_auc(labels, scores), roc_auc_score(labels, scores), rtol=1e-12)
  predicted = scores > 0.7
  np.testing.assert_allclose(macro_f1(labels, predicted), f1_score(labels, predicted, average="macro"), rtol=1e-12)


def test_best_threshold_maximises_macro_f1():
  labels = np.array([0, 0, 0, 1, 1, 0, 1])
  scores = np.array([0.1, 0.2, 0.3, 0.6, 0.8, 0.65, 0.9])
  threshold = best_threshold(labels, scores)
  best = max(macro_f1(labels, scores >= t) for t in np.linspace(0, 1, 101))
  assert macro_f1(labels, scores >= threshold) == best
  assert roc_auc([0, 1], [0.2, 0.1]) == 0.0
  with pytest.raises(ValueError, match="positive and one negative"):
    roc_auc([1, 1], [0.1, 0.2])
