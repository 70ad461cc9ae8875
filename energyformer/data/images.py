"""Image data: random-access sources (scikit-learn's digits, tfds datasets, a folder of images) and a grain pipeline.

A source is anything with ``__len__`` and ``__getitem__(i) -> {"image": (H, W, C) array, "label": int}``.
``image_dataset`` turns one into shuffled, repeated batches ``{"image": (B, H, W, C) float32 in [0, 1],
"label": (B,)}``, converting channels and resizing (centre crop, then bilinear) to the model's geometry.

* ``digits``: the 1,797 8×8 grey digits scikit-learn ships (no download), scaled from 0..16 to [0, 1].
* ``tfds_source``: a prepared tfds dataset (``imagenet2012``, ``cifar10``, …) read as an array_record data source,
  without TensorFlow. Catalogue datasets must be prepared first (``tfds build``); imagenet2012 needs its archives
  placed in the manual directory.
* ``FolderSource``: every image file under a folder; the label is the index of its first-level subfolder.
"""
from __future__ import annotations

import pathlib

import grain
import numpy as np

from energyformer.checks import check_positive_int

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
DIGITS_TEST_SIZE = 297


class ArraySource:
  """Images (N, H, W, C) and labels (N,) held in memory."""

  def __init__(self, images, labels=None):
    self.images = np.asarray(images)
    if self.images.ndim != 4:
      raise ValueError(f"images must have shape (count, height, width, channels), got {self.images.shape}.")
    self.labels = np.zeros(len(self.images), np.int32) if labels is None else np.asarray(labels, np.int32)

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, index: int) -> dict:
    return {"image": self.images[index], "label": self.labels[index]}


class Subset:
  """The records ``indices`` of another source, in that order."""

  def __init__(self, source, indices):
    self.source, self.indices = source, np.asarray(indices)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> dict:
    return self.source[int(self.indices[index])]


def digits(split: str = "train") -> ArraySource:
  """scikit-learn's 8×8 digits as (8, 8, 1) float32 images in [0, 1]: a fixed shuffle, the last 297 for "test"."""
  from sklearn.datasets import load_digits

  data = load_digits()
  order = np.random.default_rng(0).permutation(len(data.images))
  chosen = {"train": order[:-DIGITS_TEST_SIZE], "test": order[-DIGITS_TEST_SIZE:], "all": order}
  if split not in chosen:
    raise ValueError(f"unknown digits split {split!r}; choose one of {sorted(chosen)}.")
  images = (data.images[chosen[split]] / 16.0).astype(np.float32)[..., None]
  return ArraySource(images, data.target[chosen[split]])


def tfds_source(name: str, split: str, data_dir=None):
  """A prepared tfds dataset's ``split`` as a random-access source of ``{"image", "label", …}`` records.

  ``name`` is a catalogue name (``"cifar10"``, ``"imagenet2012"``) looked up in ``data_dir``, or the directory of
  a prepared dataset (``…/name/version``). Nothing is downloaded.
  """
  import tensorflow_datasets as tfds

  path = pathlib.Path(name)
  if path.is_dir():
    return tfds.builder_from_directory(path).as_data_source(split)
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as error:  # tfds raises several kinds of errors for a dataset that is not prepared
    raise FileNotFoundError(
        f"tfds dataset {name!r} (split {split!r}) is not prepared under data_dir={data_dir!r}: {error}. Build it "
        f"first (`tfds build {name} --data_dir DIR --file_format array_record`; imagenet2012 needs its archives "
        "in DIR/downloads/manual) and pass that directory.") from error


class FolderSource:
  """Every image file (``IMAGE_SUFFIXES``) under ``root``, sorted by path; label = index of the first-level
  subfolder among the sorted subfolders (0 for files directly in ``root``)."""

  def __init__(self, root):
    self.root = pathlib.Path(root)
    if not self.root.is_dir():
      raise FileNotFoundError(f"image folder {str(self.root)!r} does not exist; pass an existing directory of "
                              f"image files ({', '.join(IMAGE_SUFFIXES)}).")
    self.files = sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not self.files:
      raise ValueError(f"image folder {str(self.root)!r} holds no image files ({', '.join(IMAGE_SUFFIXES)}); "
                       "point it at a folder of images.")
    classes = sorted({p.relative_to(self.root).parts[0] for p in self.files if p.parent != self.root})
    self.classes = {name: i for i, name in enumerate(classes)}

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int) -> dict:
    from PIL import Image

    path = self.files[index]
    with Image.open(path) as image:
      pixels = np.asarray(image.convert("RGB"))
    label = self.classes.get(path.relative_to(self.root).parts[0], 0) if path.parent != self.root else 0
    return {"image": pixels, "label": np.int32(label)}


