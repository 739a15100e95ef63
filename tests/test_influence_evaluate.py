"""Correcting mispredictions and influence fading (Schioppa et al. 2023) on small problems."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from workbench import data, influence
from workbench.influence import evaluate as ev

L2 = 1e-3


class LogReg(NamedTuple):
    @staticmethod
    def predict_fn(params, x):
        return x @ params["w"] + params["b"]

    @staticmethod
    def loss_fn(params, batch):
        x, y = batch
        logp = jax.nn.log_softmax(LogReg.predict_fn(params, x))
        reg = jnp.sum(params["w"] ** 2) + jnp.sum(params["b"] ** 2)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1)) + 0.5 * L2 * reg


@pytest.fixture(scope="module")
def problem():
    jax.config.update("jax_enable_x64", True)
    train, test = data.load_digits(dtype=jnp.float64)
    train, test = train.take(np.arange(300)), test.take(np.arange(200))
    params, _ = ev.fit(LogReg.loss_fn, {"w": jnp.zeros((64, 10)), "b": jnp.zeros(10)}, train)
    scores = influence.make("exact", LogReg.loss_fn, params, train).scores(test)
    return params, train, test, scores


def test_removing_the_harmful_examples_fixes_more_than_random(problem, key):
    params, train, test, scores = problem
    r = ev.correct_mispredictions(LogReg.loss_fn, LogReg.predict_fn, params, train, test, scores, key,
                                  k=20, steps=30, learning_rate=3.0)
    assert r.mispredicted.size > 0 and r.fixed.shape == r.mispredicted.shape
    assert r.fix_rate > r.fix_rate_random
    assert r.fix_rate > 0.2 and abs(r.damage) < 0.05
    with pytest.raises(ValueError, match="scores must have shape"):
        ev.correct_mispredictions(LogReg.loss_fn, LogReg.predict_fn, params, train, test, scores[:, :5], key)


def test_fading_starts_at_the_prediction_and_tracks_divergence(problem, key):
    """Full-batch GD without example i: after many steps on a convex problem the actual change
    approaches the LOO change the influence function predicts; the divergence grows."""
    params, train, test, scores = problem
    removed = np.arange(0, 300, 15)
    predicted = np.asarray(scores)[:20][:, removed] / 299
    r = ev.fading(LogReg.loss_fn, params, train, test.take(np.arange(20)), removed, predicted, key,
                  optimizer=optax.sgd(2.0), steps=200, record_every=50, batch_size=None)
    assert r.pearson.shape == (4,) and r.actual.shape == (4, 20, removed.size)
    assert np.all(np.diff(r.divergence) > 0)
    assert r.pearson[-1] > 0.9 and r.pearson[-1] >= r.pearson[0] - 1e-9
    with pytest.raises(ValueError, match="multiple of record_every"):
        ev.fading(LogReg.loss_fn, params, train, test, removed, predicted, key, optimizer=optax.sgd(1.0),
                  steps=7, record_every=5)
