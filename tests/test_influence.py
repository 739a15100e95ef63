"""Influence estimators against dense references and leave-one-out retraining (float64)."""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from workbench import curvature, data, influence, models
from workbench.core import statistics
from workbench.influence import validation as ev

N_TRAIN, N_TEST, L2 = 150, 12, 1e-2


class LogReg(NamedTuple):
    """Plain-jnp L2-regularised softmax regression (compiles faster than the NNX model)."""

    params: dict

    @staticmethod
    def per_example_loss_fn(params, batch):
        x, y = batch
        logp = jax.nn.log_softmax(x @ params["w"] + params["b"])
        return -jnp.take_along_axis(logp, y[:, None], axis=1)[:, 0]

    @staticmethod
    def loss_fn(params, batch):
        reg = jnp.sum(params["w"] ** 2) + jnp.sum(params["b"] ** 2)
        return jnp.mean(LogReg.per_example_loss_fn(params, batch)) + 0.5 * L2 * reg


@pytest.fixture(scope="module")
def problem():
    """L2-regularised logistic regression on a digits subset, trained to its optimum."""
    jax.config.update("jax_enable_x64", True)
    train, test = data.load_digits(dtype=jnp.float64)
    train, test = train.take(np.arange(N_TRAIN)), test.take(np.arange(N_TEST))
    f = LogReg({"w": jnp.zeros((64, 10)), "b": jnp.zeros(10)})
    params, gnorm = ev.fit(f.loss_fn, f.params, train)
    assert gnorm < 1e-9
    return f, params, train, test


@pytest.fixture(scope="module")
def exact_est(problem):
    f, params, train, _ = problem
    return influence.make("exact", f.loss_fn, params, train)


@functools.partial(jax.jit, static_argnums=0)
def _reference_scores(loss_fn, params, train, test, damping=0.0):
    """g_test^T (H + damping)^{-1} g_train from an independent dense computation."""
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    obj = lambda v: loss_fn(unravel(v), train)
    h = jax.hessian(obj)(flat) + damping * jnp.eye(flat.size)
    per = lambda d: jax.vmap(lambda x, y: jax.grad(lambda v: loss_fn(unravel(v), (x[None], y[None])))(flat))(d.x, d.y)
    return per(test) @ jnp.linalg.solve(h, per(train).T)


def test_exact_matches_dense_solve(problem, exact_est):
    f, params, train, test = problem
    np.testing.assert_allclose(exact_est.scores(test), _reference_scores(f.loss_fn, params, train, test), rtol=1e-8, atol=1e-10)
    damped = influence.make("exact", f.loss_fn, params, train, damping=0.5)
    np.testing.assert_allclose(damped.scores(test), _reference_scores(f.loss_fn, params, train, test, 0.5), rtol=1e-8, atol=1e-10)
    assert damped.info["damping"] == 0.5


