"""The optax training loop: correctness against a hand-written loop, checkpoints, callbacks,
determinism and non-finite losses."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from workbench import data, models, train
from workbench.core import tree as tu
from workbench.core.fingerprint import fingerprint
from workbench.experiments import digits


@pytest.fixture(scope="module")
def problem():
    tr, te = data.load_digits(dtype=jnp.float64)
    f = models.functional(models.LogisticRegression(64, 10, rngs=nnx.Rngs(0), param_dtype=jnp.float64), l2=1e-3)
    return f, tr.take(slice(0, 300)), te


def test_full_batch_matches_hand_written_loop(problem):
    f, tr, _ = problem
    opt = optax.sgd(0.5, momentum=0.9)
    result = train.train(f.loss_fn, f.params, tr, jax.random.key(0), optimizer=opt, num_steps=37, progress=False, steps_per_chunk=8)
    params, state, losses = f.params, opt.init(f.params), []
    for _ in range(37):
        loss, g = jax.value_and_grad(f.loss_fn)(params, tr)
        updates, state = opt.update(g, state, params)
        params = optax.apply_updates(params, updates)
        losses.append(loss)
    np.testing.assert_allclose(result.history["loss"], np.array(losses), rtol=1e-12)
    np.testing.assert_allclose(tu.ravel(result.params)[0], tu.ravel(params)[0], rtol=1e-10)
    assert result.history["step"].tolist() == list(range(37))


def test_minibatches_are_epoch_permutations():
    idx = np.asarray(train.batch_indices(jax.random.key(1), 10, 3, 7))
    assert idx.shape == (7, 3)
    for epoch in range(2):  # 3 batches of 3 per epoch, one example dropped each epoch
        seen = idx[3 * epoch : 3 * epoch + 3].ravel()
        assert len(set(seen.tolist())) == 9


@pytest.mark.standard_promotion
def test_minibatch_matches_hand_written_loop(problem):
    f, tr, _ = problem
    opt = optax.adam(1e-2)
    key = jax.random.key(3)
    result = train.train(f.loss_fn, f.params, tr, key, optimizer=opt, num_steps=25, batch_size=64, progress=False, steps_per_chunk=10)
    idx = train.batch_indices(key, len(tr), 64, 25)
    params, state = f.params, opt.init(f.params)
    for s in range(25):
        g = jax.grad(f.loss_fn)(params, tr.take(idx[s]))
        updates, state = opt.update(g, state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(tu.ravel(result.params)[0], tu.ravel(params)[0], rtol=1e-9, atol=1e-12)


def test_deterministic_and_key_dependent(problem):
    f, tr, _ = problem
    run = lambda k: train.train(f.loss_fn, f.params, tr, jax.random.key(k), optimizer=optax.sgd(0.1), num_steps=30, batch_size=32, progress=False)
    a, b, c = run(0), run(0), run(1)
    np.testing.assert_array_equal(a.history["loss"], b.history["loss"])
    assert not np.array_equal(a.history["loss"], c.history["loss"])


def test_checkpoints_callbacks_eval_and_files(problem, tmp_path):
    f, tr, te = problem
    seen = []

    def callback(step, params):
        seen.append(step)
        return {"param_norm": optax.tree.norm(params)}

    result = train.train(f.loss_fn, f.params, tr, jax.random.key(0), optimizer=optax.sgd(0.5), num_steps=50, checkpoint_steps=[0, 20, 50], checkpoint_dir=tmp_path, callback=callback, callback_every=15, eval_fn=lambda p: {"acc": models.accuracy(f.predict_fn, p, te)}, eval_every=25, progress=False)
    assert seen == [0, 15, 30, 45, 50]
    assert result.history["callback_step"].tolist() == seen
    assert result.history["param_norm"][0] == 0.0  # logistic regression starts at all-zero params
    assert result.history["param_norm"][-1] > 0.0
    assert result.history["eval_step"].tolist() == [0, 25, 50]
    assert result.history["acc"][-1] > 0.85
    assert sorted(result.checkpoints) == [0, 20, 50]
    np.testing.assert_array_equal(tu.ravel(result.checkpoints[50])[0], tu.ravel(result.params)[0])
    # the checkpoint at step 20 equals training for 20 steps
    short = train.train(f.loss_fn, f.params, tr, jax.random.key(0), optimizer=optax.sgd(0.5), num_steps=20, progress=False)
    np.testing.assert_allclose(tu.ravel(result.checkpoints[20])[0], tu.ravel(short.params)[0], rtol=1e-12)
    restored = train.load_checkpoint(tmp_path / "step_00000020.msgpack", f.params)
    np.testing.assert_array_equal(tu.ravel(restored)[0], tu.ravel(result.checkpoints[20])[0])
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="does not match"):
        train.load_checkpoint(tmp_path / "step_00000020.msgpack", {"other": jnp.zeros(3)})


@pytest.mark.standard_promotion  # optax.inject_hyperparams is not strict-safe
def test_learning_rate_history_from_schedule(problem):
    f, tr, _ = problem
    schedule = optax.linear_schedule(0.4, 0.0, 10)
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=schedule)
    result = train.train(f.loss_fn, f.params, tr, jax.random.key(0), optimizer=opt, num_steps=10, progress=False)
    np.testing.assert_allclose(result.history["lr"], [schedule(i) for i in range(10)], rtol=1e-6)


def test_nonfinite_loss_raises_or_stops():
    batch = data.Dataset(jnp.ones((4, 1), jnp.float32), jnp.zeros(4, jnp.float32))
    loss = lambda p, b: jnp.mean((p["w"] * b.x[:, 0]) ** 2)  # gd with step 10: w <- -19 w, overflows
    params = {"w": jnp.array(1.0, jnp.float32)}
    with pytest.raises(train.NonFiniteLossError, match="at step"):
        train.train(loss, params, batch, jax.random.key(0), optimizer=optax.sgd(10.0), num_steps=100, progress=False)
    result = train.train(loss, params, batch, jax.random.key(0), optimizer=optax.sgd(10.0), num_steps=100, progress=False, on_nonfinite="stop")
    assert result.diverged
    assert not np.isfinite(result.history["loss"][-1])
    assert np.all(np.isfinite(result.history["loss"][:-1]))


def test_bad_arguments(problem):
    f, tr, _ = problem
    kw = dict(progress=False)
    with pytest.raises(ValueError, match="steps"):
        train.train(f.loss_fn, f.params, tr, jax.random.key(0), optimizer=optax.sgd(0.1), num_steps=-1, **kw)
    with pytest.raises(ValueError, match="checkpoint_steps"):
        train.train(f.loss_fn, f.params, tr, jax.random.key(0), optimizer=optax.sgd(0.1), num_steps=5, checkpoint_steps=[9], **kw)
    with pytest.raises(ValueError, match="callback_every"):
        train.train(f.loss_fn, f.params, tr, jax.random.key(0), optimizer=optax.sgd(0.1), num_steps=5, callback=lambda s, p: None, **kw)
    with pytest.raises(ValueError, match="on_nonfinite"):
        train.train(f.loss_fn, f.params, tr, jax.random.key(0), optimizer=optax.sgd(0.1), num_steps=5, on_nonfinite="ignore", **kw)


@pytest.mark.standard_promotion
def test_fit_digits_mlp_learns():
    fit = digits.fit_digits_mlp(hidden_size=16, learning_rate=0.02, num_steps=300)
    assert fit.test_accuracy > 0.9
    with pytest.raises(ValueError, match="hidden_size"):
        digits.fit_digits_mlp(hidden_size=0)


@pytest.mark.standard_promotion  # optax's schedules mix int steps and float rates
def test_an_equal_fresh_optimizer_reuses_the_compiled_chunk(problem):
    """A notebook cell `train(..., optimizer=optax.adam(1e-2))` run twice compiles once; another
    learning rate, schedule or chain is another program, and each gives its own numbers."""
    f, tr, _ = problem

    def run(opt):
        return train.train(f.loss_fn, f.params, tr, jax.random.key(0), optimizer=opt, num_steps=12,
                           progress=False, steps_per_chunk=6)

    def chain(lr):
        return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(optax.cosine_decay_schedule(lr, 12)))

    before = len(train.loop._RUNNERS)
    first = run(optax.adam(1e-2))
    again = run(optax.adam(1e-2))
    assert len(train.loop._RUNNERS) == before + 1
    np.testing.assert_array_equal(first.history["loss"], again.history["loss"])
    runs = {"adam 3e-2": run(optax.adam(3e-2)), "sgd 1e-2": run(optax.sgd(1e-2)),
            "chain 1e-2": run(chain(1e-2)), "chain 3e-2": run(chain(3e-2))}
    run(chain(3e-2))
    assert len(train.loop._RUNNERS) == before + 5
    losses = [first.history["loss"][-1]] + [r.history["loss"][-1] for r in runs.values()]
    assert len(set(np.round(losses, 12).tolist())) == 5  # five optimizers, five trajectories
    def late():  # a closure over a variable assigned after it: an empty cell, keyed by identity
        return later

    assert fingerprint(late) != fingerprint(lambda: 0)
    later = 1  # noqa: F841
    opt = chain(3e-2)  # the cached program computes what the optimizer given computes
    params, state = f.params, opt.init(f.params)
    for _ in range(12):
        g = jax.grad(f.loss_fn)(params, tr)
        updates, state = opt.update(g, state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(tu.ravel(runs["chain 3e-2"].params)[0], tu.ravel(params)[0], rtol=1e-10)
