"""Text corpora for language-model pretraining: tfds array_record datasets read by grain pipelines.

Three kinds of corpus, one record format (``{"text": bytes}``):

* ``"stdlib"``: the Python standard library's own ``*.py`` source on this machine (about 30 MB for CPython 3.11),
  a real text corpus that needs no download;
* a directory of text files (``TextDataConfig.patterns``, ``*.txt`` by default);
* ``"tfds:NAME"``: a tfds catalogue dataset (``lm1b``, ``c4/en``, ``wiki40b/en``, ...), downloaded and prepared as
  array_record by tfds on first use (this needs network access, and TensorFlow: ``energyformer[catalogue]``), or
  any tfds dataset already prepared as array_record under the data directory, e.g. a directory corpus by the name
  ``text_corpus/<config>`` it was built under (``build_directory_corpus``).

A directory corpus is written once as a tfds dataset (``TextCorpus``, array_record files, no TensorFlow) under
``data_dir``; later runs read it from there. Files are listed in sorted order and each goes to the validation split
when ``crc32(relative path) mod 100 < validation_percent`` (stable when files are added; ``validation_files``).

``text_dataset`` turns a split into batches of ``sequence_length + 1`` byte tokens: documents shuffled afresh every
epoch, tokenized, joined with an end-of-document token, cut into windows (concat-then-split packing), the windows
shuffled within a buffer, batched. Each process reads its own slice of the documents
(``grain.sharding.ShardByJaxProcess``), and the iterator's ``get_state``/``set_state`` resume it exactly.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import pathlib
import re
import sysconfig
import zlib

import grain
import grain.experimental
import numpy as np

from energyformer.checks import UsageError, check_positive_int

SPLITS = ("train", "validation")
STDLIB = "stdlib"
CATALOGUE_PREFIX = "tfds:"
SKIPPED_DIRECTORIES = frozenset({"site-packages", "dist-packages", "__pycache__"})


@dataclasses.dataclass(frozen=True)
class ByteTokenizer:
  """UTF-8 bytes as tokens ``0 … 255``, plus an end-of-document token ``256``."""

  eos_id: int = 256

  @property
  def vocab_size(self) -> int:
    """Number of token ids: 256 bytes and the end-of-document token."""
    return self.eos_id + 1

  def encode(self, text: bytes | str, *, add_end: bool = True) -> np.ndarray:
    """The bytes of ``text`` (UTF-8 for a ``str``) as int32, followed by the end-of-document token when
    ``add_end`` (a whole training document); ``add_end=False`` for a prompt that the model is to continue."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    tokens = np.frombuffer(data, np.uint8).astype(np.int32)
    return np.append(tokens, np.int32(self.eos_id)) if add_end else tokens

  def decode(self, tokens) -> str:
    """The text of ``tokens``, skipping end-of-document (and any padding) ids; invalid UTF-8 becomes U+FFFD."""
    tokens = np.asarray(tokens).reshape(-1)
    return bytes(tokens[tokens < 256].astype(np.uint8)).decode("utf-8", errors="replace")


