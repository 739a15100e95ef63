"""How well a sketch keeps geometry: dot-product correlation vs D (the paper's Table 6), top
eigenvalues of Phi H Phi^T (Table 7), norm ratios over many draws (Theorems 3.1 and 3.3) and the
adversarial inputs those theorems use."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from workbench.core.numerics import check_positive_int
from workbench.sketch.base import make
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


def _resolve(kind, params, options):
    """(kind, options) as `make` takes them: `PER_LEAF` becomes `kronecker` with the params' leaf
    shapes; options become a hashable tuple, the static part of the compiled draws."""
    opts = dict((options or {}).get(kind, {}))
    if kind == PER_LEAF:
        if params is None:
            raise TypeError(f"kind {PER_LEAF!r} needs the params tree the gradients ravel")
        opts.setdefault("leaf_shapes", tuple(tuple(jnp.shape(leaf)) for leaf in jax.tree.leaves(params)))
        kind = "kronecker"
    return kind, _static(opts)


def _static(options):
    """Options as a hashable tuple (lists become tuples), the static part of a compiled program."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in options.items()))


def _draw_keys(key, log_d, num_draws):
    """Draw t at D = 2^log_d uses fold_in(fold_in(key, log_d), t), whatever the kind."""
    base = jax.random.fold_in(key, int(log_d))
    return jax.vmap(lambda t: jax.random.fold_in(base, t))(jnp.arange(num_draws))


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _sketched_grams(kind, n, d, opts, batch, keys, rows):
    """[draws, m, m] Gram matrices of the sketched rows, every draw in one compiled program."""
    def one(k):
        y = make(kind, k, n, d, **dict(opts)).apply(rows)
        return y @ y.T

    return jax.lax.map(one, keys, batch_size=batch)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _sketched_matrices(kind, n, d, opts, batch, keys, matrix):
    """[draws, D, D] matrices Phi H Phi^T, every draw in one compiled program."""
    def one(k):
        s = make(kind, k, n, d, **dict(opts))
        return s.apply(s.apply(matrix).T)  # row i of the first: Phi H[i] = (H Phi^T)[i]

    return jax.lax.map(one, keys, batch_size=batch)


