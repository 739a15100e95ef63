"""Curvature diagonals (exact and Hutchinson) and the SciPy / matfree exports of an operator,
against dense float64 references built with jax.hessian / jax.jacfwd (never `op.dense()`)."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse.linalg
from flax import nnx

from workbench import curvature, data, models
from workbench.core import tree as tu

# the module (the package's attribute of that name is the function `diagonal`)
diagonal_module = sys.modules["workbench.curvature.diagonal"]


def _references(fn, ds, params):
    """Dense float64 Hessian (of the objective), GGN and empirical Fisher (data + l2 I)."""
    flat, unravel = tu.ravel(params)
    eye = fn.l2 * jnp.eye(flat.size)

    @jax.jit
    def dense(flat, x, y):
        hessian = jax.hessian(lambda f: fn.loss_fn(unravel(f), (x, y)))(flat)
        jac = jax.jacfwd(lambda f: fn.predict_fn(unravel(f), x))(flat)  # [n, out, p]
        outputs = fn.predict_fn(unravel(flat), x)
        h_out = jax.vmap(jax.hessian(lambda o, t: fn.output_loss_fn(o[None], t[None])[0]))(outputs, y)
        ggn = jnp.einsum("nap,nab,nbq->pq", jac, h_out, jac) / x.shape[0] + eye

        def example_loss(f, xi, yi):
            logits = fn.predict_fn(unravel(f), xi[None])[0]
            return jax.nn.logsumexp(logits) - logits[yi]

        grads = jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0))(flat, x, y)
        fisher = grads.T @ grads / x.shape[0] + eye
        return {"hessian": hessian, "ggn": ggn, "fisher": fisher}

    return {k: np.asarray(v) for k, v in dense(flat, ds.x, ds.y).items()}


@pytest.fixture(scope="module")
def problems():
    """An 8-16-3 tanh MLP (195 params, l2 = 0.05) on 40 Gaussian-blob examples: the float32 model
    and data, the same in float64, and the dense float64 references."""
    ds32 = data.make_classification(jax.random.key(3), 40, 8, num_classes=3, dtype=jnp.float32)
    fn32 = models.functional(models.MLP(8, [16], 3, rngs=nnx.Rngs(4)), l2=0.05)
    params64 = jax.tree.map(lambda a: a.astype(jnp.float64), fn32.params)
    fn64 = models.Functional(params64, *fn32[1:])  # the float32 model computes in its params' dtype
    ds64 = data.Dataset(ds32.x.astype(jnp.float64), ds32.y)
    return (fn32, ds32), (fn64, ds64), _references(fn64, ds64, params64)


@pytest.fixture(scope="module")
def problem(problems):
    _, (fn, ds), dense = problems
    return fn, ds, dense


@pytest.mark.parametrize("kind", curvature.KINDS)
def test_exact_diagonal_of_a_functional_with_l2_matches_dense(problem, kind):
    fn, ds, dense = problem
    result = curvature.dataset_diagonal(fn, fn.params, ds, kind)
    assert result.method == "exact" and result.num_probes == 0
    assert jax.tree.structure(result.values) == jax.tree.structure(fn.params)
    assert all(a.shape == b.shape and a.dtype == b.dtype
               for a, b in zip(jax.tree.leaves(result.values), jax.tree.leaves(fn.params), strict=True))
    np.testing.assert_allclose(result.flat, np.diag(dense[kind]), rtol=1e-11, atol=1e-14)
    assert not np.any(np.asarray(result.flat_std_error))


@pytest.mark.parametrize("kind", ["ggn", "fisher"])
def test_exact_diagonal_of_a_plain_loss_with_explicit_l2(problem, kind):
    """The data loss and an explicit l2 (data curvature + l2 I), with a short last chunk (16, 16,
    8 examples). The Hessian of a plain loss is the Functional's case: its `loss_fn` is plain."""
    fn, ds, dense = problem
    data_loss = lambda p, b: jnp.mean(fn.per_example_loss_fn(p, b))  # noqa: E731
    roles = {"l2": fn.l2}
    if kind == "ggn":
        roles.update(predict_fn=fn.predict_fn, output_loss_fn=fn.output_loss_fn)
    result = curvature.dataset_diagonal(data_loss, fn.params, ds, kind, chunk_size=16, **roles)
    np.testing.assert_allclose(result.flat, np.diag(dense[kind]), rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("kind", ["ggn", "fisher"])
def test_structured_exact_diagonal_equals_the_operator_s_unit_vector_products(problem, kind):
    fn, ds, _ = problem
    structured = curvature.dataset_diagonal(fn, fn.params, ds, kind)
    generic = curvature.diagonal(curvature.operator(fn, fn.params, ds, kind), max_vectors=64)
    np.testing.assert_allclose(structured.flat, generic.flat, rtol=1e-11, atol=1e-14)


def test_hutchinson_is_unbiased_with_the_variance_it_reports(problem, keys):
    """Over 7 keys x 195 entries: (estimate - exact) / true SE has mean ~0 and mean square ~1, with
    the true SE sqrt(sum_{j != i} A_ij^2 / m) from the dense matrix; the reported SE matches the
    true one; nearly every entry is within 4 reported SEs."""
    fn, ds, dense = problem
    op = curvature.operator(fn, fn.params, ds, "hessian")
    matrix, num_probes = dense["hessian"], 50
    exact = np.diag(matrix)
    true_se = np.sqrt((np.sum(matrix**2, axis=1) - exact**2) / num_probes)
    assert np.all(true_se > 0)
    results = [curvature.diagonal(op, key, method="hutchinson", num_probes=num_probes) for key in keys]
    assert all(r.num_probes == num_probes and r.method == "hutchinson" for r in results)
    estimates = np.stack([np.asarray(r.flat) for r in results])
    reported = np.stack([np.asarray(r.flat_std_error) for r in results])
    z_true = (estimates - exact) / true_se
    assert abs(z_true.mean()) < 0.15, z_true.mean()
    assert 0.8 < np.mean(z_true**2) < 1.25, np.mean(z_true**2)
    assert 0.9 < np.mean(reported / true_se) < 1.05, np.mean(reported / true_se)
    assert np.mean(np.abs(estimates - exact) < 4 * reported) > 0.995


def test_hutchinson_standard_error_shrinks_like_one_over_sqrt_probes(problem, key):
    fn, ds, dense = problem
    op = curvature.operator(fn, fn.params, ds, "hessian")
    matrix = dense["hessian"]
    spread = np.sqrt(np.sum(matrix**2, axis=1) - np.diag(matrix) ** 2)  # one probe's SD per entry
    for num_probes in (32, 512):  # one compiled program: the count is traced
        result = curvature.diagonal(op, key, method="hutchinson", num_probes=num_probes)
        ratio = np.asarray(result.flat_std_error) * np.sqrt(num_probes) / spread
        assert 0.9 < np.median(ratio) < 1.1, (num_probes, np.median(ratio))


def test_hutchinson_does_not_depend_on_the_probe_blocks(problem, key):
    fn, ds, _ = problem
    op = curvature.operator(fn, fn.params, ds, "hessian")
    one = curvature.diagonal(op, key, method="hutchinson", num_probes=50)
    blocks = curvature.diagonal(op, key, method="hutchinson", num_probes=50, max_vectors=7)
    np.testing.assert_allclose(blocks.flat, one.flat, rtol=1e-12)
    np.testing.assert_allclose(blocks.flat_std_error, one.flat_std_error, rtol=1e-9)
    other = curvature.diagonal(op, jax.random.fold_in(key, 1), method="hutchinson", num_probes=50)
    assert not np.allclose(other.flat, one.flat)


def test_hutchinson_of_a_diagonal_matrix_is_exact_with_zero_error(key):
    values = jnp.linspace(-1.0, 3.0, 9)
    result = curvature.diagonal(curvature.from_matrix(jnp.diag(values)), key, method="hutchinson",
                                num_probes=3)
    np.testing.assert_allclose(result.values, values, rtol=1e-15)
    np.testing.assert_array_equal(result.std_error, np.zeros(9))


def test_float32_diagonals(problems, key):
    (fn, ds), _, dense = problems
    for kind in curvature.KINDS:
        exact = curvature.dataset_diagonal(fn, fn.params, ds, kind)
        assert exact.flat.dtype == jnp.float32
        np.testing.assert_allclose(exact.flat, np.diag(dense[kind]), rtol=2e-4, atol=1e-6)
    op = curvature.operator(fn, fn.params, ds, "ggn")
    estimate = curvature.diagonal(op, key, method="hutchinson", num_probes=64)
    assert estimate.flat.dtype == jnp.float32 and estimate.flat_std_error.dtype == jnp.float32
    z = (np.asarray(estimate.flat, np.float64) - np.diag(dense["ggn"])) / np.asarray(estimate.flat_std_error)
    assert np.mean(np.abs(z) < 4) > 0.98


def test_bad_arguments_are_refused(problem, key, monkeypatch):
    fn, ds, _ = problem
    op = curvature.from_matrix(jnp.eye(4))
    with pytest.raises(ValueError, match="num_probes"):
        curvature.diagonal(op, key, method="hutchinson", num_probes=-3)
    with pytest.raises(ValueError, match="num_probes"):
        curvature.diagonal(op, key, method="hutchinson", num_probes=1)
    for bad in (0, jnp.zeros(2, jnp.float32), jax.random.split(key, 3), "key"):
        with pytest.raises(TypeError, match="key"):
            curvature.diagonal(op, bad, method="hutchinson")
    with pytest.raises(ValueError, match="key is required"):
        curvature.diagonal(op, method="hutchinson")
    with pytest.raises(ValueError, match="key is used by method='hutchinson' only"):
        curvature.diagonal(op, key)
    with pytest.raises(ValueError, match="method"):
        curvature.diagonal(op, method="lanczos")
    with pytest.raises(ValueError, match="max_vectors"):
        curvature.diagonal(op, max_vectors=0)
    with pytest.raises(TypeError, match="op"):
        curvature.diagonal(np.eye(4))
    with pytest.raises(ValueError, match="method"):
        curvature.dataset_diagonal(fn, fn.params, ds, "ggn", method="lanczos")
    with pytest.raises(ValueError, match=r"\(x, y\) pair"):
        curvature.dataset_diagonal(fn, fn.params, {"x": ds.x}, "ggn")
    # a legacy uint32[2] key is accepted
    curvature.diagonal(op, jax.random.PRNGKey(0), method="hutchinson", num_probes=2)


def test_exact_diagonal_is_refused_above_the_size_limit_unless_forced(problem, monkeypatch):
    fn, ds, _ = problem
    big = curvature.linear_operator(lambda v: 2.0 * v, jax.ShapeDtypeStruct((10_001,), jnp.float64))
    with pytest.raises(ValueError, match="10001-parameter"):
        curvature.diagonal(big)
    np.testing.assert_array_equal(curvature.diagonal(big, force=True, max_vectors=512).values, 2.0)
    monkeypatch.setattr(diagonal_module, "EXACT_MAX_DIM", 100)
    for kind in curvature.KINDS:
        with pytest.raises(ValueError, match="195-parameter"):
            curvature.dataset_diagonal(fn, fn.params, ds, kind)


def test_non_finite_products_raise():
    op = curvature.from_matrix(jnp.array([[1.0, jnp.nan], [jnp.nan, 1.0]]))
    with pytest.raises(FloatingPointError, match="diagonal"):
        curvature.diagonal(op)
    with pytest.raises(FloatingPointError, match="diagonal"):
        curvature.diagonal(op, jax.random.key(0), method="hutchinson", num_probes=4)


# ----------------------------------------------------------------------------- exports


def test_scipy_eigsh_finds_the_top_eigenvalues(problem, key):
    fn, ds, dense = problem
    op = curvature.operator(fn, fn.params, ds, "hessian")
    exported = curvature.to_scipy(op, np.float64)
    assert exported.shape == (op.dim, op.dim) and exported.dtype == np.float64
    top = scipy.sparse.linalg.eigsh(exported, k=4, which="LA", return_eigenvectors=False, tol=1e-13)
    np.testing.assert_allclose(np.sort(top), np.linalg.eigvalsh(dense["hessian"])[-4:], rtol=1e-10)
    columns = np.asarray(jax.random.normal(key, (op.dim, 3), jnp.float64))
    np.testing.assert_allclose(exported.matmat(columns), dense["hessian"] @ columns, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(exported.rmatvec(columns[:, 0]), dense["hessian"] @ columns[:, 0],
                               rtol=1e-10, atol=1e-13)
    assert exported.matvec(columns[:, :1]).shape == (op.dim, 1)


def test_scipy_export_of_a_float32_operator():
    matrix = np.diag(np.arange(1.0, 7.0)).astype(np.float32)
    op = curvature.from_matrix(jnp.asarray(matrix))
    assert curvature.to_scipy(op).dtype == np.float32
    wide = curvature.to_scipy(op, np.float64)
    out = wide.matvec(np.ones(6))
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, np.arange(1.0, 7.0))
    with pytest.raises(TypeError, match="dtype"):
        curvature.to_scipy(op, np.int32)
    with pytest.raises(TypeError, match="complex"):
        wide.matvec(np.ones(6, np.complex128))


def test_matfree_style_matvec_is_pure_and_jittable(problem, key):
    fn, ds, dense = problem
    op = curvature.operator(fn, fn.params, ds, "ggn")
    matvec, params = curvature.as_matvec(op)
    v = jax.random.normal(key, (op.dim,), jnp.float64)
    np.testing.assert_allclose(jax.jit(matvec)(v, *params), dense["ggn"] @ v, rtol=1e-10, atol=1e-13)
    again = curvature.operator(fn, jax.tree.map(lambda a: 2 * a, fn.params), ds, "ggn")
    assert curvature.as_matvec(again)[0] is matvec  # one function per operator kind

    matfree = pytest.importorskip("matfree.decomp")
    v0 = jax.random.normal(jax.random.fold_in(key, 1), (op.dim,), jnp.float64)
    decomposition = jax.jit(matfree.tridiag_sym(60), static_argnums=0)(matvec, v0, *params)
    ritz = np.linalg.eigvalsh(np.asarray(decomposition.J_small))
    np.testing.assert_allclose(ritz[-3:], np.linalg.eigvalsh(dense["ggn"])[-3:], rtol=1e-8)
