"""The shape of a Hessian spectrum (`spectrum.structure`) against exact references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.stats import wasserstein_distance

from workbench import curvature, data, models, plots, spectrum


@pytest.fixture(scope="module")
def small_mlp():
    ds = data.make_classification(jax.random.key(1), 40, 5, num_classes=3, dtype=jnp.float64)
    fn = models.functional(models.MLP(5, [4], 3, rngs=nnx.Rngs(0), param_dtype=jnp.float64), l2=0.01)
    return fn, ds


def test_autodiff_hessian_matches_the_operator_and_an_analytic_hessian(small_mlp):
    fn, ds = small_mlp
    reference = np.asarray(curvature.dense_hessian(fn, fn.params, ds))  # Hessian-vector products, another path
    hessian = np.asarray(spectrum.autodiff_hessian(fn, fn.params, ds))
    assert hessian.dtype == np.float64 and hessian.shape == reference.shape
    np.testing.assert_allclose(hessian, reference, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(spectrum.autodiff_hessian(fn, fn.params, ds, max_vectors=7), hessian, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(hessian, hessian.T)
    # the objective's l2 term is in it: the data loss's Hessian differs by exactly l2 * I
    data_only = np.asarray(spectrum.autodiff_hessian(lambda p, b: fn.loss_fn(p, b) - 0.005 * sum(
        jnp.vdot(x, x) for x in jax.tree.leaves(p)), fn.params, ds))
    np.testing.assert_allclose(hessian - data_only, 0.01 * np.eye(len(hessian)), atol=1e-12)
    # a quadratic 0.5 x^T A x + b.x on a two-leaf pytree: the Hessian is A, in ravel order
    rng = np.random.default_rng(0)
    half = rng.normal(size=(5, 5))
    a = jnp.asarray(half @ half.T)

    def quadratic(params, batch):
        x = jnp.concatenate([params["u"], params["w"].ravel()])
        return 0.5 * x @ batch @ x + jnp.sum(x)

    params = {"u": jnp.ones(1), "w": jnp.zeros((2, 2))}
    np.testing.assert_allclose(spectrum.autodiff_hessian(quadratic, params, a), a, rtol=1e-12)
    # float32 params give a float32 Hessian close to the float64 one
    params32 = jax.tree.map(lambda x: x.astype(jnp.float32), params)
    h32 = spectrum.autodiff_hessian(quadratic, params32, a.astype(jnp.float32))
    assert h32.dtype == jnp.float32
    np.testing.assert_allclose(h32, a, rtol=1e-5, atol=1e-5)


def test_autodiff_hessian_refuses_a_nan_loss(small_mlp):
    fn, ds = small_mlp
    with pytest.raises(FloatingPointError, match="autodiff_hessian"):
        spectrum.autodiff_hessian(lambda p, b: fn.loss_fn(p, b) * jnp.nan, fn.params, ds)
    with pytest.raises(ValueError, match="max_vectors"):
        spectrum.autodiff_hessian(fn, fn.params, ds, max_vectors=0)


def test_outlier_trace_fraction_and_gap_on_prescribed_spectra(keys):
    values = np.array([10.0, 8.0, 5.0, 1.0, 0.5, -0.5, 0.0])
    assert spectrum.outlier_trace_fraction(values, 3) == pytest.approx(23.0 / 25.0, rel=1e-15)
    assert spectrum.outlier_trace_fraction(np.random.default_rng(0).permutation(values), 3) == pytest.approx(0.92)
    assert spectrum.outlier_gap(values, 3) == pytest.approx(5.0)
    assert spectrum.outlier_gap(values, 1) == pytest.approx(1.25)
    # a spectrum with 4 planted outliers on a Wishart bulk: large share and a gap at 4, none without them
    p = 200
    for key in keys[:3]:
        x = np.asarray(jax.random.normal(key, (p, 2 * p)), np.float64)
        bulk = np.linalg.eigvalsh(x @ x.T / (2 * p))  # Marchenko-Pastur on [0.09, 2.9]
        planted = np.concatenate([bulk[:-4], [400.0, 300.0, 200.0, 100.0]])
        assert spectrum.outlier_trace_fraction(planted, 4) > 0.8
        assert spectrum.outlier_trace_fraction(bulk, 4) < 0.1
        assert spectrum.outlier_gap(planted, 4) > 30
        assert spectrum.outlier_gap(bulk, 4) < 1.2


def test_outlier_measures_refuse_bad_input():
    with pytest.raises(ValueError, match="eigenvalues"):
        spectrum.outlier_trace_fraction(np.array([1.0, np.nan]), 1)
    with pytest.raises(ValueError, match="eigenvalues"):
        spectrum.outlier_trace_fraction(np.array([1.0]), 2)
    with pytest.raises(ValueError, match="all zero"):
        spectrum.outlier_trace_fraction(np.zeros(3), 1)
    with pytest.raises(ValueError, match="num_outliers"):
        spectrum.outlier_gap(np.ones(3), 0)
    with pytest.raises(ValueError, match="bulk edge"):
        spectrum.outlier_gap(np.array([2.0, 1.0, -1.0]), 2)


def test_subspace_fraction_against_an_explicit_projection(keys):
    for key in keys[:3]:
        k1, k2, k3 = jax.random.split(key, 3)
        v = np.asarray(jax.random.normal(k1, (30,)), np.float64)
        q, _ = np.linalg.qr(np.asarray(jax.random.normal(k2, (30, 4)), np.float64))
        expected = float(np.sum((q.T @ v) ** 2) / (v @ v))
        assert spectrum.subspace_fraction(v, q.T) == pytest.approx(expected, rel=1e-12)
        mixing = np.asarray(jax.random.normal(k3, (4, 4)), np.float64)  # another spanning set of the span
        assert spectrum.subspace_fraction(v, mixing @ q.T) == pytest.approx(expected, rel=1e-10)
        inside = q @ np.arange(1.0, 5.0)
        assert spectrum.subspace_fraction(inside, q.T) == pytest.approx(1.0, rel=1e-12)
        assert spectrum.subspace_fraction(v - q @ (q.T @ v), q.T) == pytest.approx(0.0, abs=1e-12)


def test_random_subspace_fraction_is_k_over_p_on_average(key):
    v = np.zeros(50)
    v[0] = 1.0  # a coordinate vector: the most concentrated gradient there is
    fractions = [spectrum.random_subspace_fraction(v, jax.random.fold_in(key, i), 5) for i in range(200)]
    assert len(set(fractions)) == 200  # independent draws
    # E = k / p = 0.1 (Beta(k/2, (p-k)/2)); standard error of the mean of 200 draws ~ 0.003
    assert np.mean(fractions) == pytest.approx(0.1, abs=0.015)
    a = spectrum.random_subspace_fraction(v, key, 5)
    assert a == spectrum.random_subspace_fraction(v, key, 5)


def test_subspace_fractions_refuse_bad_input(key):
    v = np.ones(6)
    with pytest.raises(ValueError, match="basis must be"):
        spectrum.subspace_fraction(v, np.ones((2, 5)))
    with pytest.raises(ValueError, match="rank-deficient"):
        spectrum.subspace_fraction(v, np.ones((2, 6)))
    with pytest.raises(ValueError, match="vector is zero"):
        spectrum.subspace_fraction(np.zeros(6), np.eye(6)[:2])
    with pytest.raises(ValueError, match="vector contains NaN"):
        spectrum.subspace_fraction(np.full(6, np.nan), np.eye(6)[:2])
    with pytest.raises(ValueError, match="k must be at most"):
        spectrum.random_subspace_fraction(v, key, 7)
    with pytest.raises(TypeError, match="key must be a JAX PRNG key"):
        spectrum.random_subspace_fraction(v, 0, 2)


def test_relative_wasserstein_against_scipy_and_its_point_mass_bound():
    eigenvalues = np.concatenate([np.linspace(-0.1, 0.2, 40), [3.0, 5.0]])
    scale = np.mean(np.abs(eigenvalues - np.median(eigenvalues)))
    exact = spectrum.relative_wasserstein(eigenvalues[None], np.full((1, 42), 1 / 42), eigenvalues)
    assert exact == pytest.approx(0.0, abs=1e-12)
    for seed in range(3):  # NumPy draws: the function under test is NumPy too (no compilation)
        rng = np.random.default_rng(seed)
        nodes = rng.uniform(-0.2, 5.0, size=(3, 5))
        weights = rng.dirichlet(np.ones(5), size=3)
        expected = wasserstein_distance(nodes.ravel(), eigenvalues, u_weights=weights.ravel()) / scale
        assert spectrum.relative_wasserstein(nodes, weights, eigenvalues) == pytest.approx(expected, rel=1e-12)
        # any single point mass (a one-node SLQ) scores at least 1
        for point in (float(nodes[0, 0]), float(np.median(eigenvalues)), float(np.mean(eigenvalues))):
            assert spectrum.relative_wasserstein(np.array([[point]]), np.ones((1, 1)), eigenvalues) >= 1 - 1e-12


def test_relative_wasserstein_of_slq_on_a_network_hessian(small_mlp, key):
    """SLQ resolves the spectrum far better than a point mass; a one-step, one-probe SLQ does not."""
    fn, ds = small_mlp
    op = curvature.operator(fn, fn.params, ds)
    eigenvalues = np.linalg.eigvalsh(np.asarray(spectrum.autodiff_hessian(fn, fn.params, ds)))
    full = spectrum.spectral_density(op, key, op.dim, 4, grid_size=16)
    one = spectrum.spectral_density(op, key, 1, 1, grid_size=16)
    assert spectrum.relative_wasserstein(full.nodes, full.weights, eigenvalues) < 0.35
    assert spectrum.relative_wasserstein(one.nodes, one.weights, eigenvalues) >= 1.0


def test_relative_wasserstein_refuses_bad_input():
    with pytest.raises(ValueError, match="nodes and weights"):
        spectrum.relative_wasserstein(np.ones((2, 3)), np.ones((2, 2)), np.arange(3.0))
    with pytest.raises(ValueError, match="non-negative"):
        spectrum.relative_wasserstein(np.ones(2), np.array([1.5, -0.5]), np.arange(3.0))
    with pytest.raises(ValueError, match="all equal"):
        spectrum.relative_wasserstein(np.ones(2), np.full(2, 0.5), np.ones(3))


def test_outliers_and_gradient_figure():
    fig = plots.spectra.outliers_and_gradient({"trained": np.arange(40.0), "untrained": np.ones(40)},
                                              [1, 2, 3], [0.5, 0.7, 0.8], 40, 3)
    left, right = fig.axes
    assert left.get_yscale() == "log" and right.get_ylabel() == "fraction of ||g||^2"
    assert [t.get_text() for t in right.get_legend().get_texts()] == ["top-i eigenvectors", "random subspace (i / p)"]
    np.testing.assert_allclose(right.lines[-1].get_ydata(), [1 / 40, 2 / 40, 3 / 40])
