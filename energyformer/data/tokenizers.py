"""Tokenizers of a text run: UTF-8 bytes (the default) or a byte-level BPE trained on the run's training split.

``parse_tokenizer("bytes" | "bpe:VOCAB")`` reads the command-line form. A BPE tokenizer is trained with Hugging
Face ``tokenizers`` (``train_bpe``): a byte-level pre-tokenizer (every byte is in the base alphabet, so any text
round-trips exactly), merges learnt by the BPE trainer on the documents of the training split in file order (up to
``max_bytes``; deterministic), and one special token, end-of-document, with id 0.

A run directory holds its tokenizer in ``tokenizer.json`` (``save_tokenizer``); ``load_tokenizer(run_dir)`` reads it
back, and a directory without one is a byte-level run. Every tokenizer offers ``encode(text, add_end=True) -> int32
ids`` (the end-of-document id appended unless ``add_end=False``), ``decode(ids) -> str`` (special and padding ids
skipped), ``vocab_size`` and ``eos_id``; ``tokenizer_name`` and ``identity`` describe either kind.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import pathlib
from typing import Iterable

import numpy as np

from energyformer.checks import check_positive_int
from energyformer.data.text import ByteTokenizer

BYTES = "bytes"
BPE = "bpe"
FILE_NAME = "tokenizer.json"
EOS = "<|endoftext|>"
MIN_BPE_VOCAB = 257  # the 256 byte symbols and the end-of-document token
DEFAULT_TRAINING_BYTES = 8_000_000


def parse_tokenizer(spec: str) -> tuple[str, int | None]:
  """``"bytes"`` → ``("bytes", None)``; ``"bpe:VOCAB"`` → ``("bpe", VOCAB)`` with ``VOCAB ≥ 257``."""
  if spec == BYTES:
    return BYTES, None
  kind, _, size = str(spec).partition(":")
  if kind == BPE and size.isdigit() and int(size) >= MIN_BPE_VOCAB:
    return BPE, int(size)
  raise ValueError(f"unknown tokenizer {spec!r}; use 'bytes' or 'bpe:VOCAB' with VOCAB >= {MIN_BPE_VOCAB} "
                   "(e.g. bpe:4096).")


@functools.lru_cache(maxsize=8)
def _backend(serialized: str):
  from tokenizers import Tokenizer
  return Tokenizer.from_str(serialized)


@dataclasses.dataclass(frozen=True)
class BPETokenizer:
  """A trained byte-level BPE (``serialized``: the ``tokenizers`` JSON), hashable so that tasks holding it are."""

  serialized: str = dataclasses.field(repr=False)

  @property
  def vocab_size(self) -> int:
    """Number of token ids (merges, the 256 byte symbols and end-of-document)."""
    return _backend(self.serialized).get_vocab_size()

  @property
  def eos_id(self) -> int:
    """The end-of-document id."""
    return _backend(self.serialized).token_to_id(EOS)

  @property
  def name(self) -> str:
    return f"{BPE}:{self.vocab_size}"

  def encode(self, text: bytes | str, *, add_end: bool = True) -> np.ndarray:
    """The ids of ``text`` (bytes are read as UTF-8, invalid sequences as U+FFFD), then end-of-document unless
    ``add_end=False`` (a prompt to continue), int32."""
    text = text.decode("utf-8", errors="replace") if isinstance(text, (bytes, bytearray)) else text
    ids = _backend(self.serialized).encode(text, add_special_tokens=False).ids
    return np.asarray(ids + [self.eos_id] * add_end, np.int32)

  def decode(self, tokens) -> str:
    """The text of ``tokens``, skipping end-of-document and ids beyond the vocabulary (a padded model's)."""
    ids = np.asarray(tokens).reshape(-1)
    kept = [int(i) for i in ids if 0 <= i < self.vocab_size and i != self.eos_id]
    return _backend(self.serialized).decode(kept, skip_special_tokens=True)

  def identity(self) -> dict:
    """Kind, vocabulary size and a digest of the merges."""
    return {"kind": BPE, "vocab_size": self.vocab_size, "sha1": hashlib.sha1(self.serialized.encode()).hexdigest()}


def byte_identity(tokenizer: ByteTokenizer) -> dict:
  """A byte tokenizer's identity."""
  return {"kind": BYTES, "vocab_size": tokenizer.vocab_size}


def identity(tokenizer) -> dict:
  """What a checkpoint must match: ``{"kind", "vocab_size"}`` (and the merges' digest for BPE)."""
  return tokenizer.identity() if isinstance(tokenizer, BPETokenizer) else byte_identity(tokenizer)


def tokenizer_name(tokenizer) -> str:
  """``"bytes"`` or ``"bpe:VOCAB"``."""
  return tokenizer.name if isinstance(tokenizer, BPETokenizer) else BYTES


def train_bpe(texts: Iterable[bytes | str], vocab_size: int, max_bytes: int = DEFAULT_TRAINING_BYTES) -> BPETokenizer:
  """A byte-level BPE of ``vocab_size`` ids learnt from ``texts`` in order, up to ``max_bytes`` bytes of them
  (whole documents; at least one). Same texts, same tokenizer."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  parse_tokenizer(f"{BPE}:{vocab_size}")
  check_positive_int("max_bytes", max_bytes)
  documents, total = [], 0
  for text in texts:
    text = text.decode("utf-8", errors="replace") if isinstance(text, (bytes, bytearray)) else text
    if documents and total + len(text) > max_bytes:
      break
    documents.append(text)
    total += len(text)
  if not documents:
    raise ValueError("no text to train the BPE tokenizer on; the training split is empty.")
  backend = Tokenizer(models.BPE())
  backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  backend.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  backend.train_from_iterator(documents, trainer)
  return BPETokenizer(backend.to_str())


def save_tokenizer(run_dir, tokenizer) -> pathlib.Path:
  """Writes ``run_dir/tokenizer.json`` (the ``tokenizers`` JSON of a BPE, ``{"kind": "bytes"}`` for bytes);
  returns its path."""
  path = pathlib.Path(run_dir) / FILE_NAME
  path.parent.mkdir(parents=True, exist_ok=True)
  text = tokenizer.serialized if isinstance(tokenizer, BPETokenizer) else json.dumps(byte_identity(tokenizer))
  path.write_text(text)
  return path


def load_tokenizer(run_dir) -> ByteTokenizer | BPETokenizer:
  """The tokenizer ``save_tokenizer`` wrote to ``run_dir``; a ``ByteTokenizer`` when there is none."""
  path = pathlib.Path(run_dir) / FILE_NAME
  if not path.is_file():
    return ByteTokenizer()
  text = path.read_text()
  data = json.loads(text)
  if data.get("kind") == BYTES:
    return ByteTokenizer()
  if "model" not in data:
    raise ValueError(f"{path} is not a tokenizer file written by energyformer; delete it or train into a new "
                     "directory.")
  return BPETokenizer(text)


def run_tokenizer(spec: str, run_dir, training_texts) -> ByteTokenizer | BPETokenizer:
  """The tokenizer of a run in ``run_dir``: the saved one when the directory has it (a resumed run; it must be of
  ``spec``'s kind, a BPE no larger than asked: a small corpus may give fewer merges), else ``spec``'s, a BPE trained
  on ``training_texts()`` (an iterable of documents of the training split), saved there. A byte-level run writes
  nothing here: a directory without the file is one, and a run refused before it trains leaves no file behind."""
  kind, size = parse_tokenizer(spec)
  if (pathlib.Path(run_dir) / FILE_NAME).is_file():
    saved = load_tokenizer(run_dir)
    if parse_tokenizer(tokenizer_name(saved))[0] != kind or (size is not None and saved.vocab_size > size):
      raise ValueError(f"{run_dir} holds a run with tokenizer {tokenizer_name(saved)!r}, not {spec!r}; pass "
                       f"--tokenizer {tokenizer_name(saved)} to resume it or train into a new directory.")
    return saved
  if kind == BYTES:
    return ByteTokenizer()
  tokenizer = train_bpe(training_texts(), size)
  save_tokenizer(run_dir, tokenizer)
  return tokenizer


def loss_unit(tokenizer) -> str:
  """The unit of a cross-entropy over ``tokenizer``'s ids: ``"nats / byte"`` or ``"nats / token"``."""
  return "nats / byte" if isinstance(tokenizer, ByteTokenizer) else "nats / token"


def padded_vocab_size(tokenizer, multiple: int = 64) -> int:
  """The tokenizer's vocabulary rounded up to a multiple of ``multiple`` (the model's embedding rows)."""
  return -(-tokenizer.vocab_size // multiple) * multiple
