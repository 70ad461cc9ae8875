"""The LIS task: the LIS solvers against brute force, the token layout, determinism, splits and the grain pipeline."""
import itertools

import grain
import numpy as np
import pytest

from energyformer.data import (EpochShuffled, LISConfig, LISSource, decode_answer, encode, generate, lis_brute_force,
                               lis_dataset, lis_length, lis_sequence, numpy_split, solve)

SMALL = dict(train_size=64, val_size=32, test_size=32)


def _random_sequences(count=600, seed=0):
  """Short sequences, many with repeated numbers (small ranges), some empty."""
  rng = np.random.default_rng(seed)
  return [rng.integers(0, rng.choice([2, 4, 8, 30]), size=rng.integers(0, 11)).tolist() for _ in range(count)]


def _is_subsequence(sub, seq):
  rest = iter(seq)
  return all(any(x == y for y in rest) for x in sub)


def test_lis_length_matches_brute_force():
  for seq in _random_sequences():
    assert lis_length(seq) == len(lis_brute_force(seq)), seq


def test_lis_known_values():
  assert lis_length([]) == 0 and lis_sequence([]) == ()
  assert lis_length([2, 2, 2]) == 1 and lis_sequence([2, 2, 2]) == (2,)
  assert lis_length([1, 2, 2, 3]) == 3
  assert lis_sequence([5, 1, 6, 2, 7, 3]) == (1, 2, 3)
  assert lis_sequence([3, 4, 1, 2, 0]) == (1, 2)


def test_lis_sequence_is_the_canonical_lis():
  """Strictly increasing, a subsequence, of maximal length, and the lexicographically smallest such."""
  for seq in _random_sequences(seed=1):
    lis = lis_sequence(seq)
    assert all(a < b for a, b in zip(lis, lis[1:])), seq
    assert _is_subsequence(lis, seq), seq
    assert len(lis) == lis_length(seq), seq
    longest = [c for c in itertools.combinations(seq, len(lis)) if all(a < b for a, b in zip(c, c[1:]))]
    assert lis == min(longest) == lis_brute_force(seq), seq


@pytest.mark.parametrize("mode", ["length", "sequence"])
def test_encode_layout_and_decode_round_trip(mode):
  config = LISConfig(mode=mode, **SMALL)
  for split in ("train", "test"):
    for index in range(20):
      numbers = generate(config, split, index)
      answer = solve(config, numbers)
      example = encode(config, numbers, answer)
      tokens, n = example["tokens"], len(numbers)
      assert tokens.shape == (config.context_length,) and tokens.dtype == np.int32
      assert example["loss_mask"].shape == tokens.shape and example["loss_mask"].dtype == np.float32
      assert int(example["length"]) == n and int(example["answer_start"]) == n + 1
      assert tokens[0] == config.bos_token and tokens[n + 1] == config.sep_token
      np.testing.assert_array_equal(tokens[1:n + 1], numbers)
      np.testing.assert_array_equal(decode_answer(config, tokens), answer)
      end = n + 2 + len(answer)
      assert tokens[end] == config.eos_token and np.all(tokens[end + 1:] == config.pad_token)
      expected = [lis_length(numbers)] if mode == "length" else list(lis_sequence(numbers))
      np.testing.assert_array_equal(answer, expected)


def test_decode_answer_of_a_model_continuation():
  config = LISConfig(mode="sequence", **SMALL)
  sep = config.sep_token
  np.testing.assert_array_equal(decode_answer(config, [config.bos_token, 3, 1, 4, sep, 1, 4, config.pad_token, 9]),
                                [1, 4])
  np.testing.assert_array_equal(decode_answer(config, [config.bos_token, 3, 1, 4, sep, 1, 4]), [1, 4])
  with pytest.raises(ValueError, match="tokens"):
    decode_answer(config, [config.bos_token, 3, 1, 4])


