"""Eigensolvers against dense float64 eigh: the digits MLP Hessian and prescribed spectra."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from workbench import curvature, data, models, spectrum


@pytest.fixture(scope="module")
def digits():
    """The 64-32-10 digits MLP (2410 params, float64) on 300 training images: the operator, its
    dense Hessian and the dense eigenvalues (ascending)."""
    train, _ = data.load_digits(dtype=jnp.float64)
    fn = models.functional(models.MLP(64, [32], 10, rngs=nnx.Rngs(0), param_dtype=jnp.float64))
    op = curvature.operator(fn, fn.params, train.take(slice(0, 300)))
    dense = np.asarray(op.dense())
    return op, dense, np.linalg.eigvalsh(dense)


def _spectrum_matrix(key, eigenvalues):
    q, _ = jnp.linalg.qr(jax.random.normal(key, (eigenvalues.size, eigenvalues.size), jnp.float64))
    return (q * eigenvalues) @ q.T


@pytest.mark.parametrize("which", ["largest", "smallest", "both"])
def test_top_eigenpairs_defaults_match_dense_eigh_on_digits_mlp(digits, key, which):
    op, dense, eigs = digits
    assert op.dim == 2410
    result = spectrum.top_eigenpairs(op, key, 5, which=which)
    expected = {"largest": eigs[::-1][:5], "smallest": eigs[:5],
                "both": np.concatenate([eigs[::-1][:3], eigs[:2][::-1]])}[which]
    assert eigs[0] < -0.1  # the smallest are genuinely negative
    np.testing.assert_allclose(result.values, expected, rtol=1e-8)
    assert bool(np.all(result.converged))
    vectors = np.asarray(result.vectors)
    true_residuals = np.linalg.norm(vectors @ dense - result.values[:, None] * vectors, axis=1)
    np.testing.assert_allclose(result.residuals, true_residuals, atol=1e-12)
    assert true_residuals.max() < 1e-8 * np.abs(eigs).max()
    np.testing.assert_allclose(vectors @ vectors.T, np.eye(5), atol=1e-10)


def test_arnoldi_top_eigenpairs_match_dense(digits, key):
    op, _, eigs = digits
    result = spectrum.top_eigenpairs(op, key, 3, method="arnoldi")
    np.testing.assert_allclose(result.values, eigs[::-1][:3], rtol=1e-8)
    assert bool(np.all(result.converged))


def test_lanczos_and_arnoldi_relations_and_jit(key):
    a = _spectrum_matrix(key, jnp.linspace(-1.0, 3.0, 60))
    op = curvature.from_matrix(a)
    lz = spectrum.lanczos(op, key, 25)
    basis = np.asarray(lz.basis)
    np.testing.assert_allclose(basis @ basis.T, np.eye(26), atol=1e-12)
    t = spectrum.tridiagonal(lz.alphas, lz.betas)
    np.testing.assert_allclose(basis[:25] @ a @ basis[:25].T, t, atol=1e-12)
    jitted = jax.jit(lambda k: spectrum.lanczos(op, k, 25))(key)
    np.testing.assert_allclose(jitted.alphas, lz.alphas, rtol=1e-12)
    plain = spectrum.lanczos(op, key, 8, reorthogonalize=False)
    assert plain.basis is None  # early steps agree before orthogonality is lost
    np.testing.assert_allclose(plain.alphas, lz.alphas[:8], rtol=1e-8)
    ar = spectrum.arnoldi_factorization(op, key, 25)
    np.testing.assert_allclose(ar.basis[:25] @ a @ ar.basis[:26].T, ar.hessenberg.T, atol=1e-12)


def test_power_iteration(key):
    eigenvalues = jnp.concatenate([jnp.linspace(-1.0, 1.0, 49), jnp.array([-4.0])])
    op = curvature.from_matrix(_spectrum_matrix(key, eigenvalues))
    result = spectrum.power_iteration(op, key)
    assert bool(result.converged)
    np.testing.assert_allclose(result.value, -4.0, rtol=1e-9)
    assert float(result.residual) < 1e-4


def test_breakdown_is_handled_not_nan(key):
    """Three distinct eigenvalues: the Krylov space is exhausted after 3 steps."""
    eigenvalues = jnp.repeat(jnp.array([1.0, 2.0, 3.0]), 10)
    op = curvature.from_matrix(_spectrum_matrix(key, eigenvalues))
    lz = spectrum.lanczos(op, key, 12)
    assert np.all(np.isfinite(lz.alphas)) and np.all(np.isfinite(lz.basis))
    assert float(lz.betas[2]) == 0.0
    np.testing.assert_allclose(lz.basis @ lz.basis.T, np.eye(13), atol=1e-12)
    # Arnoldi keeps no spurious (near-zero) Ritz values: every Ritz value is a true eigenvalue.
    ar = spectrum.arnoldi_factorization(op, key, 12)
    ritz = np.linalg.eigvals(np.asarray(ar.hessenberg[:12])).real
    assert np.min(np.abs(ritz[:, None] - np.array([1.0, 2.0, 3.0])), axis=1).max() < 1e-10
    for method in ("lanczos", "arnoldi"):
        low = spectrum.top_eigenpairs(op, key, 2, which="smallest", method=method, num_iters=12)
        np.testing.assert_allclose(low.values, [1.0, 1.0], rtol=1e-10)
    # the largest: the first pass freezes at the breakdown and hands over to fresh vectors
    np.testing.assert_allclose(spectrum.top_eigenpairs(op, key, 2, num_iters=12).values, [3.0, 3.0], rtol=1e-10)
    for reorth in (True, False):
        d = spectrum.spectral_density(op, key, num_iters=12, num_probes=4, reorthogonalize=reorth)
        assert np.all(np.isfinite(d.nodes)) and np.all(np.isfinite(d.density))
        for value in (1.0, 2.0, 3.0):  # each eigenvalue holds about a third of the probe mass
            near = np.abs(np.asarray(d.nodes) - value) < 1e-8
            assert 0.1 < float(np.sum(np.where(near, d.weights, 0.0))) / 4 < 0.6
        np.testing.assert_allclose(np.sum(d.weights), 4.0, rtol=1e-12)  # all mass on 1, 2, 3
        far = np.min(np.abs(np.asarray(d.nodes)[..., None] - np.array([1.0, 2.0, 3.0])), -1) > 1e-6
        assert float(np.sum(np.where(far, d.weights, 0.0))) < 1e-12


def test_full_space_and_tiny_dimensions(key):
    op = curvature.from_matrix(jnp.diag(jnp.array([3.0, -1.0, 2.0])))
    result = spectrum.top_eigenpairs(op, key, 3)
    np.testing.assert_allclose(result.values, [3.0, 2.0, -1.0], atol=1e-12)


def test_bad_input(key):
    op = curvature.from_matrix(jnp.eye(4))
    with pytest.raises(ValueError, match="k=5 exceeds the operator dimension 4"):
        spectrum.top_eigenpairs(op, key, 5)
    with pytest.raises(ValueError, match="num_iters=9 exceeds the operator dimension 4"):
        spectrum.lanczos(op, key, 9)
    with pytest.raises(ValueError, match="which must be one of"):
        spectrum.top_eigenpairs(op, key, 1, which="middle")
    with pytest.raises(ValueError, match="method must be one of"):
        spectrum.top_eigenpairs(op, key, 1, method="qr")
    with pytest.raises(TypeError, match="op must be a LinearOperator"):
        spectrum.top_eigenpairs(jnp.eye(4), key, 1)
    nan_op = curvature.from_matrix(jnp.full((4, 4), jnp.nan))
    for call in (lambda: spectrum.top_eigenpairs(nan_op, key, 2),
                 lambda: spectrum.lanczos(nan_op, key, 3),
                 lambda: spectrum.arnoldi_factorization(nan_op, key, 3),
                 lambda: spectrum.power_iteration(nan_op, key),
                 lambda: spectrum.spectral_density(nan_op, key, num_iters=3, num_probes=2),
                 lambda: spectrum.trace(nan_op, key, 8)):
        with pytest.raises(FloatingPointError, match="NaN or inf"):
            call()


def test_compile_size_does_not_grow_with_iterations(key):
    op = curvature.from_matrix(jnp.eye(300))
    def program(num_iters):
        return str(jax.make_jaxpr(lambda k: spectrum.lanczos(op, k, num_iters).alphas)(key))

    texts = [re.sub(r"\d+", "", program(n)) for n in (10, 200)]
    assert texts[0] == texts[1]  # identical programs up to the numbers in shapes and bounds


def test_thick_restart_memory_is_one_krylov_basis():
    """XLA's own buffer plan (no run): the restart used to copy the whole basis (2.7 bases of
    temporaries); it now combines rows in place, leaving one basis plus small blocks, in the
    first-pass program, in the restart program from scratch, and in the restart program
    continuing from the first pass's basis (donated: no second copy)."""
    from workbench.spectrum.eigensolver import _thick_restart_lanczos

    dim, depth, count = 100_000, 40, 8
    diagonal = jnp.linspace(1.0, 2.0, dim)
    op = curvature.LinearOperator(lambda d, v: d * v, diagonal, jax.ShapeDtypeStruct((dim,), diagonal.dtype))
    args = (op, jax.random.key(0), 5, "largest", depth)
    # the public entry: the first pass and the restart continuing from its basis and state
    first, continuing = spectrum.lowered_programs(op, jax.random.key(0), 5, depth, tol=1e-8)
    plans = {"first pass": first,
             "restart from scratch": _thick_restart_lanczos.lower(*args, 200, 1e-8, count),
             "restart continuing": continuing}
    basis_bytes, vectors_bytes = (depth + 1) * dim * 8, count * dim * 8
    for name, plan in plans.items():
        m = plan.compile().memory_analysis()
        held = m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes - (0 if name == "first pass" else vectors_bytes)
        assert held < 1.35 * basis_bytes, (name, held / basis_bytes)
    assert m.alias_size_in_bytes >= basis_bytes  # the donated basis is rewritten in place


