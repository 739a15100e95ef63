"""Convex problems against exact optima, the vmapped SGD runner against sequential references,
and the Harvey et al. construction."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench import convex as C
from workbench import schedules as S
from workbench.convex import harvey


@pytest.fixture(scope="module")
def problems():
    return {"lad": C.least_absolute_deviations(jax.random.key(1), n=120, dim=4),
            "hinge": C.hinge_svm(jax.random.key(2), n=120, dim=4),
            "logistic": C.l1_logistic(jax.random.key(3), n=150, dim=6, l1=0.08)}


def test_lad_one_dimensional_optimum_is_weighted_median():
    p = C.least_absolute_deviations(jax.random.key(5), n=101, dim=1)
    x, y = np.asarray(p.data.x[:, 0]), np.asarray(p.data.y)
    # min_w sum |x_i| |w - y_i/x_i|: a weighted median of the ratios
    ratio, weight = y / x, np.abs(x)
    order = np.argsort(ratio)
    cum = np.cumsum(weight[order])
    w_ref = ratio[order][np.searchsorted(cum, 0.5 * cum[-1])]
    assert p.w_star[0] == pytest.approx(w_ref, abs=1e-9)


@pytest.mark.parametrize("name", ["lad", "hinge", "logistic"])
def test_optimum_is_not_beaten_nearby(problems, name):
    p = problems[name]
    f = jax.jit(jax.vmap(lambda w: C.objective(p, w)))
    assert float(C.objective(p, jnp.asarray(p.w_star))) == pytest.approx(p.f_star, abs=1e-12)
    rng = np.random.default_rng(0)
    for scale in (1e-6, 1e-4, 1e-2, 1e-1):
        delta = scale * rng.standard_normal((500, p.dim))
        assert np.min(np.asarray(f(jnp.asarray(p.w_star + delta)))) >= p.f_star - 1e-12


def test_lp_value_matches_objective(problems):
    # the LP's own optimal value (mean of slacks + l1 term) equals our objective at its solution
    import scipy.optimize

    p = problems["hinge"]
    x, y = np.asarray(p.data.x), np.asarray(p.data.y)
    n, d = x.shape
    yx = y[:, None] * x
    res = scipy.optimize.linprog(np.concatenate([np.full(2 * d, p.l1), np.full(n, 1 / n)]),
                                 A_ub=np.hstack([-yx, yx, -np.eye(n)]), b_ub=-np.ones(n),
                                 bounds=[(0, None)] * (2 * d + n), method="highs")
    assert res.fun == pytest.approx(p.f_star, abs=1e-9)
    assert np.any(np.abs(p.w_star) > 1e-3)  # a non-trivial solution


def test_l1_logistic_kkt_and_independent_solver(problems):
    p = problems["logistic"]
    w = p.w_star
    smooth = lambda v: jnp.mean(jnp.logaddexp(0.0, -p.data.y * (p.data.x @ v)))
    g = np.asarray(jax.grad(smooth)(jnp.asarray(w)))
    active = np.abs(w) > 1e-9
    assert active.any() and (~active).any()  # the l1 term zeroes some weights and not others
    np.testing.assert_allclose(g[active] + p.l1 * np.sign(w[active]), 0.0, atol=1e-8)
    assert np.all(np.abs(g[~active]) <= p.l1 + 1e-8)
    from sklearn.linear_model import LogisticRegression

    n = len(p.data)
    sk = LogisticRegression(l1_ratio=1.0, C=1 / (n * p.l1), solver="liblinear",
                            fit_intercept=False, tol=1e-12, max_iter=100000)
    sk.fit(np.asarray(p.data.x), np.asarray(p.data.y))
    np.testing.assert_allclose(sk.coef_[0], w, atol=1e-5)


def sequential_reference(p, schedule, key, steps, record_at, suffix_fraction):
    """Plain Python SGD with the runner's sampling; averages from the stored iterates."""
    x = np.zeros(p.dim)
    grad = jax.jit(jax.grad(lambda w, b: C.objective(p, w, b)))
    iterates = []
    for t in range(steps):
        idx = C.sample_indices(key, jnp.asarray(t), len(p.data), 2)
        lr = float(schedule(jnp.asarray(t)))
        x = x - lr * np.asarray(grad(jnp.asarray(x), p.data.take(idx)))
        iterates.append(x)
    its = np.array(iterates)
    last = its[record_at - 1]
    uniform = np.array([its[:T].mean(0) for T in record_at])
    suffix = np.array([its[T - math.ceil(suffix_fraction * T):T].mean(0) for T in record_at])
    return last, uniform, suffix