@dataclasses.dataclass(frozen=True)
class TextDataConfig:
  """Where the text comes from and how it is cut into training sequences.

  ``corpus``: ``"stdlib"``, a directory of text files, or ``"tfds:NAME"``. ``data_dir``: where tfds datasets are
  written and read (default ``$ENERGYFORMER_DATA_DIR`` or ``~/.cache/energyformer/datasets``). ``patterns``: the
  file globs of a directory corpus (the ``stdlib`` corpus always uses ``*.py``). ``shuffle_window``: windows
  shuffled together after packing. ``num_threads``/``prefetch``: grain's reader threads and read-ahead buffer
  (0 reads in the training thread). ``feature``: the text feature of a catalogue dataset.
  """

  corpus: str = STDLIB
  sequence_length: int = 128
  data_dir: str | None = None
  patterns: tuple[str, ...] = ("*.txt",)
  validation_percent: int = 5
  shuffle_window: int = 256
  num_threads: int = 0
  prefetch: int = 0
  feature: str = "text"

  def __post_init__(self):
    check_positive_int("sequence_length", self.sequence_length)
    check_positive_int("shuffle_window", self.shuffle_window)
    if not 0 < self.validation_percent < 100:
      raise ValueError(f"validation_percent must lie in (0, 100), got {self.validation_percent!r}; pass e.g. 5.")
    for name in ("num_threads", "prefetch"):
      if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {getattr(self, name)!r}; pass 0 to read in "
                         "the training thread.")
    object.__setattr__(self, "patterns", tuple(self.patterns))

  def resolved_data_dir(self) -> pathlib.Path:
    """``data_dir``, else ``$ENERGYFORMER_DATA_DIR``, else ``~/.cache/energyformer/datasets``."""
    default = os.environ.get("ENERGYFORMER_DATA_DIR", "~/.cache/energyformer/datasets")
    return pathlib.Path(self.data_dir or default).expanduser()


def stdlib_directory() -> pathlib.Path:
  """The directory of the running interpreter's standard library source (``sysconfig``'s ``stdlib`` path)."""
  return pathlib.Path(sysconfig.get_paths()["stdlib"])


def corpus_files(directory, patterns) -> list[pathlib.Path]:
  """Files under ``directory`` matching any of ``patterns``, sorted by relative path, skipping hidden directories,
  ``site-packages``, ``dist-packages`` and ``__pycache__``."""
  root = pathlib.Path(directory)
  if not root.is_dir():
    raise FileNotFoundError(f"data directory {str(root)!r} does not exist or is not a directory; pass a folder of "
                            f"text files (or corpus 'stdlib' for the built-in corpus, 'tfds:NAME' for a tfds "
                            "dataset).")
  found = {path for pattern in patterns for path in root.rglob(pattern) if path.is_file()}
  files = sorted((p for p in found if not _skipped(p.relative_to(root))), key=lambda p: p.relative_to(root).as_posix())
  if not files:
    raise FileNotFoundError(f"no files matching {list(patterns)} under {str(root)!r}; add text files there or pass "
                            "patterns that match them (e.g. patterns=('*.md',), or --patterns '*.md').")
  return files


def _skipped(relative: pathlib.Path) -> bool:
  return any(part in SKIPPED_DIRECTORIES or part.startswith(".") for part in relative.parts[:-1])


def validation_files(relative_paths, validation_percent: int) -> set[str]:
  """The files held out for validation: those with ``crc32(path) mod 100 < validation_percent``, or, when no file
  qualifies, the one with the smallest ``crc32(path) mod 100`` (so both splits have a file)."""
  paths = sorted(relative_paths)
  if len(paths) < 2:
    raise ValueError(f"a corpus needs at least 2 files (one for validation), got {len(paths)}; add text files.")
  bucket = {path: zlib.crc32(path.encode()) % 100 for path in paths}
  chosen = {path for path in paths if bucket[path] < validation_percent}
  if len(chosen) == len(paths):
    raise ValueError(f"validation_percent={validation_percent} holds out every file of the corpus; lower it.")
  return chosen or {min(paths, key=lambda path: (bucket[path], path))}


def _import_tfds():
  import tensorflow_datasets as tfds
  return tfds


def _builder_class():
  """``TextCorpus``, defined on first use so that importing this module does not import tensorflow_datasets."""
  global _TEXT_CORPUS
  if _TEXT_CORPUS is None:
    _TEXT_CORPUS = _define_builder(_import_tfds())
  return _TEXT_CORPUS


_TEXT_CORPUS = None


