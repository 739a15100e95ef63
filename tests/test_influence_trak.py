"""TRAK on sketched per-example gradients from workbench.sketch's stores."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from plain_logreg import fitted_digits, plain_logreg  # tests/ helper module

from workbench import data, gpt, influence, sketch  # noqa: E402
from workbench import models as wb_models
from workbench.core import statistics

N_TRAIN, N_TEST, L2 = 120, 10, 1e-2


LogReg = plain_logreg(L2)


@pytest.fixture(scope="module")
def problem():
    params, train, test = fitted_digits(LogReg, N_TRAIN, N_TEST)
    return params, train, test


def test_trak_is_the_gauss_newton_influence_in_the_sketched_space(problem, key):
    """Scores equal Phi g_t^T (X^T X / n + damping)^{-1} Phi g_i computed densely in the sketched
    space, X the sketched margin gradients."""
    params, train, test = problem
    output = influence.margin_output(LogReg.predict_fn)
    est = influence.make("trak", LogReg.loss_fn, params, train, dim=64, output_fn=output, damping=L2, key=key)
    s = jax.tree.map(lambda a: a[0], est.state["sketches"])  # model 0 of the ensemble
    g = lambda fn, d: sketch.per_example_gradients(fn, params, d, s)
    x = np.asarray(g(output, train))
    inv = np.linalg.inv(x.T @ x / N_TRAIN + L2 * np.eye(64))
    expected = np.asarray(g(LogReg.loss_fn, test)) @ inv @ np.asarray(g(LogReg.loss_fn, train)).T
    np.testing.assert_allclose(est.scores(test), expected, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(est.self_influence(), np.einsum("ij,jk,ik->i", np.asarray(g(LogReg.loss_fn, train)), inv,
                                                                np.asarray(g(LogReg.loss_fn, train))), rtol=1e-8)


def test_trak_store_ensemble_and_refusals(problem, key, tmp_path):
    params, train, test = problem
    output = influence.margin_output(LogReg.predict_fn)
    other = jax.tree.map(lambda a: a * 0.9, params)
    stores = [tmp_path / "m0", tmp_path / "m1"]
    est = influence.make("trak", LogReg.loss_fn, params, train, models=[params, other], dim=128,
                         output_fn=output, damping=L2, stores=stores, key=key)
    a = est.scores(test)
    assert a.shape == (N_TEST, N_TRAIN) and est.info["num_models"] == 2
    # reopening the same stores gives the same scores (deterministic, resumable)
    again = influence.make("trak", LogReg.loss_fn, params, train, models=[params, other], dim=128,
                           output_fn=output, damping=L2, stores=stores, key=key)
    np.testing.assert_allclose(again.scores(test), a, rtol=1e-12)
    # a useful attribution: correlated with the exact influence function
    exact = np.asarray(influence.make("exact", LogReg.loss_fn, params, train).scores(test))
    assert np.mean(statistics.pearson_rows(np.asarray(a), exact)) > 0.5
    # the two models swapped between runs (same architecture, same sketches): each store was made
    # at the other model's params values, so both runs are refused and the stores left as they were
    before = {p: p.read_bytes() for store in stores for p in sorted(store.rglob("*")) if p.is_file()}
    for models, paths in (([other, params], stores), ([other], stores[:1])):
        with pytest.raises(ValueError, match="m0 was made with another configuration: params_values: the "
                                             "params' values differ from those the store was made with"):
            influence.make("trak", LogReg.loss_fn, params, train, models=models, dim=128, output_fn=output,
                           damping=L2, stores=paths, key=key)
    assert before == {p: p.read_bytes() for store in stores for p in sorted(store.rglob("*")) if p.is_file()}
    # a store damaged after it was written (NaN or inf in a committed chunk) is named, with the remedy:
    # a loss store when it is read for scores, an output store when it builds the Gram matrix
    import zarr

    zarr.open_group(str(stores[1]), mode="r+")["sketches"][3] = np.inf
    est = influence.make("trak", LogReg.loss_fn, params, train, models=[params, other], dim=128,
                         output_fn=output, damping=L2, stores=stores, key=key)
    with pytest.raises(ValueError, match=r"m1 of model 1 holds NaN or inf from row 3 although it is marked "
                                         r"complete.*Delete .*m1 and run again to recompute it"):
        est.scores(test)
    zarr.open_group(str(stores[1]) + ".output", mode="r+")["sketches"][7:9] = np.nan
    with pytest.raises(ValueError, match=r"m1.output of model 1 holds NaN or inf from row 7"):
        influence.make("trak", LogReg.loss_fn, params, train, models=[params, other], dim=128,
                       output_fn=output, damping=L2, stores=stores, key=key)
    # a store made for another model is refused
    mlp = {"w": jnp.zeros((64, 5)), "b": jnp.zeros(5)}
    with pytest.raises(ValueError, match="another configuration"):
        influence.make("trak", lambda p, b: jnp.sum(p["w"]) * jnp.mean(b[0]), mlp, train, dim=128, stores=[stores[0]], key=key)
    with pytest.raises(ValueError, match="one path per model"):
        influence.make("trak", LogReg.loss_fn, params, train, dim=128, stores=stores, key=key)


def test_trak_names_the_training_examples_whose_gradients_are_not_finite(problem, key):
    """Finite data and models, a loss whose gradient is NaN at one example (sqrt of a negative input)."""
    params, train, _ = problem
    sub = train.take(np.arange(20))
    sub = type(sub)(sub.x.at[6, 3].set(-1.0), sub.y)

    def loss(p, batch):
        return LogReg.loss_fn(p, batch) + jnp.mean(jnp.sqrt(batch[0][:, 3])) * jnp.sum(p["b"])

    with pytest.raises(FloatingPointError, match=r"sketched gradients of loss_fn under model 0 are NaN or inf "
                                                 r"at training examples \[6\]"):
        influence.make("trak", loss, params, sub, dim=16, damping=L2, key=key)


def test_trak_default_output_is_the_classification_margin(key):
    """The default is Park et al.'s margin log(p / (1 - p)), read off the cross-entropy of a classifier's
    Functional: the same scores as margin_output(predict_fn), and not the loss's empirical Fisher."""
    from flax import nnx

    from workbench import models
    train, test = data_subsets()
    model = models.functional(models.LogisticRegression(64, 10, rngs=nnx.Rngs(0), param_dtype=jnp.float64), l2=L2)
    params, _ = influence.validation.fit(model.loss_fn, model.params, train)
    default = influence.make("trak", model, params, train, dim=64, key=key)
    explicit = influence.make("trak", model, params, train, dim=64, key=key,
                              output_fn=influence.margin_output(model.predict_fn))
    loss = influence.make("trak", model, params, train, dim=64, key=key, output_fn="loss")
    np.testing.assert_allclose(default.scores(test), explicit.scores(test), rtol=1e-7, atol=1e-10)
    assert default.info["damping"] == pytest.approx(explicit.info["damping"], rel=1e-9)
    assert not np.allclose(default.scores(test), loss.scores(test), rtol=1e-2)
    with pytest.raises(ValueError, match="output_fn must be one of"):
        influence.make("trak", model, params, train, dim=64, key=key, output_fn="logits")
    # a loss that is not a positive cross-entropy: the margin is refused, naming the way out
    with pytest.raises(FloatingPointError, match="output_fn='loss' or a callable"):
        influence.make("trak", lambda p, b: model.loss_fn(p, b) - 10.0, params, train, dim=16, key=key)


