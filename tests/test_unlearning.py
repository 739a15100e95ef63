"""workbench.unlearning: methods against float64 references, evaluations against brute force,
the bad-input contract, the tiny diffusion model, and the papers' claims on their last run."""


import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from workbench import unlearning as U
from workbench.core import statistics
from workbench.data import Dataset
from workbench.train import NonFiniteLossError
from workbench.unlearning import diffusion as D
from workbench.unlearning import integrity
from workbench.unlearning import metrics as E

# ----------------------------------------------------------------------------- a small problem


def _data(key, n=60, d=5, c=3, dtype=jnp.float64):
    kx, kw = jax.random.split(key)
    x = jax.random.normal(kx, (n, d), dtype)
    w = jax.random.normal(kw, (d, c), dtype)
    y = jnp.argmax(x @ w + 0.5 * jax.random.normal(jax.random.fold_in(kx, 1), (n, c), dtype), axis=1).astype(jnp.int32)
    return Dataset(x, y)


def predict_fn(params, x):
    return x @ params["w"] + params["b"]


L2 = 1e-2


def loss_fn(params, batch):
    x, y = batch
    lp = jax.nn.log_softmax(predict_fn(params, x))
    ce = -jnp.mean(jnp.take_along_axis(lp, y[:, None], axis=1))
    return ce + 0.5 * L2 * (jnp.sum(params["w"] ** 2) + jnp.sum(params["b"] ** 2))


def _params(key, d=5, c=3, dtype=jnp.float64):
    return {"w": 0.3 * jax.random.normal(key, (d, c), dtype), "b": jnp.zeros((c,), dtype)}


@pytest.fixture
def problem(key):
    data = _data(key)
    s = U.split(data, np.arange(6))
    return data, s, _params(jax.random.fold_in(key, 2))


# ----------------------------------------------------------------------------- bad input


def test_split_rejects_bad_forget_sets(problem):
    data, s, _ = problem
    with pytest.raises(ValueError, match="forget is empty"):
        U.split(data, np.array([], dtype=int))
    with pytest.raises(ValueError, match="not a subset of train_data"):
        U.split(data, Dataset(data.x[:3] + 100.0, data.y[:3]))
    with pytest.raises(ValueError, match="not a subset"):
        U.split(data, np.array([0, 60]))
    with pytest.raises(ValueError, match="retain overlaps forget"):
        U.split(data, np.arange(5), retain=np.arange(3, 20))
    with pytest.raises(ValueError, match="repeat"):
        U.split(data, np.array([1, 1]))
    by_rows = U.split(data, data.take(np.array([7, 3])))  # examples are found by their rows
    np.testing.assert_array_equal(by_rows.forget_indices, [7, 3])
    mask = np.zeros(60, bool)
    mask[[2, 4]] = True
    assert U.split(data, mask).retain_indices.size == 58


def test_methods_reject_empty_or_overlapping_sets(problem, key):
    data, s, p = problem
    empty = Dataset(data.x[:0], data.y[:0])
    opts = dict(learning_rate=0.1, num_steps=2)
    with pytest.raises(ValueError, match="forget is empty"):
        U.gradient_ascent(loss_fn, p, empty, s.retain, key, **opts)
    with pytest.raises(ValueError, match="retain overlaps forget"):
        U.neggrad_plus(loss_fn, p, s.forget, data, key, **opts)  # the full data contains the forget set
    with pytest.raises(ValueError, match="retain overlaps forget"):
        U.ssd(loss_fn, p, s.forget, data)
    nan = Dataset(s.forget.x.at[0, 0].set(jnp.nan), s.forget.y)
    with pytest.raises(ValueError, match="NaN"):
        U.scrub(loss_fn, p, nan, s.retain, key, predict_fn=predict_fn, **opts)


def test_ssd_alpha_that_selects_nothing_raises(problem, key):
    data, s, p = problem
    bound = 60 / 6
    with pytest.raises(ValueError, match=r"\|D\|/\|D_f\|"):
        U.ssd(loss_fn, p, s.forget, s.retain, alpha=bound)
    # just below the bound nothing is selected either (it needs F_retain = 0): an error, not a no-op
    with pytest.raises(ValueError, match="selected no weight"):
        U.ssd(loss_fn, p, s.forget, s.retain, alpha=0.999 * bound)