def test_runner_matches_python_reference(problems, key):
    p = problems["lad"]
    schedule = S.inverse_sqrt(0.3)
    steps = 160
    record = np.array([1, 2, 3, 7, 20, 40, 63, 64, 65, 128, steps])
    runner = C.make_sgd(p, schedule, num_steps=steps, batch_size=2, record_at=record,
                        suffix_fraction=0.3)
    got = runner.run_one(key)
    for mine, ref in zip(got, sequential_reference(p, schedule, key, steps, record, 0.3), strict=True):
        np.testing.assert_allclose(np.asarray(mine), ref, rtol=1e-12, atol=1e-14)


def test_vmapped_runner_equals_sequential_runs_exactly(problems, key):
    p = problems["logistic"]
    runner = C.make_sgd(p, S.linear_decay(0.05, 200), num_steps=200, batch_size=4, radius=2.0)
    keys = jax.random.split(key, 5)
    many = runner.run_many(keys)
    for seed in range(5):
        one = runner.run_one(keys[seed])
        for a, b in zip(many, one, strict=True):
            np.testing.assert_array_equal(np.asarray(a[seed]), np.asarray(b))


def test_run_sgd_defaults_converge_and_never_beat_optimum(problems, key):
    p = problems["hinge"]
    T = 1000
    D = float(np.linalg.norm(p.w_star))
    res = C.run_sgd(p, S.linear_decay(D / (p.lipschitz * math.sqrt(T)), T), key, num_steps=T, num_seeds=64)
    assert res.steps[0] == 1 and res.steps[-1] == T and len(res.steps) >= 20
    for gaps in (res.last, res.uniform, res.suffix):
        assert gaps.shape == (64, len(res.steps))
        assert gaps.min() >= -1e-12  # f* really is the minimum
    q = C.quantiles(res.last)
    assert q.shape == (3, len(res.steps)) and np.all(q[0] <= q[1]) and np.all(q[1] <= q[2])
    assert np.median(res.last[:, -1]) < 0.1 * np.median(res.last[:, 0])
    # linear decay: the last iterate beats the uniform average at the end (Defazio et al.)
    assert np.median(res.last[:, -1]) < np.median(res.uniform[:, -1])


def test_bad_runner_input(problems, key):
    p = problems["lad"]
    with pytest.raises(ValueError, match="num_steps must be an int >= 1"):
        C.make_sgd(p, S.constant(0.1), num_steps=0)
    with pytest.raises(ValueError, match=r"record_at must be increasing integers in \[1, num_steps=10\]"):
        C.make_sgd(p, S.constant(0.1), num_steps=10, record_at=[1, 20])
    with pytest.raises(ValueError, match="schedule goes negative at step 0"):
        C.make_sgd(p, lambda t: -0.1 * jnp.ones_like(t, jnp.float64), num_steps=10)
    with pytest.raises(ValueError, match=r"x0 must have shape \(4,\)"):
        C.make_sgd(p, S.constant(0.1), num_steps=10, x0=jnp.zeros(3))
    with pytest.raises(ValueError, match="num_seeds"):
        C.run_sgd(p, S.constant(0.1), key, num_steps=10, num_seeds=0)
    with pytest.raises(ValueError, match="l1 must be > 0"):
        C.l1_logistic(jax.random.key(0), l1=0.0)
    with pytest.raises(ValueError, match="horizons must be >= 2"):
        C.harvey_gd([1])