@pytest.mark.parametrize("which", ["largest", "smallest", "both"])
def test_invariant_start_space_restarts_without_a_spurious_eigenvalue(keys, which):
    """2 I makes every Krylov space invariant at its first step: the restart vector must come
    from a stream of the key independent of the start vector's (key(0) once restarted with the
    start vector itself and reported an eigenvalue 0 as converged)."""
    op = curvature.from_matrix(2 * jnp.eye(7))
    for key in keys:
        result = spectrum.top_eigenpairs(op, key, 3, which=which)
        np.testing.assert_allclose(result.values, 2.0, rtol=1e-12)
        assert bool(np.all(result.converged))


def test_restart_vectors_are_never_the_start_vector(keys):
    """The breakdown restart hashes (key words, a stream tag, the step); the start vector the
    key words alone: no key makes them parallel."""
    from workbench.spectrum.krylov import _restart_vector, _start

    op = curvature.from_matrix(jnp.eye(64))
    for key in keys:
        basis, _, _, seed = _start(op, key, 4)
        for step in range(3):
            restart = _restart_vector(seed, step, 64, jnp.float64)
            cosine = abs(float(restart @ basis[0])) / float(jnp.linalg.norm(restart))
            assert cosine < 0.5, (jax.random.key_data(key), step, cosine)


