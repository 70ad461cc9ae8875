"""The image-classification study: matched parameter counts, the classifier's read-out against an explicit
computation, the refusal of a tfds dataset that is not prepared, a tiny run."""
import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx

from energyformer.studies import classify_images as study_lib

TINY = study_lib.PRESETS["tiny"]


def test_parameter_counts_match_the_transformer_within_half_a_width_step():
  """Each count is within half of its width's step of the Transformer's (so within 1 % here), and no neighbouring
  width is closer."""
  study = TINY
  target = study_lib.parameter_count(study, "transformer")
  for model in ("hyper_set", "energy_transformer"):
    width = study_lib.matched_width(study, model)
    counts = {w: study_lib.parameter_count(study, model, w) for w in (width - 1, width, width + 1)}
    step = counts[width + 1] - counts[width]
    assert abs(counts[width] - target) <= step / 2 and abs(counts[width] - target) <= 0.01 * target
    assert all(abs(counts[width] - target) <= abs(count - target) for count in counts.values())


class _Identity(nnx.Module):
  def __call__(self, tokens, *, key=None):
    return tokens


def test_classifier_reads_the_class_token_or_the_mean_patch():
  """With an identity core the logits are ``head(CLS + p₀)`` or ``head(mean_i(enc(patch_i) + p_i))``, patches cut by
  explicit loops over the grid."""
  image = TINY.image
  images = np.random.default_rng(1).random((3, *image.image_size, image.channels), np.float32)
  p = image.patch_size
  patches = np.stack([images[:, r:r + p, c:c + p].reshape(3, -1)
                      for r in range(0, image.image_size[0], p) for c in range(0, image.image_size[1], p)], axis=1)
  model = study_lib.PatchClassifier(image, _Identity(), 10, "cls", rngs=nnx.Rngs(0))
  encoded = patches @ np.asarray(model.encoder.kernel[...]) + np.asarray(model.encoder.bias[...])
  positions = np.asarray(model.positions[...])
  for pooling, pooled in (("cls", np.asarray(model.cls_token[...]) + positions[0]),
                          ("mean", (encoded + positions[1:]).mean(axis=1))):
    model.pooling = pooling
    want = pooled @ np.asarray(model.head.kernel[...]) + np.asarray(model.head.bias[...])
    np.testing.assert_allclose(np.asarray(model(images)), np.broadcast_to(want, (3, 10)), rtol=1e-5, atol=1e-6)


def test_unprepared_tfds_dataset_is_refused_with_the_fix(tmp_path):
  study = dataclasses.replace(TINY, dataset="tfds:cifar10", data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="tfds build cifar10"):
    study_lib.ClassifyTask(study).evaluation_sets(0, 1)
  with pytest.raises(ValueError, match="tfds:cifar10"):
    dataclasses.replace(TINY, dataset="cifar10")


@pytest.mark.slow
def test_tiny_study_writes_its_results(tmp_path):
  """Every model trains as a population of two seeds; table, results, metrics and plot are written."""
  results = study_lib.run(TINY, tmp_path)
  assert [result["model"] for result in results] == list(study_lib.MODELS)
  for result in results:
    assert len(result["final_accuracy"]) == TINY.seeds
    assert result["interval"]["accuracy_low"] <= result["interval"]["accuracy"] <= result["interval"]["accuracy_high"]
  for name in ("results.csv", "results.json", "metrics.jsonl", "classify_images.png"):
    assert (tmp_path / name).exists()
  assert json.loads((tmp_path / "results.json").read_text())["references"]["majority class"] < 0.5