def test_nan_losses_raise_instead_of_returning_a_model(problem, key):
    data, s, p = problem

    def bad_loss(params, batch):
        return loss_fn(params, batch) * jnp.nan

    with pytest.raises(NonFiniteLossError, match="gradient_ascent.*step 0"):
        U.gradient_ascent(bad_loss, p, s.forget, s.retain, key, learning_rate=0.1, num_steps=3)
    with pytest.raises(NonFiniteLossError, match="neggrad_plus"):  # ascent blown up to inf
        U.neggrad_plus(loss_fn, p, s.forget, s.retain, key, learning_rate=1e300, num_steps=5, retain_weight=0.1)


# ----------------------------------------------------------------------------- methods vs references


def test_fisher_diagonal_matches_per_example_loop(problem):
    data, _, p = problem
    fisher = U.fisher_diagonal(loss_fn, p, data, chunk_size=7)  # 60 = 8 chunks of 7 with padding
    grad = jax.jit(jax.grad(loss_fn))
    grads = [grad(p, Dataset(data.x[i : i + 1], data.y[i : i + 1])) for i in range(60)]
    for k in p:
        ref = np.mean([np.asarray(g[k]) ** 2 for g in grads], axis=0)
        np.testing.assert_allclose(fisher[k], ref, rtol=1e-12, atol=1e-15)


def test_ssd_matches_dense_formula(problem, key):
    data, s, p = problem
    alpha, lam = 1.5, 0.7
    out = U.ssd(loss_fn, p, s.forget, s.retain, alpha=alpha, lam=lam)
    ff = U.fisher_diagonal(loss_fn, p, s.forget)
    fd = U.fisher_diagonal(loss_fn, p, data)  # the full data, in one pass
    selected = 0
    for k in p:
        sel = np.asarray(ff[k]) > alpha * np.asarray(fd[k])
        beta = np.minimum(lam * np.asarray(fd[k]) / np.where(sel, np.asarray(ff[k]), 1.0), 1.0)
        np.testing.assert_allclose(out.params[k], np.where(sel, np.asarray(p[k]) * beta, p[k]), rtol=1e-12)
        selected += sel.sum()
    assert 0 < selected and float(out.selected) == pytest.approx(selected / 18)


def test_neggrad_plus_full_batch_matches_gradient_descent_loop(problem, key):
    _, s, p = problem
    lr, w, steps = 0.3, 0.8, 4
    out = U.neggrad_plus(loss_fn, p, s.forget, s.retain, key, learning_rate=lr, num_steps=steps,
                         batch_size=1000, retain_weight=w)
    ref = p
    objective = lambda q: w * loss_fn(q, s.retain) - (1 - w) * loss_fn(q, s.forget)
    value_and_grad = jax.jit(jax.value_and_grad(objective))
    losses = []
    for _ in range(steps):
        value, grad = value_and_grad(ref)
        losses.append(float(value))
        ref = jax.tree.map(lambda a, g: a - lr * g, ref, grad)
    for k in p:
        np.testing.assert_allclose(out.params[k], ref[k], rtol=1e-12)
    np.testing.assert_allclose(out.losses, losses, rtol=1e-12)
    ga = U.gradient_ascent(loss_fn, p, s.forget, s.retain, key, learning_rate=lr, num_steps=1, batch_size=1000)
    g = jax.grad(loss_fn)(p, s.forget)
    np.testing.assert_allclose(ga.params["w"], p["w"] + lr * g["w"], rtol=1e-12)  # ascent: + gradient


def test_step_counts_share_one_compiled_program_and_give_the_same_numbers(problem, key):
    """num_steps is traced (the loop length is a static bucket): a sweep over step counts compiles
    once, and k steps are exactly the first k steps of a longer run (same minibatches)."""
    from workbench.unlearning import matching, methods

    _, s, p = problem
    before = methods._neggrad._cache_size()
    runs = {n: U.gradient_ascent(loss_fn, p, s.forget, s.retain, key, learning_rate=0.1, num_steps=n, batch_size=4)
            for n in (3, 10, 37)}
    assert methods._neggrad._cache_size() - before == 1
    assert [r.losses.shape for r in runs.values()] == [(3,), (10,), (37,)]
    np.testing.assert_allclose(runs[10].losses[:3], runs[3].losses, rtol=1e-12)
    np.testing.assert_allclose(runs[37].losses[:10], runs[10].losses, rtol=1e-12)
    # ...and a step count actually changes the result (the loop is not run to the bucket)
    assert not np.allclose(runs[3].params["w"], runs[10].params["w"])
    before = matching._match._cache_size()
    for n in (5, 20):
        U.match_outputs(predict_fn, p, s.forget.x, predict_fn(p, s.forget.x), key, learning_rate=0.01, num_steps=n,
                        optimizer_name="sgd")
    assert matching._match._cache_size() - before == 1


