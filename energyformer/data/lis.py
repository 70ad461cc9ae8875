"""Longest Increasing Subsequence (LIS): a synthetic sequence task for causal language models.

A problem is a sequence ``a_1 … a_n`` of numbers drawn uniformly from ``0 … V−1`` (``V = vocab_numbers``); the
answer is either the length of its longest *strictly* increasing subsequence (``mode="length"``) or one such
subsequence (``mode="sequence"``). In ``"sequence"`` mode the answer is canonical: the lexicographically smallest
value sequence among all strictly increasing subsequences of maximal length (e.g. ``5 1 6 2 7 3`` → ``1 2 3``).

Token layout (vocabulary size ``V + 4``):

==============  ============  ====================================================
token id        name          meaning
==============  ============  ====================================================
``0 … V−1``     numbers       the number ``v`` is token ``v``; a LIS length ``k``
                              is written as the number token ``k`` as well
``V``           PAD           right padding after EOS
``V + 1``       BOS           start of an example
``V + 2``       SEP           end of the problem, start of the answer
``V + 3``       EOS           end of the answer
==============  ============  ====================================================

An example is ``[BOS, a_1, …, a_n, SEP, answer…, EOS, PAD, …]`` of fixed length ``context_length`` (the longest
example any split can produce). Its answer is one token ``k`` in ``"length"`` mode, which therefore requires
``V`` greater than every sequence length; in ``"sequence"`` mode it is the canonical subsequence itself.

Splits: ``"train"`` and ``"val"`` draw ``n`` uniformly from ``min_length … max_length``; ``"test"`` draws ``n``
uniformly from ``test_lengths``, lengths never seen in training, to measure length generalisation. Example
``index`` of a split is drawn from its own stream, ``SeedSequence([seed, split_id, index])`` with split ids
train 0, val 1, test 2, so every example is produced independently of all others (random access); splits are
not deduplicated against each other.
"""
from __future__ import annotations

import bisect
import collections
import dataclasses
import functools
import itertools
import sys
from collections.abc import Sequence

import grain
import numpy as np

from energyformer.checks import check_positive_int
from energyformer.data.sources import GeneratedSource

MODES = ("length", "sequence")
SPLITS = ("train", "val", "test")


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_nonnegative_int(name: str, value) -> None:
  if not _is_int(value) or value < 0:
    raise ValueError(f"{name} must be a non-negative integer, got {value!r}; pass an int >= 0.")


