"""The influence evaluation paper's baselines and controls, each against an independent reference:
datamodels against a hand-written dual ridge regression and SciPy's Spearman, the loss-ranking
AUC against scikit-learn's ROC AUC of losses computed one example at a time."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from workbench.experiments.influence_evaluation import (
    MislabelBaselines,
    datamodel_lds,
    headline_metrics,
    mislabel_baselines,
    random_lds,
)
from workbench.influence.validation import EvaluationRow, LDSGroundTruth, lds


def _linear_truth(key, num_subsets, n_train, n_test, noise):
    """Subsets of half the examples; each test loss is linear in the subset plus noise (NumPy draws
    seeded by `key`: no programs to compile)."""
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)))
    masks = np.argsort(rng.random((num_subsets, n_train)), axis=1) < n_train // 2
    weights = rng.standard_normal((n_train, n_test))
    outputs = masks @ weights + noise * rng.standard_normal((num_subsets, n_test))
    return LDSGroundTruth(masks, outputs, np.zeros(num_subsets)), weights


def _datamodel_lds_reference(truth, ridge):
    """Leave-one-subset-out ridge regression in its dual form with explicit centring, each held-out
    subset ranked by its summed weights, and SciPy's Spearman per test point."""
    x, y = truth.masks.astype(np.float64), truth.outputs
    num_subsets = len(x)
    predicted = np.empty_like(y)
    for m in range(num_subsets):
        keep = np.arange(num_subsets) != m
        x_mean, y_mean = x[keep].mean(0), y[keep].mean(0)
        xc, yc = x[keep] - x_mean, y[keep] - y_mean
        weights = xc.T @ np.linalg.solve(xc @ xc.T + ridge * np.eye(len(xc)), yc)  # [n_train, n_test]
        predicted[m] = x[m] @ weights
    per_test = np.array([spearmanr(predicted[:, t], y[:, t]).statistic for t in range(y.shape[1])])
    return per_test


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_datamodel_lds_matches_a_dual_ridge_reference(seed):
    truth, _ = _linear_truth(jax.random.key(seed), num_subsets=9, n_train=20, n_test=4, noise=0.5)
    for ridge in (0.1, 3.0):
        got = datamodel_lds(truth, ridge=ridge)
        want = _datamodel_lds_reference(truth, ridge)
        np.testing.assert_allclose(got.per_test, want, rtol=1e-10, atol=1e-12)
        assert got.mean == pytest.approx(float(np.mean(want)), abs=1e-12)


def test_datamodel_lds_recovers_a_linear_truth_and_not_noise(key):
    truth, _ = _linear_truth(key, num_subsets=120, n_train=16, n_test=5, noise=0.05)
    assert datamodel_lds(truth, ridge=0.1).mean > 0.95  # enough subsets: the datamodel is the truth
    rng = np.random.default_rng(np.asarray(jax.random.key_data(jax.random.fold_in(key, 1))))
    noise = truth._replace(outputs=rng.standard_normal(truth.outputs.shape))
    assert abs(datamodel_lds(noise, ridge=0.1).mean) < 0.3  # nothing to learn: about 0


def test_datamodel_lds_of_noise_is_not_biased_by_the_held_out_mean(key):
    """With few subsets and a heavy ridge the fitted intercept is the mean of the other losses,
    which ranks the held-out subsets backwards: leaving it out keeps noise at an LDS near 0."""
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)))
    truth, _ = _linear_truth(key, num_subsets=8, n_train=30, n_test=300, noise=0.0)
    noise = truth._replace(outputs=rng.standard_normal(truth.outputs.shape))
    assert abs(datamodel_lds(noise, ridge=1e6).mean) < 0.1


def test_datamodel_lds_refuses_bad_input(key):
    truth, _ = _linear_truth(key, num_subsets=5, n_train=8, n_test=2, noise=0.1)
    for ridge in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="ridge"):
            datamodel_lds(truth, ridge=ridge)
    small = LDSGroundTruth(truth.masks[:2], truth.outputs[:2], truth.grad_norm[:2])
    with pytest.raises(ValueError, match="at least 3 subsets"):
        datamodel_lds(small)


