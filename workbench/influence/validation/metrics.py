"""Correlation and detection metrics (numpy; they run once per evaluation, on small arrays)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.stats import rankdata


def _rows(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a[None] if a.ndim == 1 else a


def pearson_rows(a, b) -> np.ndarray:
    """Pearson correlation of each row of `a` with the same row of `b` (NaN for a constant row)."""
    a, b = _rows(a), _rows(b)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denom = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (a * b).sum(axis=1) / np.where(denom > 0, denom, 1.0), np.nan)


def spearman_rows(a, b) -> np.ndarray:
    """Spearman rank correlation row by row (ties get average ranks)."""
    return pearson_rows(rankdata(_rows(a), axis=1), rankdata(_rows(b), axis=1))


class Correlations(NamedTuple):
    pearson: float  # per test point (across the k training examples), averaged
    spearman: float
    pearson_pooled: float  # over all (test, train) pairs at once
    spearman_pooled: float


def correlations(predicted, actual) -> Correlations:
    """Pearson and Spearman of predicted vs actual effects [n_test, k].

    `pearson` / `spearman`: per test point (across the k training examples), averaged;
    `pearson_pooled` / `spearman_pooled`: over all (test, train) pairs at once.
    """
    predicted, actual = _rows(predicted), _rows(actual)
    return Correlations(
        float(np.nanmean(pearson_rows(predicted, actual))),
        float(np.nanmean(spearman_rows(predicted, actual))),
        float(pearson_rows(predicted.ravel(), actual.ravel())[0]),
        float(spearman_rows(predicted.ravel(), actual.ravel())[0]),
    )


def auc(scores, positives) -> float:
    """Area under the ROC curve of `scores` for detecting `positives` (Mann-Whitney, ties halved)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positives = np.asarray(positives, dtype=bool).ravel()
    if scores.shape != positives.shape:
        raise ValueError(f"scores has {scores.size} entries but positives has {positives.size}")
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("auc needs at least one positive and one negative example")
    ranks = rankdata(scores)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
