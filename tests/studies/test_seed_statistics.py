"""Bootstrap intervals, paired differences and steps to a threshold against hand-computed values."""
import numpy as np
import pytest

from energyformer.studies import statistics


def test_bootstrap_of_two_values_spans_both():
  """Resampling [0, 1]: the mean is 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4, so the 2.5 % and 97.5 %
  points are 0 and 1."""
  interval = statistics.bootstrap_interval([0.0, 1.0])
  assert (interval.estimate, interval.low, interval.high, interval.level) == (0.5, 0.0, 1.0, 0.95)


def test_bootstrap_percentiles_of_a_binomial_mean():
  """Resampling [0, 0, 0, 1]: the mean is Binomial(4, 1/4)/4, P(≤ 0) = 81/256 ≥ 2.5 %, P(≤ 1/2) = 243/256 < 97.5 %
  ≤ P(≤ 3/4) = 255/256, so the 95 % interval is [0, 3/4]; the 60 % interval is [0, 1/2] (P(≤ 1/4) = 189/256 < 80 %
  ≤ P(≤ 1/2))."""
  values = [0.0, 0.0, 0.0, 1.0]
  interval = statistics.bootstrap_interval(values)
  assert (interval.estimate, interval.low, interval.high) == (0.25, 0.0, 0.75)
  assert (statistics.bootstrap_interval(values, level=0.6).low,
          statistics.bootstrap_interval(values, level=0.6).high) == (0.0, 0.5)


def test_bootstrap_of_equal_values_is_a_point_and_reproducible():
  assert statistics.bootstrap_interval([0.3] * 5) == statistics.Interval(0.3, 0.3, 0.3, 0.95)
  values = np.random.default_rng(1).normal(size=7)
  assert statistics.bootstrap_interval(values, seed=3) == statistics.bootstrap_interval(values, seed=3)


def test_bootstrap_median_with_unreached_seeds():
  """Steps to a threshold with 2 of 5 seeds never reaching it: the median is finite (3 of 5 reached) and the upper
  end is inf (a resample with 3 or more unreached seeds has an infinite median: probability > 2.5 %)."""
  interval = statistics.bootstrap_interval([100, 200, 300, np.inf, np.inf], statistic=np.median)
  assert (interval.estimate, interval.high) == (300.0, np.inf)
  assert interval.low == 100.0  # P(median = 100) = P(≥ 3 draws of 100 among 5) ≈ 5.8 % ≥ 2.5 %


def test_paired_difference_cancels_what_seeds_share():
  """Arms that differ by 0.05 on every seed: the paired interval is the point 0.05 although the seeds spread over
  [0.1, 0.9] (an unpaired comparison would cover 0)."""
  baseline = np.array([0.1, 0.5, 0.9, 0.3, 0.7])
  difference = statistics.paired_difference(baseline + 0.05, baseline)
  assert difference.estimate == pytest.approx(0.05)
  assert difference.low == pytest.approx(0.05) and difference.high == pytest.approx(0.05)
  assert not difference.covers(0.0)
  spread = statistics.paired_difference([0.5, 0.4], [0.4, 0.5])  # differences +0.1 and −0.1
  assert (spread.estimate, spread.low, spread.high) == pytest.approx((0.0, -0.1, 0.1)) and spread.covers(0.0)


def test_paired_difference_refuses_unpaired_arms():
  with pytest.raises(ValueError, match="same seeds"):
    statistics.paired_difference([0.1, 0.2, 0.3], [0.1, 0.2])


def test_steps_to_threshold_per_seed():
  """The first evaluated step at or beyond the threshold, per seed; inf where never; ≤ for a loss."""
  steps = [10, 20, 30]
  accuracy = [[0.1, 0.6, 0.0], [0.5, 0.7, 0.2], [0.4, 0.9, 0.3]]
  assert statistics.steps_to_threshold(steps, accuracy, 0.5).tolist() == [20, 10, np.inf]
  loss = [[2.0, 1.0], [0.9, 0.8], [0.5, 0.95]]
  assert statistics.steps_to_threshold(steps, loss, 0.9, higher_is_better=False).tolist() == [20, 20]
  with pytest.raises(ValueError, match="increasing"):
    statistics.steps_to_threshold([10, 10, 30], accuracy, 0.5)