def data_subsets():
    from workbench import data
    train, test = data.load_digits(dtype=jnp.float64)
    return train.take(np.arange(N_TRAIN)), test.take(np.arange(N_TEST))


@pytest.mark.standard_promotion  # flax's LayerNorm promotes float64 statistics with float32
def test_trak_margin_of_a_sequence_model_is_the_mean_margin_of_its_tokens(key):
    """A char GPT's logits are [n, t, vocab]: the default margin is each target token's margin,
    averaged as the cross-entropy averages its tokens, and TRAK runs on the model as it is."""
    config = gpt.GPTConfig(vocab_size=11, seq_len=6, d_model=8, num_heads=2, num_layers=1)
    fn = wb_models.functional(gpt.GPT(config, rngs=nnx.Rngs(3), param_dtype=jnp.float64))
    k_x, k_y, k_trak = jax.random.split(key, 3)
    x = jax.random.randint(k_x, (5, 6), 0, 11)
    y = jax.random.randint(k_y, (5, 6), 0, 11)
    logits = np.asarray(fn.predict_fn(fn.params, x)).reshape(30, 11)
    flat = np.asarray(y).reshape(30)
    others = np.where(np.eye(11, dtype=bool)[flat], -np.inf, logits)
    expected = np.mean(logits[np.arange(30), flat] - np.log(np.exp(others).sum(axis=1)))
    np.testing.assert_allclose(influence.margin_output(fn.predict_fn)(fn.params, (x, y)), expected, rtol=1e-12)
    est = influence.make("trak", fn, fn.params, data.Dataset(x, y), dim=16, key=k_trak)
    scores = np.asarray(est.scores(data.Dataset(x[:2], y[:2])))
    assert scores.shape == (2, 5) and np.all(np.isfinite(scores)) and np.abs(scores).max() > 0
