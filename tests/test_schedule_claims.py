"""The numbers behind the schedule papers' claims, against references computed another way."""

import math

import numpy as np
import pytest

from workbench import schedules as S
from workbench.experiments import schedules as E


def reference_refined(g, window):
    """Refinement written from the paper: a centred median over an odd window (edges repeat the
    end values), w = 1 / g^2, eta_t = w_t sum_{p > t} w_p, peak 1; loops, no scipy."""
    T, half = len(g), (window | 1) // 2
    padded = np.concatenate([np.full(half, g[0]), g, np.full(half, g[-1])])
    smooth = np.array([np.median(padded[t:t + 2 * half + 1]) for t in range(T)])
    w = 1.0 / smooth**2
    eta = np.array([w[t] * sum(w[t + 1:]) for t in range(T)])
    return eta / eta.max()


def explicit_bound(eta, g, D):
    """The last-iterate bound at the schedule as given, with the tail sums S_k and Q_k taken as
    products with an upper-triangular matrix of ones (the code under test uses reversed cumsums)."""
    upper = np.triu(np.ones((len(eta), len(eta))))
    S_, Q = upper @ eta, upper @ (eta**2 * g**2)
    return (D**2 + Q[0]) / (2 * S_[0]) + 0.5 * np.sum(eta[:-1] / (S_[1:] * S_[:-1]) * Q[:-1])


def reference_bound(eta, g, D):
    """min over a common scale c > 0 and the last weight of `explicit_bound`: the bound of c * eta
    is a / c + b c, so a and b come from c = 1 and c = 2 (minimum 2 sqrt(a b)); the last weight is
    searched on a fine grid."""
    best = math.inf
    for lam in np.geomspace(1e-6, 10.0, 3000) * max(eta):
        e = np.array(eta, dtype=np.float64)
        e[-1] = lam
        f1, f2 = explicit_bound(e, g, D), explicit_bound(2 * e, g, D)
        b = (2 * f2 - f1) / 3  # f(1) = a + b, f(2) = a / 2 + 2 b
        best = min(best, 2 * math.sqrt((f1 - b) * b))
    return best


def test_log_slope_recovers_the_coefficient_of_log_T():
    T = [100, 1000, 10000]
    for c in (0.0, 0.37, -1.2):
        curve = 2.0 + c * np.log(T)
        assert S.log_slope(T, curve) == pytest.approx(c, abs=1e-12)
        assert S.log_slope(T, curve.astype(np.float32)) == pytest.approx(c, abs=1e-5)
    # noisy points: the least-squares line, written as cov / var
    x, y = np.log(T), np.array([1.0, 1.5, 1.7])
    assert S.log_slope(T, y) == pytest.approx(np.cov(x, y)[0, 1] / np.var(x, ddof=1), rel=1e-12)


@pytest.mark.parametrize("horizons, curve, match", [
    ([10, 100], [1.0], "one length"),
    ([10, 10], [1.0, 2.0], "two distinct"),
    ([0, 10], [1.0, 2.0], "two distinct"),
    ([10, 100], [1.0, np.nan], "curve must be finite"),
])
def test_log_slope_rejects_bad_input(horizons, curve, match):
    with pytest.raises(ValueError, match=match):
        S.log_slope(horizons, curve)


def test_log_slope_separates_anytime_schedules_from_linear_decay():
    T = [300, 1000, 3000]
    shapes = S.standard_shapes()
    slope = {name: S.log_slope(T, S.bound_curve(shapes[name], T)) for name in
             ("constant", "1/sqrt(t)", "linear decay", "cosine")}
    # constant steps: bound ~ (D G / sqrt T) sqrt(2 (1 + ln T)) at the best scale (the sum of
    # 1/(T - k) terms is ln T), so d(bound sqrt T)/d ln T ~ 1/sqrt(2 (1 + ln T)), about 0.2 here
    assert 0.1 < slope["constant"] < 0.3 and 0.05 < slope["1/sqrt(t)"] < 0.3
    assert abs(slope["linear decay"]) < 0.01 and abs(slope["cosine"]) < 0.01


