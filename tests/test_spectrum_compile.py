"""Compile once, batch probes: the first-call behaviour of spectrum and influence (issue 13).

No timing here: compiles are counted with jax's cache sizes, and batched runs are compared with
chunked runs number for number.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from workbench import curvature, data, influence, models, spectrum
from workbench import sketch as sk
from workbench.core import per_example as pergrad
from workbench.influence import estimator as core
from workbench.spectrum import density, eigensolver, krylov


@pytest.fixture(scope="module")
def small():
    """A 64-8-10 digits MLP (610 params, float64) on 200 images, and its dense eigenvalues."""
    train, test = data.load_digits(dtype=jnp.float64)
    fn = models.functional(models.MLP(64, [8], 10, rngs=nnx.Rngs(0), param_dtype=jnp.float64), l2=0.01)
    op = curvature.operator(fn, fn.params, train.take(slice(0, 200)))
    return fn, train.take(slice(0, 200)), test.take(slice(0, 30)), op, np.linalg.eigvalsh(np.asarray(op.dense()))


def _programs():
    return eigensolver._first_pass._cache_size(), eigensolver._thick_restart_lanczos._cache_size()


def test_top_eigenpairs_compiles_once_for_k_tol_and_restarts(small, key):
    *_, op, eigs = small
    before = _programs()
    first = spectrum.top_eigenpairs(op, key, 1)
    after_first = _programs()
    # one Lanczos pass converges here: the restart program is never compiled
    assert after_first == (before[0] + 1, before[1])
    five = spectrum.top_eigenpairs(op, key, 5)  # same Krylov depth (40): no new program
    spectrum.top_eigenpairs(op, key, 3, tol=1e-6, max_restarts=7, true_residuals=True)
    assert _programs() == after_first
    assert first.values.shape == (1,) and five.vectors.shape == (5, op.dim)
    np.testing.assert_allclose(five.values, eigs[::-1][:5], rtol=1e-8)
    np.testing.assert_allclose(first.values, eigs[-1:], rtol=1e-8)
    assert bool(np.all(five.converged)) and int(five.num_matvecs) == 40
    # residuals (read off the Arnoldi relation) are the true ||A x - lambda x|| of each pair
    dense = np.asarray(op.dense())
    x = np.asarray(five.vectors)
    true = np.linalg.norm(x @ dense - np.asarray(five.values)[:, None] * x, axis=1)
    np.testing.assert_allclose(five.residuals, true, atol=1e-10)


def test_restarts_compile_one_program_and_continue_the_first_pass(small, key):
    """At depth 12 one pass does not converge: the restart program (compiled once, for k = 2
    and k = 4 alike) continues from the first pass's basis and reaches the dense pairs."""
    *_, op, eigs = small
    before = _programs()
    results = [spectrum.top_eigenpairs(op, key, k, num_iters=12, true_residuals=True) for k in (2, 4)]
    assert _programs() == (before[0] + 1, before[1] + 1)
    dense = np.asarray(op.dense())
    for k, result in zip((2, 4), results):
        np.testing.assert_allclose(result.values, eigs[::-1][:k], rtol=1e-8)
        assert bool(np.all(result.converged)) and int(result.num_matvecs) > 12 + k
        x = np.asarray(result.vectors)
        true = np.linalg.norm(x @ dense - np.asarray(result.values)[:, None] * x, axis=1)
        np.testing.assert_allclose(result.residuals, true, rtol=1e-6, atol=1e-12)
    # the same answer as the single restart program under an outer jit (no first-pass split)
    traced = jax.jit(lambda o, kk: spectrum.top_eigenpairs(o, kk, 4, num_iters=12).values)(op, key)
    np.testing.assert_allclose(traced, results[1].values, rtol=1e-9)


def test_residuals_show_an_operator_that_is_not_symmetric(key):
    """The relation residual reads the whole projected column: for a non-symmetric matrix it is
    the true ||A x - theta x|| (the last row alone would call these pairs converged)."""
    rng = np.random.default_rng(0)
    sym = rng.normal(size=(30, 30))
    matrix = jnp.asarray(sym + sym.T + 0.3 * rng.normal(size=(30, 30)))
    op = curvature.LinearOperator(lambda a, v: a @ v, matrix, jax.ShapeDtypeStruct((30,), matrix.dtype))
    with pytest.raises(RuntimeError, match="did not converge.*unconverged=.return."):
        spectrum.top_eigenpairs(op, key, 3, num_iters=30, max_restarts=0)  # the default refuses them
    result = spectrum.top_eigenpairs(op, key, 3, num_iters=30, max_restarts=0, unconverged="return")
    x = np.asarray(result.vectors)
    true = np.linalg.norm(x @ np.asarray(matrix).T - np.asarray(result.values)[:, None] * x, axis=1)
    np.testing.assert_allclose(result.residuals, true, rtol=1e-8)
    assert true.min() > 1e-2 and not bool(np.any(result.converged))