def _define_builder(tfds):

  @dataclasses.dataclass(eq=False)
  class TextCorpusConfig(tfds.core.BuilderConfig):
    """A directory corpus: its root, the file patterns and the validation share."""

    root: str = ""
    patterns: tuple[str, ...] = ()
    validation_percent: int = 5

  class TextCorpus(tfds.core.GeneratorBasedBuilder):
    """A directory of text files as a tfds dataset: one record ``{"text": bytes, "path": str}`` per file."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIG_CLASS = TextCorpusConfig
    url_infos = None  # nothing to download (tfds would look for a checksums file beside the package otherwise)

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, description=f"Text files under {self.builder_config.root}.",
          features=tfds.features.FeaturesDict({"text": tfds.features.Text(), "path": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split):
      config = self.builder_config
      root = pathlib.Path(config.root)
      files = {path.relative_to(root).as_posix(): path for path in corpus_files(root, config.patterns)}
      held_out = validation_files(files, config.validation_percent)
      for relative, path in files.items():
        if (relative in held_out) == (split == "validation"):
          yield relative, {"text": path.read_bytes(), "path": relative}

  return TextCorpus


def _config_name(root: pathlib.Path, files: list[str], sizes: list[int]) -> str:
  """``<directory name>_<hash of the path and every file's name and size>`` (a new dataset when files change)."""
  digest = hashlib.sha1(repr((str(root.resolve()), files, sizes)).encode()).hexdigest()[:10]
  return f"{re.sub(r'[^a-z0-9]+', '_', root.name.lower()).strip('_') or 'corpus'}_{digest}"


def build_directory_corpus(directory, data_dir, patterns=("*.txt",), validation_percent: int = 5):
  """The tfds builder of a directory corpus, prepared (array_record files under ``data_dir``) unless it already is.

  Returns the builder; ``builder.as_data_source(split)`` reads a split with random access.
  """
  root = pathlib.Path(directory)
  files = corpus_files(root, patterns)
  relative = [p.relative_to(root).as_posix() for p in files]
  validation_files(relative, validation_percent)
  config = _builder_class().BUILDER_CONFIG_CLASS(
      name=_config_name(root, relative, [p.stat().st_size for p in files]), root=str(root), patterns=tuple(patterns),
      validation_percent=validation_percent)
  builder = _builder_class()(config=config, data_dir=str(data_dir), file_format="array_record")
  if not builder.is_prepared():
    builder.download_and_prepare()
  return builder


