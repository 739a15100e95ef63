"""How well a sketch keeps geometry: dot-product correlation vs D (the paper's Table 6), top
eigenvalues of Phi H Phi^T (Table 7), norm ratios over many draws (Theorems 3.1 and 3.3) and the
adversarial inputs those theorems use."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from workbench.sketch.base import for_params, make
from workbench.sketch.kinds.hadamard import _hadamard_np

PER_LEAF = "kronecker_per_leaf"  # our Kronecker sketch with one pair per params leaf (`for_params`)
KEY_BATCH = 32  # draws vmapped at once: XLA CPU stalls on a vmapped QR + matmul batch of ~100 or more (QK)


class CorrelationTable(NamedTuple):
    kinds: tuple[str, ...]
    log2_dims: np.ndarray  # [num_dims]
    pearson: np.ndarray  # [num_kinds, num_dims, num_draws] (nan where the kind cannot map to that D)
    distortion: np.ndarray  # [num_kinds, num_dims, num_draws] median | ||Phi g||^2/||g||^2 - 1 |

    @property
    def mean(self) -> np.ndarray:
        return np.nanmean(self.pearson, axis=-1) if np.isfinite(self.pearson).any() else np.full(self.pearson.shape[:2], np.nan)

    @property
    def std(self) -> np.ndarray:
        return np.nanstd(self.pearson, axis=-1)

    def smallest_log2_dim(self, threshold: float) -> dict[str, int | None]:
        """Per kind, the smallest log2 D whose mean correlation exceeds `threshold` (None if none)."""
        out = {}
        for kind, row in zip(self.kinds, self.mean):
            hit = np.flatnonzero(np.nan_to_num(row, nan=-1.0) > threshold)
            out[kind] = int(self.log2_dims[hit[0]]) if hit.size else None
        return out


def _make(kind, key, n, d, params, options):
    if kind == PER_LEAF:
        if params is None:
            raise TypeError(f"kind {PER_LEAF!r} needs the params tree the gradients ravel")
        return for_params("kronecker", key, params, d, **options.get(kind, {}))
    return make(kind, key, n, d, **options.get(kind, {}))


def dot_product_correlation(
    grads: jax.Array, kinds: Sequence[str], log2_dims: Sequence[int], key: jax.Array, *,
    num_draws: int = 5, params=None, options: dict | None = None,
) -> CorrelationTable:
    """Pearson r between exact and sketched dot products <g_i, g_j> (i < j), per kind, D and
    independent sketch draw. `grads` is [m, n]; `options` maps a kind to its `make` options. The
    kind `"kronecker_per_leaf"` is our per-leaf Kronecker sketch of the `params` tree."""
    grads = jnp.asarray(grads)
    if grads.ndim != 2:
        raise ValueError(f"grads must be [num_vectors, dim], got shape {grads.shape}")
    if num_draws < 1:
        raise ValueError(f"num_draws must be >= 1, got {num_draws}")
    options = options or {}
    m, n = grads.shape
    iu = np.triu_indices(m, k=1)
    exact = np.asarray(grads @ grads.T)[iu]
    norms = np.asarray(jnp.sum(grads**2, axis=1))
    log2_dims = np.asarray(list(log2_dims))
    r = np.full((len(kinds), len(log2_dims), num_draws), np.nan)
    dist = np.full_like(r, np.nan)
    for i, kind in enumerate(kinds):
        for j, log_d in enumerate(log2_dims):
            if (1 << int(log_d)) > n:  # a sketch does not map up: no entry (NaN), by design
                continue
            for t in range(num_draws):
                k = jax.random.fold_in(jax.random.fold_in(key, int(log_d)), t)
                s = _make(kind, k, n, 1 << int(log_d), params, options)  # bad options raise here
                y = np.asarray(s.apply(grads), np.float64)
                r[i, j, t] = np.corrcoef(exact, (y @ y.T)[iu])[0, 1]
                dist[i, j, t] = np.median(np.abs((y**2).sum(1) / norms - 1))
    return CorrelationTable(tuple(kinds), log2_dims, r, dist)


class EigenTable(NamedTuple):
    kinds: tuple[str, ...]
    log2_dims: np.ndarray
    exact: np.ndarray  # [k] top eigenvalues of H
    rel_error: np.ndarray  # [num_kinds, num_dims, num_draws] mean_i |lambda_i(Phi H Phi^T) / lambda_i - 1|

    def smallest_log2_dim(self, threshold: float) -> dict[str, int | None]:
        mean = np.nanmean(self.rel_error, axis=-1)
        out = {}
        for kind, row in zip(self.kinds, mean):
            hit = np.flatnonzero(np.nan_to_num(row, nan=np.inf) < threshold)
            out[kind] = int(self.log2_dims[hit[0]]) if hit.size else None
        return out


def top_eigenvalues(matrix: np.ndarray, k: int) -> np.ndarray:
    """The k largest eigenvalues of a symmetric matrix, largest first (float64)."""
    import scipy.linalg
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    a = np.asarray(matrix, np.float64)
    n = a.shape[0]
    k = min(k, n)
    # One BLAS thread for this call only: right after JAX work, XLA's CPU threads and a
    # multi-threaded OpenBLAS eigensolver fight over the cores and a 1024 x 1024 solve took 2-7 s
    # here instead of 0.1 s (measured on the 2-core box; the result is the same).
    with threadpool_limits(limits=1, user_api="blas"):
        return scipy.linalg.eigh((a + a.T) / 2, eigvals_only=True, subset_by_index=(n - k, n - 1))[::-1]


def sketched_matrix(sketch, matrix: jax.Array) -> jax.Array:
    """Phi H Phi^T for a dense symmetric H [n, n] (two batched applies, no transpose needed)."""
    h_phi_t = sketch.apply(matrix)  # row i: Phi H[i] = (H Phi^T)[i]
    n, d = h_phi_t.shape
    if d >= n:
        return sketch.apply(h_phi_t.T)
    # zero-pad the D rows of (H Phi^T)^T to the n rows of the first call so both calls share one
    # compiled program (rows are sketched independently; the padding rows are dropped)
    rows = np.zeros((n, n), np.asarray(h_phi_t).dtype)
    rows[:d] = np.asarray(h_phi_t).T
    return jnp.asarray(np.asarray(sketch.apply(rows))[:d])


def eigenvalue_errors(
    hessian: jax.Array, kinds: Sequence[str], log2_dims: Sequence[int], key: jax.Array, *,
    k: int = 10, num_draws: int = 3, params=None, options: dict | None = None,
) -> EigenTable:
    """Relative error of the top-k eigenvalues of Phi H Phi^T against those of a dense H (Table 7)."""
    hessian = jnp.asarray(hessian)
    n = hessian.shape[0]
    if hessian.shape != (n, n):
        raise ValueError(f"hessian must be a square matrix, got shape {hessian.shape}")
    options = options or {}
    exact = top_eigenvalues(np.asarray(hessian), k)
    log2_dims = np.asarray(list(log2_dims))
    err = np.full((len(kinds), len(log2_dims), num_draws), np.nan)
    for i, kind in enumerate(kinds):
        for j, log_d in enumerate(log2_dims):
            if (1 << int(log_d)) < k:
                continue
            if (1 << int(log_d)) > n:
                continue
            for t in range(num_draws):
                kk = jax.random.fold_in(jax.random.fold_in(key, int(log_d)), t)
                s = _make(kind, kk, n, 1 << int(log_d), params, options)
                approx = top_eigenvalues(np.asarray(sketched_matrix(s, hessian)), k)
                err[i, j, t] = float(np.mean(np.abs(approx / exact - 1)))
    return EigenTable(tuple(kinds), log2_dims, exact, err)


def hadamard_row_input(dim: int, block: int, which: int = 0, row: int = 1) -> np.ndarray:
    """Theorem 3.1's adversarial input: supported on block `which` of width `block` (a power of
    two, FFD's D) and equal there to row `row` of the orthonormal H_block, so H x_b = e_row."""
    if block & (block - 1) or block < 1:
        raise ValueError(f"block must be a power of two, got {block}")
    if (which + 1) * block > dim:
        raise ValueError(f"block {which} of width {block} does not fit in dim={dim}")
    x = np.zeros(dim, np.float64)
    x[which * block: (which + 1) * block] = _hadamard_np(block)[row] / np.sqrt(block)
    return x


