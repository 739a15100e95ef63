"""Sharpness during training: the callback against dense eigh, and inside workbench.train."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from workbench import data, models, spectrum, train
from workbench.experiments import spectra


def test_sharpness_callback_matches_dense_and_plugs_into_train(key):
    ds = data.make_classification(jax.random.key(1), 64, 5, num_classes=3, dtype=jnp.float64)
    fn = models.functional(models.MLP(5, [6], 3, rngs=nnx.Rngs(0), param_dtype=jnp.float64))
    callback = spectrum.sharpness_callback(fn.loss_fn, ds, key, k=2)
    result = train.train(fn.loss_fn, fn.params, ds, key, optimizer=optax.sgd(0.5), num_steps=6, callback=callback, callback_every=3, progress=False)
    assert list(result.history["callback_step"]) == [0, 3, 6]
    from workbench.core.tree import ravel

    flat, unravel = ravel(result.params)
    dense = jax.jit(jax.hessian(lambda x: fn.loss_fn(unravel(x), ds)))(flat)
    eigs = np.linalg.eigvalsh(np.asarray(dense))
    np.testing.assert_allclose(result.history["sharpness"][-1], eigs[-1], rtol=1e-8)
    np.testing.assert_allclose(result.history["sharpness_2"][-1], eigs[-2], rtol=1e-8)
    again = callback(6, result.params)  # deterministic for a given step
    assert again["sharpness"] == result.history["sharpness"][-1]


def test_stability_ratio():
    run = spectra.SharpnessRun(0.1, {"callback_step": np.array([0, 10, 20, 30]),
                                      "sharpness": np.array([5.0, 10.0, 20.0, 22.0])}, None, False)
    ratio = spectra.stability_ratio(run, last_fraction=0.5)
    np.testing.assert_allclose([ratio.min, ratio.max], [1.0, 1.1])
    wrong = spectra.stability_ratio(run, last_fraction=0.5, threshold=1.0)  # sharpness / (1 / lr)
    np.testing.assert_allclose([wrong.mean, wrong.min, wrong.max], [2.1, 2.0, 2.2])
    with pytest.raises(ValueError, match="threshold"):
        spectra.stability_ratio(run, threshold=0.0)


def test_sharpness_of_a_nan_loss_raises_never_zero(key):
    """Every Hessian product NaN: sharpness and the callback raise (they used to report 0.0)."""
    ds = data.make_classification(jax.random.key(1), 32, 4, num_classes=2, dtype=jnp.float64)
    fn = models.functional(models.MLP(4, [3], 2, rngs=nnx.Rngs(0), param_dtype=jnp.float64))
    nan_loss = lambda p, b: fn.loss_fn(p, b) * jnp.nan
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        spectrum.sharpness(nan_loss, fn.params, ds, key)
    with pytest.raises(FloatingPointError, match="sharpness at step 3"):
        spectrum.sharpness_callback(nan_loss, ds, key)(3, fn.params)


def test_sharpness_compiles_once_and_keeps_data_out_of_the_program(key):
    ds = data.make_classification(jax.random.key(1), 32, 4, num_classes=2, dtype=jnp.float64)
    fn = models.functional(models.MLP(4, [3], 2, rngs=nnx.Rngs(0), param_dtype=jnp.float64))
    from workbench.spectrum.sharpness import _top_values_fn

    _top_values_fn.cache_clear()
    first = spectrum.sharpness(fn.loss_fn, fn.params, ds, key)
    other = ds.with_targets(1 - ds.y)  # new data, same shapes
    second = spectrum.sharpness(fn.loss_fn, fn.params, other, key)
    top = _top_values_fn(fn.loss_fn, 1, 20, 50, None, "hessian", None)
    assert _top_values_fn.cache_info().misses == 1 and top._cache_size() == 1
    assert float(first[0]) != float(second[0])
    hlo = top.lower(fn.params, ds, key).as_text()
    assert "constant" not in hlo or str(float(ds.x[0, 0]))[:8] not in hlo
