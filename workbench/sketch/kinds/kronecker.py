"""`kronecker` (ours, not the paper's QK): a Kronecker product of small i.i.d. Gaussian factors,
applied mode by mode to the input viewed as a tensor, over the whole vector or one pair per params
leaf. (The paper's QK, `workbench.sketch.kinds.qk`, uses Haar-orthogonal factors, a greedy split of N
and truncation to the first D; this kind is the Lotfi et al. style projection with balanced
factors, kept because its per-leaf form sketches per-example gradients at the cost of the
gradients themselves.)

The input is zero-padded to N = n_1 * ... * n_k and viewed as a tensor X [n_1, ..., n_k];
Phi = Q_1 (x) ... (x) Q_k with independent Q_i [D_i, n_i] of i.i.d. N(0, 1/D_i) (or +-1/sqrt(D_i))
entries and D = D_1 * ... * D_k, i.e. Phi x = X x_1 Q_1 x_2 ... x_k Q_k (mode products).
E||Phi x||^2 = ||x||^2 (each mode product is unbiased given the others). State: sum_i D_i n_i
numbers, ~ k (D N)^{1/k}.

Concentration is governed by the smallest factor: for a rank-one input x = u_1 (x) ... (x) u_k
(the worst case; a one-hot vector is one), ||Phi x||^2 / ||x||^2 = prod_i chi^2_{D_i} / D_i, so
Var = prod_i (1 + 2/D_i) - 1 ~ sum_i 2/D_i; for a high-rank input it approaches 2/D. A factor of
width D_i = 1 gives no concentration at all in that mode (a single chi^2_1), which is what
truncating D greedily into factors produces; the default here therefore splits both N and D into
`factors` balanced parts (D_i as equal as the divisors of D allow; a factorisation with a
width-1 factor is refused unless asked for with `dims_out`).

Per leaf (`leaf_shapes`, filled in by `workbench.sketch.for_params`): the input is a raveled
params tree, and each leaf i gets its own independent pair Q_1^(i) [D_1, r_i], Q_2^(i) [D_2, c_i]
on its matrix view [r_i, c_i] (all but the last axis, by the last axis; a vector or scalar is
split into balanced factors), Phi x = sum_i (Q_1^(i) (x) Q_2^(i)) x_i. Each term is unbiased and
they are independent, so E||Phi x||^2 = ||x||^2 still, with the same rank-one worst case per leaf.
A dense layer's per-example gradient is a rank-one a (x) delta, so its sketch is a few small
matmuls per example, and `apply_tree` sketches gradient leaves without concatenating them: this is
what keeps per-example gradient sketching within the cost of the gradients themselves.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from workbench.sketch.base import Family, cast, pad_to, register


def balanced_input_dims(n: int, k: int) -> tuple[int, ...]:
    """n_1 >= ... >= n_k as equal as possible with prod n_i >= n (little padding).

    Args:
        n: the size to cover.
        k: the number of factors.

    Returns:
        k ints in non-increasing order whose product is >= n.
    """
    dims, rest = [], n
    for i in range(k, 0, -1):
        f = max(1, math.ceil(round(rest ** (1.0 / i), 9)))
        dims.append(f)
        rest = -(-rest // f)
    return tuple(dims)


def balanced_output_dims(d: int, k: int) -> tuple[int, ...]:
    """D_1 * ... * D_k = d exactly, each D_i the divisor of the remainder closest to its fair share.

    Args:
        d: the product wanted (the sketch dimension D).
        k: the number of factors.

    Returns:
        k divisors D_i in non-increasing order with prod D_i = d.
    """
    dims, rest = [], d
    for i in range(k, 1, -1):
        target = rest ** (1.0 / i)
        divisors = [f for f in range(1, rest + 1) if rest % f == 0] if rest < 1 << 20 else [rest]
        f = min(divisors, key=lambda v: (abs(math.log(v) - math.log(target)), v))
        dims.append(f)
        rest //= f
    dims.append(rest)
    return tuple(sorted(dims, reverse=True))


def mode_products(t: jax.Array, mats) -> jax.Array:
    """t [b, n_1, ..., n_k] -> [b, D_1, ..., D_k] with Q_i [D_i, n_i], one 2-D matmul per mode.

    The last (contiguous) mode goes first, as one [b n_1 ... n_{k-1}, n_k] x [n_k, D_k] product:
    that step reads the whole input and shrinks it by n_k / D_k, so the rest is cheap. (XLA's
    einsum path picks the other order and runs ~2.5x slower on CPU.)

    Args:
        t: [b, n_1, ..., n_k] input tensor.
        mats: k factor matrices Q_i [D_i, n_i].

    Returns:
        The [b, D_1, ..., D_k] tensor (Q_1 (x) ... (x) Q_k) t.
    """
    for q in reversed(mats):
        lead = t.shape[:-1]
        t = (t.reshape(-1, t.shape[-1]) @ q.T).reshape(*lead, q.shape[0])
        t = jnp.moveaxis(t, -1, 1)
    return t


def mode_products_transpose(t: jax.Array, mats) -> jax.Array:
    """The adjoint of `mode_products`: t [b, D_1, ..., D_k] -> [b, n_1, ..., n_k], the largest
    product (mode k, writing the whole output contiguously) last.

    Args:
        t: [b, D_1, ..., D_k] tensor.
        mats: the factor matrices Q_i [D_i, n_i] of `mode_products`.

    Returns:
        The [b, n_1, ..., n_k] tensor (Q_1^T (x) ... (x) Q_k^T) t.
    """
    for q in mats:
        t = jnp.moveaxis(t, 1, -1)
        lead = t.shape[:-1]
        t = (t.reshape(-1, t.shape[-1]) @ q).reshape(*lead, q.shape[1])
    return t


def leaf_matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """The [rows, cols] view a per-leaf QK sketches: (prod(shape[:-1]), shape[-1]) for a matrix or
    higher tensor; a vector or scalar of size n is zero-padded to balanced factors (n_1, n_2).

    Args:
        shape: a params leaf's shape.

    Returns:
        (rows, cols) whose product covers the leaf's size.
    """
    if len(shape) >= 2:
        return int(np.prod(shape[:-1])), int(shape[-1])
    dims = balanced_input_dims(max(1, int(np.prod(shape))), 2)
    return int(dims[0]), int(dims[1])


def _draw_factors(keys, dims_out, dims_in, distribution):
    """Q_i [D_i, n_i] with i.i.d. N(0, 1/D_i) (or +-1/sqrt(D_i)) entries, one key each."""
    draw = jax.random.normal if distribution == "gaussian" else jax.random.rademacher
    return tuple(draw(kk, (di, ni), jnp.float32) * np.float32(1.0 / np.sqrt(di))
                 for kk, di, ni in zip(keys, dims_out, dims_in))


def _kronecker_apply(x, mats):
    """(Q_1 (x) ... (x) Q_k) x for x [b, size], zero-padded to prod n_i -> [b, prod D_i]."""
    dims_in = [q.shape[1] for q in mats]
    t = pad_to(x, int(np.prod(dims_in))).reshape(x.shape[0], *dims_in)
    return mode_products(t, [cast(q, x) for q in mats]).reshape(x.shape[0], -1)


def _kronecker_transpose(y, mats, size):
    """The adjoint of `_kronecker_apply`, cropped to the first `size` coordinates."""
    t = y.reshape(y.shape[0], *[q.shape[0] for q in mats])
    return mode_products_transpose(t, [cast(q, y) for q in mats]).reshape(y.shape[0], -1)[:, :size]


def _init_leaves(key, n, d, opts):
    shapes = tuple(tuple(int(v) for v in shape) for shape in opts["leaf_shapes"])
    if int(opts["factors"]) != 2 or opts["dims_in"] is not None:
        raise ValueError("kronecker sketch: leaf_shapes sketches each leaf as a matrix; it needs factors=2 and no dims_in")
    sizes = [int(np.prod(shape)) for shape in shapes]
    if sum(sizes) != n:
        raise ValueError(f"kronecker sketch: leaf_shapes {shapes} hold {sum(sizes)} scalars but dim_in={n}")
    dims_out = tuple(opts["dims_out"]) if opts["dims_out"] is not None else balanced_output_dims(d, 2)
    if len(dims_out) != 2 or int(np.prod(dims_out)) != d:
        raise ValueError(f"kronecker sketch: dims_out {dims_out} must be two factors multiplying to dim_out={d}")
    if opts["dims_out"] is None and min(dims_out) == 1:
        raise ValueError(f"kronecker sketch: dim_out={d} has no balanced factorisation without a width-1 factor "
                         f"(got {dims_out}); pick dim_out with more divisors or pass dims_out")
    keys = jax.random.split(key, 2 * len(shapes))
    pairs = tuple(_draw_factors(keys[2 * i: 2 * i + 2], dims_out, leaf_matrix_shape(shape), opts["distribution"])
                  for i, shape in enumerate(shapes))
    return {"leaf_factors": pairs}, {"dims_out": dims_out, "leaf_shapes": shapes}


def _apply_leaves(state, cfg, leaves):
    out = None
    for leaf, pair in zip(leaves, state["leaf_factors"]):
        y = _kronecker_apply(leaf.reshape(leaf.shape[0], -1), pair)
        out = y if out is None else out + y
    return out


def _apply_by_leaf(state, cfg, x):
    off = np.cumsum([0] + [int(np.prod(shape)) for shape in cfg["leaf_shapes"]])
    return _apply_leaves(state, cfg, [x[:, off[i]: off[i + 1]] for i in range(len(off) - 1)])


def _transpose_by_leaf(state, cfg, y):
    return jnp.concatenate([_kronecker_transpose(y, pair, int(np.prod(shape)))
                            for shape, pair in zip(cfg["leaf_shapes"], state["leaf_factors"])], axis=1)


def _init(key, n, d, opts):
    if opts["distribution"] not in ("gaussian", "rademacher"):
        raise ValueError(f"kronecker sketch: distribution must be 'gaussian' or 'rademacher', got {opts['distribution']!r}")
    if opts["leaf_shapes"] is not None:
        return _init_leaves(key, n, d, opts)
    k = int(opts["factors"])
    if k < 1:
        raise ValueError(f"kronecker sketch: factors must be >= 1, got {k}")
    dims_out = tuple(opts["dims_out"]) if opts["dims_out"] is not None else balanced_output_dims(d, k)
    dims_in = tuple(opts["dims_in"]) if opts["dims_in"] is not None else balanced_input_dims(n, len(dims_out))
    if int(np.prod(dims_out)) != d:
        raise ValueError(f"kronecker sketch: dims_out {dims_out} must multiply to dim_out={d}")
    if len(dims_in) != len(dims_out) or int(np.prod(dims_in)) < n:
        raise ValueError(f"kronecker sketch: dims_in {dims_in} must have {len(dims_out)} factors with product >= dim_in={n}")
    if opts["dims_out"] is None and len(dims_out) > 1 and min(dims_out) == 1:
        raise ValueError(
            f"kronecker sketch: dim_out={d} has no balanced factorisation into {k} factors without a width-1 "
            f"factor (got {dims_out}); pick dim_out with more divisors, fewer factors, or pass dims_out"
        )
    mats = _draw_factors(jax.random.split(key, len(dims_out)), dims_out, dims_in, opts["distribution"])
    return {"factors": mats}, {"dims_in": dims_in, "dims_out": dims_out}


def _apply(state, cfg, x):
    if cfg.get("leaf_shapes") is not None:
        return _apply_by_leaf(state, cfg, x)
    return _kronecker_apply(x, state["factors"])


def _transpose(state, cfg, y):
    if cfg.get("leaf_shapes") is not None:
        return _transpose_by_leaf(state, cfg, y)
    return _kronecker_transpose(y, state["factors"], cfg["dim_in"])


register("kronecker", Family(_init, _apply, _transpose,
                      {"factors": 2, "dims_in": None, "dims_out": None, "distribution": "gaussian",
                       "leaf_shapes": None}, __doc__, _apply_leaves))