def one_block_input(dim: int, block: int, which: int = 1, seed: int = 0) -> np.ndarray:
    """A Gaussian vector supported on the `which`-th block of width `block` (zeros elsewhere)."""
    if (which + 1) * block > dim:
        raise ValueError(f"block {which} of width {block} does not fit in dim={dim}")
    x = np.zeros(dim, np.float32)
    x[which * block: (which + 1) * block] = np.random.default_rng(seed).normal(size=block)
    return x


def norm_ratios(kind: str, x: jax.Array, dim_out: int, key: jax.Array, num_keys: int = 200, **options) -> np.ndarray:
    """||Phi x||^2 / ||x||^2 for `num_keys` independent sketches of one kind ([keys] or [keys, batch])."""
    x = jnp.asarray(x)
    n = x.shape[-1]

    def one(k):
        return jnp.sum(make(kind, k, n, dim_out, **options).apply(x) ** 2, axis=-1) / jnp.sum(x**2, axis=-1)

    run = jax.jit(lambda keys: jax.lax.map(one, keys, batch_size=even_batch(num_keys, KEY_BATCH)))
    return np.asarray(run(jax.random.split(key, num_keys)))


def even_batch(total: int, cap: int) -> int:
    """The largest divisor of `total` that is at most `cap` (if it is at least cap / 2), else cap.

    `lax.map(..., batch_size=b)` compiles its body twice when b does not divide the length (the
    batches and the remainder): 2000 draws in batches of 32 cost twice the compile of batches of 25."""
    best = max(b for b in range(1, min(cap, total) + 1) if total % b == 0)
    return best if 2 * best >= min(cap, total) else cap