def test_random_lds_is_near_zero_where_true_scores_are_perfect(key):
    truth, weights = _linear_truth(key, num_subsets=40, n_train=30, n_test=6, noise=0.0)
    # scores > 0 lower the loss (the estimators' convention): the true scores are -weights
    assert lds(-weights.T, truth).mean == pytest.approx(1.0)
    values = [random_lds(truth, jax.random.fold_in(key, i)) for i in range(6)]
    assert all(np.isfinite(values)) and abs(np.mean(values)) < 0.15
    assert random_lds(truth, jax.random.fold_in(key, 0)) == values[0]  # the key decides
    assert len(set(values)) == len(values)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_mislabel_baselines_match_sklearn_on_losses_one_example_at_a_time(key, dtype):
    k_x, k_w, k_flip, k_random = jax.random.split(key, 4)
    n, d, classes = 40, 3, 3
    x = jax.random.normal(k_x, (n, d), dtype)
    w = jax.random.normal(k_w, (d, classes), dtype)
    y = jnp.argmax(x @ w, axis=1)
    flipped = np.zeros(n, bool)
    flipped[np.asarray(jax.random.permutation(k_flip, n)[:6])] = True
    y = jnp.where(jnp.asarray(flipped), (y + 1) % classes, y)

    def per_example_loss_fn(params, batch):
        logits = batch[0] @ params
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), batch[1][:, None], axis=1)[:, 0]

    got = mislabel_baselines(per_example_loss_fn, w, (x, y), flipped, k_random)
    losses = [float(per_example_loss_fn(w, (x[i : i + 1], y[i : i + 1]))[0]) for i in range(n)]
    assert isinstance(got, MislabelBaselines)
    assert got.loss == pytest.approx(roc_auc_score(flipped, losses), abs=1e-6)
    assert got.loss > 0.9  # the flipped labels are the badly fit ones
    assert got.random == pytest.approx(roc_auc_score(flipped, np.asarray(jax.random.normal(k_random, (n,)))))
    with pytest.raises(ValueError, match="flipped of shape"):
        mislabel_baselines(per_example_loss_fn, w, (x, y), flipped[:-1], k_random)


def _table():
    rows = []
    for model, shift in (("logistic", 0.0), ("mlp", -0.1)):
        for name, value, auc in (("exact", 0.9, 0.97), ("grad_dot", 0.55, 0.99), ("trak", 0.7, 0.98),
                                 ("grad_cos", 0.5, None)):
            rows.append(EvaluationRow(model, name, value + shift, auc, 1.0))
    return rows


def test_headline_metrics_are_the_gaps_of_the_table():
    mislabel = {"logistic": MislabelBaselines(0.98, 0.52), "mlp": MislabelBaselines(0.96, 0.45)}
    got = headline_metrics(_table(), lds_random={"logistic": 0.02, "mlp": -0.04}, mislabel=mislabel,
                           lds_datamodels=0.15)
    expected = {
        "lds_logistic_exact": 0.9, "lds_mlp_exact": 0.8, "lds_logistic_grad_cos": 0.5, "auc_mlp_grad_dot": 0.99,
        "lds_logistic_random": 0.02, "auc_mlp_loss": 0.96, "auc_logistic_random": 0.52,
        "lds_gain_logistic_exact_over_grad_dot": 0.35, "lds_gain_mlp_exact_over_grad_dot": 0.35,
        "lds_gain_logistic_random_over_grad_dot": 0.02 - 0.55, "lds_gain_mlp_random_over_grad_dot": -0.04 - 0.45,
        "auc_gain_logistic_exact_over_loss": 0.97 - 0.98, "auc_gain_mlp_grad_dot_over_loss": 0.99 - 0.96,
        "auc_gain_mlp_random_over_loss": 0.45 - 0.96, "lds_logistic_datamodels": 0.15,
        "lds_gain_logistic_trak_over_datamodels": 0.7 - 0.15, "lds_gain_logistic_random_over_datamodels": 0.02 - 0.15,
    }
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
    assert "auc_logistic_grad_cos" not in got  # no self-influence scored for it
    with pytest.raises(KeyError):
        headline_metrics([r for r in _table() if r.estimator != "grad_dot"], lds_random={"logistic": 0.0, "mlp": 0.0},
                         mislabel=mislabel, lds_datamodels=0.1)
