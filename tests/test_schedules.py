"""Schedules, refinement and the last-iterate bound, against direct formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from workbench import schedules as S
from workbench.experiments import schedules as refinement


def direct_bound(eta, g, D):
    """The last-iterate bound written as the double sum, O(T^2), scale 1."""
    T = len(eta)
    S_ = [sum(eta[k:]) for k in range(T)]
    Q = [sum(eta[t] ** 2 * g[t] ** 2 for t in range(k, T)) for k in range(T)]
    out = (D**2 + Q[0]) / (2 * S_[0])
    for k in range(T - 1):
        out += 0.5 * eta[k] / (S_[k + 1] * S_[k]) * Q[k]
    return out


def test_schedule_values_match_formulas():
    T = 100
    s = np.arange(T)
    np.testing.assert_allclose(S.values(S.linear_decay(0.5, T), T), 0.5 * (1 - s / T), atol=1e-7)
    np.testing.assert_allclose(S.values(S.inverse_sqrt(2.0), T), 2 / np.sqrt(s + 1), rtol=1e-6)
    np.testing.assert_allclose(S.values(S.cosine(1.0, T), T), 0.5 * (1 + np.cos(np.pi * s / T)),
                               atol=1e-6)
    u = np.clip((s - 80) / 20, 0, 1)
    np.testing.assert_allclose(S.values(S.wsd(1.0, T, 0.2, "1-sqrt"), T), 1 - np.sqrt(u), atol=1e-7)
    np.testing.assert_allclose(S.values(S.wsd(1.0, T, 0.2), T), 1 - u, atol=1e-7)
    np.testing.assert_allclose(S.values(S.step(1.0, T, (0.5,), 0.1), T),
                               np.where(s < 50, 1.0, 0.1), rtol=1e-6)
    warm = S.values(S.linear_decay(1.0, T, warmup_steps=10), T)
    np.testing.assert_allclose(warm[:11], np.arange(11) / 10, atol=1e-7)
    assert warm.argmax() == 10 and warm[-1] > 0
    assert np.all(S.values(S.constant(0.3), T) == 0.3)


def test_schedule_drops_into_optax_chain():
    opt = optax.sgd(S.linear_decay(0.5, 10))
    params = jnp.ones(3)
    state = opt.init(params)
    for k in range(3):
        updates, state = opt.update(jnp.ones(3), state, params)
        np.testing.assert_allclose(updates, -0.5 * (1 - k / 10) * np.ones(3), rtol=1e-6)


def test_refine_constant_norms_is_linear_decay():
    T = 2000
    refined = S.refine(np.full(T, 3.0))
    s = np.arange(T)
    np.testing.assert_allclose(refined.values, (T - 1 - s) / (T - 1), atol=1e-12)
    assert np.max(np.abs(refined.values - S.values(S.linear_decay(1.0, T), T))) < 1e-3
    np.testing.assert_allclose(S.values(refined.schedule, T), refined.values, atol=1e-12)


def test_refine_matches_definition_and_median_filter():
    rng = np.random.default_rng(0)
    T = 57
    g = rng.uniform(0.5, 2.0, T)
    # window 1: no smoothing; eta_t = w_t sum_{p>t} w_p / max
    w = 1 / g**2
    eta = np.array([w[t] * w[t + 1:].sum() for t in range(T)])
    np.testing.assert_allclose(S.refine(g, window=1).values, eta / eta.max(), rtol=1e-12)
    # tau=0.1 -> window ceil(5.7) = 6, rounded up to 7 (centred); nearest padding at the edges
    smoothed = S.refine(g, tau=0.1).smoothed_norms
    padded = np.concatenate([np.full(3, g[0]), g, np.full(3, g[-1])])
    ref = np.array([np.median(padded[t:t + 7]) for t in range(T)])
    np.testing.assert_allclose(smoothed, ref, rtol=1e-12)


def test_refine_grows_warmup_and_fast_anneal():
    T = 1000
    t = np.arange(T) / T
    g = 1 + 4 * np.exp(-t / 0.05) + 2 * t**4  # large early norms, rising at the end
    eta = S.refine(g).values
    assert 0.1 * T < eta.argmax() < 0.6 * T  # warm-up: the peak is not at the start
    assert eta[0] < 0.3
    lin = 1 - np.arange(T) / T
    assert eta[int(0.9 * T)] < 0.5 * lin[int(0.9 * T)]  # anneals faster than linear


@pytest.mark.parametrize("bad, match", [
    (np.array([1.0, 0.0, 1.0]), "positive; entry 1"),
    (np.array([1.0, -2.0, 1.0]), "positive; entry 1"),
    (np.array([1.0, np.nan, 1.0]), "finite; entry 1"),
    (np.array([np.inf, 1.0]), "finite; entry 0"),
    (np.ones((2, 2)), "1-D"),
])
def test_refine_rejects_bad_norms(bad, match):
    with pytest.raises(ValueError, match=match):
        S.refine(bad)


def test_refine_rejects_window_longer_than_run_and_bad_tau():
    with pytest.raises(ValueError, match="fewer than the median-filter window 20"):
        S.refine(np.ones(10), window=20)
    with pytest.raises(ValueError, match="tau"):
        S.refine(np.ones(10), tau=1.5)
    with pytest.raises(ValueError, match="tau"):
        S.refine(np.ones(10), tau=0.0)


def test_negative_or_nonfinite_schedule_is_rejected():
    with pytest.raises(ValueError, match="goes negative at step 6"):
        S.last_iterate_bound(lambda s: 0.5 - 0.1 * s.astype(jnp.float64), np.ones(10), 1.0)
    with pytest.raises(ValueError, match="not finite at step 0"):
        S.values(lambda s: jnp.log(jnp.asarray(s, jnp.float32)), 3)
    with pytest.raises(ValueError, match="lrs must be finite and non-negative"):
        S.from_values([1.0, -1.0])
    with pytest.raises(ValueError, match="shape \\(4,\\)"):
        S.last_iterate_bound(np.ones(3), np.ones(4), 1.0)
    with pytest.raises(ValueError, match="D must be"):
        S.last_iterate_bound(np.ones(3), np.ones(3), 0.0)


def test_bound_equals_double_sum():
    rng = np.random.default_rng(1)
    T = 40
    eta, g, D = rng.uniform(0.1, 1.0, T), rng.uniform(0.2, 3.0, T), 1.7
    res = S.last_iterate_bound(eta, g, D, optimal_scale=False)
    with_weight = eta.copy()
    with_weight[-1] = res.last_weight
    assert res.bound == pytest.approx(direct_bound(with_weight, g, D), rel=1e-12)
    assert res.bound <= direct_bound(eta, g, D) + 1e-12  # the free last weight can only help
    # optimal scale: the minimum over c of the bound of c * eta
    best = S.last_iterate_bound(eta, g, D)
    grid = [direct_bound(c * with_weight, g, D) for c in np.geomspace(0.01, 100, 401)]
    assert best.bound <= min(grid) + 1e-9
    with_weight[-1] = best.last_weight
    assert best.bound == pytest.approx(direct_bound(best.scale * with_weight, g, D), rel=1e-9)


def test_bound_holds_for_subgradient_descent():
    # f(x) = ||x - x*||_1, f* = 0; deterministic subgradient descent with linear decay
    key = jax.random.key(3)
    x_star = jax.random.normal(key, (5,), jnp.float64)
    x = jnp.zeros(5, jnp.float64)
    T = 300
    eta = S.values(S.linear_decay(0.05, T), T)
    norms = []
    for t in range(T):
        g = jnp.sign(x - x_star)
        norms.append(float(jnp.linalg.norm(g)))
        if t < T - 1:  # x_T is reached after T-1 steps; the bound is about it
            x = x - eta[t] * g
    gap = float(jnp.sum(jnp.abs(x - x_star)))
    bound = S.last_iterate_bound(eta, np.array(norms), float(jnp.linalg.norm(x_star)),
                                 optimal_scale=False).bound
    assert 0 < gap <= bound < 10 * gap + 1.0


def test_linear_decay_bound_tends_to_2DG_over_sqrtT():
    D, G = 2.0, 3.0
    ratios = []
    for T in (100, 1000, 10000):
        b = S.last_iterate_bound(S.linear_decay(1.0, T), np.full(T, G), D).bound
        ratios.append(b * math.sqrt(T) / (D * G))
    assert abs(ratios[-1] - 2) < 1e-3
    assert abs(ratios[0] - 2) > abs(ratios[1] - 2) > abs(ratios[2] - 2)


@pytest.mark.parametrize("make", [lambda T: S.constant(1.0), lambda T: S.inverse_sqrt(1.0)])
def test_anytime_schedules_bound_grows_like_log(make):
    scaled = []
    for T in (100, 1000, 10000):
        scaled.append(S.last_iterate_bound(make(T), np.ones(T), 1.0).bound * math.sqrt(T))
    assert scaled[0] + 0.2 < scaled[1] < scaled[2] - 0.2
    assert scaled[2] > 2.5  # clearly above linear decay's 2


def test_bound_curve_and_shapes():
    horizons = [100, 1000]
    shapes = S.standard_shapes()
    lin = S.bound_curve(shapes["linear decay"], horizons)
    np.testing.assert_allclose(lin, [S.last_iterate_bound(S.linear_decay(1.0, T), np.ones(T), 1.0)
                                     .bound * math.sqrt(T) for T in horizons], rtol=1e-12)
    for name, make in shapes.items():
        assert np.all(S.bound_curve(make, horizons) >= lin - 1e-3), name  # linear is optimal
    # custom shape with no warm-up and a full linear cooldown is linear decay
    np.testing.assert_allclose(S.values(S.custom_shape()(50), 50),
                               S.values(S.linear_decay(1.0, 50), 50), atol=1e-12)
    with pytest.raises(ValueError, match="cooldown_fraction"):
        S.custom_shape(0.5, 0.8)


def test_grad_norm_callback_matches_direct_computation(key):
    from workbench import data

    ds, _ = data.make_regression(key, 40, 3, dtype=jnp.float64)
    loss_fn = lambda p, b: jnp.mean((b[0] @ p["w"] - b[1]) ** 2)
    params = {"w": jnp.arange(3.0, dtype=jnp.float64)}
    full = S.grad_norm_callback(loss_fn, ds, key, batch_size=None)(0, params)["grad_norm"]
    assert float(full) == pytest.approx(float(optax.tree.norm(jax.grad(loss_fn)(params, ds))), rel=1e-12)
    mini = S.grad_norm_callback(loss_fn, ds, key, batch_size=5, num_batches=4)(7, params)["grad_norm"]
    idx = jax.random.randint(jax.random.fold_in(key, 7), (4, 5), 0, 40)
    sq = [float(optax.tree.vdot(g, g)) for g in (jax.grad(loss_fn)(params, ds.take(i)) for i in idx)]
    assert float(mini) == pytest.approx(math.sqrt(np.mean(sq)), rel=1e-10)
    np.testing.assert_allclose(S.per_step([0, 10], [1.0, 2.0], 11), np.linspace(1, 2, 11))


def test_digits_refinement_small_run():
    res = refinement.digits_refinement("logreg", num_steps=60, peak_lr=0.5, norm_every=10)
    assert res.grad_norms.shape == (60,) and np.all(res.grad_norms > 0)
    assert res.refined.values.max() == 1.0 and res.refined.values[-1] == 0.0
    runs = res.runs
    assert set(runs) == {"linear decay", "cosine", "refined", "linear decay (same area)"}
    np.testing.assert_allclose(runs["refined"].lrs, 0.5 * res.refined.values, rtol=1e-6)
    # same initialisation and batch order: the first minibatch loss is shared
    first = {name: float(run.history["loss"][0]) for name, run in runs.items()}
    assert len(set(first.values())) == 1
    for run in runs.values():
        assert run.final_loss < first["linear decay"] and 0.5 < run.test_accuracy <= 1.0
    # linear decay given the refined schedule's total step size
    area = runs["linear decay (same area)"].lrs
    assert area.sum() == pytest.approx(runs["refined"].lrs.sum(), rel=1e-5)
    np.testing.assert_allclose(area / area[0], runs["linear decay"].lrs / 0.5, rtol=1e-6)
    summary = refinement.refinement_summary(res)
    assert summary.unrefined_warmup_fraction == 0.0 and summary.bound_over_linear < 1.0
    with pytest.raises(ValueError, match="model must be"):
        refinement.digits_refinement("cnn")


def test_refined_bound_curve_is_the_bound_of_the_refined_schedule():
    horizons = [50, 400]
    ours = S.refined_bound_curve(refinement.varying_norms, horizons, tau=0.1)
    direct = [S.last_iterate_bound(S.refine(refinement.varying_norms(T), tau=0.1).values,
                                   refinement.varying_norms(T), 1.0).bound * math.sqrt(T) for T in horizons]
    np.testing.assert_allclose(ours, direct, rtol=1e-12)
    # refined for the norms it sees, it beats linear decay under those norms
    linear = S.bound_curve(lambda T: S.linear_decay(1.0, T), horizons, refinement.varying_norms)
    assert np.all(ours < linear)
    # constant norms: refinement is linear decay, the bound ~2
    np.testing.assert_allclose(S.refined_bound_curve(np.ones, [1000]), [2.0], atol=0.02)


def test_varying_norms_and_best_runs():
    g = refinement.varying_norms(100)
    np.testing.assert_allclose(g[[0, 50]], [5.0, 1.0 + 4.0 * np.exp(-10.0) + 2.0 * 0.5**4])
    assert g.shape == (100,) and g.min() >= 1.0
    run = lambda loss: refinement.ScheduleRun(np.ones(3), {}, loss, 1.0 - loss)  # noqa: E731
    by_peak = {0.5: refinement.RefinementResult(g, None, {"linear decay": run(0.3), "refined": run(0.2)}),
               1.0: refinement.RefinementResult(g, None, {"linear decay": run(0.1), "refined": run(0.4)})}
    best = refinement.best_runs(by_peak)
    assert list(best) == ["linear decay", "refined"]
    assert best["linear decay"].final_loss == 0.1 and best["refined"].final_loss == 0.2
    with pytest.raises(ValueError, match="by_peak is empty"):
        refinement.best_runs({})