@pytest.mark.standard_promotion  # optax.adam (the digits setup) is not strict-safe
def test_model_stacks_of_different_sizes_share_one_compiled_fit():
    """Stacks of 1 and 4 models, on the training set and on a subset of it (a retain set), share
    one compiled program, and each model is `train.optimize` from its key on its own data: the
    padding (models, zero rows) never leaks into a model."""
    import optax

    from workbench import train
    from workbench.experiments import unlearning as recipes

    setup = recipes.digits_setup(num_steps=5, seed=0)
    keys = jax.random.split(jax.random.key(0), 4)
    subset = setup.train_data.take(np.arange(1, 300, 2))
    one, four = recipes.train_models(setup, setup.train_data, keys[:1]), recipes.train_models(setup, setup.train_data, keys)
    on_subset = recipes.train_models(setup, subset, keys)
    fit = recipes._FITS[(setup.loss_fn, setup.init_fn, setup.learning_rate, setup.num_steps, setup.batch_size)]
    assert fit._cache_size() == 1
    assert jax.tree.leaves(one)[0].shape[0] == 1 and jax.tree.leaves(four)[0].shape[0] == 4
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four)):
        np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)
    fit_one = jax.jit(lambda k, data: train.optimize(setup.loss_fn, setup.init_fn(jax.random.split(k)[0]), data,
                                                     jax.random.split(k)[1], optimizer=optax.adam(setup.learning_rate),
                                                     num_steps=setup.num_steps, batch_size=setup.batch_size).params)
    for stack, data, i in ((four, setup.train_data, 0), (on_subset, subset, 3)):
        for a, b in zip(jax.tree.leaves(stack), jax.tree.leaves(fit_one(keys[i], data))):
            np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6)


def test_scrub_alternates_max_and_min_steps(problem, key):
    """Two rounds of (max step on forget, min step on retain) against a hand-written loop; the
    first max step has zero gradient (student = teacher), the second does not."""
    _, s, p = problem
    lr = 0.2
    out = U.scrub(loss_fn, p, s.forget, s.retain, key, predict_fn=predict_fn, learning_rate=lr, num_steps=3,
                  max_steps=2, batch_size=1000, ce_weight=0.5)
    kl = lambda t, q, x: U.methods._kl_logits(predict_fn(t, x), predict_fn(q, x))
    max_grad = jax.jit(jax.grad(lambda q: -kl(p, q, s.forget.x)))
    min_grad = jax.jit(jax.grad(lambda q: kl(p, q, s.retain.x) + 0.5 * loss_fn(q, s.retain)))
    q = p
    for step in range(3):
        if step < 2:
            q = jax.tree.map(lambda a, g: a - lr * g, q, max_grad(q))
        q = jax.tree.map(lambda a, g: a - lr * g, q, min_grad(q))
    for k in p:
        np.testing.assert_allclose(out.params[k], q[k], rtol=1e-10)
    assert float(jnp.abs(max_grad(jax.tree.map(lambda a: 1.1 * a, p))["w"]).max()) > 1e-4


def test_many_equals_one_model_at_a_time(problem, key):
    _, s, p = problem
    stack = jax.tree.map(lambda a: jnp.stack([a, 2 * a, -a]), p)
    keys = jax.random.split(key, 3)
    opts = dict(learning_rate=0.1, num_steps=5, batch_size=4)
    out = U.many("neggrad_plus", loss_fn, stack, s.forget, s.retain, keys, **opts)
    for i in range(3):
        one = U.neggrad_plus(loss_fn, jax.tree.map(lambda a: a[i], stack), s.forget, s.retain, keys[i], **opts)  # noqa: B023
        np.testing.assert_allclose(out.params["w"][i], one.params["w"], rtol=1e-10)
    with pytest.raises(ValueError, match="leading axis of 2"):
        U.many("neggrad_plus", loss_fn, stack, s.forget, s.retain, keys[:2], **opts)