def test_harvey_value_matches_dense_max():
    T = 9
    a, b = harvey._harvey_coefficients(T)
    H = np.zeros((T + 1, T))
    for i in range(T + 1):
        H[i, :i] = a[:i]
        if i < T:
            H[i, i] = -b[i]
    assert np.linalg.norm(H, axis=1).max() <= 1.0  # 1-Lipschitz
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.standard_normal(T)
        value, i = C.harvey_value(jnp.asarray(x), jnp.asarray(a), jnp.asarray(b))
        assert float(value) == pytest.approx(float((H @ x).max()), rel=1e-12)
        assert int(i) == int(np.argmax(H @ x))


def test_harvey_lower_bound_holds_in_float32():
    """The theorem's last * sqrt(T) / log T >= 1/32 holds in float32 too (an absolute tie
    tolerance of 1e-10 broke it at T = 1024 and 4096)."""
    horizons = [256, 1024, 4096]
    res = C.harvey_gd(horizons, dtype=jnp.float32)
    ratio = res.last * np.sqrt(horizons) / np.log(horizons)
    assert np.all(ratio >= 1 / 32), ratio
    ref = C.harvey_gd(horizons)  # float64
    np.testing.assert_allclose(res.last, ref.last, rtol=1e-3)


def test_harvey_last_iterate_grows_like_log_T_over_sqrt_T():
    horizons = [32, 128, 512, 2048]
    res = C.harvey_gd(horizons)
    T = np.asarray(horizons, np.float64)
    last_ratio = res.last * np.sqrt(T) / np.log(T)
    avg_ratio = res.uniform * np.sqrt(T) / np.log(T)
    assert np.all(last_ratio >= 1 / 32)  # the theorem's lower bound, at every T
    assert np.all(res.uniform * np.sqrt(T) < 0.06)  # averages are O(1/sqrt T) ...
    assert np.all(np.diff(avg_ratio) < 0) and avg_ratio[-1] < 0.7 * avg_ratio[0]  # ... so -> 0
    assert np.all(np.diff(res.last / res.uniform) > 0)  # the gap between them widens like log T


