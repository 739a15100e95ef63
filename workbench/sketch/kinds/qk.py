"""The paper's QK (Schioppa 2024, eqs. 8 and 16, Listings 1-2, Theorem 3.3).

    Phi x = R_D( sqrt(N'/D) (Q^(1) (x) ... (x) Q^(K)) x ),

- N' = B_1 * ... * B_K >= dim_in: N split greedily into factors of width at most `max_factor`
  (default 1024), the remainder first: B_2 = ... = B_K = max_factor, B_1 = ceil(N / max_factor^(K-1)),
  K the fewest factors that fit (Listing 1 as we read it); the input is zero-padded to N'.
- Q^(i) [D_i, B_i] is the FIRST D_i ROWS OF A HAAR-RANDOM ORTHOGONAL B_i x B_i MATRIX (QR of a
  Gaussian, sign-corrected). No random signs. Sampling the factors from the orthogonal group
  (not i.i.d. Gaussian entries) is the paper's difference from Lotfi et al.'s Kronecker projection
  (kept as our `kronecker` kind).
- Per-factor target sizes D_i (option `dims_out`): by default every factor is shrunk by the same
  ratio, D_i = min(B_i, ceil(B_i (D / N')^(1/K))), so prod D_i >= D; the flattened (row-major)
  Kronecker output is truncated to its first D entries (Listing 2). Only the rows that survive are
  computed (the leading factor is cut to ceil(D / prod_{i>1} D_i) rows).
- Scaling: a row of a Kronecker product of independent uniform unit vectors u_1 (x) ... (x) u_K
  has E (row . x)^2 = ||x||^2 / N', so E||Phi x||^2 = (N'/D) D ||x||^2 / N' = ||x||^2 exactly.
- Theorem 3.3: delta = 2 sum_i exp(-4 C D_i ((1 + eps)^(1/K) - 1)^2): every D_i must be large.
  On a rank-one input x = v_1 (x) ... (x) v_K (a one-hot vector is one) without truncation,
  ||Phi x||^2 / ||x||^2 = prod_i (B_i / D_i) ||Q^(i) v_i||^2, a product of independent
  Beta(D_i/2, (B_i - D_i)/2) B_i / D_i factors: the smallest D_i sets the spread.
State: sum_i D_i B_i floats. `transpose` is the exact adjoint (mode products and a zero-pad).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from workbench.sketch.base import Family, cast, pad_to, register
from workbench.sketch.kinds.affd import haar_rows
from workbench.sketch.kinds.kronecker import mode_products, mode_products_transpose


def greedy_split(n: int, cap: int) -> tuple[int, ...]:
    """(B_1, cap, ..., cap) with B_1 = ceil(n / cap^(K-1)) <= cap and K as small as possible.

    Args:
        n: the input size N to cover.
        cap: the largest factor width (the paper's 1024).

    Returns:
        The factor widths (B_1, cap, ..., cap) with product >= n.

    Raises:
        ValueError: n < 1 or cap < 2.
    """
    if n < 1 or cap < 2:
        raise ValueError(f"greedy_split needs n >= 1 and cap >= 2, got n={n}, cap={cap}")
    k = 1
    while cap**k < n:
        k += 1
    return (-(-n // cap ** (k - 1)),) + (cap,) * (k - 1)


def default_dims_out(d: int, dims_in: tuple[int, ...]) -> tuple[int, ...]:
    """D_i = min(B_i, ceil(B_i r)) with r = (d / prod B_i)^(1/K): the same shrink on every factor.

    Args:
        d: the sketch dimension D.
        dims_in: the factor widths B_i.

    Returns:
        The per-factor output sizes D_i <= B_i with prod D_i >= d.
    """
    r = (d / float(np.prod(dims_in))) ** (1.0 / len(dims_in))
    dims = [min(b, max(1, math.ceil(round(b * r, 9)))) for b in dims_in]
    i = 0
    while int(np.prod(dims)) < d:  # rounding: grow the factors that can grow until prod >= d
        if dims[i] < dims_in[i]:
            dims[i] += 1
        i = (i + 1) % len(dims)
    return tuple(dims)


def _lead_rows(d, dims_out):
    return -(-d // (int(np.prod(dims_out)) // dims_out[0]))


def _init(rand, n, d, opts):
    cap = int(opts["max_factor"])
    dims_in = tuple(int(v) for v in opts["dims_in"]) if opts["dims_in"] is not None else greedy_split(n, cap)
    if int(np.prod(dims_in)) < n:
        raise ValueError(f"qk sketch: dims_in {dims_in} must multiply to at least dim_in={n}")
    if d > int(np.prod(dims_in)):
        raise ValueError(f"qk sketch cannot map up: dim_out={d} exceeds the padded input size {int(np.prod(dims_in))}")
    if opts["dims_out"] is not None:
        dims_out = tuple(int(v) for v in opts["dims_out"])
        if len(dims_out) != len(dims_in) or any(not 1 <= a <= b for a, b in zip(dims_out, dims_in)):
            raise ValueError(f"qk sketch: dims_out {dims_out} must have one entry 1 <= D_i <= B_i per factor of {dims_in}")
        if int(np.prod(dims_out)) < d:
            raise ValueError(f"qk sketch: dims_out {dims_out} multiply to less than dim_out={d}")
    else:
        dims_out = default_dims_out(d, dims_in)
    factors = tuple(haar_rows(rand.normal((b, r))) for b, r in zip(dims_in, dims_out))  # one stream
    return {"factors": factors}, {"dims_in": dims_in, "dims_out": dims_out,
                                  "padded": int(np.prod(dims_in)), "max_factor": cap}


def _mats(state, cfg, like):
    mats = [cast(q, like) for q in state["factors"]]
    mats[0] = mats[0][: _lead_rows(cfg["dim_out"], cfg["dims_out"])]
    return mats


def _apply(state, cfg, x):
    b, d = x.shape[0], cfg["dim_out"]
    t = pad_to(x, cfg["padded"]).reshape(b, *cfg["dims_in"])
    y = mode_products(t, _mats(state, cfg, x)).reshape(b, -1)[:, :d]
    return y * jnp.asarray(math.sqrt(cfg["padded"] / d), x.dtype)


def _transpose(state, cfg, y):
    b, d = y.shape[0], cfg["dim_out"]
    mats = _mats(state, cfg, y)
    lead = mats[0].shape[0]
    t = pad_to(y * jnp.asarray(math.sqrt(cfg["padded"] / d), y.dtype), lead * int(np.prod(cfg["dims_out"][1:])))
    x = mode_products_transpose(t.reshape(b, lead, *cfg["dims_out"][1:]), mats)
    return x.reshape(b, -1)[:, : cfg["dim_in"]]


register("qk", Family(_init, _apply, _transpose, {"max_factor": 1024, "dims_in": None, "dims_out": None}, __doc__,
                          stream=True))