def test_method_names_keys_and_unknown_methods(problem, key):
    """Unknown names are a ValueError listing the valid ones; SSD takes no key (by name it is
    given none, `many` vmaps it without keys) and the others refuse to run without one."""
    _, s, p = problem
    with pytest.raises(ValueError, match="unknown unlearning method 'foo'.*gradient_ascent"):
        U.many("foo", loss_fn, p, s.forget, s.retain, key[None])
    with pytest.raises(ValueError, match="unknown unlearning method"):
        U.unlearn("foo", loss_fn, p, s.forget, s.retain, key)
    assert not U.takes_key("ssd") and U.takes_key("scrub") and U.takes_key(U.retrain)
    with pytest.raises(ValueError, match="pass a key"):
        U.unlearn("gradient_ascent", loss_fn, p, s.forget, s.retain, learning_rate=0.1, num_steps=2)
    one = U.unlearn("ssd", loss_fn, p, s.forget, s.retain, key, alpha=1.5)  # the key is not passed on
    np.testing.assert_array_equal(one.params["w"], U.ssd(loss_fn, p, s.forget, s.retain, alpha=1.5).params["w"])
    stack = jax.tree.map(lambda a: jnp.stack([a, a]), p)
    both = U.many("ssd", loss_fn, stack, s.forget, s.retain, alpha=1.5)
    np.testing.assert_allclose(both.params["w"][1], one.params["w"], rtol=1e-12)
    with pytest.raises(ValueError, match="optimizer_name must be one of"):
        U.gradient_ascent(loss_fn, p, s.forget, s.retain, key, learning_rate=0.1, num_steps=2, optimizer_name="lbfgs")
    with pytest.raises(ValueError, match="num_steps must be an int >= 1"):
        U.gradient_ascent(loss_fn, p, s.forget, s.retain, key, learning_rate=0.1, num_steps=0)


def test_optimize_streams_matches_a_hand_written_loop_and_traced_step_counts(key):
    """The one multi-stream training scan: two streams, SGD, step keys; a traced step count with a
    longer static loop gives the same numbers as the exact count."""
    import optax

    from workbench.train import batch_indices, optimize_streams

    a = jnp.arange(10.0)
    b = jnp.arange(7.0) * 2

    def objective(p, batches):
        x, y, k = batches
        return jnp.mean((p - x) ** 2) + jnp.mean((p - y) ** 2) + jax.random.uniform(k) * p

    params, losses = optimize_streams(objective, jnp.array(0.5), (a, b), key, optimizer=optax.sgd(0.1),
                                      num_steps=4, batch_sizes=(3, 2), step_keys=True)
    ka, kb, ks = jax.random.split(key, 3)
    ia, ib, step_key = batch_indices(ka, 10, 3, 4), batch_indices(kb, 7, 2, 4), jax.random.split(ks, 4)
    p, ref = jnp.array(0.5), []
    for i in range(4):
        value, grad = jax.value_and_grad(objective)(p, (a[ia[i]], b[ib[i]], step_key[i]))
        ref.append(float(value))
        p = p - 0.1 * grad
    np.testing.assert_allclose(params, p, rtol=1e-12)
    np.testing.assert_allclose(losses, ref, rtol=1e-12)
    run = jax.jit(lambda n: optimize_streams(objective, jnp.array(0.5), (a, b), key, optimizer=optax.sgd(0.1),
                                             num_steps=n, batch_sizes=(3, 2), max_steps=16, step_keys=True))
    traced_params, traced_losses = run(jnp.asarray(4))
    np.testing.assert_allclose(traced_params, params, rtol=1e-12)
    np.testing.assert_allclose(traced_losses[:4], losses, rtol=1e-12)
    assert not np.any(np.asarray(traced_losses[4:]))
    with pytest.raises(ValueError, match="one batch size per stream"):
        optimize_streams(objective, jnp.array(0.5), (a, b), key, optimizer=optax.sgd(0.1), num_steps=2,
                         batch_sizes=(3,))


@pytest.mark.standard_promotion  # Adam
def test_retrain_is_deterministic_and_ignores_the_forget_set(problem, key):
    _, s, p = problem
    init = lambda k: _params(k)
    opts = dict(init_fn=init, learning_rate=0.05, num_steps=20, batch_size=16)
    a = U.retrain(loss_fn, p, s.forget, s.retain, key, **opts)
    b = U.retrain(loss_fn, p, s.forget, s.retain, key, **opts)
    np.testing.assert_array_equal(a.params["w"], b.params["w"])
    other = Dataset(s.forget.x + 1.0, s.forget.y)
    c = U.retrain(loss_fn, p, other, s.retain, key, **opts)
    np.testing.assert_array_equal(a.params["w"], c.params["w"])


