"""The paper's AFFD and AFJL (Schioppa 2024, eqs. 6-7): one global N-point transform, no blocks.

Notation: N = next power of two >= dim_in (the input is zero-padded to N), D = dim_out,
B = diag of N random signs, G_v = diag of i.i.d. N(0, 1), R_D = keep the FIRST D coordinates.
H_N is the orthonormal Walsh-Hadamard matrix applied as a Kronecker product of small Sylvester
factors H_N = H_{f_1} (x) ... (x) H_{f_k} (N split greedily into factors of at most `max_factor`,
the remainder first), i.e. one reshape and one small matmul per mode. The paper uses factors up to
~1024 on accelerators; our default is 16, the fastest on CPU in `benchmarks/bench_sketch.py`
(pass max_factor=1024 for the paper's layout). The factor size changes which permutations are
drawn, not the properties below (exact unbiasedness, flat H^{pi2} entries), which the tests check
at several factor sizes. The randomness that a
Fastfood permutation provides is moved into the factors: H^{pi1} = (P_1 H_{f_1}) (x) ... permutes
the ROWS of every factor and H^{pi2} = (H_{f_1} P'_1) (x) ... their COLUMNS (state: the sum of
the factor sizes, no N-long index gather).

- `affd`: Phi x = R_D( sqrt(N/D) H^{pi2} G_v H^{pi1} B x ).
  H^{pi1} B flattens x, G_v randomises, H^{pi2} (entries +-1/sqrt(N)) spreads every coordinate
  evenly, so E||Phi x||^2 = (N/D) D ||x||^2 / N = ||x||^2 exactly (any x). Theorem 3.2: failure
  probability delta1 + 2 exp(-C eps^2 D / (4 log^2(2N/delta1))), distortion ~ log(N)/sqrt(D).
- `afjl`: Phi x = R_D( sqrt(N/D) G_v H^{pi1} B x ): AFFD without the second transform, i.e. an
  SRHT over all N coordinates (the first D rows of the row-permuted Hadamard) in which every kept
  coordinate carries its own N(0, 1) weight. E_B (H B x)_i^2 = ||x||^2 / N and E g^2 = 1, so it is
  unbiased; the Gaussian weights add variance (E g^4 = 3): about 4x a Gaussian sketch's on flat
  inputs, which is why the paper's Table 6 needs ~4x the D of AFFD.
Only the rows that survive R_D are computed: the leading Kronecker mode is applied with its
first ceil(D / (N / f_1)) rows only.

Pre-conditioner variants (the paper's Table 4, option `preconditioner`), replacing H^{pi1}:
- "hadamard" (default): the row-permuted Kronecker Hadamard above.
- "fft": the orthonormal real Fourier transform (cos/sin pairs of `jnp.fft.rfft`, norm "ortho",
  laid out as [DC, Nyquist, Re_1, Im_1, Re_2, Im_2, ...] times sqrt 2 for the pairs). It is
  orthogonal (transpose = inverse = `irfft`), and every input coordinate puts exactly D/N of its
  energy into the first D rows (cos^2 + sin^2 = 1 per kept pair), so both kinds stay exactly
  unbiased.
- "q": a random Kronecker orthogonal matrix Q_{f_1} (x) ... (x) Q_{f_k}, each factor Haar (QR of
  a Gaussian, sign-corrected), state sum f_i^2. Rows of a Haar factor are uniform on the sphere,
  so E (Q B x)_i^2 = ||x||^2 / N and the kinds stay unbiased.
The second transform of AFFD (H^{pi2}) is always the Kronecker Hadamard. `transpose` is the exact
adjoint (every step is a matmul, a diagonal, an orthogonal FFT or a crop / zero-pad).
Needs D <= N.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from workbench.sketch.base import Family, cast, pad_to, register
from workbench.sketch.kinds.hadamard import _hadamard_np, next_power_of_two


def kron_apply(x, mats, dims):
    """(M_1 (x) ... (x) M_k) x for x [b, prod dims] with M_i [r_i, dims_i] -> [b, prod r_i].

    One einsum per mode on the [b, pre, f, post] view (as `fwht` does): no axis is moved, so a
    mode costs one pass over the data and a small matmul, which is what a CPU does well.

    Args:
        x: [b, prod dims] input rows.
        mats: one matrix M_i [r_i, dims_i] per factor.
        dims: the factor widths dims_i.

    Returns:
        The [b, prod r_i] rows (M_1 (x) ... (x) M_k) x.
    """
    b = x.shape[0]
    done, todo = [], list(dims)
    y = x
    for m in mats:
        f = todo.pop(0)
        pre, post = int(np.prod(done)) if done else 1, int(np.prod(todo)) if todo else 1
        if post == 1:  # the contiguous mode: one [b pre, f] x [f, r] matmul
            y = y.reshape(-1, f) @ m.T
        else:
            y = jnp.einsum("ij,bpjq->bpiq", m, y.reshape(b, pre, f, post))
        done.append(m.shape[0])
    return y.reshape(b, -1)


def kron_apply_t(y, mats, dims):
    """The adjoint of `kron_apply`: y [b, prod r_i] -> [b, prod dims].

    Args:
        y: [b, prod r_i] rows.
        mats: the matrices M_i [r_i, dims_i] of `kron_apply`.
        dims: the factor widths dims_i.

    Returns:
        The [b, prod dims] rows (M_1^T (x) ... (x) M_k^T) y.
    """
    b = y.shape[0]
    rows = [m.shape[0] for m in mats]
    z = y
    for i, m in enumerate(mats):
        pre = int(np.prod(dims[:i])) if i else 1
        post = int(np.prod(rows[i + 1:])) if i + 1 < len(rows) else 1
        if post == 1:
            z = z.reshape(-1, rows[i]) @ m
        else:
            z = jnp.einsum("ji,bpjq->bpiq", m, z.reshape(b, pre, rows[i], post))
    return z.reshape(b, -1)

PRECONDITIONERS = ("hadamard", "fft", "q")
DEFAULT_MAX_FACTOR = 16  # measured on CPU (bench_sketch.py); the paper uses factors up to ~1024 on accelerators


def greedy_factors(n: int, cap: int) -> tuple[int, ...]:
    """n = f_1 * ... * f_k (n, cap powers of two), every f_i = cap except the first (the remainder).

    Args:
        n: the size to factor (a power of two).
        cap: the largest factor (a power of two >= 2).

    Returns:
        The factors (remainder, cap, ..., cap), product n.

    Raises:
        ValueError: n or cap is not a power of two, or cap < 2.
    """
    k, c = int(n).bit_length() - 1, int(cap).bit_length() - 1
    if n < 1 or n & (n - 1) or cap < 2 or cap & (cap - 1):
        raise ValueError(f"greedy_factors needs powers of two (cap >= 2), got n={n}, cap={cap}")
    if k == 0:
        return (1,)
    rest = k % c
    return ((1 << rest,) if rest else ()) + (cap,) * (k // c)


def haar_orthogonal(key: jax.Array, n: int, rows: int | None = None) -> jax.Array:
    """The first `rows` rows of a Haar-random n x n orthogonal matrix, [rows, n].

    Gram-Schmidt (twice, for float32 stability) on `rows` i.i.d. Gaussian vectors in R^n: this is
    the Q of the QR decomposition with a positive diagonal R, which is exactly Haar distributed,
    and the first `rows` vectors only depend on the first `rows` Gaussian columns. Written with
    matmuls in a `fori_loop` rather than LAPACK's QR, which deadlocked XLA's CPU runtime here when
    many draws ran at once (a batched QR under `lax.map` waiting on OpenBLAS threads).

    Args:
        key: PRNG key of the Gaussian matrix.
        n: the matrix order.
        rows: how many rows to return (None: all n).

    Returns:
        A [rows, n] matrix with orthonormal rows.
    """
    r = n if rows is None else int(rows)
    return haar_rows(jax.random.normal(key, (n, r), jnp.float32))


def haar_rows(g: jax.Array) -> jax.Array:
    """`haar_orthogonal` from its i.i.d. N(0, 1) matrix g [n, rows]: Gram-Schmidt on g's columns.

    Args:
        g: [n, rows] i.i.d. N(0, 1) matrix.

    Returns:
        The [rows, n] orthonormal rows (Gram-Schmidt of g's columns, applied twice).
    """
    n, r = g.shape
    idx = jnp.arange(r)

    def body(j, q):
        v = g[:, j]
        for _ in range(2):
            v = v - q @ (jnp.where(idx < j, 1.0, 0.0).astype(q.dtype) * (q.T @ v))
        return q.at[:, j].set(v / jnp.linalg.norm(v))

    return jax.lax.fori_loop(0, r, body, jnp.zeros((n, r), jnp.float32)).T


def _hadamard(f: int, dtype) -> jax.Array:
    return jnp.asarray(_hadamard_np(f), dtype)


def _first_rows(d: int, factors: tuple[int, ...]) -> int:
    """How many rows of the leading factor the first d coordinates of the Kronecker output touch."""
    return -(-d // (int(np.prod(factors)) // factors[0]))


def _kept_rows(d: int, factors: tuple[int, ...]) -> tuple[int, ...]:
    """Rows of every factor that the first d coordinates of the Kronecker output touch.

    Mode i needs r_i = min(f_i, ceil(d / prod_{l>i} f_l)) rows. Where r_i < f_i, d < f_i prod_{l>i} f_l,
    so every earlier mode needs one row: the needed block is {0} x ... x [0, r_i) x (full trailing
    modes), whose row-major flattening is the first prod r_l coordinates of the full output. Cutting
    every mode (not only the leading one) skips the trailing modes' work on rows that are cropped
    away (at N = 2^24, D = 4096 and factors of 16: three modes on 4096 entries instead of five on
    2^20). Use with `_crop_kept`, which takes the first d coordinates back out.
    """
    tail = [int(np.prod(factors[i + 1:])) for i in range(len(factors))]
    return tuple(min(f, -(-d // t)) for f, t in zip(factors, tail))


def _computed_rows(d: int, factors: tuple[int, ...]) -> tuple[int, ...]:
    """`_kept_rows`, with every mode after the first computing at least 2 rows (where it has them).

    A one-row mode would be a matrix-vector product, which XLA's CPU backend sums in another order
    than the matrix product it replaces, changing the float results in their last bits; with two
    rows the kept entries come out bit-for-bit as with all rows (tests/test_sketch.py checks
    it). The leading mode keeps its count: it was already cut that way before this change.
    """
    kept = _kept_rows(d, factors)
    return kept[:1] + tuple(max(r, min(2, f)) for r, f in zip(kept[1:], factors[1:]))


def _crop_kept(t, d: int, factors: tuple[int, ...]):
    """The first d output coordinates from a `kron_apply` computed with `_computed_rows` rows."""
    b, kept, rows = t.shape[0], _kept_rows(d, factors), _computed_rows(d, factors)
    if kept != rows:
        t = t.reshape(b, *rows)[(slice(None),) + tuple(slice(0, r) for r in kept)]
    return t.reshape(b, -1)[:, :d]


# ----------------------------------------------------------------------------- pre-conditioners


def _real_fourier(x):
    n = x.shape[-1]
    if n == 1:
        return x
    z = jnp.fft.rfft(x, norm="ortho")
    pairs = jnp.stack([z[:, 1:n // 2].real, z[:, 1:n // 2].imag], axis=-1).reshape(x.shape[0], -1)
    sqrt2 = jnp.asarray(math.sqrt(2.0), x.dtype)
    return jnp.concatenate([z[:, :1].real, z[:, n // 2:n // 2 + 1].real, sqrt2 * pairs], axis=-1).astype(x.dtype)


def _real_fourier_t(y):
    n = y.shape[-1]
    if n == 1:
        return y
    half = y[:, 2:].reshape(y.shape[0], -1, 2) / jnp.asarray(math.sqrt(2.0), y.dtype)
    zero = jnp.zeros_like(y[:, :1])
    re = jnp.concatenate([y[:, :1], half[..., 0], y[:, 1:2]], axis=-1)
    im = jnp.concatenate([zero, half[..., 1], zero], axis=-1)
    z = jax.lax.complex(re, im)
    return jnp.fft.irfft(z, n=n, norm="ortho").astype(y.dtype)


def _pre_mats(state, cfg, dtype, rows=None):
    """The Kronecker factors of H^{pi1} (rows permuted) or Q: the leading one cut to `rows` rows
    (an int), or every factor i cut to rows[i] (a tuple, `_kept_rows`)."""
    if cfg["preconditioner"] == "q":
        mats = [cast(q, jnp.zeros((), dtype)) for q in state["q_factors"]]
    else:
        mats = [_hadamard(f, dtype)[p] for f, p in zip(cfg["factors"], state["perm_rows"])]
    if isinstance(rows, tuple):
        mats = [m[:r] for m, r in zip(mats, rows)]
    elif rows is not None:
        mats[0] = mats[0][:rows]
    return mats


def _pre_scale(cfg, dtype):
    return jnp.asarray(1.0 if cfg["preconditioner"] == "q" else 1.0 / math.sqrt(cfg["padded"]), dtype)


def precondition(state, cfg, x, rows: int | None = None):
    """The first `rows` coordinates (all when None) of P x, P = H^{pi1}, the real FFT or Q.

    Args:
        state: the kind's random state (signs, permutations, Q factors).
        cfg: the kind's static configuration (padded size, factors, preconditioner).
        x: [b, padded] rows.
        rows: how many leading coordinates to keep (None: all).

    Returns:
        [b, rows] (or [b, padded]) preconditioned rows.
    """
    if cfg["preconditioner"] == "fft":
        z = _real_fourier(x)
        return z if rows is None else z[:, :rows]
    if rows is None:
        return kron_apply(x, _pre_mats(state, cfg, x.dtype), cfg["factors"]) * _pre_scale(cfg, x.dtype)
    computed = _computed_rows(rows, cfg["factors"])
    z = kron_apply(x, _pre_mats(state, cfg, x.dtype, computed), cfg["factors"]) * _pre_scale(cfg, x.dtype)
    return _crop_kept(z, rows, cfg["factors"])


def precondition_t(state, cfg, y):
    """P^T y for y [b, r] holding the first r coordinates (the rest zero).

    Args:
        state: the kind's random state.
        cfg: the kind's static configuration.
        y: [b, r] rows, the first r coordinates of P x.

    Returns:
        The [b, padded] rows P^T y (the adjoint of `precondition`).
    """
    n, r = cfg["padded"], y.shape[1]
    if cfg["preconditioner"] == "fft":
        return _real_fourier_t(pad_to(y, n))
    lead = _first_rows(r, cfg["factors"]) if r < n else cfg["factors"][0]
    t = pad_to(y, lead * (n // cfg["factors"][0]))
    return kron_apply_t(t, _pre_mats(state, cfg, y.dtype, lead), cfg["factors"]) * _pre_scale(cfg, y.dtype)


def _init_common(kind, rand, n, d, opts, gauss_len):
    n_pad = next_power_of_two(n)
    if d > n_pad:
        raise ValueError(f"{kind} sketch cannot map up: dim_out={d} exceeds the padded input size {n_pad}")
    pre = opts["preconditioner"]
    if pre not in PRECONDITIONERS:
        raise ValueError(f"{kind} sketch: preconditioner must be one of {PRECONDITIONERS}, got {pre!r}")
    cap = int(opts["max_factor"])
    if cap < 2 or cap & (cap - 1):
        raise ValueError(f"{kind} sketch: max_factor must be a power of two >= 2, got {opts['max_factor']!r}")
    factors = greedy_factors(n_pad, cap)
    # all randomness from one stream (`randomness.Randomness`), in this order
    state = {"signs": rand.rademacher((n_pad,)), "gauss": rand.normal((gauss_len(n_pad, d),))}
    if pre == "q":
        state["q_factors"] = tuple(haar_rows(rand.normal((f, f))) for f in factors)
    else:
        state["perm_rows"] = tuple(rand.permutation(f) for f in factors)
    cfg = {"padded": n_pad, "factors": factors, "preconditioner": pre, "max_factor": cap}
    return state, cfg


# ----------------------------------------------------------------------------- affd


def _affd_init(rand, n, d, opts):
    state, cfg = _init_common("affd", rand, n, d, opts, lambda n_pad, d: n_pad)
    state["perm_cols"] = tuple(rand.permutation(f) for f in cfg["factors"])
    return state, cfg


def _post_mats(state, cfg, dtype, rows):
    """The factors of H^{pi2} (columns permuted): the leading one cut to `rows` rows (an int), or
    every factor i cut to rows[i] (a tuple, `_kept_rows`)."""
    mats = [_hadamard(f, dtype)[:, p] for f, p in zip(cfg["factors"], state["perm_cols"])]
    if isinstance(rows, tuple):
        return [m[:r] for m, r in zip(mats, rows)]
    mats[0] = mats[0][:rows]
    return mats


def _affd_apply(state, cfg, x):
    n, d = cfg["padded"], cfg["dim_out"]
    z = precondition(state, cfg, pad_to(x, n) * cast(state["signs"], x))
    z = z * cast(state["gauss"], x)
    t = kron_apply(z, _post_mats(state, cfg, x.dtype, _computed_rows(d, cfg["factors"])), cfg["factors"])
    return _crop_kept(t, d, cfg["factors"]) * jnp.asarray(1.0 / math.sqrt(d), x.dtype)  # sqrt(N/D) / sqrt(N)


def _affd_transpose(state, cfg, y):
    n, d = cfg["padded"], cfg["dim_out"]
    lead = _first_rows(d, cfg["factors"])
    t = pad_to(y * jnp.asarray(1.0 / math.sqrt(d), y.dtype), lead * (n // cfg["factors"][0]))
    z = kron_apply_t(t, _post_mats(state, cfg, y.dtype, lead), cfg["factors"]) * cast(state["gauss"], y)
    return (precondition_t(state, cfg, z) * cast(state["signs"], y))[:, : cfg["dim_in"]]


OPTIONS = {"preconditioner": "hadamard", "max_factor": DEFAULT_MAX_FACTOR}
register("affd", Family(_affd_init, _affd_apply, _affd_transpose, dict(OPTIONS), __doc__, stream=True))


# ----------------------------------------------------------------------------- afjl


def _afjl_init(rand, n, d, opts):
    return _init_common("afjl", rand, n, d, opts, lambda n_pad, d: d)


def _afjl_apply(state, cfg, x):
    n, d = cfg["padded"], cfg["dim_out"]
    z = precondition(state, cfg, pad_to(x, n) * cast(state["signs"], x), rows=d)
    return z * cast(state["gauss"], x) * jnp.asarray(math.sqrt(n / d), x.dtype)


def _afjl_transpose(state, cfg, y):
    n, d = cfg["padded"], cfg["dim_out"]
    z = y * cast(state["gauss"], y) * jnp.asarray(math.sqrt(n / d), y.dtype)
    return (precondition_t(state, cfg, z) * cast(state["signs"], y))[:, : cfg["dim_in"]]


register("afjl", Family(_afjl_init, _afjl_apply, _afjl_transpose, dict(OPTIONS), __doc__, stream=True))