@dataclasses.dataclass(frozen=True)
class LISConfig:
  """The LIS task: sequence lengths, number range, answer mode, split sizes and seed.

  Lengths are inclusive ranges. ``test_lengths`` is the pair ``(shortest, longest)`` of held-out test lengths,
  all longer than ``max_length``; ``None`` means ``(max_length + 1, max_length + 8)``.
  """

  min_length: int = 8
  max_length: int = 16
  vocab_numbers: int = 32
  mode: str = "length"
  train_size: int = 10_000
  val_size: int = 1_000
  test_size: int = 1_000
  seed: int = 0
  test_lengths: tuple[int, int] | None = None

  def __post_init__(self):
    for name in ("min_length", "max_length", "train_size", "val_size", "test_size"):
      check_positive_int(name, getattr(self, name))
    if self.min_length > self.max_length:
      raise ValueError(f"min_length ({self.min_length}) must not exceed max_length ({self.max_length}); "
                       "swap them or pass min_length <= max_length.")
    _check_nonnegative_int("seed", self.seed)
    if not _is_int(self.vocab_numbers) or self.vocab_numbers < 2:
      raise ValueError(f"vocab_numbers must be an integer >= 2, got {self.vocab_numbers!r}; with fewer numbers "
                       "every LIS has length 1.")
    if self.mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}.")
    test_lengths = (self.max_length + 1, self.max_length + 8) if self.test_lengths is None else self.test_lengths
    if (not isinstance(test_lengths, Sequence) or len(test_lengths) != 2
        or not all(map(_is_int, test_lengths))
        or not self.max_length < test_lengths[0] <= test_lengths[1]):
      raise ValueError(f"test_lengths must be a pair (shortest, longest) of integers with max_length "
                       f"({self.max_length}) < shortest <= longest, got {self.test_lengths!r}; pass e.g. "
                       f"({self.max_length + 1}, {self.max_length + 8}) or None.")
    object.__setattr__(self, "test_lengths", (int(test_lengths[0]), int(test_lengths[1])))
    if self.mode == "length" and self.vocab_numbers <= self.longest_length:
      raise ValueError(f"vocab_numbers ({self.vocab_numbers}) must exceed the longest sequence length "
                       f"({self.longest_length}) in mode='length', where a LIS length k is written as number "
                       f"token k; pass vocab_numbers >= {self.longest_length + 1} or shorten test_lengths.")

  @property
  def longest_length(self) -> int:
    """The longest sequence any split contains (the end of ``test_lengths``)."""
    return self.test_lengths[1]

  @property
  def max_answer_length(self) -> int:
    """The most answer tokens an example can have."""
    return 1 if self.mode == "length" else min(self.longest_length, self.vocab_numbers)

  @property
  def context_length(self) -> int:
    """Tokens per encoded example: BOS, the longest sequence, SEP, the longest answer and EOS."""
    return self.longest_length + self.max_answer_length + 3

  @property
  def vocab_size(self) -> int:
    """Number of token ids: the ``vocab_numbers`` number tokens and PAD, BOS, SEP, EOS."""
    return self.vocab_numbers + 4

  @property
  def pad_token(self) -> int:
    """The id of PAD, the padding after EOS."""
    return self.vocab_numbers

  @property
  def bos_token(self) -> int:
    """The id of BOS, the first token of every example."""
    return self.vocab_numbers + 1

  @property
  def sep_token(self) -> int:
    """The id of SEP, between the numbers and the answer."""
    return self.vocab_numbers + 2

  @property
  def eos_token(self) -> int:
    """The id of EOS, after the answer."""
    return self.vocab_numbers + 3

  def split_lengths(self, split: str) -> tuple[int, int]:
    """The inclusive range ``(shortest, longest)`` of sequence lengths in ``split``."""
    _check_split(split)
    return self.test_lengths if split == "test" else (self.min_length, self.max_length)

  def split_size(self, split: str) -> int:
    """The number of examples in ``split``."""
    _check_split(split)
    return {"train": self.train_size, "val": self.val_size, "test": self.test_size}[split]


def _check_split(split) -> None:
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")


def _ending_lengths(seq) -> list[int]:
  """For each position i, the length of the longest strictly increasing subsequence ending at i (patience sort)."""
  tails, lengths = [], []
  for x in seq:
    pos = bisect.bisect_left(tails, x)
    tails[pos:pos + 1] = [x]
    lengths.append(pos + 1)
  return lengths


def lis_length(seq) -> int:
  """The length of the longest strictly increasing subsequence of ``seq``, in O(n log n) by patience sorting."""
  return max(_ending_lengths(seq), default=0)


def lis_sequence(seq) -> tuple[int, ...]:
  """The canonical LIS of ``seq``: the lexicographically smallest strictly increasing subsequence of maximal length.

  Greedy in O(n · k): with ``rest[i]`` the length of the longest strictly increasing subsequence starting at i,
  each step takes the smallest value that is larger than the previous pick, lies after it, and can still start
  a subsequence of the remaining length (the earliest such position, which leaves the most room).
  """
  seq = [int(x) for x in seq]
  rest = _ending_lengths([-x for x in reversed(seq)])[::-1]
  picked, position = [], -1
  for need in range(max(rest, default=0), 0, -1):
    position = min((j for j in range(position + 1, len(seq))
                    if rest[j] == need and (not picked or seq[j] > picked[-1])), key=lambda j: (seq[j], j))
    picked.append(seq[position])
  return tuple(picked)


def lis_brute_force(seq) -> tuple[int, ...]:
  """The canonical LIS of ``seq`` by enumerating every subsequence (exponential: a reference for n ≤ 12)."""
  seq = [int(x) for x in seq]
  for size in range(len(seq), 0, -1):
    increasing = [c for c in itertools.combinations(seq, size) if all(a < b for a, b in zip(c, c[1:]))]
    if increasing:
      return min(increasing)
  return ()


