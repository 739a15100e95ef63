"""Krylov methods and SLQ where the mutation run (benchmarks/mutations.py) found no test that
checks them: full reorthogonalisation on a spectrum with outliers (one Gram-Schmidt pass loses
orthogonality as soon as the outlying Ritz values converge) and the documented width of the
SLQ kernel, sigma2 * max(1, spectral range)."""

import jax
import jax.numpy as jnp
import numpy as np

from workbench import curvature, spectrum

# 90 eigenvalues in [0, 1] and five outliers up to 1e4: the outliers converge within a few
# Lanczos steps, after which classical Gram-Schmidt needs its second pass
OUTLIERS = np.concatenate([np.linspace(0.0, 1.0, 90), [100.0, 200.0, 300.0, 1e3, 1e4]])


def _operator(eigenvalues, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(eigenvalues),) * 2))
    return curvature.from_matrix(jnp.asarray((q * eigenvalues) @ q.T))


def test_krylov_basis_stays_orthonormal_past_converged_outliers():
    for seed in (0, 1):
        op = _operator(OUTLIERS, seed)
        lz = spectrum.lanczos(op, jax.random.key(seed), 30)
        basis = np.asarray(lz.basis)
        np.testing.assert_allclose(basis @ basis.T, np.eye(31), atol=1e-12)
        # and the outliers are found: the top Ritz values of the tridiagonal
        alphas, betas = np.asarray(lz.alphas), np.asarray(lz.betas)[:-1]
        ritz = np.linalg.eigvalsh(np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1))
        np.testing.assert_allclose(ritz[-5:], OUTLIERS[-5:], rtol=1e-10)


def test_slq_kernel_variance_is_sigma2_times_the_spectral_range():
    """With as many Lanczos steps as dimensions the nodes are the eigenvalues; the density is
    then the probes' mean of sum_i w_i N(grid; node_i, sigma2 * range), normalised on the grid."""
    eigenvalues, sigma2 = np.linspace(0.0, 40.0, 12), 1e-3
    for seed in (0, 1):
        d = spectrum.spectral_density(_operator(eigenvalues, seed), jax.random.key(seed), num_iters=12,
                                      num_probes=3, sigma2=sigma2, grid_size=400)
        nodes, weights, grid = (np.asarray(a, np.float64) for a in (d.nodes, d.weights, d.grid))
        held = weights > 0
        spread = nodes[held].max() - nodes[held].min()
        assert spread > 30.0  # the range, not 1, sets the width here
        var = sigma2 * max(1.0, spread)
        gauss = np.exp(-((grid[None, None] - nodes[..., None]) ** 2) / (2 * var)) / np.sqrt(2 * np.pi * var)
        expected = np.einsum("pi,pig->g", weights, gauss) / len(nodes)
        expected /= (grid[1] - grid[0]) * (expected.sum() - 0.5 * (expected[0] + expected[-1]))
        np.testing.assert_allclose(d.density, expected, rtol=1e-9, atol=1e-12)
