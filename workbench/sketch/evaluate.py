"""How well a sketch keeps geometry: dot-product correlation vs D (the paper's Table 6), norm
distortion, and the one-block adversarial input of the Fastfood failure case."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from workbench.sketch.core import for_params, make

PER_LEAF_QK = "qk_per_leaf"  # QK with one Kronecker pair per params leaf (`for_params`)


class CorrelationTable(NamedTuple):
    kinds: tuple[str, ...]
    log2_dims: np.ndarray  # [num_dims]
    pearson: np.ndarray  # [num_kinds, num_dims] (nan where the kind cannot map to that D)
    distortion: np.ndarray  # [num_kinds, num_dims] median | ||Phi g||^2/||g||^2 - 1 |

    def smallest_log2_dim(self, threshold: float) -> dict[str, int | None]:
        """Per kind, the smallest log2 D whose correlation exceeds `threshold` (None if none)."""
        out = {}
        for kind, row in zip(self.kinds, self.pearson):
            hit = np.flatnonzero(np.nan_to_num(row, nan=-1.0) > threshold)
            out[kind] = int(self.log2_dims[hit[0]]) if hit.size else None
        return out


def _pairs(m: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(m, k=1)


def dot_product_correlation(
    grads: jax.Array, kinds: Sequence[str], log2_dims: Sequence[int], key: jax.Array, params=None, **options
) -> CorrelationTable:
    """Pearson r between exact and sketched dot products <g_i, g_j> (i < j) for each kind and D.

    `grads` is [m, n] (e.g. per-example gradients); options go to every `make` call. The kind
    `"qk_per_leaf"` is QK with one Kronecker pair per leaf of `params` (the tree the rows ravel).
    """
    grads = jnp.asarray(grads)
    if grads.ndim != 2:
        raise ValueError(f"grads must be [num_vectors, dim], got shape {grads.shape}")
    m, n = grads.shape
    iu = _pairs(m)
    exact = np.asarray(grads @ grads.T)[iu]
    norms = np.asarray(jnp.sum(grads**2, axis=1))
    log2_dims = np.asarray(list(log2_dims))
    r = np.full((len(kinds), len(log2_dims)), np.nan)
    dist = np.full_like(r, np.nan)
    for i, kind in enumerate(kinds):
        for j, log_d in enumerate(log2_dims):
            try:
                k = jax.random.fold_in(key, int(log_d))
                if kind == PER_LEAF_QK:
                    if params is None:
                        raise TypeError(f"kind {PER_LEAF_QK!r} needs the params tree the gradients ravel")
                    s = for_params("qk", k, params, 1 << int(log_d), **options)
                else:
                    s = make(kind, k, n, 1 << int(log_d), **options)
            except ValueError:  # e.g. dim_out > dim_in for kinds that cannot map up
                continue
            y = s.apply(grads)
            r[i, j] = np.corrcoef(exact, np.asarray(y @ y.T)[iu])[0, 1]
            dist[i, j] = np.median(np.abs(np.asarray(jnp.sum(y**2, axis=1)) / norms - 1))
    return CorrelationTable(tuple(kinds), log2_dims, r, dist)


def one_block_input(dim: int, block: int, which: int = 1, seed: int = 0) -> np.ndarray:
    """A Gaussian vector supported on the `which`-th block of width `block` (zeros elsewhere)."""
    if (which + 1) * block > dim:
        raise ValueError(f"block {which} of width {block} does not fit in dim={dim}")
    x = np.zeros(dim, np.float32)
    x[which * block : (which + 1) * block] = np.random.default_rng(seed).normal(size=block)
    return x


def norm_ratios(kind: str, x: jax.Array, dim_out: int, key: jax.Array, num_keys: int = 200, **options) -> np.ndarray:
    """||Phi x||^2 / ||x||^2 for `num_keys` independent sketches of one kind (vmapped over keys)."""
    x = jnp.asarray(x)
    n = x.shape[-1]

    def one(k):
        return jnp.sum(make(kind, k, n, dim_out, **options).apply(x) ** 2, axis=-1) / jnp.sum(x**2, axis=-1)

    return np.asarray(jax.jit(jax.vmap(one))(jax.random.split(key, num_keys)))