def test_datamodel_targets_predict_retraining_on_a_convex_model(key):
    """Exact influence on L2-regularised logistic regression: the predicted logits of the model
    retrained without the forget set match the actually retrained (converged) model."""
    data = _data(key, n=1000)  # the first-order error falls like 1/n: 0.31 at n=80, 0.03 here
    s = U.split(data, np.array([0, 5, 9]))
    newton = lambda q, d: _newton(q, d)
    p = newton(_params(jax.random.fold_in(key, 3)), data)
    oracle = newton(p, s.retain)
    t = U.datamodel_targets(loss_fn, p, s.forget, s.retain, key, predict_fn=predict_fn, estimator="exact",
                            retain_sample=10)
    base = predict_fn(p, t.x)
    actual, predicted = predict_fn(oracle, t.x) - base, t.targets - base
    assert float(jnp.abs(actual).max()) > 1e-3  # removing the examples does move the logits
    rel = float(jnp.linalg.norm(predicted - actual) / jnp.linalg.norm(actual))
    assert rel < 0.06, rel
    assert float(jnp.sum(predicted * actual)) > 0  # the sign convention is right


def _newton(p, data, iters=12):
    """Newton's method to convergence on the (strongly convex) objective: the retrained reference."""
    flat, unravel = jax.flatten_util.ravel_pytree(p)
    return unravel(_newton_flat(flat, data, iters, unravel))


@jax.jit
def _newton_step(flat, data):
    unravel = jax.flatten_util.ravel_pytree(_params(jax.random.key(0)))[1]
    f = lambda v: loss_fn(unravel(v), data)
    return flat - jnp.linalg.solve(jax.hessian(f)(flat), jax.grad(f)(flat))


def _newton_flat(flat, data, iters, unravel):
    for _ in range(iters):
        flat = _newton_step(flat, data)
    return flat


@pytest.mark.standard_promotion  # Adam
def test_match_outputs_fits_targets_and_oracle_matching_moves_towards_the_oracle(problem, key):
    data, s, p = problem
    oracle = _newton(p, s.retain)
    out = U.oracle_matching(loss_fn, p, s.forget, s.retain, key, predict_fn=predict_fn, oracle_params=oracle,
                            learning_rate=0.05, num_steps=150, retain_sample=20, batch_size=26)
    gap = lambda q: float(jnp.abs(predict_fn(q, s.forget.x) - predict_fn(oracle, s.forget.x)).mean())
    assert gap(out.params) < 0.2 * gap(p)


def test_float32_methods_keep_float32(key):
    data = _data(key, dtype=jnp.float32)
    s = U.split(data, np.arange(6))
    p = _params(jax.random.fold_in(key, 2), dtype=jnp.float32)
    for name, opts in [("neggrad_plus", dict(learning_rate=0.1, num_steps=3)), ("ssd", dict(alpha=1.5))]:
        out = U.unlearn(name, loss_fn, p, s.forget, s.retain, key, **opts)
        assert out.params["w"].dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(out.params["w"])))


# ----------------------------------------------------------------------------- evaluations


def test_klom_gaussian_matches_closed_form_and_histogram_behaves(key):
    rng = np.random.default_rng(0)
    u = rng.normal(1.0, 2.0, (4000, 3))
    o = rng.normal(0.0, 1.0, (4000, 3))
    kl = E.klom_values(u, o, estimator="gaussian")
    ref = np.log(1 / 2) + (4 + 1) / 2 - 0.5  # KL(N(1, 4) || N(0, 1))
    np.testing.assert_allclose(kl, ref, rtol=0.06)
    same = E.klom_values(o[:2000], o[2000:], estimator="histogram", num_bins=10)
    far = E.klom_values(o + 50, o, estimator="histogram", num_bins=10)
    assert same.max() < 0.02 and far.min() > 5
    # histogram against a direct loop at one point
    a, b = rng.normal(0, 1, 50), rng.normal(0.5, 1, 50)
    edges = np.linspace(min(a.min(), b.min()), max(a.max(), b.max()), 11)
    pa, pb = (np.histogram(v, edges)[0] / 50 + 1e-5 for v in (a, b))
    pa, pb = pa / pa.sum(), pb / pb.sum()
    np.testing.assert_allclose(E.klom_values(a[:, None], b[:, None], num_bins=10)[0], np.sum(pa * np.log(pa / pb)),
                               rtol=1e-10)
    with pytest.raises(ValueError, match="at least 2 models"):
        E.klom_values(u[:1], o)