def test_compare_schedules_shares_seeds_and_matches_run_sgd(problems, key):
    p = problems["lad"]
    shapes = {k: S.standard_shapes()[k] for k in ("constant", "linear decay")}
    out = C.compare_schedules(p, shapes, key, num_steps=300, num_seeds=8, lr_factor=2.0)
    D = float(np.linalg.norm(p.w_star))
    scale = 2.0 * S.last_iterate_bound(S.linear_decay(1.0, 300), np.full(300, p.lipschitz), D).scale
    ref = C.run_sgd(p, S.scaled(S.linear_decay(1.0, 300), scale), key, num_steps=300, num_seeds=8)
    np.testing.assert_allclose(out.result("linear decay").last, ref.last, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(out.result("linear decay").suffix, ref.suffix, rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="problem must be one of"):
        C.make_problem("lasso", key)


def test_sample_indices_uniform_and_seed_dependent(key):
    n = 7
    draws = np.asarray(C.sample_indices(key, jnp.arange(12800), n, 2)).ravel()
    assert draws.min() >= 0 and draws.max() < n
    counts = np.bincount(draws, minlength=n)
    expected = draws.size / n
    assert np.all(np.abs(counts - expected) < 0.05 * expected)  # ~3.5 standard deviations
    pairs = np.bincount(draws[:-1] * n + draws[1:], minlength=n * n)  # consecutive draws independent
    assert np.all(np.abs(pairs - draws.size / n**2) < 0.25 * draws.size / n**2)
    other = np.asarray(C.sample_indices(jax.random.key(1), jnp.arange(64), n, 2)).ravel()
    assert np.mean(other == draws[: other.size]) < 0.3


def test_problem_data_from_a_key_are_the_seeded_numpy_draws():
    # key(s) draws exactly what np.random.default_rng(s) drew (the papers' numbers do not move)
    p = C.least_absolute_deviations(jax.random.key(7), n=30, dim=3, dtype=jnp.float64)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((30, 3))
    np.testing.assert_array_equal(np.asarray(p.data.x), x)
    other = C.least_absolute_deviations(jax.random.fold_in(jax.random.key(7), 1), n=30, dim=3)
    assert not np.allclose(np.asarray(other.data.x), x[:, :3])
    assert p.distance == pytest.approx(float(np.linalg.norm(p.w_star)))
    with pytest.raises(ValueError, match="n must be an int >= 2"):
        C.hinge_svm(jax.random.key(0), n=1)


def test_schedule_comparison_final_quantiles_and_lookup(problems, key):
    p = problems["hinge"]
    shapes = {k: S.standard_shapes()[k] for k in ("constant", "cosine")}
    out = C.compare_schedules(p, shapes, key, num_steps=50, num_seeds=6)
    assert out.names == ("constant", "cosine") and out.scales.shape == (2,)
    assert [name for name, _ in out.items()] == list(out.names)
    assert out.result("cosine") is out.results[1]
    with pytest.raises(KeyError, match="no schedule named 'wsd'"):
        out.result("wsd")
    table = C.final_quantiles(out)
    q = np.quantile(out.result("cosine").last[:, -1], [0.5, 0.9, 0.95])
    assert table["cosine"]["last"] == pytest.approx({"median": q[0], "q90": q[1], "q95": q[2]}, rel=1e-15)
    assert set(table["constant"]) == {"last", "uniform", "suffix"}
    with pytest.raises(ValueError, match="shapes is empty"):
        C.compare_schedules(p, {}, key, num_steps=50, num_seeds=6)


def test_harvey_over_rate():
    res = C.HarveyResult(np.array([16, 64]), np.array([0.1, 0.2]), np.array([0.3, 0.4]), np.zeros(2))
    np.testing.assert_allclose(res.over_rate("uniform"), [0.3 * 4 / np.log(16), 0.4 * 8 / np.log(64)])
    np.testing.assert_allclose(res.over_rate(), [0.1 * 4 / np.log(16), 0.2 * 8 / np.log(64)])


def test_harvey_log_growth_is_the_slope_of_the_scaled_gap():
    res = C.harvey_gd([32, 128, 512])  # horizons compiled by the test above
    T = np.array([32.0, 128.0, 512.0])
    for kind in ("last", "uniform", "suffix"):
        y = getattr(res, kind) * np.sqrt(T)
        slope = np.cov(np.log(T), y)[0, 1] / np.var(np.log(T), ddof=1)  # least squares, written out
        assert res.log_growth(kind) == pytest.approx(slope, rel=1e-10)
    assert res.log_growth("last") > 1 / 32 > 0.01 > abs(res.log_growth("uniform"))


def test_last_over_average_is_the_ratio_of_quantiles():
    rng = np.random.default_rng(0)
    last, suffix, uniform = (rng.uniform(0.1, 1.0, (9, 3)) for _ in range(3))
    res = C.SGDResult(np.array([1, 10, 100]), last, uniform, suffix)
    cmp = C.ScheduleComparison(("a",), (res,), np.ones(1))
    # 9 seeds: the median is the 5th smallest value
    assert C.last_over_average(cmp)["a"] == pytest.approx(np.sort(last[:, -1])[4] / np.sort(suffix[:, -1])[4])
    assert C.last_over_average(cmp, "uniform", q=1.0)["a"] == pytest.approx(last[:, -1].max() / uniform[:, -1].max())
    with pytest.raises(ValueError, match="average must be"):
        C.last_over_average(cmp, "best")
    with pytest.raises(ValueError, match="q must lie"):
        C.last_over_average(cmp, q=1.5)
    zero = C.ScheduleComparison(("a",), (res._replace(suffix=np.zeros_like(suffix)),), np.ones(1))
    with pytest.raises(ValueError, match="ratio to it is undefined"):
        C.last_over_average(zero)
