"""The run tokenizers: byte-level BPE round trips, deterministic training, save/load, and a resumed BPE run."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from energyformer.data import tokenizers
from energyformer.data.text import ByteTokenizer
from energyformer.studies import pretrain
from train_fixtures import WORDS, tiny_config, write_corpus

TEXTS = [" ".join(WORDS[i:] + WORDS[:i]) + ".\n" for i in range(len(WORDS))] * 3


@pytest.fixture(scope="module")
def bpe():
  return tokenizers.train_bpe(TEXTS, 300)


def test_bpe_round_trips_any_text_and_ends_documents(bpe):
  text = "def f(x):\n    return x  # ünïcode ✓ \t\r\n" + TEXTS[0]
  ids = bpe.encode(text)
  assert ids.dtype == np.int32 and ids[-1] == bpe.eos_id and bpe.eos_id not in ids[:-1]
  assert bpe.decode(ids) == text
  np.testing.assert_array_equal(bpe.encode(text, add_end=False), ids[:-1])
  assert bpe.decode(np.append(ids, bpe.vocab_size + 3)) == text          # padding ids of a larger embedding
  assert len(bpe.encode(TEXTS[0])) < len(TEXTS[0].encode()) / 2          # merges learnt from the corpus compress it
  assert bpe.decode(bpe.encode(b"\xff bytes")) == "\ufffd bytes"         # invalid UTF-8 as in ByteTokenizer.decode


def test_bpe_training_is_deterministic_and_respects_the_byte_budget(bpe):
  assert tokenizers.train_bpe(TEXTS, 300) == bpe and bpe.vocab_size == 300
  small = tokenizers.train_bpe(TEXTS, 300, max_bytes=len(TEXTS[0]))    # one document only
  assert small != bpe and set(small.encode(TEXTS[0])[:-1]) != set(bpe.encode(TEXTS[0])[:-1])


def test_tokenizer_specs_and_their_errors():
  assert tokenizers.parse_tokenizer("bytes") == ("bytes", None)
  assert tokenizers.parse_tokenizer("bpe:4096") == ("bpe", 4096)
  for bad in ("bpe", "bpe:100", "bpe:x", "sentencepiece:4096"):
    with pytest.raises(ValueError, match="bytes' or 'bpe:VOCAB"):
      tokenizers.parse_tokenizer(bad)
  assert tokenizers.padded_vocab_size(ByteTokenizer()) == pretrain.VOCAB_SIZE


def test_save_and_load_tokenizers(bpe, tmp_path):
  assert isinstance(tokenizers.load_tokenizer(tmp_path / "none"), ByteTokenizer)    # a run without the file: bytes
  tokenizers.save_tokenizer(tmp_path / "bytes", ByteTokenizer())
  assert tokenizers.load_tokenizer(tmp_path / "bytes") == ByteTokenizer()
  tokenizers.save_tokenizer(tmp_path / "bpe", bpe)
  loaded = tokenizers.load_tokenizer(tmp_path / "bpe")
  assert loaded == bpe and loaded.identity() == bpe.identity()
  np.testing.assert_array_equal(loaded.encode(TEXTS[1]), bpe.encode(TEXTS[1]))
  (tmp_path / "other" / "tokenizer.json").parent.mkdir()
  (tmp_path / "other" / "tokenizer.json").write_text("{}")
  with pytest.raises(ValueError, match="not a tokenizer file"):
    tokenizers.load_tokenizer(tmp_path / "other")


def test_run_tokenizer_reuses_the_saved_one_and_refuses_another_kind(bpe, tmp_path):
  trained = tokenizers.run_tokenizer("bpe:300", tmp_path, lambda: iter(TEXTS))
  assert trained == bpe
  assert tokenizers.run_tokenizer("bpe:300", tmp_path, lambda: iter(["other text"])) == bpe   # loaded, not retrained
  with pytest.raises(ValueError, match="--tokenizer bpe:300"):
    tokenizers.run_tokenizer("bytes", tmp_path, lambda: iter(TEXTS))


@pytest.mark.slow
def test_bpe_pretraining_saves_its_tokenizer_and_resumes_with_it(tmp_path):
  corpus = write_corpus(tmp_path / "corpus", num_files=10)
  config = dataclasses.replace(tiny_config(corpus, tmp_path / "datasets", steps=4, every=2), tokenizer="bpe:320")
  out = tmp_path / "run"
  task = pretrain.with_run_tokenizer(config, out).task
  assert isinstance(task.tokenizer, tokenizers.BPETokenizer) and task.model.vocab_size % 64 == 0
  assert tokenizers.load_tokenizer(out) == task.tokenizer
  assert tokenizers.train_bpe(pretrain.training_texts(task.data), 320) == task.tokenizer   # the training split's

  def crash_at_2(step, metrics):
    if step == 2:
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    pretrain.train(dataclasses.replace(config, task=task), out, progress=False, on_step=crash_at_2)
  resumed_config = pretrain.with_run_tokenizer(config, out)               # reloads the saved tokenizer
  assert resumed_config.task == task
  resumed = pretrain.train(resumed_config, out, progress=False)
  assert resumed.start_step == 2 and resumed.step == 4 and len(resumed.history["loss"]) == 4
  other = dataclasses.replace(task, tokenizer=tokenizers.train_bpe(TEXTS, 300))
  with pytest.raises(ValueError, match="different task"):
    pretrain.train(dataclasses.replace(resumed_config, task=other), out, progress=False)
