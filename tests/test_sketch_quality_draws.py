"""`sketch.quality` computes every draw of a (kind, D) in one compiled program; each entry must be
what one sketch, made and applied on its own, gives (the loop it replaced), in float64 and float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench import sketch as sk
from workbench.sketch import quality


def _draw(key, log_d, t):
    return jax.random.fold_in(jax.random.fold_in(key, log_d), t)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_correlations_and_distortions_match_one_sketch_at_a_time(key, dtype):
    grads = jax.random.normal(jax.random.key(7), (7, 3), dtype) @ jax.random.normal(jax.random.key(8), (3, 100), dtype)
    kinds, log2_dims = ["affd", "qk", "fjl"], [3, 5]
    table = quality.dot_product_correlation(grads, kinds, key, log2_dims, num_draws=3)
    g = np.asarray(grads, np.float64)
    iu = np.triu_indices(7, 1)
    for i, kind in enumerate(kinds):
        for j, log_d in enumerate(log2_dims):
            for t in range(3):
                y = np.asarray(sk.make(kind, _draw(key, log_d, t), 100, 1 << log_d).apply(grads), np.float64)
                r = np.corrcoef((g @ g.T)[iu], (y @ y.T)[iu])[0, 1]
                dist = np.median(np.abs((y**2).sum(1) / (g**2).sum(1) - 1))
                tol = 1e-7 if dtype == jnp.float64 else 1e-4
                np.testing.assert_allclose(table.pearson[i, j, t], r, rtol=tol, atol=tol)
                np.testing.assert_allclose(table.distortion[i, j, t], dist, rtol=tol, atol=tol)
    assert len({float(v) for v in table.pearson[0, 1]}) == 3  # the draws differ


def test_sketched_hessian_eigenvalues_match_a_dense_phi(key):
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(40, 40)))
    h = (q * np.geomspace(20.0, 0.01, 40)) @ q.T
    t = quality.eigenvalue_errors(jnp.asarray(h), ["affd", "kronecker"], key, [2, 4, 5], k=6, num_draws=2)
    assert np.isnan(t.rel_error[:, 0]).all()  # D = 4 < k = 6: no entry
    for i, kind in enumerate(["affd", "kronecker"]):
        for j, log_d in enumerate([4, 5]):
            for d in range(2):
                phi = np.asarray(sk.make(kind, _draw(key, log_d, d), 40, 1 << log_d).apply(jnp.eye(40))).T  # [D, n]
                approx = np.linalg.eigvalsh(phi @ h @ phi.T)[::-1][:6]
                expected = np.mean(np.abs(approx / np.linalg.eigvalsh(h)[::-1][:6] - 1))
                np.testing.assert_allclose(t.rel_error[i, j + 1, d], expected, rtol=1e-8)


def test_per_leaf_kronecker_uses_the_params_leaves(key):
    params = {"a": jnp.zeros((4, 5)), "b": jnp.zeros(12)}
    grads = jax.random.normal(key, (6, 32))
    table = quality.dot_product_correlation(grads, [quality.PER_LEAF], key, [3], num_draws=2, params=params)
    y = np.asarray(sk.for_params("kronecker", _draw(key, 3, 1), params, 8).apply(grads), np.float64)
    g = np.asarray(grads, np.float64)
    iu = np.triu_indices(6, 1)
    np.testing.assert_allclose(table.pearson[0, 0, 1], np.corrcoef((g @ g.T)[iu], (y @ y.T)[iu])[0, 1], rtol=1e-4)
    with pytest.raises(TypeError, match="needs the params"):
        quality.dot_product_correlation(grads, [quality.PER_LEAF], key, [3])