def solve(config: LISConfig, numbers) -> np.ndarray:
  """The answer tokens for ``numbers`` (int32): ``[lis_length]`` in ``"length"`` mode, else ``lis_sequence``."""
  answer = [lis_length(numbers)] if config.mode == "length" else lis_sequence(numbers)
  return np.asarray(answer, np.int32)


def generate(config: LISConfig, split: str, index: int) -> np.ndarray:
  """Example ``index`` of ``split``: an int32 sequence of numbers, a pure function of ``(seed, split, index)``.

  The length is uniform over ``config.split_lengths(split)``, the numbers uniform over ``0 … vocab_numbers−1``.
  Any non-negative ``index`` is valid; a split's dataset uses ``0 … split_size − 1``.
  """
  shortest, longest = config.split_lengths(split)
  _check_nonnegative_int("index", index)
  rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([config.seed, SPLITS.index(split), int(index)])))
  length = rng.integers(shortest, longest + 1)
  return rng.integers(0, config.vocab_numbers, size=length).astype(np.int32)


def _check_numbers(config: LISConfig, name: str, values, max_size: int) -> np.ndarray:
  array = np.asarray(values)
  if (array.ndim != 1 or not 1 <= array.size <= max_size or not np.issubdtype(array.dtype, np.integer)
      or np.any(array < 0) or np.any(array >= config.vocab_numbers)):
    raise ValueError(f"{name} must be a 1-D integer array of 1 to {max_size} numbers in [0, "
                     f"{config.vocab_numbers}), got {values!r}; draw it with generate() and solve().")
  return array


def encode(config: LISConfig, numbers, answer) -> dict[str, np.ndarray]:
  """The fixed-length training example for a problem and its answer tokens.

  Returns ``tokens`` (int32, ``(context_length,)``) laid out as ``[BOS, numbers…, SEP, answer…, EOS, PAD…]``;
  ``loss_mask`` (float32, same shape), 1 exactly at the positions whose next token is an answer token or EOS
  (``answer_start … answer_start + len(answer)``), where a causal model predicts the answer; ``answer_start``
  (int32 scalar), the index of SEP; and ``length`` (int32 scalar), the number of numbers.
  """
  numbers = _check_numbers(config, "numbers", numbers, config.longest_length)
  answer = _check_numbers(config, "answer", answer, config.max_answer_length)
  body = [config.bos_token, *numbers, config.sep_token, *answer, config.eos_token]
  tokens = np.full(config.context_length, config.pad_token, np.int32)
  tokens[:len(body)] = body
  answer_start = len(numbers) + 1
  loss_mask = np.zeros(config.context_length, np.float32)
  loss_mask[answer_start:answer_start + len(answer) + 1] = 1.0
  return {"tokens": tokens, "loss_mask": loss_mask, "answer_start": np.array(answer_start, np.int32),
          "length": np.array(len(numbers), np.int32)}


def decode_answer(config: LISConfig, tokens) -> np.ndarray:
  """The answer tokens (int32) of an encoded example or of a model's continuation of its prompt.

  These are the tokens after the first SEP up to the first non-number token (EOS, PAD, ...) or the end.
  """
  tokens = np.asarray(tokens)
  separators = np.flatnonzero(tokens == config.sep_token)
  if tokens.ndim != 1 or separators.size == 0:
    raise ValueError(f"tokens must be a 1-D token sequence containing SEP ({config.sep_token}), got shape "
                     f"{tokens.shape}; pass one example's tokens, prompt included, as built by encode().")
  after = tokens[separators[0] + 1:]
  stop = np.flatnonzero(after >= config.vocab_numbers)
  return after[:stop[0] if stop.size else after.size].astype(np.int32)


