"""Sparse sketches: CountSketch (ours) and the paper's FJL baseline (Ailon-Chazelle, eq. 2).

- `countsketch` (Charikar et al.; Clarkson-Woodruff; not a paper kind): (Phi x)_k =
  sum_{i: h(i)=k} s_i x_i with h uniform in [D] and s_i = +-1. E||Phi x||^2 = ||x||^2 and
  Var(||Phi x||^2) = (2/D)(||x||^4 - ||x||_4^4) <= 2||x||^4 / D. Any D (also D > dim_in).
- `fjl` (the paper's FJL baseline, Ailon & Chazelle's fast JL transform): Phi = c G_s H_N B, with
  B random signs, H_N the orthonormal Walsh-Hadamard transform on the input zero-padded to
  N = next power of two, and G_s a sparse D x N Gaussian matrix with about D log^2 M non-zeros
  (we take M = N, the input size, for the number of points the guarantee covers; option
  `nonzeros`, default D * ceil(log2 N)^2, at most D N). The non-zeros are K = `nonzeros` i.i.d.
  positions (row uniform in [D], column uniform in [N], repeats add: the Poissonised form of
  "each entry non-zero with probability q = K/(DN)") with N(0, 1) values, and c = sqrt(N/K).
  With z = H B x: E||G_s z||^2 = K ||z||^2 / N, so E||Phi x||^2 = ||x||^2; the randomized
  Hadamard flattens z (z_j^2 ~ ||x||^2/N) so each row sees ~ log^2 N coordinates and the
  distortion is that of a Gaussian sketch, ~ sqrt(2/D).
State: O(N) for countsketch, O(N + K) for fjl (three K-long arrays), never a D x N matrix.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from workbench.core.numerics import check_positive_int
from workbench.sketch.base import Family, cast, pad_to, register
from workbench.sketch.kinds.hadamard import fwht, next_power_of_two

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




# --------------------------------------------------------------------------- fjl (the paper's)


def default_nonzeros(n_pad: int, d: int) -> int:
    """FJL's default number of non-zeros: D ceil(log2 N)^2, at most the D N entries of a dense map.

    Args:
        n_pad: the padded input size N (a power of two).
        d: the sketch dimension D.

    Returns:
        The number k of i.i.d. sparse Gaussian entries.
    """
    return int(min(d * n_pad, d * max(1, math.ceil(math.log2(max(n_pad, 2)))) ** 2))


def _fjl_init(rand, n, d, opts):
    n_pad = next_power_of_two(n)
    k = opts["nonzeros"] if opts["nonzeros"] is not None else default_nonzeros(n_pad, d)
    k = check_positive_int("fjl sketch: nonzeros", k)
    state = {"signs": rand.rademacher((n_pad,)),  # one stream (`randomness.Randomness`), in this order
             "rows": rand.randint((1, k), d),
             "cols": rand.randint((k,), n_pad),
             "vals": rand.normal((1, k)) * np.float32(math.sqrt(n_pad / k))}
    return state, {"padded": n_pad, "nonzeros": k, "fwht_block": opts["fwht_block"]}


def _fjl_apply(state, cfg, x):
    z = fwht(pad_to(x, cfg["padded"]) * cast(state["signs"], x), cfg["fwht_block"])
    return _scatter_add(z[:, state["cols"]], state["rows"], state["vals"], cfg["dim_out"])


def _fjl_transpose(state, cfg, y):
    u = _gather(y, state["rows"], state["vals"])  # [b, K]
    z = jnp.zeros((y.shape[0], cfg["padded"]), y.dtype).at[:, state["cols"]].add(u)
    return (fwht(z, cfg["fwht_block"]) * cast(state["signs"], y))[:, : cfg["dim_in"]]


register("fjl", Family(_fjl_init, _fjl_apply, _fjl_transpose, {"nonzeros": None, "fwht_block": None}, __doc__,
                      stream=True))
