"""The LIS trivial baselines against the exact answer distributions, enumerated over every sequence."""
import collections
import itertools

import numpy as np

from energyformer.data import LISConfig, generate, lis_brute_force, trivial_baselines


def test_trivial_baselines_match_the_exact_answer_distributions():
  """Numbers 0…4, lengths 1–3 (held out: 4). Enumerating all 5^n sequences: the most frequent LIS length is 1 for
  n = 1, 2 (15 of 25 pairs are not increasing), 2 for n = 3 (80 of 125) and n = 4; over the training lengths the
  most frequent answer is 1. Each baseline's accuracy is then counted example by example."""
  config = LISConfig(min_length=1, max_length=3, vocab_numbers=5, train_size=1000, val_size=150, test_size=150,
                     test_lengths=(4, 4))
  counts = {n: collections.Counter(len(lis_brute_force(s)) for s in itertools.product(range(5), repeat=n))
            for n in range(1, 5)}
  majority = {n: max(c, key=c.get) for n, c in counts.items()}
  assert majority == {1: 1, 2: 1, 3: 2, 4: 2}
  result = trivial_baselines(config, fit_size=1000)
  for split, constant in (("val", 1), ("test", 2)):
    examples = [generate(config, split, i) for i in range(config.split_size(split))]
    answers = [len(lis_brute_force(s)) for s in examples]
    assert result["majority per length"][split] == np.mean([a == majority[len(s)] for s, a in zip(examples, answers)])
    assert result["constant"][split] == np.mean([a == constant for a in answers])
