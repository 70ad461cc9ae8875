"""Binary detection scores: ROC AUC from ranks, macro-F1, and the macro-F1 threshold tuned on a validation set."""
from __future__ import annotations

import numpy as np
import scipy.stats


def _check(labels, scores):
  labels, scores = np.asarray(labels).reshape(-1), np.asarray(scores, np.float64).reshape(-1)
  if labels.shape != scores.shape:
    raise ValueError(f"labels and scores must have the same length, got {labels.shape} and {scores.shape}.")
  if not np.all(np.isin(labels, (0, 1))):
    raise ValueError("labels must be 0 (normal) or 1 (anomaly).")
  return labels.astype(bool), scores


def roc_auc(labels, scores) -> float:
  """``AUC = (Σ_{i positive} r_i − n₊(n₊ + 1)/2) / (n₊ n₋)`` with ``r`` the average ranks of the scores (the
  Mann–Whitney statistic: the probability that a random positive outscores a random negative, ties counting ½)."""
  positive, scores = _check(labels, scores)
  n_pos, n_neg = int(positive.sum()), int((~positive).sum())
  if n_pos == 0 or n_neg == 0:
    raise ValueError("AUC needs at least one positive and one negative label.")
  ranks = scipy.stats.rankdata(scores)
  return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def macro_f1(labels, predicted) -> float:
  """``½ (F1₁ + F1₀)``, ``F1 = 2 TP / (2 TP + FP + FN)`` per class (0 where a class is never present nor predicted)."""
  truth, predicted = _check(labels, predicted)
  predicted = predicted.astype(bool)
  scores = []
  for t, p in ((truth, predicted), (~truth, ~predicted)):
    tp, fp, fn = np.sum(t & p), np.sum(~t & p), np.sum(t & ~p)
    scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
  return float(np.mean(scores))


def best_threshold(labels, scores) -> float:
  """The threshold τ maximising ``macro_f1(labels, scores ≥ τ)`` over the midpoints between distinct scores."""
  labels, scores = _check(labels, scores)
  distinct = np.unique(scores)
  candidates = np.concatenate([[distinct[0] - 1.0], (distinct[:-1] + distinct[1:]) / 2, [distinct[-1] + 1.0]])
  return float(max(candidates, key=lambda t: macro_f1(labels, scores >= t)))
