"""Sketch family: FWHT against scipy, exact adjoints, unbiased norms, the paper's definitions
checked entry by entry (float64), distribution checks (Theorems 3.1 and 3.3), failure cases."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from workbench import sketch as sk
from workbench.sketch import quality
from workbench.sketch.kinds.kronecker import balanced_output_dims

STRUCTURED = ("countsketch", "srht", "fjl", "ffd", "affd", "afjl", "qk", "kronecker")
# every construction, with the pre-conditioner variants, and small factors so several modes run
VARIANTS = [(k, {}) for k in sk.KINDS] + [
    ("affd", {"preconditioner": "fft"}), ("affd", {"preconditioner": "q"}), ("affd", {"max_factor": 4}),
    ("afjl", {"preconditioner": "fft"}), ("afjl", {"preconditioner": "q", "max_factor": 8}),
    ("qk", {"max_factor": 8}), ("qk", {"max_factor": 16, "dims_out": (5, 9)}),
]
VARIANT_IDS = [k + "".join(f"-{v}" for v in o.values()) for k, o in VARIANTS]


@functools.cache
def _ratio_fn(kind, n, d, opts):
    def one(k, x):
        return jnp.sum(sk.make(kind, k, n, d, **dict(opts)).apply(x) ** 2, axis=-1) / jnp.sum(x**2, axis=-1)

    return jax.jit(lambda keys, x: jax.lax.map(lambda k: one(k, x), keys, batch_size=32))


def _ratios(kind, key, x, d, num_keys=400, **opts):
    """||Phi x||^2 / ||x||^2 over `num_keys` independent sketches ([keys] or [keys, batch])."""
    fn = _ratio_fn(kind, x.shape[-1], d, tuple(sorted(opts.items())))
    return np.asarray(fn(jax.random.split(key, num_keys), x))


@pytest.mark.parametrize("n", [1, 2, 64, 1024])
@pytest.mark.parametrize("block_size", [2, 4, 8, 32])
def test_fwht_matches_scipy_hadamard(n, block_size):
    x = np.random.default_rng(n).normal(size=(3, n))
    expected = x @ scipy.linalg.hadamard(n).T / np.sqrt(n)
    got = np.asarray(sk.fwht(jnp.asarray(x), block_size))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_fwht_rejects_bad_input():
    with pytest.raises(ValueError, match="power of two"):
        sk.fwht(jnp.ones(12))
    with pytest.raises(ValueError, match="block_size"):
        sk.fwht(jnp.ones(16), block_size=3)


@pytest.mark.parametrize(("kind", "opts"), VARIANTS, ids=VARIANT_IDS)
def test_transpose_is_exact_adjoint(kind, opts, key):
    n, d = 200, 32
    s = sk.make(kind, key, n, d, **opts)
    kx, ky = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (4, n), jnp.float64)
    y = jax.random.normal(ky, (4, d), jnp.float64)
    lhs, rhs = jnp.sum(s.apply(x) * y, axis=1), jnp.sum(x * s.transpose(y), axis=1)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-11, atol=1e-11)
    # one vector at a time equals the batch (kinds switch memory layout with the batch size)
    np.testing.assert_allclose(s.apply(x[1]), s.apply(x)[1], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(s.transpose(y[1]), s.transpose(y)[1], rtol=1e-12, atol=1e-13)
    # and it is the transpose of the materialised matrix (columns = apply on the identity)
    mat = s.apply(jnp.eye(n, dtype=jnp.float64)).T
    np.testing.assert_allclose(s.transpose(jnp.eye(d, dtype=jnp.float64)), mat, atol=1e-12)
    # float32 (what users get by default) keeps its dtype and agrees with float64
    y32 = s.apply(x.astype(jnp.float32))
    assert y32.dtype == jnp.float32 and s.transpose(y32).dtype == jnp.float32
    np.testing.assert_allclose(y32, s.apply(x), rtol=2e-4, atol=2e-4 * float(jnp.abs(s.apply(x)).max()))


VAR_BOUND = {"afjl": 10.0, "qk": 6.0}  # x 1/D; afjl's Gaussian weights cost ~4x (E g^4 = 3)


@pytest.mark.parametrize("kind", sk.KINDS)
def test_norms_are_unbiased_with_the_derived_variance(kind, key):
    """E||Phi x||^2 = ||x||^2 within 5 standard errors, Var <= c/D (c from the module docstrings)."""
    n, d = 300, 64
    x = jax.random.normal(jax.random.key(3), (n,), jnp.float64)
    r = _ratios(kind, key, x, d, num_keys=400)
    se = r.std() / np.sqrt(r.size)
    assert abs(r.mean() - 1.0) < 5 * se + 1e-12, (r.mean(), se)
    if kind == "kronecker":
        var_bound = np.prod([1 + 2 / di for di in balanced_output_dims(d, 2)]) - 1
    else:
        var_bound = VAR_BOUND.get(kind, 4.0) / d
    assert r.var() <= 1.3 * var_bound, (r.var(), var_bound)


def test_afjl_pays_about_four_times_the_variance_of_affd(key):
    """The paper's reason AFJL needs ~4x the D: Var = (E g^4 - 1 + ...) / D ~ 4 x 2/D vs ~2/D."""
    x = jax.random.normal(jax.random.key(3), (1024,), jnp.float64)
    v = {kind: _ratios(kind, key, x, 64, num_keys=2000).var() for kind in ("affd", "afjl")}
    assert 2.5 < v["afjl"] / v["affd"] < 6.0, v