def test_exact_against_leave_one_out_retraining(problem, exact_est):
    f, params, train, test = problem
    truth = ev.loo(f.loss_fn, params, train, test, np.arange(0, N_TRAIN, 3))
    assert truth.grad_norm.max() < 1e-8
    scores = np.asarray(exact_est.scores(test))
    corr = ev.loo_correlation(scores, truth)
    assert corr.pearson >= 0.9 and corr.pearson_pooled >= 0.9, corr
    # the magnitude, which correlations cannot see: against one Newton step of the leave-one-out
    # objective from the optimum, theta_-i - theta ~ H_-i^{-1} g_i / (n - 1), H_-i = (n H - H_i) / (n - 1)
    # (the influence function is this step with H in place of H_-i), and against retraining
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    n = truth.num_train
    one = lambda v, example: f.loss_fn(unravel(v), example)
    hess_one, grad_one = jax.jit(jax.hessian(one)), jax.jit(jax.grad(one))  # compiled once, not per example
    hess = np.asarray(jax.hessian(lambda v: f.loss_fn(unravel(v), train))(flat))
    g_test = np.asarray(jax.vmap(lambda x, y: jax.grad(lambda v: f.loss_fn(unravel(v), (x[None], y[None])))(flat))(test.x, test.y))
    newton = np.stack([g_test @ np.linalg.solve((n * hess - np.asarray(hess_one(flat, train.take(np.array([i]))))) / (n - 1),
                                                 np.asarray(grad_one(flat, train.take(np.array([i]))))) / (n - 1)
                       for i in truth.removed], axis=1)  # [n_test, removed]
    predicted = scores[:, truth.removed] / (n - 1)
    slope = lambda a, b: float(np.dot(a.ravel(), b.ravel()) / np.dot(a.ravel(), a.ravel()))
    assert 0.9 < slope(newton, truth.actual) < 1.1, slope(newton, truth.actual)  # Newton tracks retraining
    # the influence function uses H >= H_-i, so it is the Newton step shrunk by the leverage of
    # the removed example (Sherman-Morrison: by 1 - leverage): same sign, somewhat smaller
    assert 1.0 < slope(predicted, newton) < 2.0, slope(predicted, newton)
    assert _rows_corr(predicted, newton) > 0.95
    # the curvature-free baselines are clearly worse: the test can tell estimators apart
    dot = ev.loo_correlation(influence.make("grad_dot", f.loss_fn, params, train).scores(test), truth)
    assert dot.pearson < corr.pearson - 0.05


def _rows_corr(a, b):
    return float(np.mean(statistics.pearson_rows(a, b)))


def test_retraining_weights_mean_dropping_the_example(problem):
    """LOO by weights equals fitting loss_fn on the other n-1 examples from scratch."""
    f, params, train, test = problem
    i = 7
    truth = ev.loo(f.loss_fn, params, train, test, np.array([i]))
    keep = np.setdiff1d(np.arange(N_TRAIN), [i])
    refit, gnorm = ev.fit(f.loss_fn, f.params, train.take(keep))
    direct = jax.vmap(lambda x, y: f.loss_fn(refit, (x[None], y[None])))(test.x, test.y)
    base = jax.vmap(lambda x, y: f.loss_fn(params, (x[None], y[None])))(test.x, test.y)
    np.testing.assert_allclose(truth.actual[:, 0], direct - base, rtol=1e-6, atol=1e-12)


def test_tracin_one_checkpoint_is_grad_dot_times_step(problem):
    f, params, train, test = problem
    dot = influence.make("grad_dot", f.loss_fn, params, train).scores(test)
    tr = influence.make("tracin", f.loss_fn, params, train, checkpoints={100: params}, learning_rates={100: 0.3})
    np.testing.assert_allclose(tr.scores(test), 0.3 * dot, rtol=1e-12, atol=1e-14)
    # two checkpoints add up
    other = jax.tree.map(lambda a: 0.5 * a, params)
    two = influence.make("tracin", f.loss_fn, params, train, checkpoints={0: other, 5: params},
                         learning_rates=[0.1, 0.2]).scores(test)
    dot0 = influence.make("grad_dot", f.loss_fn, other, train).scores(test)
    np.testing.assert_allclose(two, 0.1 * dot0 + 0.2 * dot, rtol=1e-10, atol=1e-14)


def test_grad_cos_is_bounded_and_self_influence_one(problem):
    f, params, train, test = problem
    est = influence.make("grad_cos", f.loss_fn, params, train)
    s = est.scores(test)
    assert float(jnp.max(jnp.abs(s))) <= 1 + 1e-12
    np.testing.assert_allclose(est.self_influence(), 1.0, rtol=1e-10)


def test_self_influence_proponents_opponents_and_streaming(problem, exact_est):
    f, params, train, test = problem
    full = exact_est.scores(train)
    np.testing.assert_allclose(exact_est.self_influence(), jnp.diag(full), rtol=1e-9)
    assert bool(jnp.all(exact_est.self_influence() > 0))  # H^{-1} is positive definite
    s = exact_est.scores(test)
    top = exact_est.proponents(test, k=5)
    np.testing.assert_array_equal(top.indices, np.argsort(-np.asarray(s), axis=1)[:, :5])
    bottom = exact_est.opponents(test, k=5)
    np.testing.assert_array_equal(bottom.indices, np.argsort(np.asarray(s), axis=1)[:, :5])
    assert bool(jnp.all(bottom.scores[:, 0] <= bottom.scores[:, -1]))
    streamed = influence.make("exact", f.loss_fn, params, train, cache_bytes=0, chunk_size=64)
    np.testing.assert_allclose(streamed.scores(test), s, rtol=1e-10, atol=1e-14)


