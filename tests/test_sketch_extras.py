"""Intrinsic dimension, the sketched Hessian operator and the evaluation helpers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from workbench import curvature, models, spectrum
from workbench import data as wd
from workbench import sketch as sk
from workbench.experiments.spectra import top_eigenvalues_exact_and_sketched
from workbench.sketch import quality


@pytest.fixture(scope="module")
def tiny():
    data = wd.make_classification(jax.random.key(2), 60, 4, 2, dtype=jnp.float64)
    model = models.MLP(4, [2], 2, rngs=nnx.Rngs(0), param_dtype=jnp.float64)  # 16 parameters
    return models.functional(model), data


def test_orthogonal_sketch_keeps_the_hessian_spectrum(tiny, key):
    """srht with D = N = n is orthogonal, so Phi H Phi^T has exactly the eigenvalues of H."""
    fn, data = tiny
    n = optax.tree.size(fn.params)
    assert n == 16
    s = sk.make("srht", key, n, n)
    exact, approx = top_eigenvalues_exact_and_sketched(fn.loss_fn, fn.params, data, s, key, 3)
    h = jax.hessian(lambda w: fn.loss_fn(jax.flatten_util.ravel_pytree(fn.params)[1](w), data))(
        jax.flatten_util.ravel_pytree(fn.params)[0])
    ref = np.linalg.eigvalsh(np.asarray(h))[::-1][:3]
    np.testing.assert_allclose(exact, ref, rtol=1e-8)
    np.testing.assert_allclose(approx, ref, rtol=1e-8)


def test_sketched_operator_with_the_spectrum_module(tiny, key):
    fn, data = tiny
    op = curvature.operator(fn.loss_fn, fn.params, data, kind="hessian")
    s = sk.make("affd", key, op.dim, 8)
    sop = sk.sketched_operator(op, s)
    assert sop.dim == 8
    y = jnp.linspace(-1, 1, 8)
    dense = np.asarray(op.dense())
    phi = np.asarray(s.apply(jnp.eye(op.dim))).T  # [8, n]
    np.testing.assert_allclose(sop.matvec(y), phi @ dense @ phi.T @ np.asarray(y), rtol=1e-9, atol=1e-12)
    vals = spectrum.top_eigenpairs(sop, key, 3).values
    np.testing.assert_allclose(np.sort(vals)[::-1], np.linalg.eigvalsh(phi @ dense @ phi.T)[::-1][:3], rtol=1e-7)
    with pytest.raises(ValueError, match="dim_in"):
        sk.sketched_operator(op, sk.make("affd", key, op.dim + 1, 8))


def test_intrinsic_sweep_full_subspace_matches_full_training(tiny, key):
    fn, data = tiny
    train, test = data.take(slice(0, 40)), data.take(slice(40, 60))
    r = sk.intrinsic_sweep(fn.loss_fn, fn.params, train, test, key, [1, 4, 16],
                               predict_fn=fn.predict_fn, num_steps=200, optimizer=optax.adam(0.05))
    assert r.num_params == 16 and list(r.dims) == [1, 4, 16]
    assert abs(r.accuracy[-1] - r.full_accuracy) <= 0.1  # d = n: the subspace is everything
    assert r.train_loss[-1] <= r.train_loss[0]
    reached = [d for d, a in zip(r.dims, r.accuracy) if a >= 0.9 * r.full_accuracy]
    assert r.d_int90 == (reached[0] if reached else None)
    with pytest.raises(ValueError, match="dims must not exceed"):
        sk.intrinsic_sweep(fn.loss_fn, fn.params, train, test, key, [17], predict_fn=fn.predict_fn)
    with pytest.raises(ValueError, match="kind must be one of"):
        sk.intrinsic_sweep(fn.loss_fn, fn.params, train, test, key, [2], predict_fn=fn.predict_fn, kind="qk")


def test_correlation_table_and_one_block_input(key):
    k1, k2 = jax.random.split(jax.random.key(4))  # low rank: dot products spread widely
    g = jax.random.normal(k1, (20, 3), jnp.float64) @ jax.random.normal(k2, (3, 300), jnp.float64)
    table = quality.dot_product_correlation(g, ["dense", "srht"], key, [2, 8], num_draws=3)
    assert table.pearson.shape == (2, 2, 3) and table.mean.shape == (2, 2)
    assert (table.mean[:, 1] > 0.97).all() and (table.mean[:, 0] < table.mean[:, 1]).all()
    assert table.smallest_log2_dim(0.97) == {"dense": 8, "srht": 8}
    assert table.smallest_log2_dim(1.01) == {"dense": None, "srht": None}
    big = quality.dot_product_correlation(g, ["srht"], key, [10], num_draws=2)  # 2^10 > 512: cannot map up
    assert np.isnan(big.pearson).all()
    x = quality.one_block_input(key, 256, 32, which=2)
    assert np.flatnonzero(x).min() >= 64 and np.flatnonzero(x).max() < 96
    with pytest.raises(ValueError, match="does not fit"):
        quality.one_block_input(key, 64, 32, which=2)


def test_a_mistyped_option_is_an_error_not_a_nan_table(key):
    """dot_product_correlation used to swallow every ValueError into NaN entries."""
    grads = jax.random.normal(key, (6, 64))
    with pytest.raises((ValueError, TypeError)):
        quality.dot_product_correlation(grads, ["affd"], key, [4], options={"affd": {"preconditioner": "fourier"}})
    with pytest.raises(ValueError):
        quality.dot_product_correlation(grads, ["no_such_kind"], key, [4])
    table = quality.dot_product_correlation(grads, ["dense"], key, [4, 7])  # 2^7 > 64: no entry, by design
    assert np.all(np.isfinite(np.asarray(table.pearson)[0, 0])) and np.all(np.isnan(np.asarray(table.pearson)[0, 1]))
