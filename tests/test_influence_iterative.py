"""CG, LiSSA and Arnoldi influence against the exact (dense) influence function, float64."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from plain_logreg import fitted_digits, plain_logreg  # tests/ helper module

from workbench import curvature, data, influence, spectrum  # noqa: E402
from workbench.core import statistics

N_TRAIN, N_TEST, L2 = 120, 10, 1e-2


LogReg = plain_logreg(L2)


@pytest.fixture(scope="module")
def problem():
    params, train, test = fitted_digits(LogReg, N_TRAIN, N_TEST)
    exact = influence.make("exact", LogReg.loss_fn, params, train)
    return params, train, test, exact, np.asarray(exact.scores(test))


def _corr(a, b):
    return float(np.mean(statistics.pearson_rows(a, b)))


def test_cg_matches_exact(problem):
    params, train, test, _, ref = problem
    est = influence.make("cg", LogReg.loss_fn, params, train)
    s = np.asarray(est.scores(test))
    assert _corr(s, ref) >= 0.99
    np.testing.assert_allclose(s, ref, rtol=1e-6, atol=1e-8 * np.abs(ref).max())
    # Gauss-Newton equals the Hessian for softmax cross-entropy: same scores through kind="ggn"
    ggn = influence.make("cg", LogReg.loss_fn, params, train, kind="ggn", damping=0.1,
                         operator_options={"predict_fn": LogReg.predict_fn, "output_loss_fn": LogReg.output_loss_fn, "l2": L2})
    damped = influence.make("exact", LogReg.loss_fn, params, train, damping=0.1)
    np.testing.assert_allclose(ggn.scores(test), damped.scores(test), rtol=1e-6, atol=1e-9)


def test_lissa_matches_exact(problem):
    params, train, test, _, ref = problem
    est = influence.make("lissa", LogReg.loss_fn, params, train, num_iters=1500, key=jax.random.key(0))
    scores = np.asarray(est.scores(test))
    assert _corr(scores, ref) >= 0.99
    assert est.info["scale"] > 0
    # values, not only correlations: a dropped 1/scale or a scale error moves every score
    np.testing.assert_allclose(scores, ref, rtol=2e-2, atol=2e-3 * np.abs(ref).max())


def test_lissa_flags_a_diverged_series_and_not_a_slow_one(problem, key):
    """Below half the top eigenvalue the Neumann series diverges: scoring raises instead of
    returning its partial sum; between half and all of it the series converges (slowly), with
    no false alarm."""
    params, train, test, _, ref = problem
    top = float(spectrum.top_eigenpairs(curvature.operator(LogReg.loss_fn, params, train), key, 1).values[0])
    for scale, num_iters in ((0.3 * top, 40), (0.45 * top, 200)):
        est = influence.make("lissa", LogReg.loss_fn, params, train, scale=scale, num_iters=num_iters)
        with pytest.raises(RuntimeError, match="LiSSA series diverged.*half the largest eigenvalue"):
            est.scores(test)
    slow = influence.make("lissa", LogReg.loss_fn, params, train, scale=0.6 * top, num_iters=1500)
    np.testing.assert_allclose(slow.scores(test), ref, rtol=2e-2, atol=2e-3 * np.abs(ref).max())


def test_arnoldi_matches_exact_and_uses_spectrum_eigenpairs(problem, key):
    params, train, test, exact, ref = problem
    large = influence.make("arnoldi", LogReg.loss_fn, params, train, k=300, key=key)
    assert _corr(np.asarray(large.scores(test)), ref) >= 0.99
    # with k = the dimension Arnoldi is exact, in value
    full = influence.make("arnoldi", LogReg.loss_fn, params, train, k=650, key=key)
    np.testing.assert_allclose(full.scores(test), ref, rtol=1e-6, atol=1e-8 * np.abs(ref).max())
    small = influence.make("arnoldi", LogReg.loss_fn, params, train, k=20, key=key, tail="none")
    # its eigenpairs are those of workbench.spectrum on the same operator, and of the dense Hessian
    op = curvature.operator(LogReg.loss_fn, params, train)
    depth = small.info["num_iters"]  # default 2k + 20: one factorization, no residual matvecs
    assert depth == 60
    eig = spectrum.top_eigenpairs(op, key, 20, method="arnoldi", num_iters=depth)
    np.testing.assert_allclose(small.state["values"], eig.values, rtol=1e-10)
    dense = np.linalg.eigvalsh(np.asarray(curvature.dense_hessian(LogReg.loss_fn, params, train)))[::-1][:20]
    np.testing.assert_allclose(small.state["values"], dense, rtol=1e-8)
    overlap = np.abs(np.sum(np.asarray(small.state["vectors"]) * np.asarray(eig.vectors), axis=1))
    np.testing.assert_allclose(overlap, 1.0, atol=1e-6)
    # JVP projections equal projections of explicit gradients
    np.testing.assert_allclose(small.train_features(), exact.train_features() @ small.state["vectors"].T, rtol=1e-8, atol=1e-12)


def test_arnoldi_flat_tail_is_the_stated_formula_and_beats_top_k(problem, key):
    """Default tail="flat": V diag(1/lambda - 1/c) V^T + I/c with c the first discarded Ritz value."""
    params, train, test, exact, ref = problem
    est = influence.make("arnoldi", LogReg.loss_fn, params, train, k=20, key=key)
    top_k = influence.make("arnoldi", LogReg.loss_fn, params, train, k=20, key=key, tail="none")
    assert est.info["tail"] == "flat" and top_k.info["tail"] == "none"
    lam, vecs, c = np.asarray(est.state["values"]), np.asarray(est.state["vectors"]), est.info["tail_value"]
    hess_eigs = np.linalg.eigvalsh(np.asarray(curvature.dense_hessian(LogReg.loss_fn, params, train)))[::-1]
    assert hess_eigs[25] <= c <= hess_eigs[20] * (1 + 1e-8)  # a Ritz value below lambda_21, above the far tail
    g_test = np.asarray(influence.make("grad_dot", LogReg.loss_fn, params, train).test_features(test))
    g_train = np.asarray(exact.train_features())
    inverse = vecs.T @ np.diag(1 / lam - 1 / c) @ vecs + np.eye(vecs.shape[1]) / c
    np.testing.assert_allclose(est.scores(test), g_test @ inverse @ g_train.T, rtol=1e-8, atol=1e-10 * np.abs(ref).max())
    assert _corr(np.asarray(est.scores(test)), ref) > _corr(np.asarray(top_k.scores(test)), ref) + 0.05
    np.testing.assert_allclose(est.self_influence(), np.sum((g_train @ inverse) * g_train, axis=1), rtol=1e-8)
    with pytest.raises(ValueError, match="tail must be"):
        influence.make("arnoldi", LogReg.loss_fn, params, train, k=20, tail="mean", key=jax.random.key(0))


def test_cg_on_an_indefinite_system_raises(key):
    train = data.make_classification(key, 60, 4, num_classes=3, dtype=jnp.float64)
    params = {"w1": jax.random.normal(key, (4, 8)), "w2": jax.random.normal(jax.random.key(1), (8, 3))}

    def loss(p, batch):
        x, y = batch
        logp = jax.nn.log_softmax(jnp.tanh(x @ p["w1"]) @ p["w2"])
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    est = influence.make("cg", loss, params, train)
    with pytest.raises(ValueError, match="non-positive curvature.*Raise the damping"):
        est.scores(train.take(np.arange(10)))


def test_deterministic_and_bad_k(problem, key):
    params, train, test, _, _ = problem
    a = influence.make("arnoldi", LogReg.loss_fn, params, train, k=20, key=key).scores(test)
    b = influence.make("arnoldi", LogReg.loss_fn, params, train, k=20, key=key).scores(test)  # same compile as above
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="k must be .auto. or an int in"):
        influence.make("arnoldi", LogReg.loss_fn, params, train, k=10_000, key=jax.random.key(0))


def test_silent_failures_are_reported_with_their_cause(problem, key):
    """Each way an iterative estimator used to return plausible numbers now raises, naming why."""
    params, train, test, _, _ = problem
    # a NaN test gradient: CG used to return scores of exactly 0 (its loop never ran)
    label = int(test.y[2])
    nan_measure = lambda p, b: LogReg.loss_fn(p, b) * jnp.where(b.y[0] == label, jnp.nan, 1.0)
    wrong = np.flatnonzero(np.asarray(test.y) == label)[:5].tolist()
    for name, opts in (("cg", {}), ("lissa", {"key": key}), ("exact", {})):
        est = influence.make(name, LogReg.loss_fn, params, train, measure_fn=nan_measure, **opts)
        with pytest.raises(FloatingPointError, match=re.escape(f"gradients of test examples {wrong}")):
            est.scores(test)
    # a NaN training loss is a NaN loss, not "raise the damping", even at damping 10
    nan_loss = lambda p, b: LogReg.loss_fn(p, b) + jnp.where(b.y[0] == 3, jnp.nan, 0.0)
    for name, opts in (("cg", {}), ("lissa", {"key": key}), ("arnoldi", {"key": key, "k": 5})):
        with pytest.raises(FloatingPointError, match="training loss is NaN or infinite"):
            influence.make(name, nan_loss, params, train, damping=10.0, **opts)
    # CG that cannot converge in its budget says so (it used to return the partial solve)
    short = influence.make("cg", LogReg.loss_fn, params, train, num_iters=2, tol=1e-14)
    with pytest.raises(RuntimeError, match="did not reach the relative residual"):
        short.scores(test)
    # LiSSA's scale from a power iteration that did not converge is refused
    with pytest.raises(RuntimeError, match="power iteration .* did not converge"):
        from workbench.spectrum import krylov
        original = krylov.power_iteration.__defaults__
        krylov.power_iteration.__defaults__ = (2, 1e-14)  # two products: cannot converge
        try:
            influence.make("lissa", LogReg.loss_fn, params, train, key=key)
        finally:
            krylov.power_iteration.__defaults__ = original
    # randomised estimators need an explicit key
    for name in ("arnoldi", "lissa", "trak"):
        with pytest.raises(ValueError, match="needs key="):
            influence.make(name, LogReg.loss_fn, params, train)
    # Ritz pairs that did not converge are announced
    with pytest.warns(RuntimeWarning, match="have not converged"):
        influence.make("arnoldi", LogReg.loss_fn, params, train, k=30, num_iters=31, key=key)


def test_arnoldi_defaults_report_the_tail_spread_and_warn_when_it_is_not_flat(problem, key):
    """On the strongly regularised problem the default flat tail is close to exact; on a barely
    regularised one the discarded spectrum spans decades, and the default says so."""
    params, train, test, _, ref = problem
    est = influence.make("arnoldi", LogReg.loss_fn, params, train, key=key)  # defaults: k=50, flat tail
    assert est.info["tail_spread"] < influence.TAIL_SPREAD_WARNING
    assert _corr(np.asarray(est.scores(test)), ref) >= 0.99
    # least squares whose feature scales span six decades: H = X^T X / n is anything but flat
    x = jax.random.normal(jax.random.key(5), (400, 60), jnp.float64) * jnp.logspace(0, -3, 60)
    y = x @ jnp.ones(60)
    squares = lambda w, b: 0.5 * jnp.mean((b[0] @ w["w"] - b[1]) ** 2)
    with pytest.warns(RuntimeWarning, match="discarded spectrum is far from flat"):
        est = influence.make("arnoldi", squares, {"w": jnp.zeros(60)}, (x, y), k=10, key=key)
    assert est.info["tail_spread"] > 1e3
    # fewer examples than parameters and no damping: the smallest eigenvalue is 0, the spread has
    # no bound, and the warning says so in words (it used to print "(infx)")
    with pytest.warns(RuntimeWarning, match=r"far from flat.*\(a ratio without bound\)") as record:
        est = influence.make("arnoldi", squares, {"w": jnp.zeros(60)}, (x[:30], y[:30]), k=10, key=key)
    assert est.info["tail_spread"] == np.inf and "infx" not in str(record[0].message)


@pytest.mark.parametrize("l2, damping", [(1e-2, 0.0), (1e-3, 1e-3)], ids=["strong", "weak"])
def test_arnoldi_defaults_rank_like_exact(l2, damping, key):
    """The defaults (k='auto', flat tail) on digits logistic regression, strongly and weakly
    regularised: Spearman >= 0.95 against exact influence (k=50 gave 0.86 on the weak one)."""
    import warnings

    from scipy.stats import spearmanr

    from workbench.experiments.influence import fit_digits_logistic
    from workbench.influence.arnoldi import AUTO_SPREAD

    pb = fit_digits_logistic(400, 20, l2=l2, seed=0)
    exact = np.asarray(influence.make("exact", pb.model, pb.params, pb.train, damping=damping).scores(pb.test))
    with warnings.catch_warnings():
        # k='auto' deepens the Krylov space until its own criterion holds: no "no k ... leaves a
        # nearly flat discarded spectrum" warning (it stopped at depth 220 and k = 121 before)
        warnings.filterwarnings("error", message="arnoldi .k='auto'.", category=RuntimeWarning)
        est = influence.make("arnoldi", pb.model, pb.params, pb.train, damping=damping, key=key)
    got = np.asarray(est.scores(pb.test))
    rho = np.mean([spearmanr(a, b)[0] for a, b in zip(got, exact)])
    assert rho >= 0.97, (rho, est.info)
    assert est.info["k_auto"] >= 50 and est.info["tail_spread"] <= AUTO_SPREAD


def test_arnoldi_auto_deepens_the_krylov_space_until_its_criterion_holds(key, monkeypatch):
    """A first depth too shallow for any k to leave a flat discarded spectrum (60 on the weakly
    regularised digits problem): k='auto' doubles the depth until one does, with no warning."""
    import importlib
    import warnings

    from workbench.experiments.influence import fit_digits_logistic

    arnoldi_module = importlib.import_module("workbench.influence.arnoldi")  # the name `arnoldi` is the function

    monkeypatch.setattr(arnoldi_module, "AUTO_DEPTH", 60)
    pb = fit_digits_logistic(400, 5, l2=1e-3, seed=0)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="arnoldi .k='auto'.", category=RuntimeWarning)
        est = influence.make("arnoldi", pb.model, pb.params, pb.train, damping=1e-3, key=key)
    assert est.info["num_iters"] in (120, 240, 480) and est.info["num_iters"] > est.info["k_auto"]
    assert est.info["tail_spread"] <= arnoldi_module.AUTO_SPREAD, est.info