def catalogue_source(name: str, split: str, data_dir):
  """Split ``split`` of the tfds dataset ``name`` under ``data_dir`` as a random-access source, downloading and
  preparing it as array_record on first use (network needed then; ``tfds build NAME --file_format array_record``
  does the same ahead of time). A dataset without a ``validation`` split (``lm1b``) is validated on ``test``.

  Reading a prepared dataset needs tensorflow-datasets alone; generating most catalogue datasets needs TensorFlow
  too (``pip install energyformer[catalogue]``). Raises a ``UsageError`` naming the fix for an unknown name or a
  missing TensorFlow.
  """
  tfds = _import_tfds()
  try:
    builder = tfds.builder(name, data_dir=str(data_dir), file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError as error:
    hidden = ("; tfds lists its older catalogue datasets (c4, wiki40b, ...) only when TensorFlow is installed: pip "
              "install 'energyformer[catalogue]'" if importlib.util.find_spec("tensorflow") is None else "")
    raise UsageError(f"no tfds dataset {name!r} ({str(error).splitlines()[0]}){hidden}; give a catalogue name such "
                     "as tfds:lm1b, or NAME/CONFIG of a dataset prepared under --data-dir.") from None
  if not builder.is_prepared():
    try:
      builder.download_and_prepare()
    except ModuleNotFoundError as error:
      needed = ("TensorFlow, which tfds uses to build most catalogue datasets: pip install 'energyformer[catalogue]'"
                if error.name == "tensorflow" else f"the Python module {error.name!r}: install it")
      raise UsageError(f"generating the tfds dataset {name!r} needs {needed} (or prepare it elsewhere with `tfds "
                       f"build {name} --file_format array_record --data_dir DIR` and pass --data-dir DIR).") from None
  splits = builder.info.splits
  if split == "validation" and split not in splits and "test" in splits:
    split = "test"
  return builder.as_data_source(split)


def corpus_source(config: TextDataConfig, split: str):
  """The random-access source of ``split`` (``"train"`` or ``"validation"``) of the configured corpus."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
  if config.corpus.startswith(CATALOGUE_PREFIX):
    return catalogue_source(config.corpus[len(CATALOGUE_PREFIX):], split, config.resolved_data_dir())
  directory, patterns = ((stdlib_directory(), ("*.py",)) if config.corpus == STDLIB
                         else (pathlib.Path(config.corpus).expanduser(), config.patterns))
  builder = build_directory_corpus(directory, config.resolved_data_dir(), patterns, config.validation_percent)
  return builder.as_data_source(split)


def check_corpus(config: TextDataConfig) -> None:
  """Raises a clear error when a directory corpus is missing or holds no matching files (before any building)."""
  if config.corpus != STDLIB and not config.corpus.startswith(CATALOGUE_PREFIX):
    corpus_files(pathlib.Path(config.corpus).expanduser(), config.patterns)


def text_dataset(source, config: TextDataConfig, *, batch_size: int, seed: int, tokenizer: ByteTokenizer = ByteTokenizer(),
                 shard_index: int = 0, shard_count: int = 1, num_epochs: int | None = None,
                 shuffle: bool = True) -> grain.IterDataset:
  """Batches ``{"tokens": int32 (batch_size, sequence_length + 1)}`` of this shard's documents of ``source``.

  Documents ``shard_index, shard_index + shard_count, …`` are shuffled with ``seed`` afresh every epoch
  (``shuffle=False`` keeps their order), tokenized with ``tokenizer`` (end-of-document token after each), packed
  into windows of ``sequence_length + 1`` tokens, shuffled within ``config.shuffle_window`` windows and batched
  (an incomplete last batch is dropped). ``num_epochs=None`` repeats forever.
  """
  check_positive_int("batch_size", batch_size)
  check_positive_int("shard_count", shard_count)
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index must lie in [0, shard_count={shard_count}), got {shard_index!r}.")
  documents = grain.MapDataset.source(source)[shard_index::shard_count]
  if len(documents) == 0:
    raise ValueError(f"shard {shard_index} of {shard_count} holds no documents (the split has {len(source)}); use "
                     "a corpus with at least as many files as processes.")
  if shuffle:
    documents = documents.shuffle(seed)
  feature = config.feature
  windows = (documents.repeat(num_epochs)
             .map(lambda record: {"tokens": tokenizer.encode(record[feature])})
             .to_iter_dataset(grain.ReadOptions(num_threads=config.num_threads, prefetch_buffer_size=config.prefetch)))
  windows = _JsonRestorable(grain.experimental.ConcatThenSplitIterDataset(
      windows, length_struct={"tokens": config.sequence_length + 1}))
  windows = windows.map(lambda packed: {"tokens": packed["tokens"]})
  if shuffle:
    windows = grain.experimental.WindowShuffleIterDataset(windows, window_size=config.shuffle_window, seed=seed)
  return windows.batch(batch_size, drop_remainder=True)


class _JsonRestorable(grain.IterDataset):
  """Concat-then-split packing whose state survives a JSON round trip (as in grain's orbax checkpoint handler).

  grain 0.2.18 compares the restored remainder slices, lists after JSON, with a tuple sentinel, and so takes an
  empty remainder for a real one; the iterator here turns them back into tuples before restoring.
  """

  def __iter__(self):
    return _JsonRestorableIterator(self._parent.__iter__())


class _JsonRestorableIterator(grain.DatasetIterator):

  def __next__(self):
    return next(self._parent)

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state):
    slices = {name: tuple(piece) for name, piece in state["remainder_slices"].items()}
    self._parent.set_state({**state, "remainder_slices": slices})


def process_shard() -> tuple[int, int]:
  """This process's ``(shard_index, shard_count)`` of the documents: ``ShardByJaxProcess`` (one shard per host)."""
  options = grain.sharding.ShardByJaxProcess(drop_remainder=True)
  return options.shard_index, options.shard_count