def test_auc_matches_pairwise_count():
    rng = np.random.default_rng(1)
    pos, neg = rng.integers(0, 5, 30).astype(float), rng.integers(0, 5, 40).astype(float)
    ref = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    positives = np.concatenate([np.ones(pos.size, bool), np.zeros(neg.size, bool)])
    assert statistics.auc(np.concatenate([pos, neg]), positives) == pytest.approx(ref, abs=1e-12)


def test_margins_and_scores(problem):
    data, s, p = problem
    logits = predict_fn(p, data.x)
    m = E.margins(logits, data.y)
    i = 3
    others = np.delete(np.asarray(logits[i]), int(data.y[i]))
    assert float(m[i]) == pytest.approx(float(logits[i, data.y[i]]) - np.log(np.sum(np.exp(others))), rel=1e-12)
    sc = E.scores(predict_fn, p, s.forget, s.retain, data)
    stacked = E.stacked_scores(predict_fn, jax.tree.map(lambda a: a[None], p), s.forget, s.retain, data)
    assert stacked.retain_accuracy[0] == pytest.approx(sc.retain_accuracy)


def test_frechet_distance_matches_scipy():
    from scipy import linalg

    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(200, 4)), rng.normal(0.3, 1.5, size=(150, 4)) @ rng.normal(size=(4, 4))
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(sa + sb - 2 * linalg.sqrtm(sa @ sb).real)
    assert integrity.frechet_distance(a, b) == pytest.approx(ref, rel=1e-8)
    assert abs(integrity.frechet_distance(a, a)) < 1e-8


# ----------------------------------------------------------------------------- diffusion


@pytest.fixture(scope="module")
def tiny_diffusion():
    key = jax.random.key(3)
    x = jnp.tanh(jax.random.normal(key, (60, 64)))
    y = jnp.repeat(jnp.arange(3, dtype=jnp.int32), 20)
    model = D.denoiser(key, num_classes=3, hidden=16, depth=1, param_dtype=jnp.float32)
    with jax.numpy_dtype_promotion("standard"):
        params, losses = D.train_denoiser(model, Dataset(x.astype(jnp.float32), y), key, num_steps=20, batch_size=16)
    return model, params, Dataset(x.astype(jnp.float32), y)


def test_ddim_is_deterministic_and_integrity_of_a_model_with_itself_is_zero(tiny_diffusion, key):
    model, params, data = tiny_diffusion
    labels = jnp.array([0, 1, 2, 1])
    noise = jax.random.normal(key, (4, 64), jnp.float32)
    a, b = (D.sample(model, params, labels, noise, 5) for _ in range(2))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (4, 64) and float(jnp.abs(a).max()) <= 1.0
    integ = integrity.integrity(model, params, params, labels, key, feature_fn=lambda x: x[:, :8], num_steps=5)
    assert integ.pixel == 0.0 and integ.feature == 0.0 and integ.pixel_floor > 0
    # against a reference drawn once: the numbers of `integrity`, and the distance of a moved model
    # equals the mean pixel RMSE of its samples from the original's, computed here by hand
    moved = jax.tree.map(lambda p: p * 1.1, params)
    ref = integrity.reference_samples(model, params, labels, key, num_steps=5)
    feature_fn = lambda x: x[:, :8]
    assert integrity.integrity_against(ref, model, moved, feature_fn=feature_fn, num_steps=5) == \
        integrity.integrity(model, params, moved, labels, key, feature_fn=feature_fn, num_steps=5)
    k1, _ = jax.random.split(key)
    shared = jax.random.normal(k1, (4, 64), jnp.float32)
    rmse = np.sqrt(np.mean((np.asarray(D.sample(model, params, labels, shared, 5), np.float64)
                            - np.asarray(D.sample(model, moved, labels, shared, 5), np.float64)) ** 2, axis=1))
    assert integrity.integrity_against(ref, model, moved, feature_fn=feature_fn, num_steps=5).pixel == \
        pytest.approx(rmse.mean(), rel=1e-5)
    with pytest.raises(ValueError, match="reference's shape"):
        integrity.integrity_of_samples(ref, shared[:3], feature_fn=feature_fn)


