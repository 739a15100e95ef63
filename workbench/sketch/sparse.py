"""Hashing sketches: CountSketch, and the fast JL transforms FJL / AFJL (Hadamard + sparse Gaussian).

- `countsketch` (Charikar et al.; Clarkson-Woodruff): (Phi x)_k = sum_{i: h(i)=k} s_i x_i with
  h uniform in [D] and s_i = +-1. E||Phi x||^2 = ||x||^2 and
  Var(||Phi x||^2) = (2/D)(||x||^4 - ||x||_4^4) <= 2||x||^4 / D. Any D (also D > dim_in).
- `fjl` (Ailon-Chazelle fast JL with a sparse Gaussian projection): Phi = S H_N E, with E a
  diagonal of random signs, H_N the orthonormal Walsh-Hadamard transform on the input zero-padded
  to N = next power of two, and S a D x N column-sparse matrix: column j has `sparsity` = s
  entries at rows h_1(j)..h_s(j) (uniform, independent) with values g_tj / sqrt(s), g ~ N(0, 1).
  E S^T S = I, so E||Phi x||^2 = ||x||^2; with z = H E x,
  Var(||Phi x||^2) <= (2/D)||z||^4 + (2/s) sum_j z_j^4, and the randomized Hadamard flattens z
  (z_j^2 ~ ||x||^2/N) so the second term is O(||x||^4/(sN)).
- `afjl` (the blocked "A" variant): the same with the Hadamard applied per block of width B
  (padding to a multiple of B instead of a power of two, O(N log B) work):
  Phi = S (I_{N/B} (x) H_B) E. Because every column of S is hashed independently, input mass
  confined to one block still meets all D rows: with z flat over that block,
  Var <= (2/D + 6/(s B)) ||x||^4, so the default B = next power of two >= D keeps it O(1/D).
State: O(s N) ints and floats, never a D x N matrix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from workbench.sketch.core import Family, cast, pad_to, register
from workbench.sketch.hadamard import block_fwht, fwht, next_power_of_two

# XLA's CPU scatter/gather moving whole rows of a [dim, batch] layout is ~5x faster than moving
# single elements of [batch, dim] once the batch has a few vectors (measured in bench_sketch.py).
ROW_LAYOUT_MIN_BATCH = 4


def _scatter_add(z, rows, vals, d):
    if z.shape[0] >= ROW_LAYOUT_MIN_BATCH:
        y = jnp.zeros((d, z.shape[0]), z.dtype)
        for t in range(rows.shape[0]):  # sparsity s is small and static
            y = y.at[rows[t]].add((z * cast(vals[t], z)).T)
        return y.T
    y = jnp.zeros((z.shape[0], d), z.dtype)
    for t in range(rows.shape[0]):
        y = y.at[:, rows[t]].add(z * cast(vals[t], z))
    return y


def _gather(y, rows, vals):
    if y.shape[0] >= ROW_LAYOUT_MIN_BATCH:
        yt = y.T
        z = yt[rows[0]] * cast(vals[0], y)[:, None]
        for t in range(1, rows.shape[0]):
            z = z + yt[rows[t]] * cast(vals[t], y)[:, None]
        return z.T
    z = y[:, rows[0]] * cast(vals[0], y)
    for t in range(1, rows.shape[0]):
        z = z + y[:, rows[t]] * cast(vals[t], y)
    return z


# --------------------------------------------------------------------------- countsketch


def _cs_init(key, n, d, opts):
    k1, k2 = jax.random.split(key)
    rows = jax.random.randint(k1, (1, n), 0, d, jnp.int32)
    signs = jax.random.rademacher(k2, (1, n), jnp.float32)
    return {"rows": rows, "vals": signs}, {}


def _cs_apply(state, cfg, x):
    return _scatter_add(x, state["rows"], state["vals"], cfg["dim_out"])


def _cs_transpose(state, cfg, y):
    return _gather(y, state["rows"], state["vals"])


register("countsketch", Family(_cs_init, _cs_apply, _cs_transpose, {}, __doc__))


# --------------------------------------------------------------------------- fjl / afjl


def _check_sparsity(s):
    if not isinstance(s, int) or s < 1:
        raise ValueError(f"sparsity must be a positive int, got {s!r}")


def _hashed_gaussian(key, s, n_pad, d):
    k1, k2 = jax.random.split(key)
    rows = jax.random.randint(k1, (s, n_pad), 0, d, jnp.int32)
    vals = jax.random.normal(k2, (s, n_pad), jnp.float32) * np.float32(1.0 / np.sqrt(s))
    return rows, vals


def _fjl_init(key, n, d, opts):
    _check_sparsity(opts["sparsity"])
    n_pad = next_power_of_two(n)
    k1, k2 = jax.random.split(key)
    rows, vals = _hashed_gaussian(k2, opts["sparsity"], n_pad, d)
    signs = jax.random.rademacher(k1, (n_pad,), jnp.float32)
    return {"signs": signs, "rows": rows, "vals": vals}, {
        "padded": n_pad, "sparsity": opts["sparsity"], "fwht_block": opts["fwht_block"]}


def _fjl_apply(state, cfg, x):
    z = fwht(pad_to(x, cfg["padded"]) * cast(state["signs"], x), cfg["fwht_block"])
    return _scatter_add(z, state["rows"], state["vals"], cfg["dim_out"])


def _fjl_transpose(state, cfg, y):
    z = _gather(y, state["rows"], state["vals"])
    return (fwht(z, cfg["fwht_block"]) * cast(state["signs"], y))[:, : cfg["dim_in"]]


register("fjl", Family(_fjl_init, _fjl_apply, _fjl_transpose,
                       {"sparsity": 1, "fwht_block": None}, __doc__))


def blocked_width(n: int, d: int, block: int | None) -> int:
    """Block width B of the A-variants: max(block, next pow2 >= D), at most next pow2 >= n."""
    if block is not None and (block < 1 or block & (block - 1)):
        raise ValueError(f"block must be a power of two, got {block!r}")
    width = max(block or 1, next_power_of_two(d))
    return min(width, next_power_of_two(n))


def _afjl_init(key, n, d, opts):
    _check_sparsity(opts["sparsity"])
    width = blocked_width(n, d, opts["block"])
    n_pad = -(-n // width) * width
    k1, k2 = jax.random.split(key)
    rows, vals = _hashed_gaussian(k2, opts["sparsity"], n_pad, d)
    signs = jax.random.rademacher(k1, (n_pad,), jnp.float32)
    return {"signs": signs, "rows": rows, "vals": vals}, {
        "padded": n_pad, "block": width, "sparsity": opts["sparsity"], "fwht_block": opts["fwht_block"]}


def _afjl_apply(state, cfg, x):
    z = block_fwht(pad_to(x, cfg["padded"]) * cast(state["signs"], x), cfg["block"], cfg["fwht_block"])
    return _scatter_add(z, state["rows"], state["vals"], cfg["dim_out"])


def _afjl_transpose(state, cfg, y):
    z = _gather(y, state["rows"], state["vals"])
    z = block_fwht(z, cfg["block"], cfg["fwht_block"]) * cast(state["signs"], y)
    return z[:, : cfg["dim_in"]]


register("afjl", Family(_afjl_init, _afjl_apply, _afjl_transpose,
                        {"sparsity": 1, "block": None, "fwht_block": None}, __doc__))