class LISSource(GeneratedSource):
  """A grain random-access data source over one split: record ``i`` is ``{"numbers", "answer"}`` (int32 arrays).

  ``numbers`` is ``generate(config, split, i)`` and ``answer`` is ``solve(config, numbers)``;
  ``encode(config, **record)`` turns a record into a fixed-length example.
  """

  noun = "examples"

  def record(self, index: int) -> dict[str, np.ndarray]:
    numbers = generate(self.config, self.split, index)
    return {"numbers": numbers, "answer": solve(self.config, numbers)}


class EpochShuffled(grain.MapDataset):
  """``parent`` read ``num_epochs`` times (``None``: forever), every epoch in its own random order: position ``p`` of
  epoch ``e`` is ``parent[π_e(p)]`` with ``π_e = default_rng([seed, e]).permutation(len(parent))``.

  Like grain's ``shuffle(seed).repeat(num_epochs)``, but one numpy permutation per epoch instead of grain's
  per-element index shuffle (about 50 µs an element, more than a small model's training step).
  """

  def __init__(self, parent: grain.MapDataset, seed: int, num_epochs: int | None):
    super().__init__(parent)
    self.seed, self.num_epochs = seed, num_epochs
    self._latest = (None, None)

  def __len__(self) -> int:
    return sys.maxsize if self.num_epochs is None else len(self._parent) * self.num_epochs

  def permutation(self, epoch: int) -> np.ndarray:
    """``π_epoch`` (the latest one is kept: reads move through the epochs in order)."""
    if self._latest[0] != epoch:
      self._latest = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self._parent)))
    return self._latest[1]

  def parent_indices(self, positions: np.ndarray) -> np.ndarray:
    """The parent's indices at stream ``positions`` (an int array)."""
    epochs, within = np.divmod(positions, len(self._parent))
    indices = np.empty_like(within)
    for epoch in np.unique(epochs):
      chosen = epochs == epoch
      indices[chosen] = self.permutation(int(epoch))[within[chosen]]
    return indices

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[int(self.parent_indices(np.asarray([index]))[0])]


