"""Spectral density (SLQ) and trace estimators against dense float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.stats import wasserstein_distance

from workbench import curvature, data, models, spectrum


@pytest.fixture(scope="module")
def digits_small():
    """A 64-12-10 digits MLP (910 params) on 300 images: operator and dense eigenvalues."""
    train, _ = data.load_digits(dtype=jnp.float64)
    fn = models.functional(models.MLP(64, [12], 10, rngs=nnx.Rngs(0), param_dtype=jnp.float64))
    op = curvature.operator(fn, fn.params, train.take(slice(0, 300)))
    return op, np.linalg.eigvalsh(np.asarray(op.dense()))


def test_slq_density_matches_dense_spectrum(digits_small, key):
    op, eigs = digits_small
    d = spectrum.spectral_density(op, key)  # defaults: 90 iterations, 10 probes
    assert d.nodes.shape == d.weights.shape == (10, 90)
    np.testing.assert_allclose(np.sum(d.weights, axis=1), 1.0, rtol=1e-10)
    np.testing.assert_allclose(np.trapezoid(d.density, d.grid), 1.0, rtol=1e-10)
    nodes, weights = np.asarray(d.nodes).ravel(), np.asarray(d.weights).ravel() / 10
    spread = eigs.max() - eigs.min()
    w1 = wasserstein_distance(nodes, eigs, u_weights=weights)
    assert w1 < 0.01 * spread, w1
    uniform = wasserstein_distance(nodes, eigs)  # ignoring the weights must fail the test
    assert uniform > 5 * w1 and uniform > 0.01 * spread
    # extreme Ritz values converge to the extreme eigenvalues
    np.testing.assert_allclose(np.max(nodes), eigs[-1], rtol=1e-6)
    np.testing.assert_allclose(np.min(nodes), eigs[0], rtol=1e-6)
    # the density's mean is the normalized trace
    mean = np.trapezoid(d.grid * d.density, d.grid)
    np.testing.assert_allclose(mean, eigs.mean(), atol=0.1 * np.abs(eigs).mean() + 1e-3)


def test_density_jit_matches_eager(digits_small, key):
    op, _ = digits_small
    eager = spectrum.spectral_density(op, key, num_iters=20, num_probes=3, grid_size=200)
    jitted = jax.jit(lambda k: spectrum.spectral_density(op, k, num_iters=20, num_probes=3,
                                                         grid_size=200))(key)
    np.testing.assert_allclose(jitted.nodes, eager.nodes, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(jitted.density, eager.density, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("method", ["hutchinson", "hutch++", "xtrace"])
def test_trace_jit_matches_eager(method, key):
    """Eager calls finish the estimate on the host (NumPy float64), traced calls in the program:
    the same numbers, and a non-finite product raises either way."""
    rng = np.random.default_rng(0)
    half = rng.normal(size=(40, 40))
    matrix = jnp.asarray(half @ half.T)
    op = curvature.LinearOperator(lambda a, v: a @ v, matrix, jax.ShapeDtypeStruct((40,), matrix.dtype))
    eager = spectrum.trace(op, key, 24, method)
    traced = jax.jit(lambda k: spectrum.trace(op, k, 24, method)[:2])(key)
    np.testing.assert_allclose(traced, eager[:2], rtol=1e-12)
    assert 0 < float(eager.std_error) < 0.2 * float(eager.estimate)
    broken = curvature.LinearOperator(lambda a, v: jnp.where(v[0] > 0, jnp.inf, 1.0) * (a @ v), matrix,
                                      jax.ShapeDtypeStruct((40,), matrix.dtype))
    with pytest.raises(FloatingPointError, match="trace"):
        spectrum.trace(broken, key, 24, method)


@pytest.fixture(scope="module")
def decaying():
    eigenvalues = 1.0 / jnp.arange(1, 81, dtype=jnp.float64) ** 2
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(5), (80, 80), jnp.float64))
    return curvature.from_matrix((q * eigenvalues) @ q.T), float(eigenvalues.sum())


def test_trace_estimators_unbiased_and_deflation_reduces_variance(decaying):
    op, exact = decaying
    keys = jax.random.split(jax.random.key(7), 300)
    spreads = {}
    for method in ("hutchinson", "hutch++", "xtrace"):
        estimates = np.array([float(spectrum.trace(op, k, 12, method).estimate) for k in keys])
        errors = np.array([float(spectrum.trace(op, k, 12, method).std_error) for k in keys[:30]])
        sem = estimates.std(ddof=1) / np.sqrt(estimates.size)
        assert abs(estimates.mean() - exact) < 4 * sem + 1e-12, (method, estimates.mean(), exact)
        spreads[method] = estimates.std()
        if method == "hutchinson":  # the reported standard error tracks the actual spread
            assert 0.4 < np.median(errors) / estimates.std() < 2.5
    assert spreads["hutch++"] < 0.5 * spreads["hutchinson"]
    assert spreads["xtrace"] < 0.5 * spreads["hutchinson"]


def test_trace_accuracy_and_bad_input(digits_small, key):
    op, eigs = digits_small
    for method in ("hutchinson", "hutch++", "xtrace"):
        est = spectrum.trace(op, key, 100, method)
        assert abs(float(est.estimate) - eigs.sum()) < 5 * float(est.std_error) + 1e-8, method
    with pytest.raises(ValueError, match="num_probes must be an int >= 4 for hutch\\+\\+"):
        spectrum.trace(op, key, 3, "hutch++")
    with pytest.raises(ValueError, match="method must be one of"):
        spectrum.trace(op, key, 10, "exact")
