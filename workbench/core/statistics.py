"""Rank and correlation statistics shared by the capabilities (NumPy and SciPy only).

They run once per evaluation on small host arrays (scores against ground truths), so they are
plain NumPy in float64: the ROC AUC of a detector (`auc`), and Pearson and Spearman correlations
row by row (`pearson_rows`, `spearman_rows`) or summarised (`correlations` -> `Correlations`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.stats import rankdata


def _rows(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a[None] if a.ndim == 1 else a


def _unit_rows(a: np.ndarray) -> np.ndarray:
    """Each row divided by its largest absolute entry (a zero row stays zero)."""
    scale = np.abs(a).max(axis=1, keepdims=True)
    return a / np.where(scale > 0, scale, 1.0)


def pearson_rows(a, b) -> np.ndarray:
    """Pearson correlation of each row of `a` with the same row of `b`.

    A 1-d input is one row. A constant row has no correlation: its entry is NaN (average with
    `np.nanmean`), never a 0 that would look like a result.

    Args:
        a: array [m, k] (or [k]) of values, e.g. predicted effects, one row per test point.
        b: array of the same shape as `a`, e.g. actual effects.

    Returns:
        float64 array [m] (one entry for a 1-d input): the correlation of row i of `a` with row i
        of `b`, NaN where either row is constant.

    Raises:
        ValueError: if `a` and `b` have different shapes.
    """
    a, b = _rows(a), _rows(b)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    a, b = _unit_rows(a), _unit_rows(b)  # scale-free: tiny variances do not underflow
    denom = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (a * b).sum(axis=1) / np.where(denom > 0, denom, 1.0), np.nan)


def spearman_rows(a, b) -> np.ndarray:
    """Spearman rank correlation row by row: `pearson_rows` of the ranks (ties get average ranks).

    Args:
        a: array [m, k] (or [k]) of values.
        b: array of the same shape as `a`.

    Returns:
        float64 array [m]: the rank correlation of row i of `a` with row i of `b`, NaN where a
        row is constant.

    Raises:
        ValueError: if `a` and `b` have different shapes.
    """
    return pearson_rows(rankdata(_rows(a), axis=1), rankdata(_rows(b), axis=1))


class Correlations(NamedTuple):
    """Pearson and Spearman correlations of predicted against actual effects."""

    pearson: float  # per test point (across the k training examples), averaged
    spearman: float
    pearson_pooled: float  # over all (test, train) pairs at once
    spearman_pooled: float


def correlations(predicted, actual) -> Correlations:
    """Pearson and Spearman of predicted vs actual effects, per row and pooled.

    `pearson` / `spearman`: per test point (across the k training examples), averaged over the
    test points (constant rows, NaN, are skipped); `pearson_pooled` / `spearman_pooled`: over
    all (test, train) pairs at once.

    Args:
        predicted: array [n_test, k] (or [k]) of predicted effects.
        actual: array of the same shape, the measured effects.

    Returns:
        `Correlations(pearson, spearman, pearson_pooled, spearman_pooled)`, Python floats.

    Raises:
        ValueError: if the shapes differ, either side is not finite, or either side is constant
            (a correlation with a constant is undefined, never reported as a number).
    """
    predicted, actual = _rows(predicted), _rows(actual)
    for name, values in (("predicted", predicted), ("actual", actual)):
        if not np.all(np.isfinite(values)):
            raise ValueError(f"correlations: {name} contains NaN or inf")
        if values.size and np.all(values == values.ravel()[0]):
            raise ValueError(f"correlations: {name} is constant ({float(values.ravel()[0]):g} everywhere); "
                             "a correlation with a constant is undefined")
    if predicted.shape[1] > 1 and (np.all(np.ptp(predicted, axis=1) == 0) or np.all(np.ptp(actual, axis=1) == 0)):
        raise ValueError("correlations: every row of predicted (or of actual) is constant, so no per-row "
                         "correlation is defined")
    return Correlations(
        float(np.nanmean(pearson_rows(predicted, actual))),
        float(np.nanmean(spearman_rows(predicted, actual))),
        float(pearson_rows(predicted.ravel(), actual.ravel())[0]),
        float(spearman_rows(predicted.ravel(), actual.ravel())[0]),
    )


def auc(scores, positives) -> float:
    """Area under the ROC curve of `scores` for detecting `positives` (Mann-Whitney U).

    AUC = P(score of a positive > score of a negative) + 0.5 P(tie), computed from average ranks
    in O(n log n): (sum of the positives' ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg).
    1 ranks every positive above every negative, 0.5 is chance. Higher scores mean "more
    likely positive"; negate the scores for a detector that flags low values (e.g. low losses).

    Args:
        scores: array [n] of detector scores (any shape; raveled).
        positives: boolean array of the same size, True where the example is a positive.

    Returns:
        The AUC in [0, 1], a Python float.

    Raises:
        ValueError: if the sizes differ, a score is NaN, or there is no positive or no negative
            example.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positives = np.asarray(positives, dtype=bool).ravel()
    if scores.shape != positives.shape:
        raise ValueError(f"scores has {scores.size} entries but positives has {positives.size}")
    if np.any(np.isnan(scores)):
        raise ValueError(f"auc: scores contains NaN at {np.flatnonzero(np.isnan(scores))[:5].tolist()} (a NaN has no rank)")
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("auc needs at least one positive and one negative example")
    ranks = rankdata(scores)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


__all__ = ["Correlations", "auc", "correlations", "pearson_rows", "spearman_rows"]
