"""The edge-of-stability measures (`experiments.spectra.stability_ratio`, `sharpening`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench import data
from workbench.experiments import spectra


def run_of(sharpness, learning_rate=0.1, steps=None):
    steps = np.arange(len(sharpness)) * 10 if steps is None else np.asarray(steps)
    return spectra.SharpnessRun(learning_rate, {"callback_step": steps, "sharpness": np.asarray(sharpness)}, None,
                                False)


def test_sharpening_on_prescribed_histories():
    rising = run_of([5.0, 10.0, 20.0, 22.0])  # steps 0..30: the last half is steps 15, 20, 25, 30 -> 20, 22
    assert spectra.sharpening(rising) == pytest.approx(21.0 / 5.0, rel=1e-15)
    assert spectra.sharpening(rising, last_fraction=1.0) == pytest.approx(57.0 / 4 / 5.0, rel=1e-15)
    catapult = run_of([30.0, 20.0, 20.5, 19.5])
    assert spectra.sharpening(catapult) == pytest.approx(20.0 / 30.0, rel=1e-15)
    shuffled = run_of([20.0, 5.0, 22.0, 10.0], steps=[20, 0, 30, 10])  # the first record is the one at step 0
    assert spectra.sharpening(shuffled) == pytest.approx(21.0 / 5.0, rel=1e-15)


def test_sharpening_and_stability_ratio_refuse_bad_runs():
    with pytest.raises(ValueError, match="last_fraction"):
        spectra.sharpening(run_of([1.0, 2.0]), last_fraction=0.0)
    with pytest.raises(ValueError, match="NaN or inf"):
        spectra.sharpening(run_of([1.0, np.nan]))
    with pytest.raises(ValueError, match="NaN or inf"):
        spectra.stability_ratio(run_of([1.0, np.inf]))
    with pytest.raises(ValueError, match="no sharpness record"):
        spectra.stability_ratio(run_of([]))
    with pytest.raises(ValueError, match="not positive"):
        spectra.sharpening(run_of([0.0, 2.0]))


def test_gd_on_a_quadratic_neither_sharpens_nor_reaches_the_edge(key):
    """GD on 0.5 x^T A x: the Hessian is A throughout, so the recorded sharpness is lambda_max(A)
    at every step, `sharpening` is 1 and the stability ratio is lambda_max * lr / 2 exactly."""
    a = jnp.diag(jnp.array([4.0, 2.0, 1.0, 0.5]))
    batch = data.Dataset(jnp.ones((3, 1)), jnp.zeros(3))  # unused by the loss; the data are one batch

    def loss_fn(params, batch):
        return 0.5 * params @ a @ params + 0.0 * jnp.sum(batch.x)

    run = spectra.gd_sharpness_run(loss_fn, jnp.ones(4), batch, key, learning_rate=0.3, num_steps=20, every=5,
                                   progress=False)
    np.testing.assert_allclose(run.history["sharpness"], 4.0, rtol=1e-8)
    assert spectra.sharpening(run) == pytest.approx(1.0, rel=1e-8)
    ratio = spectra.stability_ratio(run)
    np.testing.assert_allclose([ratio.mean, ratio.min, ratio.max], 0.6, rtol=1e-8)
    with pytest.raises(ValueError, match="learning_rate"):
        spectra.gd_sharpness_run(loss_fn, jnp.ones(4), batch, jax.random.key(0), learning_rate=0.0, num_steps=2)
