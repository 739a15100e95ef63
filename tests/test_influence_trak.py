"""TRAK on sketched per-example gradients from workbench.sketch's stores."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from plain_logreg import fitted_digits, plain_logreg  # tests/ helper module

from workbench import influence, sketch  # noqa: E402
from workbench.core import statistics

N_TRAIN, N_TEST, L2 = 120, 10, 1e-2


LogReg = plain_logreg(L2)


@pytest.fixture(scope="module")
def problem():
    params, train, test = fitted_digits(LogReg, N_TRAIN, N_TEST)
    return params, train, test


def test_trak_is_the_gauss_newton_influence_in_the_sketched_space(problem, key):
    """Scores equal Phi g_t^T (X^T X / n + damping)^{-1} Phi g_i computed densely in the sketched
    space, X the sketched margin gradients."""
    params, train, test = problem
    output = influence.margin_output(LogReg.predict_fn)
    est = influence.make("trak", LogReg.loss_fn, params, train, dim=64, output_fn=output, damping=L2, key=key)
    s = jax.tree.map(lambda a: a[0], est.state["sketches"])  # model 0 of the ensemble
    g = lambda fn, d: sketch.per_example_gradients(fn, params, d, s)
    x = np.asarray(g(output, train))
    inv = np.linalg.inv(x.T @ x / N_TRAIN + L2 * np.eye(64))
    expected = np.asarray(g(LogReg.loss_fn, test)) @ inv @ np.asarray(g(LogReg.loss_fn, train)).T
    np.testing.assert_allclose(est.scores(test), expected, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(est.self_influence(), np.einsum("ij,jk,ik->i", np.asarray(g(LogReg.loss_fn, train)), inv,
                                                                np.asarray(g(LogReg.loss_fn, train))), rtol=1e-8)


def test_trak_store_ensemble_and_refusals(problem, key, tmp_path):
    params, train, test = problem
    output = influence.margin_output(LogReg.predict_fn)
    other = jax.tree.map(lambda a: a * 0.9, params)
    stores = [tmp_path / "m0", tmp_path / "m1"]
    est = influence.make("trak", LogReg.loss_fn, params, train, models=[params, other], dim=128,
                         output_fn=output, damping=L2, stores=stores, key=key)
    a = est.scores(test)
    assert a.shape == (N_TEST, N_TRAIN) and est.info["num_models"] == 2
    # reopening the same stores gives the same scores (deterministic, resumable)
    again = influence.make("trak", LogReg.loss_fn, params, train, models=[params, other], dim=128,
                           output_fn=output, damping=L2, stores=stores, key=key)
    np.testing.assert_allclose(again.scores(test), a, rtol=1e-12)
    # a useful attribution: correlated with the exact influence function
    exact = np.asarray(influence.make("exact", LogReg.loss_fn, params, train).scores(test))
    assert np.mean(statistics.pearson_rows(np.asarray(a), exact)) > 0.5
    # a store made for another model is refused
    mlp = {"w": jnp.zeros((64, 5)), "b": jnp.zeros(5)}
    with pytest.raises(ValueError, match="another configuration"):
        influence.make("trak", lambda p, b: jnp.sum(p["w"]) * jnp.mean(b[0]), mlp, train, dim=128, stores=[stores[0]], key=key)
    with pytest.raises(ValueError, match="one path per model"):
        influence.make("trak", LogReg.loss_fn, params, train, dim=128, stores=stores, key=key)