@pytest.mark.standard_promotion  # Adam
def test_forget_class_methods_run_and_validate(tiny_diffusion, key):
    model, params, data = tiny_diffusion
    y = np.asarray(data.y)
    forget, retain = data.take(np.flatnonzero(y == 0)), data.take(np.flatnonzero(y != 0))
    for kind in D.FORGETTING:
        out = D.forget_class(kind, model, params, forget, retain, key, num_steps=5, batch_size=8)
        assert out.losses.shape == (5,)
        assert any(float(jnp.abs(a - b).max()) > 0 for a, b in zip(jax.tree.leaves(out.params), jax.tree.leaves(params)))
    with pytest.raises(ValueError, match="retain set to hold none"):
        D.forget_class("remap", model, params, forget.take(np.arange(10)), data.take(np.arange(10, 60)), key)
    with pytest.raises(ValueError, match="target_class"):
        D.forget_class("remap", model, params, forget, retain, key, target_class=0)
    with pytest.raises(NonFiniteLossError):
        D.forget_class("ascent", model, params, forget, retain, key, num_steps=5, batch_size=8, learning_rate=1e38,
                       weight=1e38)


# The papers' claims are checked on every quick run by tests/test_notebooks.py.


# ----------------------------------------------------------------------------- panels


def test_panels_show_results_errors_and_history(capsys):
    from workbench.experiments.diffusion_unlearning import DiffusionRow, ExploredDiffusion
    from workbench.experiments.unlearning_sweeps import Explored
    from workbench.ui import unlearning as panels

    sc = E.Scores(0.0, 0.99, 0.9, 5.0, 0.1, 0.3)
    calls = []

    def fake(method, kind, strength, num_steps):
        calls.append((method, kind, strength, num_steps))
        if strength > 10:
            raise ValueError("alpha too large")
        return Explored(method, sc, 0.5, 0.01, sc)

    p = panels.unlearning_panel(fake)
    assert set(p.controls) == {"method", "kind", "strength", "num_steps"}
    assert p.run().scores.retain_accuracy == 0.99
    p.controls["strength"].value = 20.0
    assert p.run() is None and "alpha too large" in p.status.value and len(calls) == 2  # shown, not raised
    assert len(p.history) == 1 and p.history[0]["numbers"]["oracle forget acc"] == 0.0

    row = DiffusionRow("remap", 0.0, 1.0, 0.8, 0.1, 1.0, 0.4, 3.8, 1.0, 5.0)
    d = panels.diffusion_panel(lambda **kw: ExploredDiffusion(row, np.zeros((2, 10, 8, 8)), ["original", "remap"]))
    assert set(d.controls) == {"method", "forget_class", "weight", "num_steps"}
    assert d.run().row.method == "remap"
    assert d.history[0]["numbers"]["floor (pixel)"] == 0.4