@pytest.mark.parametrize("mode", ["length", "sequence"])
def test_loss_mask_marks_exactly_the_positions_predicting_the_answer(mode):
  config = LISConfig(mode=mode, **SMALL)
  batch = numpy_split(config, "val")
  answer_or_eos = batch["tokens"] < config.vocab_numbers
  answer_or_eos |= batch["tokens"] == config.eos_token
  after_sep = np.arange(config.context_length) > batch["answer_start"][:, None]
  predicts_answer = np.zeros_like(answer_or_eos)
  predicts_answer[:, :-1] = (answer_or_eos & after_sep)[:, 1:]
  np.testing.assert_array_equal(batch["loss_mask"], predicts_answer.astype(np.float32))
  answer_lengths = batch["loss_mask"].sum(1) - 1
  assert np.all(answer_lengths == 1) if mode == "length" else np.all(answer_lengths >= 1)


def test_generation_is_deterministic_and_streams_are_disjoint():
  config = LISConfig(**SMALL)
  same = LISConfig(**SMALL)
  other = LISConfig(**SMALL, seed=1)
  first = {split: [generate(config, split, i).tolist() for i in range(50)] for split in ("train", "val", "test")}
  assert first["train"] == [generate(same, "train", i).tolist() for i in range(50)]
  assert all(a != b for a, b in zip(first["train"], [generate(other, "train", i).tolist() for i in range(50)]))
  seen = [tuple(seq) for split in first.values() for seq in split]
  assert len(set(seen)) == len(seen)
  np.testing.assert_array_equal(numpy_split(config, "val")["tokens"], numpy_split(same, "val")["tokens"])


def test_held_out_lengths_are_longer_than_training_lengths():
  config = LISConfig(min_length=4, max_length=10, test_lengths=(12, 15), **SMALL)
  train, val, test = (numpy_split(config, split)["length"] for split in ("train", "val", "test"))
  assert train.min() >= 4 and max(train.max(), val.max()) <= 10
  assert test.min() >= 12 and test.max() <= 15 and test.min() > max(train.max(), val.max())
  assert LISConfig(max_length=12).test_lengths == (13, 20)
  assert LISConfig(mode="sequence", vocab_numbers=8).context_length == 24 + 8 + 3


def test_grain_batches_have_shapes_and_dtypes():
  config = LISConfig(**SMALL)
  batch = next(iter(lis_dataset(config, "train", batch_size=8, shuffle_seed=0)))
  assert batch["tokens"].shape == batch["loss_mask"].shape == (8, config.context_length)
  assert batch["answer_start"].shape == batch["length"].shape == (8,)
  assert batch["tokens"].dtype == np.int32 and batch["loss_mask"].dtype == np.float32
  assert batch["answer_start"].dtype == batch["length"].dtype == np.int32


def _rows(batches):
  return [row.tobytes() for batch in batches for row in batch["tokens"]]


def test_grain_shards_partition_the_split_and_epochs_reshuffle():
  config = LISConfig(**SMALL)
  everything = set(_rows([numpy_split(config, "train")]))
  shards = [_rows(lis_dataset(config, "train", batch_size=5, shuffle_seed=3, num_epochs=1, shard_index=i,
                              shard_count=3, drop_remainder=False)) for i in range(3)]
  assert sum(map(len, shards)) == len(everything) == config.train_size
  assert set().union(*map(set, shards)) == everything
  two_epochs = _rows(lis_dataset(config, "train", batch_size=8, shuffle_seed=3, num_epochs=2))
  assert set(two_epochs[:64]) == set(two_epochs[64:]) == everything and two_epochs[:64] != two_epochs[64:]