def dot_product_correlation(
    grads: jax.Array, kinds: Sequence[str], key: jax.Array, log2_dims: Sequence[int], *,
    num_draws: int = 5, params=None, options: dict | None = None,
) -> CorrelationTable:
    """Pearson r between exact and sketched dot products <g_i, g_j> (i < j), per kind, D and draw.

    The paper's Table 6: a sketch that keeps geometry keeps every pairwise dot product of the
    per-example gradients, so r -> 1 as D grows; the smallest D with r above 0.95 / 0.98 / 0.99
    ranks the kinds. A D larger than n gets no entry (NaN): a sketch does not map up.

    Args:
        grads: [m, n] vectors (e.g. per-example gradients), one per row.
        kinds: sketch kinds (`workbench.sketch.KINDS`, or `"kronecker_per_leaf"`: our per-leaf
            Kronecker sketch of the `params` tree).
        key: PRNG key; draw t at D = 2^log2_d uses fold_in(fold_in(key, log2_d), t) for every kind.
        log2_dims: log2 of the sketch dimensions D to try.
        num_draws: independent sketches per (kind, D), for the error bars.
        params: the params tree the gradients ravel (needed only by `"kronecker_per_leaf"`).
        options: kind -> its `make` options (None: every kind's defaults).

    Returns:
        A `CorrelationTable` with `pearson` and `distortion` of shape [kinds, dims, draws].

    Raises:
        ValueError: `grads` is not 2-D, `num_draws` is not a positive int, or a kind or option
            is unknown (never swallowed into NaN).
    """
    grads = jnp.asarray(grads)
    if grads.ndim != 2:
        raise ValueError(f"grads must be [num_vectors, dim], got shape {grads.shape}")
    num_draws = check_positive_int("num_draws", num_draws)
    options = options or {}
    m, n = grads.shape
    iu = np.triu_indices(m, k=1)
    exact = np.asarray(grads @ grads.T)[iu]
    norms = np.asarray(jnp.sum(grads**2, axis=1))
    log2_dims = np.asarray(list(log2_dims))
    r = np.full((len(kinds), len(log2_dims), num_draws), np.nan)
    dist = np.full_like(r, np.nan)
    for i, kind in enumerate(kinds):
        name, opts = _resolve(kind, params, options)
        for j, log_d in enumerate(log2_dims):
            if (1 << int(log_d)) > n:  # a sketch does not map up: no entry (NaN), by design
                continue
            # every draw of (kind, D) in one compiled program; bad options raise while tracing
            grams = np.asarray(_sketched_grams(name, n, 1 << int(log_d), opts, even_batch(num_draws, KEY_BATCH),
                                               _draw_keys(key, log_d, num_draws), grads), np.float64)
            for t, gram in enumerate(grams):
                r[i, j, t] = np.corrcoef(exact, gram[iu])[0, 1]
                dist[i, j, t] = np.median(np.abs(np.diag(gram) / norms - 1))
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
    """The k largest eigenvalues of a symmetric matrix, largest first (float64).

    Args:
        matrix: [n, n] symmetric matrix (symmetrised as (A + A^T) / 2).
        k: how many eigenvalues (at most n).

    Returns:
        float64 [min(k, n)] eigenvalues in decreasing order.
    """
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
    """Phi H Phi^T for a dense symmetric H [n, n] (two batched applies, no transpose needed).

    Args:
        sketch: Phi, a `Sketch` with dim_in = n.
        matrix: [n, n] symmetric matrix H.

    Returns:
        The [D, D] matrix Phi H Phi^T.
    """
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
    hessian: jax.Array, kinds: Sequence[str], key: jax.Array, log2_dims: Sequence[int], *,
    k: int = 10, num_draws: int = 3, params=None, options: dict | None = None,
) -> EigenTable:
    """Relative error of the top-k eigenvalues of Phi H Phi^T against those of a dense H (Table 7).

    If H = sum_i lambda_i u_i u_i^T, Phi H Phi^T has eigenvalues close to the lambda_i once the
    sketched directions Phi u_i are nearly orthonormal, i.e. once D is well above k. Each entry is
    mean_i |lambda_i(Phi H Phi^T) / lambda_i(H) - 1| over the top k; D < k or D > n gets NaN.

    Args:
        hessian: [n, n] dense symmetric matrix.
        kinds: sketch kinds, as in `dot_product_correlation`.
        key: PRNG key; draw t at D = 2^log2_d uses fold_in(fold_in(key, log2_d), t).
        log2_dims: log2 of the sketch dimensions D to try.
        k: number of top eigenvalues compared.
        num_draws: independent sketches per (kind, D).
        params: the params tree (only for `"kronecker_per_leaf"`).
        options: kind -> its `make` options (None: defaults).

    Returns:
        An `EigenTable`: the exact top-k eigenvalues and `rel_error` [kinds, dims, draws].

    Raises:
        ValueError: `hessian` is not square, or `k` / `num_draws` is not a positive int.
    """
    hessian = jnp.asarray(hessian)
    n = hessian.shape[0]
    if hessian.shape != (n, n):
        raise ValueError(f"hessian must be a square matrix, got shape {hessian.shape}")
    k = check_positive_int("k", k)
    num_draws = check_positive_int("num_draws", num_draws)
    options = options or {}
    exact = top_eigenvalues(np.asarray(hessian), k)
    log2_dims = np.asarray(list(log2_dims))
    err = np.full((len(kinds), len(log2_dims), num_draws), np.nan)
    for i, kind in enumerate(kinds):
        name, opts = _resolve(kind, params, options)
        for j, log_d in enumerate(log2_dims):
            if not k <= (1 << int(log_d)) <= n:  # fewer than k eigenvalues, or a map up: NaN
                continue
            sketched = _sketched_matrices(name, n, 1 << int(log_d), opts, even_batch(num_draws, KEY_BATCH),
                                          _draw_keys(key, log_d, num_draws), hessian)
            for t, m in enumerate(np.asarray(sketched)):
                err[i, j, t] = float(np.mean(np.abs(top_eigenvalues(m, k) / exact - 1)))
    return EigenTable(tuple(kinds), log2_dims, exact, err)


def hadamard_row_input(dim: int, block: int, which: int = 0, row: int = 1) -> np.ndarray:
    """Theorem 3.1's adversarial input: supported on block `which` of width `block` (a power of
    two, FFD's D) and equal there to row `row` of the orthonormal H_block, so H x_b = e_row.

    Args:
        dim: the input size N (at least (which + 1) * block).
        block: the block width (FFD's D), a power of two.
        which: the index of the block holding the row.
        row: the Hadamard row used.

    Returns:
        float64 [dim] unit vector.

    Raises:
        ValueError: `block` is not a power of two or the block does not fit in `dim`.
    """
    if block & (block - 1) or block < 1:
        raise ValueError(f"block must be a power of two, got {block}")
    if (which + 1) * block > dim:
        raise ValueError(f"block {which} of width {block} does not fit in dim={dim}")
    x = np.zeros(dim, np.float64)
    x[which * block: (which + 1) * block] = _hadamard_np(block)[row] / np.sqrt(block)
    return x


