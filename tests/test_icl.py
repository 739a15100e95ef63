"""workbench.icl: the GD construction is exact, every baseline against a float64 reference, the
alignment measures on known answers, the errors the docstrings promise, and the paper's claims
recomputed at small size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench import icl
from workbench.experiments import icl as recipes


def _tasks(key, dtype=jnp.float64, inputs="uniform", dim=6, n=9, num=128, **kw):
    return icl.sample_tasks(key, num, dim=dim, context_length=n, inputs=inputs, dtype=dtype, **kw)


# ----------------------------------------------------------------------------- construction


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-5), (jnp.float64, 1e-12)])
@pytest.mark.parametrize("inputs", ["uniform", "gaussian"])
def test_one_layer_construction_equals_one_gd_step(key, dtype, tol, inputs):
    worst = 0.0
    for i, (dim, n) in enumerate([(10, 10)] if inputs == "uniform" else [(3, 17)]):
        k_tasks, k_w0, k_eta = jax.random.split(jax.random.fold_in(key, i), 3)
        tasks = _tasks(k_tasks, dtype, inputs, dim=dim, n=n, num=512)
        w0 = jax.random.normal(k_w0, (dim,), dtype)
        eta = float(jax.random.uniform(k_eta, (), minval=0.05, maxval=2.0))
        lsa = icl.predict(icl.gd_weights(dim, n, eta, w0=w0, dtype=dtype), icl.tokens(tasks, w0))
        # one GD step from w0 on L(w) = 1/(2N) sum (w.x - y)^2, written out in numpy float64
        x, y, xq = (np.asarray(a, np.float64) for a in (tasks.x, tasks.y, tasks.query_x))
        w = np.asarray(w0, np.float64) - eta * np.einsum("bnd,bn->bd", x, np.einsum("bnd,d->bn", x, np.asarray(w0, np.float64)) - y) / n
        ref = np.einsum("bd,bd->b", w, xq)
        assert lsa.dtype == dtype
        err = np.max(np.abs(np.asarray(lsa, np.float64) - ref) / np.maximum(1.0, np.abs(ref)))
        worst = max(worst, err)
    print(f"construction max error ({jnp.dtype(dtype).name}, {inputs}): {worst:.3e}")
    assert worst < tol


def test_k_layer_construction_runs_k_gd_steps(key):
    tasks = _tasks(key)
    w0 = jnp.linspace(-1.0, 1.0, 6)
    params = icl.gd_weights(6, 9, [0.4, 0.9, 0.6], num_layers=3, w0=w0, dtype=jnp.float64)
    got = icl.layer_predictions(params, icl.tokens(tasks, w0))
    want = icl.gd_predictions(tasks, jnp.asarray([0.4, 0.9, 0.6]), 3, w0=w0)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_gdpp_construction_matches_gdpp_algorithm(key):
    tasks = _tasks(key, inputs="gaussian")
    etas, gammas = [0.3, 0.8, 0.5], [0.2, 0.05, 0.4]
    got = icl.layer_predictions(icl.gdpp_weights(6, 9, etas, gammas, dtype=jnp.float64), icl.tokens(tasks))
    np.testing.assert_allclose(got, icl.gdpp_predictions(tasks, etas, gammas), rtol=1e-11, atol=1e-12)
    # with gamma = 0 GD++ is plain GD
    np.testing.assert_allclose(icl.gdpp_predictions(tasks, etas, 0.0), icl.gd_predictions(tasks, jnp.asarray(etas), 3),
                               rtol=1e-12, atol=1e-12)


def test_nnx_module_and_pure_forward_agree(key):
    model = icl.LinearSelfAttention(4, num_layers=2, mlp=True, rngs=__import__("flax").nnx.Rngs(params=key),
                                    init_scale=0.3, param_dtype=jnp.float64)
    params = icl.init_params(key, 4, num_layers=2, mlp=True, init_scale=0.3, dtype=jnp.float64)
    toks = icl.tokens(_tasks(key, dim=4, num=8))
    np.testing.assert_allclose(model(toks), icl.forward(params, toks).tokens, rtol=1e-13)
    assert set(params["layers"][0]) == {"query", "key", "value", "projection", "mlp_in", "mlp_in_bias", "mlp_out"}
    plain = {"layers": {i: {k: v for k, v in lay.items() if not k.startswith("mlp")} for i, lay in params["layers"].items()}}
    assert not np.allclose(icl.predict(params, toks), icl.predict(plain, toks))  # the MLP acts
    # constructions have the attention-only structure of init_params
    ref = icl.init_params(key, 4, num_layers=2)
    assert jax.tree.structure(icl.gd_weights(4, 9, 0.1, num_layers=2)) == jax.tree.structure(ref)
    assert jax.tree.structure(icl.gdpp_weights(4, 9, [0.1, 0.2], [0.0, 0.1])) == jax.tree.structure(ref)


# ----------------------------------------------------------------------------- baselines


def test_gd_predictions_against_numpy_loop(key):
    tasks = _tasks(key, inputs="gaussian")
    x, y, xq = (np.asarray(a) for a in (tasks.x, tasks.y, tasks.query_x))
    w, want = np.zeros((128, 6)), []
    for _ in range(5):
        w = w - 0.7 * np.einsum("bnd,bn->bd", x, np.einsum("bnd,bd->bn", x, w) - y) / 9
        want.append(np.einsum("bd,bd->b", w, xq))
    np.testing.assert_allclose(icl.gd_predictions(tasks, 0.7, 5), np.stack(want), rtol=1e-12, atol=1e-12)


def test_line_search_matches_closed_form_for_one_step(key):
    tasks = _tasks(key)
    g = np.einsum("bd,bd->b", np.einsum("bnd,bn->bd", np.asarray(tasks.x), np.asarray(tasks.y)) / 9, np.asarray(tasks.query_x))
    eta_exact = float(np.sum(np.asarray(tasks.query_y) * g) / np.sum(g * g))
    ls = icl.line_search_eta(tasks, 1)
    assert ls.eta == pytest.approx(eta_exact, rel=1e-5)
    for k in (2,):  # K steps: eta* is a minimum of the K-step loss
        ls = icl.line_search_eta(tasks, k)
        for f in (0.97, 1.03):
            assert ls.loss <= float(icl.icl_loss(icl.gd_predictions(tasks, ls.eta * f, k)[-1], tasks))


def test_newton_matches_recurrence_and_converges_to_least_squares(key):
    tasks = _tasks(key, inputs="gaussian", num=32, dim=4, n=12)
    preds = np.asarray(icl.newton_predictions(tasks, 30))
    x, y, xq = (np.asarray(a) for a in (tasks.x, tasks.y, tasks.query_x))
    for b in range(4):
        s = x[b].T @ x[b]
        m = s / np.linalg.norm(s, 2) ** 2
        for k in range(4):
            assert preds[k, b] == pytest.approx(xq[b] @ m @ x[b].T @ y[b], rel=1e-10, abs=1e-12)
            m = 2 * m - m @ s @ m
    np.testing.assert_allclose(preds[-1], icl.least_squares_predictions(tasks), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(preds[-1], tasks.query_y, rtol=1e-8, atol=1e-9)  # noiseless, N > d


@pytest.mark.standard_promotion  # optax's Adam
def test_fit_gdpp_beats_gd_and_reduces_to_gd_for_one_layer(key):
    tasks = _tasks(key, inputs="gaussian", num=256, dtype=jnp.float32, dim=4, n=10,
                   covariance=icl.conditioned_covariance(4, 20.0))
    gd2 = icl.line_search_eta(tasks, 2).loss
    fit = icl.fit_gdpp(tasks, key, 2, num_steps=100)
    assert np.all(np.isfinite(fit.losses))
    assert fit.loss < 0.8 * gd2
    one = icl.fit_gdpp(tasks, key, 1, num_steps=30)  # gamma cannot help a single layer's prediction
    assert one.loss == pytest.approx(icl.line_search_eta(tasks, 1).loss, rel=1e-3)


# ----------------------------------------------------------------------------- alignment


def test_alignment_of_construction_with_gd_and_analytic_sensitivity(key):
    tasks = _tasks(key)
    params = icl.gd_weights(6, 9, 0.8, dtype=jnp.float64)
    gd = lambda t: icl.gd_predictions(t, 0.8, 1)[-1]
    a = icl.alignment(icl.lsa_predictor(params), gd, tasks)
    assert a.prediction_difference < 1e-12 and a.sensitivity_difference < 1e-12
    assert a.sensitivity_cosine == pytest.approx(1.0, abs=1e-12)
    # d y_hat / d x_q of one GD step from zero is eta/N sum_i y_i x_i
    sens = icl.query_sensitivity(gd, tasks)
    np.testing.assert_allclose(sens, 0.8 * np.einsum("bnd,bn->bd", tasks.x, tasks.y) / 9, rtol=1e-12)
    # an unrelated predictor is not aligned
    b = icl.alignment(lambda t: t.query_x[:, 0] * 3.0, gd, tasks)
    assert b.sensitivity_cosine < 0.9 and b.relative_prediction_difference > 0.1


def test_interpolation_is_flat_between_equivalent_weights(key):
    tasks = _tasks(key)
    constructed = icl.gd_weights(6, 9, 0.8, dtype=jnp.float64)
    # the same function written with rescaled, split matrices (kq -> 2.5 kq, pv -> pv / 2.5)
    rescaled = jax.tree.map(lambda a: a, constructed)
    rescaled["layers"][0]["query"] = 2.5 * rescaled["layers"][0]["query"]
    rescaled["layers"][0]["projection"] = rescaled["layers"][0]["projection"] / 2.5
    res = icl.interpolation_losses(rescaled, constructed, tasks, num_points=5)
    np.testing.assert_allclose(res.losses, res.losses[-1], rtol=1e-12)
    other = icl.gd_weights(6, 9, 0.2, dtype=jnp.float64)
    res = icl.interpolation_losses(other, constructed, tasks, num_points=5)
    assert res.losses[0] > res.losses[-1] * 1.05  # a worse step size sits higher


def test_match_steps_finds_the_gd_step(key):
    tasks = _tasks(key)
    params = icl.gd_weights(6, 9, 0.5, num_layers=3, dtype=jnp.float64)
    m = icl.match_steps(icl.layer_predictions(params, icl.tokens(tasks)), icl.gd_predictions(tasks, 0.5, 8))
    np.testing.assert_array_equal(m.best_step, [1, 2, 3])
    assert m.best_error.max() < 1e-12 and m.errors.shape == (3, 8)


# ----------------------------------------------------------------------------- sampler, float32


def test_sampler_statistics_and_float32(key):
    cov = icl.conditioned_covariance(3, 10.0, key=key)
    np.testing.assert_allclose(np.linalg.eigvalsh(cov), np.geomspace(1, 0.1, 3)[::-1], rtol=1e-10)
    t = icl.sample_tasks(key, 20000, dim=3, context_length=4, inputs="gaussian", covariance=cov, dtype=jnp.float64)
    xs = np.asarray(t.x).reshape(-1, 3)
    np.testing.assert_allclose(xs.T @ xs / xs.shape[0], cov, atol=0.02)
    np.testing.assert_allclose(t.y, np.einsum("bnd,bd->bn", t.x, t.w), rtol=1e-10, atol=1e-12)
    u = icl.sample_tasks(key, 64, dim=3, context_length=4, noise_std=0.5)
    assert u.x.dtype == jnp.float32 and float(jnp.abs(u.x).max()) <= 1.0
    assert float(jnp.abs(u.y - jnp.einsum("bnd,bd->bn", u.x, u.w)).max()) > 0.1  # noise on the context
    toks = icl.tokens(u)
    assert toks.shape == (64, 5, 4) and toks.dtype == jnp.float32 and float(jnp.abs(toks[:, -1, -1]).max()) == 0.0


# ----------------------------------------------------------------------------- errors


def test_bad_inputs_raise_clear_errors(key):
    with pytest.raises(ValueError, match="positive definite"):
        icl.sample_tasks(key, 4, dim=2, context_length=3, inputs="gaussian", covariance=[[1.0, 0.0], [0.0, -1.0]])
    with pytest.raises(ValueError, match="symmetric"):
        icl.sample_tasks(key, 4, dim=2, context_length=3, inputs="gaussian", covariance=[[1.0, 0.5], [0.0, 1.0]])
    with pytest.raises(ValueError, match=r"shape \(3, 3\)"):
        icl.sample_tasks(key, 4, dim=3, context_length=3, inputs="gaussian", covariance=np.eye(2))
    with pytest.raises(ValueError, match="context_length"):
        icl.sample_tasks(key, 4, dim=3, context_length=0)
    with pytest.raises(ValueError, match="inputs"):
        icl.sample_tasks(key, 4, dim=3, context_length=2, inputs="laplace")
    with pytest.raises(ValueError, match="condition_number"):
        icl.conditioned_covariance(3, 0.5)
    tasks = _tasks(key, dim=3, n=5, num=4)
    with pytest.raises(ValueError, match="built for dim 4"):
        icl.predict(icl.gd_weights(4, 5, 0.1), icl.tokens(tasks))
    with pytest.raises(ValueError, match="context_length=7"):
        icl.check_tokens(icl.gd_weights(3, 7, 0.1), icl.tokens(tasks), context_length=7)
    with pytest.raises(ValueError, match="w0 must have shape"):
        icl.gd_weights(3, 5, 0.1, w0=np.ones(4))
    with pytest.raises(ValueError, match="w0 must have shape"):
        icl.tokens(tasks, np.ones(2))
    with pytest.raises(ValueError, match="eta"):
        icl.gd_weights(3, 5, [0.1, 0.2], num_layers=3)
    with pytest.raises(ValueError, match="num_steps"):
        icl.gd_predictions(tasks, 0.1, 0)
    with pytest.raises(FloatingPointError, match="non-finite"):
        icl.line_search_eta(tasks._replace(y=tasks.y * np.nan), 1)
    with pytest.raises(FloatingPointError, match="not finite"):
        icl.alignment(lambda t: t.query_y * np.nan, lambda t: t.query_y, tasks)


@pytest.mark.standard_promotion
def test_diverging_training_raises():
    setup = recipes.TaskSetup(dim=3, context_length=5, inputs="gaussian")
    with pytest.raises(FloatingPointError, match="diverged"):
        recipes.fit_lsa(setup, 1, num_steps=30, tasks_per_step=8, learning_rate=1e12, init_scale=1.0)
    with pytest.raises(ValueError, match="condition_number"):
        recipes.fit_lsa(setup._replace(condition_number=0.5), 1, num_steps=5)


@pytest.fixture(scope="module")
def small_study():
    with jax.numpy_dtype_promotion("standard"):  # optax's Adam
        return recipes.one_layer_study(recipes.TaskSetup(dim=5, context_length=10), num_steps=300, tasks_per_step=256,
                                       learning_rate=5e-3, init_scale=0.05, num_test_tasks=1024)


def test_paper_claims_at_small_size(small_study):
    """The claims of icl_as_gradient_descent, recomputed smaller (d = 5): construction to float32
    precision, one trained layer within 1% of one GD step with eta*, sensitivity cosine > 0.99."""
    assert recipes.construction_error(recipes.TaskSetup(dim=5, context_length=10), jax.random.key(0)) < 1e-5
    assert small_study.relative_gap < 0.01, small_study.relative_gap
    assert small_study.alignment.sensitivity_cosine > 0.99
    assert small_study.interpolation.losses.max() < 1.02 * small_study.gd_loss  # no barrier to the construction
    # the negative controls fail the same claims: untrained weights do not point like GD, and the
    # construction with half the step misses one GD step with eta* by far more than 1%
    assert small_study.controls.untrained_sensitivity_cosine < 0.9
    assert small_study.controls.half_eta_relative_gap > 0.1


def test_trained_model_refuses_mismatched_tasks(small_study):
    fit = small_study.fit
    assert recipes.evaluate_fit(fit, fit.setup.sample(jax.random.key(1), 64)) > 0
    with pytest.raises(ValueError, match="context_length 6"):
        recipes.evaluate_fit(fit, recipes.TaskSetup(5, 6).sample(jax.random.key(1), 4))
    with pytest.raises(ValueError, match="dim 4"):
        recipes.evaluate_fit(fit, recipes.TaskSetup(4, 10).sample(jax.random.key(1), 4))
    with pytest.raises(ValueError, match="built for dim 5"):
        icl.predict(fit.params, icl.tokens(recipes.TaskSetup(4, 10).sample(jax.random.key(1), 4)))


def test_panel_builds_and_reports_errors(capsys):
    from workbench.ui.icl import icl_panel

    calls = []

    def failing(**kw):
        calls.append(kw)
        raise ValueError("boom")

    panel = icl_panel(failing, num_layers=3)
    assert set(panel.controls) == {"dim", "context_length", "condition_number", "num_layers", "num_steps"}
    assert panel.run() is None and calls[0]["num_layers"] == 3
    # the error is shown in the panel (status line and output area), not raised
    assert "ValueError: boom" in panel.status.value and isinstance(panel.last_error, ValueError)


def test_task_counts_and_line_search_depths_share_compiled_programs(key):
    """The sampler draws at a bucketed task count (the first rows are the smaller draw, exactly)
    and the line search takes its GD step count traced: one program each across counts/depths."""
    from workbench.icl import algorithms
    from workbench.icl import tasks as T

    before = T.sample_with_factor._cache_size()
    small = icl.sample_tasks(key, 100, dim=3, context_length=5)
    mid = icl.sample_tasks(key, 1000, dim=3, context_length=5)
    big = icl.sample_tasks(key, 5000, dim=3, context_length=5)  # another bucket: a second program
    assert T.sample_with_factor._cache_size() - before == 2
    assert small.x.shape == (100, 5, 3) and mid.query_y.shape == (1000,)
    for a, b, c in zip(small, mid, big):
        np.testing.assert_array_equal(a, b[:100])
        np.testing.assert_array_equal(a, c[:100])
    before = algorithms._line_search._cache_size()
    etas = [icl.line_search_eta(mid, k).eta for k in (1, 2, 5)]
    assert algorithms._line_search._cache_size() - before == 1
    assert etas[0] != etas[1] != etas[2]
    one_step = float(icl.icl_loss(icl.gd_predictions(mid, etas[1], 2)[-1], mid))
    assert one_step <= min(float(icl.icl_loss(icl.gd_predictions(mid, e, 2)[-1], mid)) for e in
                           (0.9 * etas[1], 1.1 * etas[1])) + 1e-12


def test_icl_losses_lsa_loss_and_has_mlp(key):
    tasks = icl.sample_tasks(key, 32, dim=3, context_length=6, dtype=jnp.float64)
    preds = icl.gd_predictions(tasks, 0.3, 4)
    losses = icl.icl_losses(preds, tasks)
    np.testing.assert_allclose(losses, [0.5 * np.mean((np.asarray(p) - np.asarray(tasks.query_y)) ** 2)
                                        for p in preds], rtol=1e-12)
    params = icl.gd_weights(3, 6, 0.3, num_layers=2, dtype=jnp.float64)
    assert float(icl.lsa_loss(params, tasks)) == pytest.approx(float(losses[1]), rel=1e-10)
    assert not icl.has_mlp(params) and icl.has_mlp(icl.init_params(key, 3, mlp=True))


def test_depth_comparison_record_and_ratio():
    comp = recipes.DepthComparison(recipes.TaskSetup(), np.array([1, 2]), np.array([0.5, 0.2]), np.array([0.6, 0.4]),
                                   np.array([0.5, 0.3]), np.array([0.9, 0.7, 0.5]), 0.01, np.array([1.0, 0.8]), (), ())
    assert comp.deepest_over_gd() == pytest.approx(0.5)
    np.testing.assert_allclose(comp.trained_over_gd(), [0.5 / 0.6, 0.5])
    rec = comp.record()
    assert rec == {"depths": [1, 2], "trained": [0.5, 0.2], "gd": [0.6, 0.4], "gdpp": [0.5, 0.3],
                   "newton": [0.9, 0.7, 0.5], "least_squares": 0.01}
    assert all(type(v) is list for k, v in rec.items() if k != "least_squares")


@pytest.mark.standard_promotion  # optax's Adam
def test_training_chunks_cover_the_steps_without_waste_and_change_nothing(monkeypatch):
    """`fit_lsa` trains in equal chunks of at most 500 steps (a chunk always computes its full
    length, so 600 steps in chunks of 500 would compute 1000); the parameters are those of the
    old fixed 500-step chunks."""
    for n in (1, 7, 499, 500, 501, 600, 1000, 1001, 6000):
        c = recipes._steps_per_chunk(n)
        chunks = -(-n // c)
        assert c <= 500 and chunks == -(-n // 500) and chunks * c - n < chunks
    assert recipes._steps_per_chunk(600) == 300 and recipes._steps_per_chunk(5000) == 500
    setup = recipes.TaskSetup(dim=3, context_length=5)
    kw = dict(num_steps=7, tasks_per_step=8, num_test_tasks=16, progress=False)
    new = recipes.fit_lsa(setup, 2, **kw)
    monkeypatch.setattr(recipes, "_steps_per_chunk", lambda num_steps: 500)
    old = recipes.fit_lsa(setup, 2, **kw)
    jax.tree.map(np.testing.assert_array_equal, new.params, old.params)
    np.testing.assert_array_equal(new.result.history["loss"], old.result.history["loss"])