def test_headline_numbers_are_computed_from_the_recipes_results():
    """The papers' claimed metrics come from package code: the SSD cell, the bound, the count of
    good ascent settings and the KLoM ratios (unlearning); gaps and ratios (diffusion)."""
    from workbench.experiments import diffusion_unlearning as diffusion_recipes
    from workbench.experiments import unlearning as recipes
    from workbench.experiments import unlearning_sweeps as sweeps

    oracle = E.Scores(0.0, 0.99, 0.9, 5.0, 0.1, 0.3)
    grid = lambda *v: np.asarray(v, float).reshape(3, 2)
    sweep = sweeps.AlphaSweep(np.array([1.0, 5.0, 20.0]), np.array([0.1, 1.0]), grid(0.3, 0.2, 0.1, 0.05, 0, 0),
                              grid(0.5, 0.6, 0.02, 0.4, np.nan, np.nan), grid(0.9, 0.95, 0.985, 0.99, np.nan, np.nan),
                              grid(*[0.8] * 6), 10.0, 9.5, 40.0, 0.01, 1000, 5000, 0.01, oracle,
                              E.Scores(0.97, 0.99, 0.9, 0.1, 0.1, 0.3))
    original = E.Scores(1.0, 0.99, 0.9, 0.1, 0.1, 0.3)
    control = sweeps.Cliff(np.array([100.0]), np.array([10, 30]), np.array([[0.0, np.nan]]),
                           np.array([[0.1, np.nan]]), np.zeros((1, 2)), original)
    cliff = sweeps.Cliff(np.array([0.1, 1.0]), np.array([10, 30]), np.array([[0.9, 0.04], [0.0, np.nan]]),
                         np.array([[0.99, 0.975], [0.5, np.nan]]), np.zeros((2, 2)), original, control)
    assert sweeps.good_ascent_settings(cliff, 0.99) == 1  # only (0.1, 30): forgets and keeps retain
    assert sweeps.cliff_counts(cliff, 0.99) == (2, 2, 1)  # diverged cells count in none
    assert sweeps.cliff_counts(sweeps.untouched_cliff(cliff), 0.99) == (0, 4, 0)
    with pytest.raises(ValueError, match="untouched model"):
        sweeps.untouched_cliff(cliff._replace(original=None))
    row = lambda name, klom: recipes.MethodRow(name, 0, 0, 0, klom, 0, 0, 0.5, 0)
    bench = recipes.Benchmark([row("original", 10.0), row("oracle_matching", 1.0), row("datamodel_matching", 4.0),
                               row("gradient_ascent", 16.0), row("neggrad_plus", 8.0)], 10, 4, 2.0)
    h = sweeps.headline(sweep, cliff, bench, 5.0, 0.1)
    assert (h.ssd_forget_accuracy, h.ssd_lam1_forget_accuracy, h.ssd_bound) == (0.02, 0.4, 10.0)
    assert h.control_noop_forget_accuracy == 0.97  # the sweep's untouched model
    assert h.ssd_retain_gap == pytest.approx(0.005) and h.ssd_work_ratio == 5.0
    assert h.control_ascent_retain_gap == pytest.approx(0.015)  # the forgetting cells: gaps 0.015 and 0.49
    assert h.ssd_selected_above_bound == 0.0  # alpha=20 >= bound selects nothing
    assert h.ssd_max_ratio_over_bound == 0.95 and h.control_retain_fisher_max_ratio_over_bound == 4.0
    assert h.control_retain_fisher_selected_above_bound == 0.01
    assert (h.ascent_good_settings, h.ascent_forgetting_settings, h.ascent_keeping_settings) == (1, 2, 2)
    assert (h.control_noop_forgetting_settings, h.control_diverging_keeping_settings) == (0, 0)
    assert h.control_ssd_good_settings == 1  # (alpha 5, lambda 0.1): forget 0.02, retain 0.985
    assert (h.klom_om_over_dmm, h.klom_dmm_over_ascent) == (0.25, 0.5)  # against the better of ascent/NegGrad+
    assert (h.control_klom_noop_over_dmm, h.control_klom_noop_over_ascent) == (2.5, 1.25)
    with pytest.raises(ValueError, match="no cell alpha=2"):
        sweeps.headline(sweep, cliff, bench, 2.0, 0.1)
    with pytest.raises(ValueError, match="control grid"):
        sweeps.headline(sweep, cliff._replace(control=None), bench, 5.0, 0.1)
    nothing_forgets = cliff._replace(forget_accuracy=np.full((2, 2), 0.5))
    assert np.isnan(sweeps.headline(sweep, nothing_forgets, bench, 5.0, 0.1).control_ascent_retain_gap)

    drow = lambda name, acc_r, fd, feat, pix, margin=4.0, acc_f=0.0: diffusion_recipes.DiffusionRow(
        name, acc_f, acc_r, fd, pix, feat, 0.4, 4.0, 1, margin)
    d = diffusion_recipes.diffusion_headline([drow("original", 1, 1, 0, 0, acc_f=0.9), drow("remap", 0.97, 1.0, 2.0, 0.3, 5.0),
                                              drow("remap_distill", 0.99, 0.8, 1.0, 0.2, 4.0),
                                              drow("ascent", 0.1, 80.0, 8.0, 1.2, -2.0),
                                              drow("remap_distill_rerun", 0.99, 0.8, 1.1, 0.2)])
    assert d.remap_retain_accuracy_gap == pytest.approx(0.02)
    assert (d.remap_frechet_ratio, d.remap_integrity_ratio) == (1.25, 2.0)
    assert d.remap_integrity_pixel_ratio == pytest.approx(1.5) and d.distill_integrity_over_floor == 0.25
    assert (d.remap_retain_margin_ratio, d.control_ascent_retain_margin_ratio) == (1.25, -0.5)
    assert (d.control_ascent_frechet_ratio, d.control_ascent_integrity_over_floor) == (100.0, 2.0)
    assert d.control_noop_forget_accuracy == d.control_noop_distill_forget_accuracy == 0.9
    assert d.control_rerun_integrity_ratio == pytest.approx(1.1)
    with pytest.raises(ValueError, match="remap_distill"):
        diffusion_recipes.diffusion_headline([drow("remap", 1, 1, 1, 1)])