def test_dense_and_countsketch_variance_match_closed_form(key):
    n, d = 200, 32
    x = jnp.asarray(np.random.default_rng(0).standard_t(2.0, size=n))  # heavy tailed
    s2, s4 = float(jnp.sum(x**2)), float(jnp.sum(x**4))
    expected = {"dense": 2 / d, "countsketch": 2 / d * (1 - s4 / s2**2)}
    for kind, var in expected.items():
        r = _ratios(kind, key, x, d, num_keys=3000)
        assert abs(r.var() / var - 1) < 0.15, (kind, r.var(), var)


# ----------------------------------------------------------------------------- the paper's definitions


def _kron(mats):
    out = np.ones((1, 1))
    for m in mats:
        out = np.kron(out, np.asarray(m, np.float64))
    return out


def _real_fourier_matrix(n):
    """The orthonormal real Fourier basis in our layout, from numpy's FFT of the identity."""
    z = np.fft.rfft(np.eye(n), norm="ortho", axis=0)  # column j: rfft of e_j
    rows = [z[0].real, z[n // 2].real]
    for k in range(1, n // 2):
        rows += [np.sqrt(2) * z[k].real, np.sqrt(2) * z[k].imag]
    return np.stack(rows)


def _materialised(s):
    return np.asarray(s.apply(jnp.eye(s.dim_in, dtype=jnp.float64)), np.float64).T  # [D, n]


def _preconditioner_matrix(s):
    st, cfg = s.state, s.options
    n = cfg["padded"]
    if cfg["preconditioner"] == "fft":
        return _real_fourier_matrix(n)
    if cfg["preconditioner"] == "q":
        return _kron(st["q_factors"])
    return _kron([scipy.linalg.hadamard(f)[np.asarray(p)] for f, p in zip(cfg["factors"], st["perm_rows"])]) / np.sqrt(n)


@pytest.mark.parametrize("opts", [{}, {"preconditioner": "fft"}, {"preconditioner": "q"}, {"max_factor": 4}],
                         ids=["hadamard", "fft", "q", "hadamard-f4"])
def test_affd_and_afjl_are_the_papers_formulas(opts, key):
    """AFFD = R_D sqrt(N/D) H^{pi2} G H^{pi1} B and AFJL = R_D sqrt(N/D) G H^{pi1} B, built here
    from scipy's Hadamard, numpy's FFT or the Q factors, entry by entry (eqs. 6-7)."""
    n, d = 50, 12
    for kind in ("affd", "afjl"):
        s = sk.make(kind, key, n, d, **opts)
        st, cfg = s.state, s.options
        big_n = cfg["padded"]
        assert big_n == 64 and np.prod(cfg["factors"]) == 64 and max(cfg["factors"]) <= cfg["max_factor"]
        pre = _preconditioner_matrix(s)
        np.testing.assert_allclose(pre @ pre.T, np.eye(big_n), atol=1e-6)  # orthogonal pre-conditioner
        b = np.diag(np.asarray(st["signs"], np.float64))
        g = np.asarray(st["gauss"], np.float64)
        if kind == "affd":
            post = _kron([scipy.linalg.hadamard(f)[:, np.asarray(p)] for f, p in zip(cfg["factors"], st["perm_cols"])])
            full = np.sqrt(big_n / d) * (post / np.sqrt(big_n)) @ np.diag(g) @ pre @ b
        else:
            assert g.shape == (d,)  # only the kept coordinates carry a weight
            full = np.sqrt(big_n / d) * np.diag(np.concatenate([g, np.zeros(big_n - d)])) @ pre @ b
        expected = full[:d, :n]  # R_D: the FIRST D coordinates; the input is zero-padded to N
        np.testing.assert_allclose(_materialised(s), expected, rtol=1e-6, atol=1e-6)


def test_ffd_is_the_transpose_of_the_fastfood_feature_map(key):
    """FFD = sum_b B_b H_D Pi_b^T G_b H_D x_b (eqs. 3-4): a sum over input blocks of size D, no
    subsampling, sigma = 1; its transpose is Fastfood's feature map [V_b w]_b."""
    n, d = 70, 16  # 5 blocks, the last zero-padded
    s = sk.make("ffd", key, n, d)
    st = {k: np.asarray(v, np.float64) for k, v in s.state.items() if k != "key"}
    h = scipy.linalg.hadamard(d) / np.sqrt(d)
    blocks = []
    for b in range(5):
        pi = np.eye(d)[st["perm"][b].astype(int)]  # (Pi v)_i = v_perm[i]
        v = h @ np.diag(st["gauss"][b]) @ pi @ h @ np.diag(st["signs"][b])  # Fastfood block
        blocks.append(v.T)
    expected = np.concatenate(blocks, axis=1)[:, :n]
    np.testing.assert_allclose(_materialised(s), expected, rtol=1e-6, atol=1e-6)


def test_qk_is_the_papers_truncated_kronecker_of_orthogonal_rows(key):
    """QK = R_D sqrt(N'/D) (Q1 (x) Q2) with Q_i the first D_i rows of a Haar orthogonal matrix."""
    s = sk.make("qk", key, 200, 30, max_factor=16)
    cfg = s.options
    assert cfg["dims_in"] == (13, 16) and np.prod(cfg["dims_out"]) >= 30  # remainder first, then 16
    qs = [np.asarray(q, np.float64) for q in s.state["factors"]]
    for q, (di, bi) in zip(qs, zip(cfg["dims_out"], cfg["dims_in"])):
        assert q.shape == (di, bi)
        np.testing.assert_allclose(q @ q.T, np.eye(di), atol=1e-6)  # orthonormal rows
    expected = np.sqrt(13 * 16 / 30) * _kron(qs)[:30, :200]
    np.testing.assert_allclose(_materialised(s), expected, rtol=1e-6, atol=1e-6)
    assert sk.make("qk", key, 1 << 20, 1 << 12).options["dims_in"] == (1024, 1024)
    assert sk.make("qk", key, 301_000, 1 << 12).options["dims_in"] == (294, 1024)


def test_qk_factors_are_haar_distributed(key):
    """A column of the first D rows of a Haar B x B matrix has ||.||^2 ~ Beta(D/2, (B-D)/2):
    check its mean and variance over draws, and that the entries are sign-symmetric."""
    from workbench.sketch.kinds.affd import haar_orthogonal

    qs = np.asarray(jax.jit(jax.vmap(lambda k: haar_orthogonal(k, 16, 4)))(jax.random.split(key, 3000)), np.float64)
    col = (qs[:, :, 0] ** 2).sum(1)
    a, b = 2.0, 6.0
    assert abs(col.mean() - a / (a + b)) < 4 * col.std() / np.sqrt(col.size)
    var = a * b / ((a + b) ** 2 * (a + b + 1))
    assert abs(col.var() / var - 1) < 0.15, (col.var(), var)
    assert abs(np.mean(qs[:, 0, 0] > 0) - 0.5) < 0.04  # sign correction: no bias in the first entry


def test_fjl_is_a_hadamard_then_a_sparse_gaussian(key):
    """FJL = sqrt(N/K) G_s H_N B with K = D ceil(log2 N)^2 i.i.d. sparse Gaussian entries."""
    n, d = 100, 8
    s = sk.make("fjl", key, n, d)
    st = {k: np.asarray(v) for k, v in s.state.items() if k != "key"}
    big_n, k = 128, s.options["nonzeros"]
    assert k == d * 7**2
    gs = np.zeros((d, big_n))
    np.add.at(gs, (st["rows"][0], st["cols"]), st["vals"][0].astype(np.float64))
    expected = gs @ (scipy.linalg.hadamard(big_n) / np.sqrt(big_n)) @ np.diag(st["signs"].astype(np.float64))
    np.testing.assert_allclose(_materialised(s), expected[:, :n], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.std(st["vals"][0]) * np.sqrt(k / big_n), 1.0, rtol=4 / np.sqrt(2 * k))  # N(0, N/K)


# ----------------------------------------------------------------------------- Theorems 3.1 and 3.3


@pytest.mark.parametrize("d", [16, 64])
def test_theorem_3_1_ffd_norm_ratio_is_chi_square_one(d, key):
    """On a row of H_D placed in one block, ||FFD x||^2 = g^2 for the block's Gaussian g at the
    hit coordinate, exactly, draw by draw; so P(ratio < 0.1) = 0.248 and P(|ratio - 1| > 0.5) =
    0.741 at every D, while AFFD and AFJL concentrate on the same input."""
    n, row = 4 * d, 3
    x = quality.hadamard_row_input(n, d, which=1, row=row)
    keys = jax.random.split(key, 2000)
    r = _ratios("ffd", key, jnp.asarray(x), d, num_keys=2000)
    g = np.asarray(jax.jit(jax.vmap(lambda k: sk.make("ffd", k, n, d).state["gauss"][1, row]))(keys), np.float64)
    np.testing.assert_allclose(r, g**2, rtol=1e-9)  # the theorem's identity
    for p, expected in ((np.mean(r < 0.1), 0.2482), (np.mean(np.abs(r - 1) > 0.5), 0.7415)):
        assert abs(p - expected) < 4 * np.sqrt(expected * (1 - expected) / r.size), (p, expected)
    if d == 64:  # the A-variants' spread is ~sqrt(2/D) (AFFD) and ~sqrt(8/D) (AFJL): small at D = 64
        for kind in ("affd", "afjl"):
            ra = _ratios(kind, key, jnp.asarray(x), d, num_keys=500)
            assert np.mean(np.abs(ra - 1) > 0.5) < {"affd": 0.1, "afjl": 0.35}[kind], kind
            assert np.mean(ra < 0.1) < 0.02, kind


def test_theorem_3_3_qk_spread_is_set_by_the_smallest_factor(key):
    """On a one-hot (rank-one) input, without truncation, ||QK x||^2 = prod_i (B_i/D_i) Beta(D_i/2,
    (B_i - D_i)/2): Var = prod_i (1 + 2 (B_i - D_i) / (D_i (B_i + 2))) - 1. Same D = 64, three splits."""
    n = 1024
    x = np.zeros(n)
    x[123] = 1.0
    for dims_out in ((8, 8), (2, 32), (32, 2)):
        r = _ratios("qk", key, jnp.asarray(x), 64, num_keys=2000, max_factor=32, dims_out=dims_out)
        var = np.prod([1 + 2 * (32 - di) / (di * 34) for di in dims_out]) - 1
        assert abs(r.mean() - 1) < 5 * r.std() / np.sqrt(r.size)
        assert abs(r.var() / var - 1) < 0.2, (dims_out, r.var(), var)


# ----------------------------------------------------------------------------- generic contract


@pytest.mark.parametrize("kind", sk.KINDS)
def test_apply_tree_equals_apply_on_the_raveled_tree(kind, key):
    tree = {"w": jnp.arange(30.0).reshape(5, 6) / 7, "b": {"c": jnp.ones(3), "a": jnp.linspace(0, 1, 4)}}
    flat, _ = jax.flatten_util.ravel_pytree(tree)
    s = sk.make(kind, key, flat.size, 16)
    np.testing.assert_allclose(s.apply_tree(tree), s.apply(flat), rtol=1e-13)
    batched = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), tree)
    np.testing.assert_allclose(s.apply_tree(batched, batched=True), s.apply(jnp.stack([flat, 2 * flat])), rtol=1e-13)
    with pytest.raises(ValueError, match="dim_in"):
        s.apply_tree({"w": jnp.ones(5)})


@pytest.mark.parametrize("kind", sk.KINDS)
def test_deterministic_for_a_key_and_jittable(kind, key):
    x = jnp.linspace(-1, 1, 100)
    a = sk.make(kind, key, 100, 16).apply(x)
    b = jax.jit(lambda s, v: s.apply(v))(sk.make(kind, key, 100, 16), x)
    np.testing.assert_allclose(a, b, rtol=1e-12)
    c = sk.make(kind, jax.random.key(1), 100, 16).apply(x)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("kind", STRUCTURED)
def test_structured_state_is_small(kind, key):
    n, d = 5000, 256
    s = sk.make(kind, key, n, d)
    limit = {"fjl": 8192 + 3 * d * 13**2}.get(kind, 4 * 8192 + 2 * d + 2 * 1024**2)
    assert s.state_size <= limit, s.state_size  # never d * n = 1.3M (fjl: D log^2 N non-zeros)
    if kind != "fjl":
        assert all(a.ndim <= 2 and a.size < d * n / 5 for a in jax.tree.leaves(s.state))


def test_dense_chunked_on_the_fly_is_an_unbiased_exact_adjoint(key):
    n, d = 1000, 16
    s = sk.make("dense", key, n, d, materialize_max=0, chunk=96)
    assert "matrix" not in s.state and s.options["chunk"] == 96
    x, y = jnp.linspace(-1, 2, n), jnp.linspace(1, 3, d)
    np.testing.assert_allclose(jnp.vdot(s.apply(x), y), jnp.vdot(x, s.transpose(y)), rtol=1e-11)
    r = _ratios("dense", key, x, d, num_keys=300, materialize_max=0, chunk=96)
    assert abs(r.mean() - 1) < 5 * r.std() / np.sqrt(300)
    rad = sk.make("dense", key, 50, 8, distribution="rademacher").state["matrix"]
    np.testing.assert_allclose(np.abs(rad) * np.sqrt(8), 1.0, rtol=1e-6)


def test_bad_input_errors(key):
    s = sk.make("srht", key, 100, 16)
    with pytest.raises(ValueError, match=r"x must have shape \[100\]"):
        s.apply(jnp.ones(99))
    with pytest.raises(ValueError, match="floating"):
        s.apply(jnp.ones(100, jnp.int32))
    with pytest.raises(ValueError, match=r"y must have shape \[16\]"):
        s.transpose(jnp.ones(100))
    for kind in ("srht", "affd", "afjl", "qk"):
        with pytest.raises(ValueError, match="cannot map up"):
            sk.make(kind, key, 100, 1000)
    assert sk.make("countsketch", key, 100, 1000).apply(jnp.ones(100)).shape == (1000,)
    with pytest.raises(ValueError, match="ffd sketch: dim_out must be a power of two"):
        sk.make("ffd", key, 100, 24)
    with pytest.raises(ValueError, match="preconditioner must be one of"):
        sk.make("affd", key, 100, 16, preconditioner="dct")
    with pytest.raises(ValueError, match="max_factor must be a power of two"):
        sk.make("afjl", key, 100, 16, max_factor=6)
    with pytest.raises(ValueError, match="dims_out"):
        sk.make("qk", key, 100, 16, max_factor=16, dims_out=(2, 2))
    with pytest.raises(ValueError, match="nonzeros must be an int >= 1"):
        sk.make("fjl", key, 100, 16, nonzeros=0)
    with pytest.raises(ValueError, match="unknown option"):
        sk.make("srht", key, 100, 16, blok=4)
    with pytest.raises(ValueError, match="kind must be one of"):
        sk.make("gauss", key, 100, 16)
    with pytest.raises(ValueError, match="width-1"):
        sk.make("kronecker", key, 100, 13)
    with pytest.raises(ValueError, match="dim_out must be an int >= 1"):
        sk.make("dense", key, 100, 0)


def test_describe_names_whose_construction_a_kind_is():
    for kind in sk.PAPER_KINDS:
        assert "The paper's construction" in sk.describe(kind)
    for kind in sk.OUR_KINDS:
        assert "Ours, not a construction of the paper" in sk.describe(kind)
    assert "haar" in sk.describe("qk").lower() and "chi-square" in sk.describe("ffd")
    with pytest.raises(ValueError, match="kind must be one of"):
        sk.describe("fastfood")


def _tree_params():
    rng = np.random.default_rng(5)
    return {"dense": {"kernel": jnp.asarray(rng.normal(size=(6, 5))), "bias": jnp.asarray(rng.normal(size=5))},
            "conv": jnp.asarray(rng.normal(size=(2, 3, 4))), "scale": jnp.asarray(rng.normal())}


@pytest.mark.standard_promotion
@pytest.mark.parametrize("kind", sk.PAPER_KINDS)
def test_explicit_and_implicit_sketching_of_a_gradient_agree(kind, key):
    """Phi grad L(theta0) = d/dw L(theta0 + Phi^T w) at w = 0, for one gradient and per example."""
    params = _tree_params()
    data = jnp.linspace(-1.0, 1.0, 60).reshape(6, 10)

    def loss_fn(p, batch):
        flat = jax.flatten_util.ravel_pytree(p)[0]
        return jnp.mean(jnp.tanh(batch @ flat[:10]) ** 2) + 0.1 * jnp.sum(flat**2) * jnp.mean(batch**2)

    s = sk.make(kind, key, 60, 16)
    explicit = sk.sketch_gradient(loss_fn, params, data, s)
    implicit = sk.sketch_gradient(loss_fn, params, data, s, method="implicit")
    g = jax.flatten_util.ravel_pytree(jax.grad(loss_fn)(params, data))[0]
    np.testing.assert_allclose(explicit, s.apply(g), rtol=1e-12)
    np.testing.assert_allclose(implicit, explicit, rtol=1e-10, atol=1e-13)
    pe = [sk.per_example_gradients(loss_fn, params, data, s, chunk_size=4, method=m) for m in ("explicit", "implicit")]
    np.testing.assert_allclose(pe[1], pe[0], rtol=1e-10, atol=1e-13)
    with pytest.raises(ValueError, match="method must be one of"):
        sk.sketch_gradient(loss_fn, params, data, s, method="both")


def test_per_leaf_kronecker_is_an_unbiased_adjoint_pair_and_apply_tree_equals_apply(key):
    params = _tree_params()
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    s = sk.for_params("kronecker", key, params, 16)
    assert s.dim_in == flat.size == 30 + 5 + 24 + 1
    x = jax.random.normal(jax.random.key(1), (3, s.dim_in), jnp.float64)
    y = jax.random.normal(jax.random.key(2), (3, 16), jnp.float64)
    np.testing.assert_allclose(jnp.sum(s.apply(x) * y, 1), jnp.sum(x * s.transpose(y), 1), rtol=1e-11)
    mat = s.apply(jnp.eye(s.dim_in, dtype=jnp.float64)).T
    np.testing.assert_allclose(s.transpose(jnp.eye(16, dtype=jnp.float64)), mat, atol=1e-12)
    np.testing.assert_allclose(s.apply_tree(jax.vmap(unravel)(x), batched=True), s.apply(x), rtol=1e-12)
    np.testing.assert_allclose(s.apply_tree(unravel(x[0])), s.apply(x[0]), rtol=1e-12)
    # each leaf has its own factors: two leaves of equal shape are not sketched alike
    twin = {"a": jnp.ones((4, 4)), "b": jnp.ones((4, 4))}
    st = sk.for_params("kronecker", key, twin, 16)
    e = jnp.eye(32, dtype=jnp.float64)
    assert not np.allclose(st.apply(e[:16]), st.apply(e[16:]))
    # unbiased over keys, variance within the rank-one (worst-case) Kronecker bound
    one = jax.jit(jax.vmap(lambda k: jnp.sum(sk.for_params("kronecker", k, params, 64).apply(flat) ** 2) / jnp.sum(flat**2)))
    r = np.asarray(one(jax.random.split(key, 1000)))
    assert abs(r.mean() - 1.0) < 5 * r.std() / np.sqrt(r.size), r.mean()
    assert r.var() <= np.prod([1 + 2 / di for di in balanced_output_dims(64, 2)]) - 1, r.var()


def test_per_leaf_kronecker_refuses_mismatched_leaves(key):
    with pytest.raises(ValueError, match="hold 30 scalars but dim_in=31"):
        sk.make("kronecker", key, 31, 16, leaf_shapes=[[6, 5]])
    with pytest.raises(ValueError, match="factors=2"):
        sk.make("kronecker", key, 30, 8, leaf_shapes=[[6, 5]], factors=3)
    s = sk.for_params("kronecker", key, _tree_params(), 16)
    with pytest.raises(ValueError, match="tree has 31 scalars"):  # another tree falls back to ravel and is refused
        s.apply_tree({"w": jnp.ones(31)})


@pytest.mark.parametrize("n,d,opts", [(1000, 16, {}), (5000, 700, {"max_factor": 8}), (70000, 4096, {}),
                                      (3000, 333, {"max_factor": 4, "preconditioner": "q"})])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_affd_afjl_cut_every_kronecker_mode_bit_for_bit(n, d, opts, dtype, key):
    """AFFD's H^{pi2} and AFJL's H^{pi1} compute only the rows of every Kronecker mode that the first
    D outputs touch (`_kept_rows`); the result equals, bit for bit, the earlier computation that cut
    the leading mode only and cropped the rest (one-row modes are computed as two rows, so XLA
    keeps the same matrix-product summation order). Both sides compiled, as `apply` runs."""
    from workbench.sketch.base import cast, pad_to
    from workbench.sketch.kinds import affd as A

    x = jax.random.normal(jax.random.fold_in(key, 1), (3, n), dtype)
    for kind in ("affd", "afjl"):
        s = sk.make(kind, key, n, d, **opts)
        st, cfg = s.state, dict(s.options)
        big_n, fs = cfg["padded"], cfg["factors"]
        lead = A._first_rows(d, fs)

        def before(v, kind=kind, st=st, cfg=cfg, big_n=big_n, fs=fs, lead=lead):  # the code before the cut
            vb = pad_to(v, big_n) * cast(st["signs"], v)
            if kind == "affd":
                z = A.kron_apply(vb, A._pre_mats(st, cfg, dtype), fs) * A._pre_scale(cfg, dtype)
                t = A.kron_apply(z * cast(st["gauss"], v), A._post_mats(st, cfg, dtype, lead), fs)
                return t[:, :d] * jnp.asarray(1.0 / np.sqrt(d), dtype)
            z = (A.kron_apply(vb, A._pre_mats(st, cfg, dtype, lead), fs) * A._pre_scale(cfg, dtype))[:, :d]
            return z * cast(st["gauss"], v) * jnp.asarray(np.sqrt(big_n / d), dtype)

        got, ref = s.apply(x), jax.jit(before)(x)
        assert got.dtype == ref.dtype == dtype
        np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