@pytest.mark.parametrize("which", ["smallest", "both"])
def test_traced_k_keeps_the_wanted_order(small, key, which):
    *_, op, eigs = small
    for k in (2, 5):
        got = spectrum.top_eigenpairs(op, key, k, which=which, num_iters=30).values
        top = (k + 1) // 2
        want = eigs[:k] if which == "smallest" else np.concatenate([eigs[::-1][:top], eigs[: k - top][::-1]])
        np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)


def test_top_eigenpairs_under_jit_slices_inside_the_trace(small, key):
    *_, op, eigs = small
    values = jax.jit(lambda o, kk: spectrum.top_eigenpairs(o, kk, 2).values)(op, key)
    np.testing.assert_allclose(values, eigs[::-1][:2], rtol=1e-8)


@pytest.mark.parametrize("method", ["hutchinson", "hutch++", "xtrace"])
def test_batched_probes_equal_chunked_and_looped_probes(small, key, method):
    *_, op, eigs = small
    batched = spectrum.trace(op, key, 24, method, max_batch=24)  # all 24 probes in one vmap
    looped = spectrum.trace(op, key, 24, method, batch_bytes=1)  # one probe at a time
    chunked = spectrum.trace(op, key, 24, method, batch_bytes=5 * 2 * op.dim * 8)  # 5 -> 4 at a time
    default = spectrum.trace(op, key, 24, method)  # at most 8 at a time
    for other in (looped, chunked, default):
        np.testing.assert_allclose(other.estimate, batched.estimate, rtol=1e-12)
        np.testing.assert_allclose(other.std_error, batched.std_error, rtol=1e-9)
    assert abs(float(batched.estimate) - eigs.sum()) < 5 * float(batched.std_error) + 1e-8


def test_batched_slq_equals_looped_slq(small, key):
    *_, op, _ = small
    batched = spectrum.spectral_density(op, key, 20, 4, grid_size=100)
    looped = spectrum.spectral_density(op, key, 20, 4, grid_size=100, batch_bytes=1)
    np.testing.assert_allclose(looped.nodes, batched.nodes, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(looped.weights, batched.weights, rtol=1e-8, atol=1e-12)
    assert density._probe_batch(op, 4, 22, density.BATCH_BYTES) == 4  # the default runs them together


def test_batch_bytes_is_validated(small, key):
    *_, op, _ = small
    for bad in (0, -1.0, "1GB", None):
        with pytest.raises(ValueError, match="batch_bytes must be a positive number of bytes"):
            spectrum.trace(op, key, 10, batch_bytes=bad)
    for bad in (0, 2.0, None):
        with pytest.raises(ValueError, match="max_batch must be an int >= 1"):
            spectrum.trace(op, key, 10, max_batch=bad)
    with pytest.raises(ValueError, match="batch_bytes"):
        spectrum.spectral_density(op, key, 10, 2, batch_bytes=0)


def test_start_vectors_are_hashed_from_the_key(small):
    *_, op, _ = small
    a = krylov._hash_words(jax.random.key_data(jax.random.key(1)), 1000, jnp.float64)
    b = krylov._hash_words(jax.random.key_data(jax.random.key(2)), 1000, jnp.float64)
    assert float(jnp.abs(jnp.corrcoef(a, b)[0, 1])) < 0.1  # different keys: unrelated vectors
    assert -0.5 <= float(a.min()) and float(a.max()) < 0.5 and abs(float(a.mean())) < 0.05
    np.testing.assert_array_equal(a, krylov._hash_words(jax.random.key_data(jax.random.key(1)), 1000, jnp.float64))


def test_influence_features_share_one_program_across_set_sizes(small):
    fn, train, test, *_ = small
    est = influence.make("grad_dot", fn.loss_fn, fn.params, train, chunk_size=64)
    before = core._featurize_chunk._cache_size()
    full = est.scores(test)
    est.scores(test.take(slice(0, 7)))  # another test size: the same chunk program
    assert core._featurize_chunk._cache_size() <= before + 1
    grads = np.asarray(pergrad.flat_per_example_grads(fn.loss_fn, fn.params, train))
    tgrads = np.asarray(pergrad.flat_per_example_grads(fn.loss_fn, fn.params, test))
    np.testing.assert_allclose(full, tgrads @ grads.T, rtol=1e-10, atol=1e-12)
    # exact and cg read the same gradients through other states: still the same program
    for kind in ("exact", "cg"):
        influence.make(kind, fn.loss_fn, fn.params, train, chunk_size=64, damping=1.0).scores(test.take(slice(0, 3)))
    assert core._featurize_chunk._cache_size() <= before + 1


def test_trak_in_memory_features_equal_the_sketched_gradients(small, key):
    fn, train, test, *_ = small
    est = influence.make("trak", fn.loss_fn, fn.params, train, dim=32, key=key)
    s = sk.make("countsketch", jax.random.fold_in(key, 0), 610, 32)
    reference = np.asarray(pergrad.sketched_gradients(fn.loss_fn, s, fn.params, train, 256))
    np.testing.assert_allclose(est.train_features(), reference, rtol=1e-10, atol=1e-12)