def test_sharpness_of_a_multiple_of_the_identity_is_that_multiple(keys):
    def loss(p, batch):
        return 0.005 * jnp.sum(p["w"] ** 2) + 0.0 * jnp.sum(batch)

    for key in keys:
        values = spectrum.sharpness(loss, {"w": jnp.ones(14)}, jnp.ones((3, 2)), key, k=3)
        np.testing.assert_allclose(values, 0.01, rtol=1e-10)


def test_an_explicit_start_vector_is_used_and_checked(key):
    matrix = np.diag(np.arange(1.0, 9.0))
    op = curvature.from_matrix(jnp.asarray(matrix))
    e8 = np.eye(8)[7]  # an eigenvector: the space is invariant at once, restarts fill the rest
    result = spectrum.top_eigenpairs(op, key, 3, start_vector=e8)
    np.testing.assert_allclose(result.values, [8.0, 7.0, 6.0], rtol=1e-10)
    lanczos = spectrum.lanczos(op, key, 4, start_vector=np.ones(8))
    np.testing.assert_allclose(lanczos.basis[0], np.ones(8) / np.sqrt(8), rtol=1e-12)
    plain = spectrum.lanczos(op, key, 4, reorthogonalize=False, start_vector=np.ones(8))
    np.testing.assert_allclose(plain.alphas, lanczos.alphas, rtol=1e-10)
    for bad, message in ((np.ones(7), r"shape \(8,\)"), (np.zeros(8), "nonzero"), (np.full(8, np.nan), "finite")):
        with pytest.raises(ValueError, match=message):
            spectrum.top_eigenpairs(op, key, 2, start_vector=bad)