def test_varying_norms_bounds_against_an_independent_reference():
    horizons = [20, 40]
    res = E.varying_norms_bounds(horizons, tau=0.1)
    assert list(res.horizons) == horizons
    T = horizons[-1]
    g = E.varying_norms(T)
    s = np.arange(T)
    ref = {
        "linear decay": reference_bound(1.0 - s / T, g, 1.0),
        "cosine": reference_bound(0.5 * (1 + np.cos(np.pi * s / T)), g, 1.0),
        "refined for these norms": reference_bound(reference_refined(g, math.ceil(0.1 * T)), g, 1.0),
        "refined for constant norms": reference_bound((T - 1 - s) / (T - 1), g, 1.0),
    }
    for name, value in ref.items():
        assert res.curves[name][-1] == pytest.approx(value * math.sqrt(T), rel=2e-4), name
    for name in ref:
        assert res.over_linear(name) == pytest.approx(ref[name] / ref["linear decay"], rel=5e-4), name
    # refinement helps for these norms; its control (refined for constant norms) does not
    assert res.over_linear("refined for these norms") < 0.9 < res.over_linear("refined for constant norms")
    with pytest.raises(KeyError, match="no schedule named 'wsd'"):
        res.over_linear("wsd")


def test_warmup_fraction_of_known_schedules():
    T = 200
    assert S.warmup_fraction(S.linear_decay(1.0, T), T) == 0.0
    assert S.warmup_fraction(S.cosine(1.0, T), T) == 0.0
    assert S.warmup_fraction(S.linear_decay(1.0, T, warmup_steps=30), T) == pytest.approx(30 / T)
    assert S.warmup_fraction(S.custom_shape(0.25, 0.5)(T), T) == pytest.approx(0.25)
    # refinement of norms that are large early grows a warm-up; of constant norms it does not
    assert S.warmup_fraction(S.refine(E.varying_norms(T)).values, T) > 0.1
    assert S.warmup_fraction(S.refine(np.ones(T)).values, T) == 0.0
    with pytest.raises(ValueError, match="zero at every step"):
        S.warmup_fraction(np.zeros(5), 5)


def _run(lrs, loss):
    return E.ScheduleRun(np.asarray(lrs, np.float64), {}, loss, 0.9)


def test_refinement_summary_against_direct_numbers():
    T = 40
    g = E.varying_norms(T)
    refined = S.refine(g, window=5)
    s = np.arange(T)
    linear, cos = 0.5 * (1 - s / T), 0.25 * (1 + np.cos(np.pi * s / T))
    runs = {"linear decay": _run(linear, 0.4), "cosine": _run(cos, 0.38), "refined": _run(0.5 * refined.values, 0.3),
            "linear decay (same area)": _run(linear, 0.32)}
    out = E.refinement_summary(E.RefinementResult(g, refined, runs))
    ref_linear = reference_bound(linear, g, 1.0)
    assert out.bound_over_linear == pytest.approx(reference_bound(refined.values, g, 1.0) / ref_linear, rel=5e-4)
    assert out.cosine_bound_over_linear == pytest.approx(reference_bound(cos, g, 1.0) / ref_linear, rel=5e-4)
    unrefined = (T - 1 - s) / (T - 1)
    assert out.unrefined_bound_over_linear == pytest.approx(reference_bound(unrefined, g, 1.0) / ref_linear, rel=5e-4)
    assert out.warmup_fraction == np.argmax(reference_refined(g, 5)) / T > 0
    assert out.unrefined_warmup_fraction == 0.0
    assert (out.loss_over_linear, out.loss_over_cosine, out.cosine_loss_over_linear, out.loss_over_same_area) == \
        pytest.approx((0.3 / 0.4, 0.3 / 0.38, 0.38 / 0.4, 0.3 / 0.32))
