"""The influence papers' claim helpers: the random-score control, the fading drop and the fix-rate gap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench.experiments.influence_claims import fading_drop, fix_rate_gap, random_scores
from workbench.influence import validation as ev


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_random_scores_are_standard_normal_and_follow_the_key(key, dtype):
    scores = random_scores(key, 150, 200, dtype)
    assert scores.shape == (150, 200) and scores.dtype == dtype
    np.testing.assert_array_equal(scores, random_scores(key, 150, 200, dtype))
    assert not np.array_equal(scores, random_scores(jax.random.fold_in(key, 1), 150, 200, dtype))
    # 30000 draws: the sample mean is within 4 standard errors of 0, the variance of 1
    assert abs(scores.mean()) < 4 / np.sqrt(scores.size)
    assert abs(scores.var() - 1.0) < 4 * np.sqrt(2 / scores.size)
    with pytest.raises(ValueError, match="n_test"):
        random_scores(key, 0, 5)
    with pytest.raises(ValueError, match="n_train"):
        random_scores(key, 3, 2.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_scores_do_not_correlate_with_leave_one_out(seed):
    """The control of the LOO claims: per test point Pearson over k removals is about N(0, 1/(k-1));
    averaged over n_test points its spread is 1/sqrt(n_test (k-1)); a real signal is far above it."""
    rng = np.random.default_rng(seed)
    n_test, n_train, k = 40, 100, 60
    signal = rng.normal(size=(n_test, n_train))
    removed = np.arange(0, n_train, n_train // k)[:k]
    truth = ev.LOOResult(removed, signal[:, removed] / (n_train - 1), np.zeros(k), n_train)
    chance = ev.loo_correlation(random_scores(jax.random.key(seed), n_test, n_train), truth).pearson
    assert abs(chance) < 4 / np.sqrt(n_test * (k - 1))
    assert ev.loo_correlation(signal, truth).pearson == pytest.approx(1.0)


def test_fading_drop_is_the_fall_from_the_peak_to_the_end():
    curve = np.array([0.6, 0.95, 0.9, 0.7, 0.75])
    reference = max(curve) - curve[len(curve) - 1]  # by hand: 0.95 - 0.75
    assert fading_drop(curve) == pytest.approx(reference) and reference == pytest.approx(0.2)
    assert fading_drop([0.91] * 6) == 0.0  # a flat curve does not fade, whatever its level
    assert fading_drop([0.1, 0.5, 0.9]) == 0.0  # nor does a rising one
    rng = np.random.default_rng(0)
    for _ in range(5):
        c = rng.uniform(-1, 1, size=int(rng.integers(1, 12)))
        assert fading_drop(c) == pytest.approx(max(list(c)) - list(c)[-1])
    for bad in ([], [[0.5, 0.4]], [0.5, np.nan]):
        with pytest.raises(ValueError, match="pearson"):
            fading_drop(bad)


def test_fading_drop_of_the_random_control_is_small_next_to_a_fading_curve():
    """A fading signal (predictions that match the early actual effects, then noise grows) drops;
    random predictions of the same actual effects stay near 0 and barely drop."""
    rng = np.random.default_rng(3)
    predicted = rng.normal(size=(40, 20))
    actual = np.stack([predicted + s * rng.normal(size=predicted.shape) for s in (0.2, 0.4, 0.8, 1.6, 3.2)])
    signal = ev.fading_correlations(predicted, actual).pearson
    chance = ev.fading_correlations(random_scores(jax.random.key(3), 40, 20), actual).pearson
    assert fading_drop(signal) > 0.5
    assert fading_drop(chance) < 0.15


def test_fix_rate_gap_counts_the_points_fixed():
    fixed = np.array([True, True, False, True, False])
    fixed_random = np.array([False, True, False, False, False])
    result = ev.CorrectionResult(np.arange(5), fixed, fixed_random, 0.6, 0.2, 0.0, 0.0)
    assert fix_rate_gap(result) == pytest.approx((3 - 1) / 5)
    assert fix_rate_gap(result._replace(fixed_random=fixed)) == 0.0
    with pytest.raises(ValueError, match="fixed_random"):
        fix_rate_gap(result._replace(fixed_random=fixed_random[:3]))
    with pytest.raises(ValueError, match="fixed"):
        fix_rate_gap(result._replace(fixed=np.zeros(0, bool), fixed_random=np.zeros(0, bool)))


def test_corrections_with_one_step_size_compile_once(key):
    """correct_mispredictions hands `_trajectories` one optimizer object per step size, so the
    influence run, the random run and further calls with another k reuse one compiled program."""
    from plain_logreg import plain_logreg

    from workbench import data
    from workbench.influence.validation import dynamics

    model = plain_logreg(1e-3)
    train, test = data.load_digits(dtype=jnp.float64)
    train, test = train.take(np.arange(60)), test.take(np.arange(30))
    params = {"w": 0.01 * jax.random.normal(jax.random.key(1), (64, 10), jnp.float64), "b": jnp.zeros(10, jnp.float64)}
    scores = random_scores(jax.random.key(2), 30, 60)  # which examples are re-weighted does not matter here
    before = dynamics._trajectories._cache_size()
    for k in (3, 7):
        ev.correct_mispredictions(model.loss_fn, model.predict_fn, params, train, key, test, scores, k=k,
                                  num_steps=3, learning_rate=0.25)
    assert dynamics._trajectories._cache_size() - before == 1