def test_deterministic(problem):
    f, params, train, test = problem
    a = influence.make("exact", f.loss_fn, params, train, chunk_size=32).scores(test)
    b = influence.make("exact", f.loss_fn, params, train, chunk_size=32).scores(test)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_measure_fn_changes_only_the_test_side(problem, exact_est):
    f, params, train, test = problem
    measure = lambda p, b: jnp.mean(f.per_example_loss_fn(p, b))  # test loss without the L2 term
    est = influence.make("exact", f.loss_fn, params, train, measure_fn=measure)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    g = jax.vmap(lambda x, y: jax.grad(lambda v: measure(unravel(v), (x[None], y[None])))(flat))(test.x, test.y)
    inverse = jnp.linalg.inv(curvature.dense_hessian(f.loss_fn, params, train))
    expected = g @ inverse @ exact_est.train_features().T
    np.testing.assert_allclose(est.scores(test), expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(est.self_influence(), exact_est.self_influence(), rtol=1e-12)


def test_bad_input_gives_clear_errors(problem, exact_est):
    f, params, train, test = problem
    with pytest.raises(ValueError, match="unknown influence estimator 'nope'"):
        influence.make("nope", f.loss_fn, params, train)
    with pytest.raises(ValueError, match=r"per-example shape \(64,\)"):
        exact_est.scores(data.Dataset(test.x[:, :32], test.y))
    with pytest.raises(ValueError, match="structure of the training data"):
        exact_est.scores((test.x, test.y, test.y))
    with pytest.raises(ValueError, match="test_batch contains NaN"):
        exact_est.scores(data.Dataset(test.x.at[0, 0].set(jnp.nan), test.y))
    with pytest.raises(ValueError, match=r"params contains NaN.*\['b'\]"):
        influence.make("grad_dot", f.loss_fn, jax.tree.map(lambda a: a.at[0].set(jnp.nan), params), train)
    with pytest.raises(ValueError, match="damping must be"):
        influence.make("exact", f.loss_fn, params, train, damping=-1.0)
    with pytest.raises(ValueError, match="tracin needs checkpoints"):
        influence.make("tracin", f.loss_fn, params, train)
    with pytest.raises(ValueError, match=r"checkpoints\[3\] does not match params"):
        influence.make("tracin", f.loss_fn, params, train, checkpoints={3: {"w": 1.0}}, learning_rates=0.1)
    with pytest.raises(ValueError, match="k must lie"):
        exact_est.proponents(test, k=0)


def test_exact_refuses_an_indefinite_hessian(key):
    train = data.make_classification(key, 40, 4, num_classes=3, dtype=jnp.float64)
    params = {"w1": jax.random.normal(key, (4, 6)), "w2": jax.random.normal(key, (6, 3))}

    def loss(p, batch):
        x, y = batch
        logp = jax.nn.log_softmax(jnp.tanh(x @ p["w1"]) @ p["w2"])
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    with pytest.raises(ValueError, match="not positive definite.*smallest Hessian eigenvalue"):
        influence.make("exact", loss, params, train)


def test_works_on_an_nnx_model(problem):
    _, _, train, test = problem
    f = models.functional(models.LogisticRegression(64, 10, rngs=nnx.Rngs(0), param_dtype=jnp.float64), l2=L2)
    plain = LogReg({"w": f.params["linear"]["kernel"], "b": f.params["linear"]["bias"]})
    a = influence.make("grad_dot", f.loss_fn, f.params, train).scores(test)
    b = influence.make("grad_dot", plain.loss_fn, plain.params, train).scores(test)
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)