def holdout(source, split: str, every: int = 10):
  """A deterministic split of a source without its own: every ``every``-th record is "test", the rest "train"."""
  indices = np.arange(len(source))
  chosen = {"train": indices[indices % every != 0], "test": indices[indices % every == 0], "all": indices}
  if split not in chosen:
    raise ValueError(f"unknown split {split!r}; choose one of {sorted(chosen)}.")
  return Subset(source, chosen[split])


def to_image(pixels, image_size: tuple[int, int], channels: int) -> np.ndarray:
  """Pixels (H, W), (H, W, 1|3|4) → float32 (*image_size, channels) in [0, 1].

  Integer pixels are divided by 255; colour becomes grey by the channel mean, grey becomes colour by
  repetition; a different size is centre-cropped to the target aspect ratio, then resized bilinearly.
  """
  image = np.asarray(pixels)
  image = image[..., None] if image.ndim == 2 else image[..., :3]
  image = image.astype(np.float32) / 255.0 if np.issubdtype(image.dtype, np.integer) else image.astype(np.float32)
  if image.shape[-1] != channels:
    image = image.mean(axis=-1, keepdims=True) if channels == 1 else np.repeat(image[..., :1], channels, axis=-1)
  if image.shape[:2] != tuple(image_size):
    image = _resize(image, image_size)
  return image


def _resize(image, image_size):
  from PIL import Image

  height, width = image.shape[:2]
  target_h, target_w = image_size
  scale = min(height / target_h, width / target_w)
  crop_h, crop_w = round(target_h * scale), round(target_w * scale)
  top, left = (height - crop_h) // 2, (width - crop_w) // 2
  cropped = image[top:top + crop_h, left:left + crop_w]
  planes = [np.asarray(Image.fromarray(cropped[..., c]).resize((target_w, target_h), Image.BILINEAR))
            for c in range(image.shape[-1])]
  return np.stack(planes, axis=-1).astype(np.float32)


def image_dataset(source, *, image_size: tuple[int, int], channels: int, batch_size: int, seed: int,
                  num_epochs: int | None = None, drop_remainder: bool = True) -> grain.IterDataset:
  """Shuffled (afresh each epoch) batches ``{"image": (B, *image_size, channels), "label": (B,)}`` of ``source``.

  ``num_epochs=None`` repeats forever; the iterator's ``get_state()``/``set_state()`` resume exactly.
  """
  check_positive_int("batch_size", batch_size)
  check_positive_int("channels", channels)
  if len(source) == 0:
    raise ValueError("the image source is empty; check the dataset name, split or folder.")

  def prepare(record):
    return {"image": to_image(record["image"], image_size, channels), "label": np.int32(record.get("label", 0))}

  records = grain.MapDataset.source(source).shuffle(int(seed)).map(prepare).repeat(num_epochs)
  read_options = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
  return records.to_iter_dataset(read_options).batch(batch_size, drop_remainder=drop_remainder)


def image_array(source, image_size: tuple[int, int], channels: int, limit: int | None = None) -> np.ndarray:
  """The first ``limit`` (default all) images of ``source`` prepared as one float32 array (count, H, W, C)."""
  count = len(source) if limit is None else min(limit, len(source))
  return np.stack([to_image(source[i]["image"], image_size, channels) for i in range(count)])


TFDS_TEST_SPLITS = {"imagenet2012": "validation"}


def image_source(dataset: str, split: str, data_dir=None):
  """The ``split`` ("train" or "test") of ``dataset``: ``"digits"``, ``"folder"`` (images under ``data_dir``,
  every 10th held out) or a tfds name / prepared directory (its test split is "validation" for imagenet2012)."""
  if split not in ("train", "test"):
    raise ValueError(f"unknown split {split!r}; choose 'train' or 'test'.")
  if dataset == "digits":
    return digits(split)
  if dataset == "folder":
    if data_dir is None:
      raise ValueError("dataset 'folder' needs data_dir: the folder of images.")
    return holdout(FolderSource(data_dir), split)
  tfds_split = TFDS_TEST_SPLITS.get(dataset, "test") if split == "test" else "train"
  return tfds_source(dataset, tfds_split, data_dir)