def test_epoch_shuffled_reads_each_epoch_in_its_own_permutation():
  """Every epoch of EpochShuffled is a permutation of the parent, π_e from default_rng([seed, e]); epochs differ."""
  stream = EpochShuffled(grain.MapDataset.source(np.arange(100, 110)), seed=4, num_epochs=3)
  assert len(stream) == 30
  epochs = [[stream[e * 10 + p] for p in range(10)] for e in range(3)]
  for e, epoch in enumerate(epochs):
    np.testing.assert_array_equal(epoch, 100 + np.random.default_rng([4, e]).permutation(10))
  assert epochs[0] != epochs[1] != epochs[2]
  np.testing.assert_array_equal(stream.parent_indices(np.array([25, 3, 17])),
                                [np.random.default_rng([4, 2]).permutation(10)[5], epochs[0][3] - 100,
                                 epochs[1][7] - 100])


def test_in_memory_dataset_serves_the_same_batches():
  """Encoding the split once and serving it from memory changes nothing in the batches, shards or order."""
  config = LISConfig(**SMALL)
  for shard in range(2):
    options = dict(batch_size=6, shuffle_seed=5, num_epochs=2, shard_index=shard, shard_count=2)
    streamed = list(lis_dataset(config, "train", **options))
    cached = list(lis_dataset(config, "train", in_memory=True, **options))
    assert len(streamed) == len(cached) > 0
    for want, got in zip(streamed, cached):
      for key in want:
        np.testing.assert_array_equal(want[key], got[key])


def test_grain_iterator_state_resumes_exactly():
  config = LISConfig(**SMALL)
  dataset = lis_dataset(config, "train", batch_size=12, shuffle_seed=7)
  iterator = iter(dataset)
  for _ in range(3):
    next(iterator)
  state = iterator.get_state()
  expected = [next(iterator) for _ in range(8)]  # crosses several epoch boundaries of the 64 examples
  resumed = iter(dataset)
  resumed.set_state(state)
  for want, got in zip(expected, (next(resumed) for _ in range(8))):
    for key in want:
      np.testing.assert_array_equal(want[key], got[key])


def test_source_is_random_access():
  config = LISConfig(**SMALL)
  source = LISSource(config, "val")
  assert len(source) == config.val_size
  np.testing.assert_array_equal(source[5]["numbers"], generate(config, "val", 5))
  with pytest.raises(IndexError):
    source[config.val_size]


@pytest.mark.parametrize("overrides, field", [
    (dict(min_length=0), "min_length"),
    (dict(min_length=10, max_length=5), "min_length"),
    (dict(max_length=2.5), "max_length"),
    (dict(vocab_numbers=1, mode="sequence"), "vocab_numbers"),
    (dict(vocab_numbers=24), "vocab_numbers"),
    (dict(mode="subsequence"), "mode"),
    (dict(train_size=0), "train_size"),
    (dict(val_size=-1), "val_size"),
    (dict(test_size=None), "test_size"),
    (dict(seed=-1), "seed"),
    (dict(test_lengths=(10, 20)), "test_lengths"),
    (dict(test_lengths=(20, 18)), "test_lengths"),
    (dict(test_lengths=17), "test_lengths"),
])
def test_bad_configs_name_the_field(overrides, field):
  with pytest.raises(ValueError, match=field):
    LISConfig(**overrides)


@pytest.mark.parametrize("call, name", [
    (lambda c: lis_dataset(c, "training", batch_size=4, shuffle_seed=0), "split"),
    (lambda c: lis_dataset(c, "train", batch_size=0, shuffle_seed=0), "batch_size"),
    (lambda c: lis_dataset(c, "train", batch_size=4, shuffle_seed=-1), "shuffle_seed"),
    (lambda c: lis_dataset(c, "train", batch_size=4, shuffle_seed=0, shard_index=2, shard_count=2), "shard_index"),
    (lambda c: lis_dataset(c, "train", batch_size=4, shuffle_seed=0, num_epochs=0), "num_epochs"),
    (lambda c: generate(c, "train", -1), "index"),
    (lambda c: encode(c, [1, 40], [1]), "numbers"),
    (lambda c: encode(c, [1, 2], [1, 2]), "answer"),
])
def test_bad_arguments_name_the_argument(call, name):
  with pytest.raises(ValueError, match=name):
    call(LISConfig(**SMALL))