def test_nan_in_results_is_reported(problem):
    f, params, train, test = problem
    bad_loss = lambda p, b: f.loss_fn(p, b) * jnp.where(b[1][0] == 3, jnp.nan, 1.0)
    est = influence.make("grad_dot", bad_loss, params, train)
    with pytest.raises(FloatingPointError, match="'grad_dot': training features contain NaN"):
        est.scores(test)


def test_lds_auc_and_rank_metrics(problem, exact_est, key):
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    f, params, train, test = problem
    truth = ev.lds_ground_truth(f.loss_fn, params, train, key, test, num_subsets=16)
    assert truth.masks.shape == (16, N_TRAIN) and (truth.masks.sum(1) == N_TRAIN // 2).all()
    assert truth.grad_norm.max() < 1e-8
    good = ev.lds(exact_est.scores(test), truth).mean
    noise = ev.lds(np.random.default_rng(0).normal(size=(N_TEST, N_TRAIN)), truth).mean
    assert good > 0.6 and abs(noise) < 0.25, (good, noise)
    a, b = np.random.default_rng(1).normal(size=(2, 30))
    assert statistics.spearman_rows(a, b)[0] == pytest.approx(spearmanr(a, b)[0], rel=1e-12)
    labels = np.arange(30) % 3 == 0
    assert statistics.auc(a, labels) == pytest.approx(roc_auc_score(labels, a), rel=1e-12)


def test_flip_labels(problem, key):
    _, _, train, _ = problem
    noisy, flipped = ev.flip_labels(train, key, 0.1, 10)
    assert flipped.sum() == 15
    assert (np.asarray(noisy.y)[flipped] != np.asarray(train.y)[flipped]).all()
    assert (np.asarray(noisy.y)[~flipped] == np.asarray(train.y)[~flipped]).all()


def test_a_functional_keeps_objective_data_loss_and_measure_apart(key):
    """With a Functional, the curvature is the objective's (l2 included) while the attributed
    gradients and the test measure are the data loss's; checked against a dense formula written
    here, and against the roles mixed (the regularised objective passed as a plain loss_fn)."""
    from flax import nnx
    from scipy.stats import spearmanr

    ds = data.make_classification(jax.random.key(3), 60, 5, num_classes=3, dtype=jnp.float64)
    train, test = ds.take(slice(0, 50)), ds.take(slice(50, 60))
    fn = models.functional(models.LogisticRegression(5, 3, rngs=nnx.Rngs(0), param_dtype=jnp.float64), l2=0.5)
    params, _ = ev.fit(fn.loss_fn, fn.params, train)  # the optimum: mean data gradient = -l2 theta
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    hess = jax.hessian(lambda w: fn.loss_fn(unravel(w), train))(flat)  # objective: data + 0.5 l2 |w|^2
    data_grad = lambda w, x, y: jax.grad(lambda q: fn.per_example_loss_fn(unravel(q), (x[None], y[None]))[0])(w)
    g_train = jax.vmap(lambda x, y: data_grad(flat, x, y))(train.x, train.y)
    g_test = jax.vmap(lambda x, y: data_grad(flat, x, y))(test.x, test.y)
    reference = np.asarray(g_test @ jnp.linalg.solve(hess, g_train.T))
    for name, opts in (("exact", {}), ("cg", {}), ("arnoldi", {"k": flat.size, "key": key})):
        got = np.asarray(influence.make(name, fn, params, train, **opts).scores(test))
        np.testing.assert_allclose(got, reference, rtol=1e-6, atol=1e-9 * np.abs(reference).max())
    mixed = np.asarray(influence.make("exact", fn.loss_fn, params, train).scores(test))
    rho = np.mean([spearmanr(a, b)[0] for a, b in zip(mixed, reference)])
    assert rho < 0.95, rho  # the mixed roles rank differently: why the Functional path exists
    with pytest.raises(ValueError, match="objective_fn= applies to the curvature estimators"):
        influence.make("grad_dot", fn.loss_fn, params, train, objective_fn=fn.loss_fn)