class _GatheredBatches(grain.MapDataset):
  """Batch ``b`` of an ``EpochShuffled`` stream over the rows ``record_ids`` of in-memory arrays, gathered in one
  indexing."""

  def __init__(self, stream: EpochShuffled, record_ids: np.ndarray, arrays: dict[str, np.ndarray], batch_size: int,
               drop_remainder: bool):
    super().__init__(stream)
    self.record_ids, self.arrays = record_ids, arrays
    self.batch_size, self.drop_remainder = batch_size, drop_remainder

  def __len__(self) -> int:
    return (len(self._parent) // self.batch_size if self.drop_remainder
            else -(-len(self._parent) // self.batch_size))

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    stop = min((index + 1) * self.batch_size, len(self._parent))
    rows = self.record_ids[self._parent.parent_indices(np.arange(index * self.batch_size, stop))]
    return {key: values[rows] for key, values in self.arrays.items()}


def lis_dataset(config: LISConfig, split: str, *, batch_size: int, shuffle_seed: int, num_epochs: int | None = None,
                shard_index: int = 0, shard_count: int = 1, drop_remainder: bool = True,
                in_memory: bool = False) -> grain.IterDataset:
  """Batches of encoded examples of ``split``: this shard's records, shuffled afresh every epoch (``EpochShuffled``).

  ``in_memory=True`` encodes the split once and gathers each batch from memory in one indexing, without prefetch
  threads (the same batches at a fraction of the cost; use it when the split fits in memory).

  Shard ``shard_index`` of ``shard_count`` holds records ``shard_index, shard_index + shard_count, …`` (for
  multi-host training use ``grain.sharding.ShardByJaxProcess``'s index and count). ``num_epochs=None`` repeats
  forever. Each batch is ``encode``'s dict with a leading ``batch_size`` axis. ``iter()`` gives an iterator
  whose ``get_state()`` / ``set_state()`` resume exactly.
  """
  check_positive_int("batch_size", batch_size)
  check_positive_int("shard_count", shard_count)
  if num_epochs is not None:
    check_positive_int("num_epochs", num_epochs)
  _check_split(split)
  size = config.split_size(split)
  if not _is_int(shard_index) or not 0 <= shard_index < shard_count <= size:
    raise ValueError(f"shard_index must be an integer in [0, shard_count) with shard_count <= the split size "
                     f"{size}, got shard_index={shard_index!r}, shard_count={shard_count!r}.")
  if not _is_int(shuffle_seed) or not 0 <= shuffle_seed < 2**32:
    raise ValueError(f"shuffle_seed must be an integer in [0, 2**32), got {shuffle_seed!r}.")
  if in_memory:
    record_ids = np.arange(shard_index, size, shard_count)
    stream = EpochShuffled(grain.MapDataset.source(record_ids), shuffle_seed, num_epochs)
    # Reads from memory gain nothing from prefetch threads, which would compete with the training step for cores.
    batches = _GatheredBatches(stream, record_ids, _encoded_split(config, split), batch_size, drop_remainder)
    return batches.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  records = EpochShuffled(grain.MapDataset.source(LISSource(config, split))[shard_index::shard_count], shuffle_seed,
                          num_epochs)
  return (records.map(lambda record: encode(config, **record))
          .to_iter_dataset()
          .batch(batch_size, drop_remainder=drop_remainder))


def numpy_split(config: LISConfig, split: str) -> dict[str, np.ndarray]:
  """All of ``split``, in index order, as ``encode``'s arrays stacked along a leading example axis."""
  return {key: values.copy() for key, values in _encoded_split(config, split).items()}


@functools.lru_cache(maxsize=8)
def _encoded_split(config: LISConfig, split: str) -> dict[str, np.ndarray]:
  source = LISSource(config, split)
  examples = [encode(config, **source[index]) for index in range(len(source))]
  return {key: np.stack([example[key] for example in examples]) for key in examples[0]}


def _answers(config: LISConfig, split: str, indices) -> tuple[np.ndarray, list[tuple[int, ...]]]:
  """The sequence lengths and answers (tuples of answer tokens) of examples ``indices`` of ``split``."""
  numbers = [generate(config, split, int(index)) for index in indices]
  return np.array([len(n) for n in numbers]), [tuple(solve(config, n).tolist()) for n in numbers]


def _mode(answers: list) -> tuple:
  """The most frequent answer (the smallest among equally frequent ones)."""
  counts = collections.Counter(answers)
  return min(counts, key=lambda answer: (-counts[answer], answer))


def trivial_baselines(config: LISConfig, fit_size: int | None = None) -> dict[str, dict[str, float]]:
  """Exact-match accuracy of two predictors that never read the numbers, on the ``val`` and ``test`` splits.

  * ``majority per length``: for a sequence of length ``n``, the most frequent answer among the fitting examples of
    length ``n`` (the best any function of the length alone can do, up to sampling);
  * ``constant``: the most frequent answer of the fitting examples, whatever the input.

  Each split's predictors are fitted on ``fit_size`` (default ``train_size``, at most 5000) examples drawn
  independently from that split's own length distribution: the training split for ``val``, and examples of the
  ``test`` stream after its ``test_size`` used ones for ``test`` (held-out lengths never occur in training, so a
  length-only predictor for them must be fitted on such draws; both baselines are therefore upper bounds of what
  input-blind guessing achieves). Returns ``{baseline: {split: accuracy}}``.
  """
  fit_size = min(config.train_size, 5000) if fit_size is None else fit_size
  check_positive_int("fit_size", fit_size)
  fits = {"val": ("train", range(fit_size)), "test": ("test", range(config.test_size, config.test_size + fit_size))}
  result: dict[str, dict[str, float]] = {"majority per length": {}, "constant": {}}
  for split, (fit_split, fit_indices) in fits.items():
    fit_lengths, fit_answers = _answers(config, fit_split, fit_indices)
    by_length = {int(n): _mode([a for a, m in zip(fit_answers, fit_lengths) if m == n]) for n in np.unique(fit_lengths)}
    constant = _mode(fit_answers)
    lengths, answers = _answers(config, split, range(config.split_size(split)))
    result["majority per length"][split] = float(np.mean([by_length.get(int(n)) == a
                                                          for n, a in zip(lengths, answers)]))
    result["constant"][split] = float(np.mean([constant == a for a in answers]))
  return result
