"""Text data: byte tokenizer, corpora written as tfds array_record datasets, and the grain pipeline."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from energyformer.data import text
from train_fixtures import write_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("text")
  return write_corpus(root / "corpus"), root / "datasets"


def test_byte_tokenizer_round_trips_utf8_and_ends_documents():
  tokenizer = text.ByteTokenizer()
  tokens = tokenizer.encode("héllo")
  assert tokens.dtype == np.int32 and tokenizer.vocab_size == 257
  assert tokens.tolist() == [*"héllo".encode(), 256]
  assert tokenizer.decode(tokens) == "héllo"


def test_corpus_files_are_sorted_and_skip_caches_and_hidden_folders(tmp_path):
  for name in ("b.txt", "a/z.txt", "a/y.md", ".hidden/x.txt", "__pycache__/c.txt", "site-packages/d.txt"):
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text(name)
  files = text.corpus_files(tmp_path, ("*.txt",))
  assert [p.relative_to(tmp_path).as_posix() for p in files] == ["a/z.txt", "b.txt"]


def test_missing_or_empty_corpus_directory_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"does not exist.*pass a folder of text files"):
    text.check_corpus(text.TextDataConfig(corpus=str(tmp_path / "nowhere")))
  with pytest.raises(FileNotFoundError, match=r"no files matching \['\*.txt'\].*add text files"):
    text.check_corpus(text.TextDataConfig(corpus=str(tmp_path)))


def test_stdlib_corpus_lists_the_standard_library_source():
  files = text.corpus_files(text.stdlib_directory(), ("*.py",))
  names = {p.relative_to(text.stdlib_directory()).as_posix() for p in files}
  assert len(files) > 300 and {"os.py", "json/decoder.py"} <= names
  assert not any("site-packages" in name for name in names)


def test_directory_corpus_is_written_once_as_array_record_and_split_by_file(corpus):
  root, data_dir = corpus
  builder = text.build_directory_corpus(root, data_dir, validation_percent=20)
  assert sorted(p.name.split(".array_record")[0] for p in pathlib.Path(builder.data_dir).glob("*.array_record*")) == [
      "text_corpus-train", "text_corpus-validation"]
  records = {split: [builder.as_data_source(split)[i] for i in range(len(builder.as_data_source(split)))]
             for split in text.SPLITS}
  files = {p.relative_to(root).as_posix(): p.read_bytes() for p in text.corpus_files(root, ("*.txt",))}
  assert sum(len(r) for r in records.values()) == len(files) and records["validation"]
  held_out = text.validation_files(files, 20)
  for split, split_records in records.items():
    for record in split_records:
      path = record["path"].decode()
      assert record["text"] == files[path] and (path in held_out) == (split == "validation")
  again = text.build_directory_corpus(root, data_dir, validation_percent=20)
  assert again.data_dir == builder.data_dir


def test_validation_files_are_stable_and_never_empty():
  paths = [f"doc{i}.txt" for i in range(40)]
  chosen = text.validation_files(paths, 20)
  assert 0 < len(chosen) < 40 and chosen <= text.validation_files(paths + ["new.txt"], 20) | {"new.txt"}
  assert len(text.validation_files(paths[:3], 1)) == 1  # no file hashes below 1: the lowest one is held out
  with pytest.raises(ValueError, match="at least 2 files"):
    text.validation_files(paths[:1], 5)


def _config(corpus):
  return text.TextDataConfig(corpus=str(corpus[0]), data_dir=str(corpus[1]), sequence_length=16, validation_percent=20,
                             shuffle_window=8)


def _dataset(corpus, **options):
  config = _config(corpus)
  return text.text_dataset(text.corpus_source(config, "train"), config, **{"batch_size": 4, "seed": 0, **options})


def test_pipeline_yields_packed_byte_windows(corpus):
  batch = next(iter(_dataset(corpus)))
  assert list(batch) == ["tokens"] and batch["tokens"].shape == (4, 17) and batch["tokens"].dtype == np.int32
  assert 0 <= batch["tokens"].min() and batch["tokens"].max() <= 256


def test_pipeline_resumes_exactly_from_a_json_state(corpus):
  """The iterator state goes through JSON (as in a checkpoint) and the batches continue identically."""
  dataset = _dataset(corpus)
  iterator = iter(dataset)
  for _ in range(7):
    next(iterator)
  state = json.loads(json.dumps(iterator.get_state()))
  expected = [next(iterator)["tokens"] for _ in range(10)]
  restored = iter(dataset)
  restored.set_state(state)
  assert all(np.array_equal(next(restored)["tokens"], e) for e in expected)


def test_process_shards_read_disjoint_documents_that_cover_the_split(corpus):
  def documents(shard_index):
    dataset = _dataset(corpus, batch_size=1, shuffle=False, num_epochs=1, shard_index=shard_index, shard_count=2)
    stream = np.concatenate([batch["tokens"][0] for batch in dataset])
    return {line.split()[1] for line in text.ByteTokenizer().decode(stream).splitlines() if line.startswith("document ")}

  first, second = documents(0), documents(1)
  source = text.corpus_source(_config(corpus), "train")
  assert not first & second
  assert first | second == {source[i]["text"].split()[1].decode() for i in range(len(source))}
  assert text.process_shard() == (0, 1)
