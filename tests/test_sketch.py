"""Sketch family: FWHT against scipy, exact adjoints, unbiased norms, distortion bounds, failure case."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from workbench import sketch as sk
from workbench.sketch.kronecker import balanced_output_dims

STRUCTURED = ("countsketch", "srht", "fjl", "ffd", "affd", "afjl", "qk")


@functools.cache
def _ratio_fn(kind, n, d, opts):
    def one(k, x):
        return jnp.sum(sk.make(kind, k, n, d, **dict(opts)).apply(x) ** 2, axis=-1) / jnp.sum(x**2, axis=-1)

    return jax.jit(jax.vmap(one, in_axes=(0, None)))


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


@pytest.mark.parametrize("kind", sk.KINDS)
@pytest.mark.parametrize("n", [200])
def test_transpose_is_exact_adjoint(kind, n, key):
    d = 32
    opts = {"block": 64} if kind == "ffd" else {}
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


@pytest.mark.parametrize("kind", sk.KINDS)
def test_norms_are_unbiased_with_the_derived_variance(kind, key):
    """E||Phi x||^2 = ||x||^2 within 5 standard errors, Var <= c/D (c from the module docstrings)."""
    n, d = 300, 64
    x = jax.random.normal(jax.random.key(3), (n,), jnp.float64)
    r = _ratios(kind, key, x, d, num_keys=400)
    se = r.std() / np.sqrt(r.size)
    assert abs(r.mean() - 1.0) < 5 * se + 1e-12, (r.mean(), se)
    # Gaussian-like inputs: every kind should be close to the dense 2/D
    var_bound = {"qk": np.prod([1 + 2 / di for di in balanced_output_dims(d, 2)]) - 1}.get(kind, 4.0 / d)
    assert r.var() <= 1.3 * var_bound, (r.var(), var_bound)


def test_dense_and_countsketch_variance_match_closed_form(key):
    n, d = 200, 32
    x = jnp.asarray(np.random.default_rng(0).standard_t(2.0, size=n))  # heavy tailed
    s2, s4 = float(jnp.sum(x**2)), float(jnp.sum(x**4))
    expected = {"dense": 2 / d, "countsketch": 2 / d * (1 - s4 / s2**2)}
    for kind, var in expected.items():
        r = _ratios(kind, key, x, d, num_keys=3000)
        assert abs(r.var() / var - 1) < 0.15, (kind, r.var(), var)


def _inputs(n, block):
    rng = np.random.default_rng(7)
    one_block = np.zeros(n)
    one_block[block : 2 * block] = rng.normal(size=block)  # all mass in the second Hadamard block
    one_hot = np.zeros(n)
    one_hot[n // 3] = 1.0
    return {
        "gaussian": rng.normal(size=n),
        "heavy_tailed": rng.standard_cauchy(size=n),
        "one_hot": one_hot,
        "one_block": one_block,
    }


N_ADV, D_ADV, B_ADV = 1 << 12, 64, 64  # D * B / N = 1: one kept row per block on average


@pytest.mark.parametrize("kind", ["dense", "countsketch", "srht", "fjl", "affd", "afjl", "qk"])
def test_distortion_quantiles_within_chebyshev_bounds(kind, key):
    """With Var <= c/D, Chebyshev gives median |eps| <= sqrt(2c/D) and q90 <= sqrt(10c/D)."""
    c = D_ADV * (np.prod([1 + 2 / di for di in balanced_output_dims(D_ADV, 2)]) - 1) if kind == "qk" else 8.0
    inputs = _inputs(N_ADV, B_ADV)
    num_keys = 100 if kind == "dense" else 150
    eps = np.abs(_ratios(kind, key, jnp.asarray(np.stack(list(inputs.values()))), D_ADV, num_keys=num_keys) - 1)
    for name, e in zip(inputs, eps.T):
        med, q90 = np.quantile(e, [0.5, 0.9])
        assert med <= np.sqrt(2 * c / D_ADV), (name, med)
        assert q90 <= np.sqrt(10 * c / D_ADV), (name, q90)


def test_fastfood_fails_when_mass_sits_in_one_block_and_the_a_variants_do_not(key):
    """ffd keeps ~Hypergeometric(N, B, D) rows of the loaded block: P(Phi x = 0) ~ exp(-DB/N)."""
    x = jnp.asarray(_inputs(N_ADV, B_ADV)["one_block"])
    r = _ratios("ffd", key, x, D_ADV, num_keys=1000, block=B_ADV)
    p_zero = np.mean(r < 1e-12)
    expected = np.exp(-D_ADV * B_ADV / N_ADV)  # 0.37
    assert abs(p_zero - expected) < 5 * np.sqrt(expected * (1 - expected) / r.size), p_zero
    assert np.quantile(np.abs(r - 1), 0.9) > 1.0  # O(1) distortion whatever D
    assert abs(r.mean() - 1) < 0.3  # still unbiased: the failure is variance, not bias
    for kind in ("affd", "afjl", "qk"):  # same input, same D: bounded by their O(1/D) variance
        opts = {} if kind == "qk" else {"block": B_ADV}
        r = _ratios(kind, key, x, D_ADV, num_keys=200, **opts)
        assert np.mean(r < 1e-12) == 0, kind
        assert np.quantile(np.abs(r - 1), 0.9) <= np.sqrt(10 * 8.0 / D_ADV), kind


@pytest.mark.parametrize("kind", sk.KINDS)
def test_apply_tree_equals_apply_on_the_raveled_tree(kind, key):
    tree = {"w": jnp.arange(30.0).reshape(5, 6) / 7, "b": {"c": jnp.ones(3), "a": jnp.linspace(0, 1, 4)}}
    flat, _ = jax.flatten_util.ravel_pytree(tree)
    s = sk.make(kind, key, flat.size, 16, **({"block": 16} if kind == "ffd" else {}))
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
def test_structured_state_is_linear_in_dim_in(kind, key):
    n, d = 5000, 256
    s = sk.make(kind, key, n, d)
    assert s.state_size <= 4 * 8192 + 2 * d, s.state_size  # O(padded n), never d * n = 1.3M
    assert all(a.ndim <= 2 and a.size < d * n / 10 for a in jax.tree.leaves(s.state))


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
    for kind in ("srht", "ffd", "affd"):
        with pytest.raises(ValueError, match="cannot map up"):
            sk.make(kind, key, 100, 1000)
    assert sk.make("countsketch", key, 100, 1000).apply(jnp.ones(100)).shape == (1000,)
    with pytest.raises(ValueError, match="unknown option"):
        sk.make("srht", key, 100, 16, blok=4)
    with pytest.raises(ValueError, match="kind must be one of"):
        sk.make("gauss", key, 100, 16)
    with pytest.raises(ValueError, match="width-1"):
        sk.make("qk", key, 100, 13)
    with pytest.raises(ValueError, match="dim_out must be a positive int"):
        sk.make("dense", key, 100, 0)


def _tree_params():
    rng = np.random.default_rng(5)
    return {"dense": {"kernel": jnp.asarray(rng.normal(size=(6, 5))), "bias": jnp.asarray(rng.normal(size=5))},
            "conv": jnp.asarray(rng.normal(size=(2, 3, 4))), "scale": jnp.asarray(rng.normal())}


def test_per_leaf_qk_is_an_unbiased_adjoint_pair_and_apply_tree_equals_apply(key):
    params = _tree_params()
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    s = sk.for_params("qk", key, params, 16)
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
    st = sk.for_params("qk", key, twin, 16)
    e = jnp.eye(32, dtype=jnp.float64)
    assert not np.allclose(st.apply(e[:16]), st.apply(e[16:]))
    # unbiased over keys, variance within the rank-one (worst-case) Kronecker bound
    one = jax.jit(jax.vmap(lambda k: jnp.sum(sk.for_params("qk", k, params, 64).apply(flat) ** 2) / jnp.sum(flat**2)))
    r = np.asarray(one(jax.random.split(key, 1000)))
    assert abs(r.mean() - 1.0) < 5 * r.std() / np.sqrt(r.size), r.mean()
    assert r.var() <= np.prod([1 + 2 / di for di in balanced_output_dims(64, 2)]) - 1, r.var()


def test_per_leaf_qk_refuses_mismatched_leaves(key):
    with pytest.raises(ValueError, match="hold 30 scalars but dim_in=31"):
        sk.make("qk", key, 31, 16, leaf_shapes=[[6, 5]])
    with pytest.raises(ValueError, match="factors=2"):
        sk.make("qk", key, 30, 8, leaf_shapes=[[6, 5]], factors=3)
    s = sk.for_params("qk", key, _tree_params(), 16)
    with pytest.raises(ValueError, match="tree has 31 scalars"):  # another tree falls back to ravel and is refused
        s.apply_tree({"w": jnp.ones(31)})
