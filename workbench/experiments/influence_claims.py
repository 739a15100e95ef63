"""What the influence papers claim, and the broken variants their claims must reject.

A claim is only worth checking when a method that does not work fails it. The influence papers
compare each estimator with an uninformed one (`random_scores`: scores that know nothing about
the training set), read a relative finding off a curve (`fading_drop`: how far the influence
function's agreement with retraining falls from its peak) and compare a fix rate with the random
selection's (`fix_rate_gap`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from workbench.core.numerics import check_positive_int


def random_scores(key: jax.Array, n_test: int, n_train: int, dtype: Any = jnp.float64) -> np.ndarray:
    """Influence scores drawn at random: the negative control of every attribution claim.

    Independent standard normal scores, one per (test point, training example): an "estimator"
    that knows nothing about the model or the data. Any correlation with leave-one-out
    retraining, any fading curve or any fix rate it reaches is what chance gives.

    Args:
        key: `jax.random` key of the draw.
        n_test: test points (rows), >= 1.
        n_train: training examples (columns), >= 1.
        dtype: floating dtype of the scores.

    Returns:
        NumPy array [n_test, n_train] of standard normal scores.

    Raises:
        ValueError: if `n_test` or `n_train` is not a positive integer.
    """
    n_test = check_positive_int("n_test", n_test)
    n_train = check_positive_int("n_train", n_train)
    return np.asarray(jax.random.normal(key, (n_test, n_train), dtype))


def fading_drop(pearson) -> float:
    """How far a fading curve falls from its peak: max_t pearson[t] - pearson[-1].

    Schioppa et al.'s finding is relative: the influence function's agreement with the actual
    effect of a removal peaks and then drops as training continues. A curve that does not fade
    (flat, or still rising at the end) has a drop of 0 whatever its level.

    Args:
        pearson: array [T] of correlations over the recorded times (`FadingResult.pearson`, or
            `fading_correlations(...).pearson` of another predictor).

    Returns:
        The drop, >= 0.

    Raises:
        ValueError: if `pearson` is not a non-empty 1-d array of finite values.
    """
    curve = np.asarray(pearson, dtype=np.float64)
    if curve.ndim != 1 or curve.size == 0 or not np.all(np.isfinite(curve)):
        raise ValueError(f"pearson must be a non-empty 1-d array of finite correlations, got {curve!r}")
    return float(np.max(curve) - curve[-1])


def fix_rate_gap(result) -> float:
    """Mispredictions fixed by the influence-chosen examples beyond those fixed by random ones.

    Args:
        result: a `CorrectionResult` of `influence.validation.correct_mispredictions` (its
            `fixed` and `fixed_random` per mispredicted test point).

    Returns:
        fraction fixed with the influence-chosen examples - fraction fixed with random ones, in
        [-1, 1], recomputed from the per-point outcomes.

    Raises:
        ValueError: if `fixed` and `fixed_random` are empty or differ in shape.
    """
    fixed, fixed_random = np.asarray(result.fixed, bool), np.asarray(result.fixed_random, bool)
    if fixed.size == 0 or fixed.shape != fixed_random.shape:
        raise ValueError(f"result.fixed and result.fixed_random must be non-empty and of one shape, got "
                         f"{fixed.shape} and {fixed_random.shape}")
    return float(fixed.mean() - fixed_random.mean())
