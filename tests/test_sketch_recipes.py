"""The sketching papers' recipes: every claimed metric is computed here from known tables, and
the table recipes run on a tiny problem (the full numbers are the paper runs')."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench import sketch as sk
from workbench.experiments import intrinsic_dimension as idim
from workbench.experiments import sketching as ex
from workbench.experiments import sketching_metrics
from workbench.sketch import quality


def test_qk_caps_and_splits():
    assert [sketching_metrics.qk_factor_cap(n) for n in (1210, 2410, 4096, 4097)] == [16, 16, 16, 32]
    for factor in (64, 256):
        splits = sketching_metrics.qk_splits(factor)
        assert len({int(np.prod(s)) for s in splits}) == 1 and max(max(s) for s in splits) == factor


def test_theorem_metrics_read_each_kind_by_name():
    dims = np.array([64, 1024])
    thm = ex.NormRatioTable(("ffd", "affd", "afjl"), dims, np.array([[0.24, 0.26], [0.0, 0.0], [0.01, 0.0]]),
                            np.array([[0.73, 0.75], [0.2, 0.05], [0.4, 0.3]]), np.zeros((3, 2)), 100)
    qk = ex.FactorTable(((8, 8), (64, 1)), (64, 64), np.array([0.5, 2.0]), np.array([0.4, 2.0]), np.array([0.1, 0.4]),
                        np.ones((2, 2)))
    m = sketching_metrics.theorem_metrics(thm, qk._replace(variance_halves=np.array([[0.45, 0.55], [2.0, 2.0]])))
    assert (m["thm31_ffd_p_below_min"], m["thm31_ffd_p_below_max"]) == (0.24, 0.26)
    assert (m["thm31_ffd_p_far_min"], m["thm31_ffd_p_far_max"]) == (0.73, 0.75)
    assert m["thm31_affd_p_far_max"] == 0.2 and m["thm31_afjl_p_far_max"] == 0.4
    assert m["thm31_afjl_p_far_D1024"] == 0.3 and m["thm31_num_draws"] == 100
    assert m["qk_split_variance"] == {"8x8": 0.5, "64x1": 2.0} and m["qk_worst_over_best_variance"] == 4.0
    assert (m["thm31_affd_p_below_max"], m["thm31_afjl_p_below_max"], m["thm31_afjl_p_far_max"]) == (0.0, 0.01, 0.4)
    assert m["qk_variance_over_predicted"] == [1.25, 1.0]
    assert m["control_qk_half_over_half_variance"] == pytest.approx(0.55 / 0.45)
    assert m["control_qk_variance_over_gaussian"] == [0.5 * 64 / 2, 2.0 * 64 / 2]  # Var / (2 / D), D = 64


def _correlation_table(crossing):
    """A table whose kind k first exceeds 0.95 at log2 D = crossing[k] (None: never)."""
    log2_dims = np.arange(4, 12)
    pearson = np.stack([np.where(log2_dims >= (c if c is not None else 99), 0.999, 0.5) for c in crossing.values()])
    pearson = np.repeat(pearson[:, :, None], 2, axis=2)
    return quality.CorrelationTable(tuple(crossing), log2_dims, pearson, np.zeros_like(pearson))


def test_correlation_metrics_are_gaps_against_affd():
    tables = {"a": _correlation_table({"affd": 6, "afjl": 8, "qk": 11, "fjl": 6}),
              "b": _correlation_table({"affd": 5, "afjl": 5, "qk": None, "fjl": 4})}
    problems = [ex.GradientProblem("a", None, None, None, None, 2410), ex.GradientProblem("b", None, None, None, None, 64)]
    m = sketching_metrics.correlation_metrics(tables, problems)
    assert m["table6_afjl_minus_affd_log2_r95"] == 1.0  # (2 + 0) / 2
    # QK never crosses on b: the gap is censored (None, which fails any claim), not a large number
    assert m["table6_qk_minus_affd_log2_r95"] is None
    assert m["control_table6_fjl_as_qk_log2_r95"] == m["control_table6_fjl_as_afjl_log2_r95"] == -0.5  # (0 - 1) / 2
    assert m["table6_smallest_log2_dim"]["a"][0.95] == {"affd": 6, "afjl": 8, "qk": 11, "fjl": 6}
    assert m["qk_factor_caps"] == {"a": 16, "b": 4}
    assert m["table6_pearson_mean"]["a"]["affd"][2] == 0.999


def test_error_ratio_is_the_geometric_mean_of_lost_variance_from_2_to_the_6():
    log2_dims = np.array([4, 6, 8])
    pearson = np.array([[0.0, 0.8, 0.98], [0.5, 0.9, 0.99], [0.2, np.nan, 0.96]])[:, :, None]  # affd, fjl, afjl
    t = quality.CorrelationTable(("affd", "fjl", "afjl"), log2_dims, np.repeat(pearson, 2, 2), np.zeros((3, 3, 2)))
    tables = {"a": t, "b": t._replace(log2_dims=np.array([6, 8, 10]))}
    # a: D = 2^6, 2^8 count (ratios 2, 2); b: all three (1/0.5 = 2 at 2^6 too, where affd's r is 0)
    assert sketching_metrics.error_ratio(tables, "affd") == pytest.approx(np.exp(np.mean(np.log([2, 2, 2, 2, 2]))))
    assert sketching_metrics.error_ratio(tables, "afjl") == pytest.approx(np.exp(np.mean(np.log([4, 0.8 / 0.5, 4]))))


def test_eigen_restriction_and_timing_metrics():
    err = np.full((3, 3, 2), np.nan)
    err[2, 1] = [0.25, 0.25]  # fjl at log2 D = 8
    err[0, 1] = [0.1, 0.3]  # affd at log2 D = 8
    err[1, 1] = [0.8, np.nan]  # qk at log2 D = 8 (one draw missing)
    err[:, 2] = 0.01
    eig = quality.EigenTable(("affd", "qk", "fjl"), np.array([6, 8, 10]), np.ones(10), err)
    m = sketching_metrics.eigen_metrics(eig)
    assert m["table7_qk_over_affd_error"] == pytest.approx(0.8 / 0.2)
    assert m["control_table7_fjl_over_affd_error"] == pytest.approx(0.25 / 0.2)
    assert m["table7_smallest_log2_dim"][0.05] == {"affd": 10, "qk": 10, "fjl": 10}
    r = ex.RestrictionResult("['w']", 100, 6, 0.5, np.array([0.9, 0.7]), 1.2, np.array([0.1, 0.3]))
    m = sketching_metrics.restriction_metrics(r)
    assert m["table1_layer_minus_sketch_pearson"] == pytest.approx(-0.3)
    assert m["table1_layer_over_sketch_eig_error"] == pytest.approx(6.0)
    assert m["table1_layer_over_sketch_lost_variance"] == pytest.approx(0.5 / 0.2)
    assert m["control_table1_sketch_over_sketch_lost_variance"] == pytest.approx(0.1 / 0.3)  # first draw / second
    assert m["control_table1_sketch_over_sketch_eig_error"] == pytest.approx(1 / 3)
    t = ex.TimingTable(("dense", "affd"), np.array([8, 12]), np.array([[1.0, 10.0], [2.0, 3.0]]), 1 << 14, 8)
    m = sketching_metrics.timing_metrics(t)
    assert m["time_dense_growth"] == 10.0 and m["time_affd_growth"] == 1.5 and m["time_seconds"]["affd"] == [2.0, 3.0]


def test_correlation_and_eigen_tables_on_a_tiny_problem(key):
    g = jax.random.normal(jax.random.key(3), (6, 64))
    problem = ex.GradientProblem("tiny", None, None, None, g, 64)
    tables = sketching_metrics.correlation_tables([problem], key, {"tiny": 2}, num_draws=2, kinds=("srht", "qk"))
    assert list(tables) == ["tiny"] and list(tables["tiny"].log2_dims) == [4, 6]
    assert np.all(tables["tiny"].mean[:, -1] > 0.99)  # D = N: (nearly) orthogonal maps
    cut = sketching_metrics.correlation_tables([problem], key, {"tiny": 2}, num_draws=2, kinds=("srht", "qk"),
                                               min_log2_dim=5)
    np.testing.assert_array_equal(cut["tiny"].pearson, tables["tiny"].pearson[:, 1:])  # same draws, 2^4 left out
    h = jnp.asarray(np.diag(np.geomspace(10.0, 0.1, 64)))
    eig = sketching_metrics.eigen_table(problem, h, key, 2, num_draws=2, kinds=("srht",), k=4)
    assert list(sketching_metrics.eigen_table(problem, h, key, 1, num_draws=1, kinds=("srht",), k=4,
                                              max_log2_dim=5).log2_dims) == [5]
    assert list(eig.log2_dims) == [6] and eig.rel_error[0, 0].max() < 1e-4  # srht at D = N is orthogonal


def _sweep(d_int90, n=100):
    return sk.IntrinsicSweepResult(np.array([10, 20]), np.array([0.5, 0.9]), np.zeros(2), 0.95, 0.855, d_int90, n)


def _search(d_star):
    return sk.IntrinsicSearchResult(d_star, 150, np.array([50, 100, 150]), np.array([8, 16, 32]),
                                    np.array([0.3, 0.6, 0.9]), 0.95, 0.855, None, None, 100)


def test_intrinsic_metrics():
    m = idim.sweep_metrics({"mlp": _sweep(20), "logistic": _sweep(None, 80)}, {"mlp": 0.19, "logistic": 0.095})
    assert {k: m[k] for k in ("d_int90_mlp", "d_int90_logistic", "full_accuracy_mlp", "num_params_logistic")} == {
        "d_int90_mlp": 20, "d_int90_logistic": None, "full_accuracy_mlp": 0.95, "num_params_logistic": 80}
    # mlp (n = 100): the largest d <= 15 is 10 (accuracy 0.5)
    assert m["accuracy_fraction_dim_mlp"] == 10 and m["accuracy_fraction_mlp"] == pytest.approx(0.5 / 0.95)
    assert m["control_untrained_accuracy_fraction_mlp"] == pytest.approx(0.2)
    assert m["control_smallest_dim_accuracy_fraction_mlp"] == pytest.approx(0.5 / 0.95)
    assert m["d_int90_mlp_over_logistic"] is None and m["control_num_params_mlp_over_logistic"] == 1.25  # censored
    with pytest.raises(ValueError, match="max_fraction=0.15: no swept d"):
        idim.sweep_metrics({"logistic": _sweep(10, 50)})  # 10 > 0.15 * 50
    m = idim.sweep_metrics({"mlp": _sweep(20, 200), "logistic": _sweep(10, 100)}, max_fraction=0.1)
    assert m["accuracy_fraction_dim_mlp"] == 20 and m["accuracy_fraction_mlp"] == pytest.approx(0.9 / 0.95)
    assert m["d_int90_mlp_over_logistic"] == 2.0 and "control_untrained_accuracy_fraction_mlp" not in m
    m = idim.search_metrics({"mlp": _search(32), "logistic": _search(None)}, {"mlp": _sweep(20)})
    assert m["search_d_star_fraction_mlp"] == 0.32 and m["search_d_star_fraction_logistic"] is None
    assert m["search_over_sweep_mlp"] == 32 / 20 and m["search_steps_mlp"] == 150
    assert idim.search_metrics({"mlp": _search(None)}, {"mlp": _sweep(20)})["search_over_sweep_mlp"] is None


def test_digits_model_names():
    assert idim.digits_model("logistic").params is not None
    with pytest.raises(ValueError, match="model must be one of"):
        idim.digits_model("cnn")


def test_sketched_dots_pairs_and_ratios(key):
    g = np.array(jax.random.normal(jax.random.key(4), (5, 32)), np.float64)
    g[4] = 0.0  # a zero vector: ratio 0, not NaN
    r = quality.sketched_dots(jnp.asarray(g), "srht", key, 5)  # D = p = 32: orthogonal
    iu = np.triu_indices(5, 1)
    assert r.dim == 32 and r.exact.shape == (10,)
    np.testing.assert_allclose(r.exact, (g @ g.T)[iu], rtol=1e-6)
    np.testing.assert_allclose(r.sketched, r.exact, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(r.ratios, [1, 1, 1, 1, 0], atol=1e-4)
    small = quality.sketched_dots(jnp.asarray(g), "dense", key, 3)
    assert small.dim == 8 and np.all(np.isfinite(small.ratios))