def one_block_input(key: jax.Array, dim: int, block: int, which: int = 1) -> np.ndarray:
    """A Gaussian vector supported on the `which`-th block of width `block` (zeros elsewhere).

    Args:
        key: PRNG key of the Gaussian values.
        dim: the input size N.
        block: the block width.
        which: the index of the non-zero block.

    Returns:
        float32 [dim] vector.

    Raises:
        ValueError: the block does not fit in `dim`.
    """
    if (which + 1) * block > dim:
        raise ValueError(f"block {which} of width {block} does not fit in dim={dim}")
    x = np.zeros(dim, np.float32)
    x[which * block: (which + 1) * block] = np.asarray(jax.random.normal(key, (block,), jnp.float32))
    return x


def norm_ratios(x: jax.Array, kind: str, key: jax.Array, dim_out: int, num_draws: int = 200, **options) -> np.ndarray:
    """||Phi x||^2 / ||x||^2 for `num_draws` independent sketches of one kind.

    The distribution of this ratio over draws is what Theorems 3.1 and 3.3 bound: it has mean 1
    for every kind (E Phi^T Phi = I) and concentrates around 1 for a good sketch. The draws are
    vmapped `KEY_BATCH` (or a divisor of `num_draws` near it) at a time under one compiled `lax.map`.

    Args:
        x: [n] input, or [batch, n] inputs measured with the same draws.
        kind: sketch kind (`workbench.sketch.KINDS`).
        key: PRNG key, split into `num_draws` sketch keys.
        dim_out: the sketch dimension D.
        num_draws: number of independent sketches.
        **options: the kind's `make` options.

    Returns:
        float array [num_draws] (or [num_draws, batch]) of squared-norm ratios.

    Raises:
        ValueError: `dim_out` or `num_draws` is not a positive int, or an option is unknown.
    """
    x = jnp.asarray(x)
    n = x.shape[-1]
    num_draws = check_positive_int("num_draws", num_draws)

    opts = _static(options)
    return np.asarray(_norm_ratios(kind, n, dim_out, opts, even_batch(num_draws, KEY_BATCH),
                                   jax.random.split(key, num_draws), x))


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _norm_ratios(kind, n, d, opts, batch, keys, x):
    """[draws] (or [draws, batch]) squared-norm ratios, compiled once per (kind, sizes, options)."""
    def one(k):
        return jnp.sum(make(kind, k, n, d, **dict(opts)).apply(x) ** 2, axis=-1) / jnp.sum(x**2, axis=-1)

    return jax.lax.map(one, keys, batch_size=batch)


def even_batch(total: int, cap: int) -> int:
    """The largest divisor of `total` that is at most `cap` (if it is at least cap / 2), else cap.

    `lax.map(..., batch_size=b)` compiles its body twice when b does not divide the length (the
    batches and the remainder): 2000 draws in batches of 32 cost twice the compile of batches of 25.

    Args:
        total: the number of items mapped.
        cap: the largest batch wanted.

    Returns:
        The batch size for `lax.map(..., batch_size=...)`.
    """
    best = max(b for b in range(1, min(cap, total) + 1) if total % b == 0)
    return best if 2 * best >= min(cap, total) else cap


class SketchedDots(NamedTuple):
    kind: str
    dim: int  # the sketch dimension D
    exact: np.ndarray  # [pairs] upper-triangle <g_i, g_j>
    sketched: np.ndarray  # [pairs] the same pairs after the sketch, <Phi g_i, Phi g_j>
    ratios: np.ndarray  # [n] ||Phi g_i||^2 / ||g_i||^2


def sketched_dots(grads: jax.Array, kind: str, key: jax.Array, log2_dim: int) -> SketchedDots:
    """Exact against sketched inner products and squared norms of `grads` for one sketch draw.

    One row of `dot_product_correlation`, kept whole for a scatter plot: the pairs (i < j) and
    each vector's distortion ||Phi g||^2 / ||g||^2 (a zero vector counts as ratio 0).

    Args:
        grads: [n, p] vectors (e.g. per-example gradients), one per row.
        kind: the sketch kind (`workbench.sketch.KINDS`).
        key: PRNG key; the sketch uses fold_in(key, log2_dim).
        log2_dim: log2 of the sketch dimension D (D <= p).

    Returns:
        A `SketchedDots`.
    """
    g = np.asarray(grads)
    dim = 1 << int(log2_dim)
    y = np.asarray(make(kind, jax.random.fold_in(key, int(log2_dim)), g.shape[1], dim).apply(grads))
    iu = np.triu_indices(g.shape[0], 1)
    norms = (g * g).sum(1)
    ratios = (y * y).sum(1) / np.where(norms > 0, norms, 1.0)
    return SketchedDots(kind, dim, (g @ g.T)[iu], (y @ y.T)[iu], ratios)
