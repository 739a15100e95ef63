"""Models with state (BatchNorm, Dropout) through `models.functional`, `train.train`, curvature and
influence; and the one boundary where a loss enters (a function or a Functional, clear errors).

References are written by hand (a BatchNorm forward pass in plain jnp, an nnx training loop) so a
bug in the Functional's state handling cannot pass by agreeing with itself."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from workbench import curvature, influence, models, train
from workbench.core.losses import as_loss, check_loss_output
from workbench.core.numerics import check_key


@pytest.fixture(autouse=True)
def standard_promotion():
    """Flax's BatchNorm mixes float32 and float64 internally in float64 (its statistics'
    arithmetic), which the suite's strict promotion refuses: these tests use standard promotion."""
    with jax.numpy_dtype_promotion("standard"):
        yield


class BatchNormNet(nnx.Module):
    """Linear -> BatchNorm -> relu -> (Dropout) -> Linear."""

    def __init__(self, *, dropout: float = 0.0, rngs: nnx.Rngs):
        self.first = nnx.Linear(5, 6, rngs=rngs, param_dtype=jnp.float64)
        self.norm = nnx.BatchNorm(6, momentum=0.8, rngs=rngs, param_dtype=jnp.float64, dtype=jnp.float64)
        self.drop = nnx.Dropout(dropout, rngs=rngs) if dropout else None
        self.last = nnx.Linear(6, 3, rngs=rngs, param_dtype=jnp.float64)

    def __call__(self, x):
        h = jax.nn.relu(self.norm(self.first(x)))
        if self.drop is not None:
            h = self.drop(h)
        return self.last(h)


def _data(seed: int, n: int = 24):
    kx, ky = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, (n, 5), jnp.float64), jax.random.randint(ky, (n,), 0, 3)


def _by_hand(params, stats, x, *, use_batch: bool, eps: float = 1e-5):
    """The BatchNormNet forward pass written out (no nnx): the independent reference."""
    h = x @ params["first"]["kernel"] + params["first"]["bias"]
    mean, var = (jnp.mean(h, 0), jnp.var(h, 0)) if use_batch else (stats["norm"]["mean"], stats["norm"]["var"])
    h = (h - mean) / jnp.sqrt(var + eps) * params["norm"]["scale"] + params["norm"]["bias"]
    return jax.nn.relu(h) @ params["last"]["kernel"] + params["last"]["bias"]


def _perturbed_stats(fn, seed):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"norm": {"mean": jax.random.normal(k1, (6,), jnp.float64),
                     "var": 0.5 + jax.random.uniform(k2, (6,), jnp.float64)}}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_inference_mode_uses_running_statistics_and_no_dropout(seed):
    fn = models.functional(BatchNormNet(dropout=0.5, rngs=nnx.Rngs(seed)), l2=0.1)
    fn = fn.with_state(_perturbed_stats(fn, seed))
    x, y = _data(seed)
    expected = _by_hand(fn.params, fn.state, x, use_batch=False)
    np.testing.assert_allclose(fn.predict_fn(fn.params, x), expected, rtol=1e-12, atol=1e-12)
    # one example alone gives the same output as inside the batch: per-example losses are defined
    np.testing.assert_allclose(fn.predict_fn(fn.params, x[:1]), expected[:1], rtol=1e-12, atol=1e-12)
    assert set(fn.stateful_layers) == {"norm: BatchNorm", "drop: Dropout"} and fn.needs_key
    # the curvature is the Hessian of the hand-written objective
    ref_loss = lambda p: jnp.mean(models.cross_entropy(_by_hand(p, fn.state, x, use_batch=False), y)) + \
        0.05 * optax.tree.vdot(p, p)
    flat, unravel = jax.flatten_util.ravel_pytree(fn.params)
    dense = jax.hessian(lambda v: ref_loss(unravel(v)))(flat)
    np.testing.assert_allclose(curvature.dense_hessian(fn, fn.params, (x, y)), dense, rtol=1e-9, atol=1e-11)


def test_batch_statistics_mode_normalises_with_the_batch_and_refuses_per_example_losses():
    fn = models.functional(BatchNormNet(dropout=0.5, rngs=nnx.Rngs(3)), mode="batch_statistics")
    x, y = _data(3)
    np.testing.assert_allclose(fn.predict_fn(fn.params, x), _by_hand(fn.params, fn.state, x, use_batch=True),
                               rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="norm: BatchNorm normalises with the batch's statistics"):
        fn.per_example_loss_fn(fn.params, (x, y))
    with pytest.raises(ValueError, match="norm: BatchNorm"):
        influence.make("grad_dot", fn, fn.params, (x, y))
    with pytest.raises(ValueError, match="mode must be one of"):
        models.functional(BatchNormNet(rngs=nnx.Rngs(0)), mode="train")


def _nnx_reference_training(seed, data, key, num_steps, batch_size, learning_rate):
    """The same training written with nnx directly: the module in train mode, stepped by optax."""
    model = BatchNormNet(rngs=nnx.Rngs(seed))
    model.train()
    optimizer = optax.sgd(learning_rate, momentum=0.9)
    opt_state = optimizer.init(nnx.state(model, nnx.Param))
    order = train.batch_indices(key, data[0].shape[0], batch_size, num_steps)
    for step in range(num_steps):
        x, y = data[0][order[step]], data[1][order[step]]
        grads = nnx.grad(lambda m, x=x, y=y: jnp.mean(models.cross_entropy(m(x), y)))(model)  # updates stats
        params = nnx.state(model, nnx.Param)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        nnx.update(model, optax.apply_updates(params, updates))
    _, params, stats = nnx.split(model, nnx.Param, ...)
    return nnx.to_pure_dict(params), nnx.to_pure_dict(stats)


@pytest.mark.parametrize("seed", [0, 5])
def test_train_updates_batch_statistics_like_an_nnx_loop(seed):
    data = _data(seed, 40)
    key = jax.random.key(seed + 10)
    fn = models.functional(BatchNormNet(rngs=nnx.Rngs(seed)))
    result = train.train(fn, fn.params, data, key, optimizer=optax.sgd(0.1, momentum=0.9), num_steps=9,
                         batch_size=8, progress=False, steps_per_chunk=4)
    params, stats = _nnx_reference_training(seed, data, key, 9, 8, 0.1)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), result.params, params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), result.state, stats)
    assert not np.allclose(result.state["norm"]["mean"], fn.state["norm"]["mean"])  # the statistics moved
    # evaluation sees the trained statistics
    trained = fn.with_state(result.state)
    np.testing.assert_allclose(trained.predict_fn(result.params, data[0]),
                               _by_hand(result.params, result.state, data[0], use_batch=False), rtol=1e-5)
    # (flax keeps BatchNorm statistics in float32, hence 1e-5; the initial statistics are 1e-1 away)


def test_train_with_dropout_is_deterministic_and_independent_of_chunking():
    data = _data(7, 40)
    fn = models.functional(BatchNormNet(dropout=0.5, rngs=nnx.Rngs(7)))
    run = lambda key, chunk, **kw: train.train(fn, fn.params, data, key, optimizer=optax.adam(1e-2), num_steps=12,
                                               batch_size=8, progress=False, steps_per_chunk=chunk, **kw)
    a, b, c = run(jax.random.key(1), 5), run(jax.random.key(1), 100), run(jax.random.key(2), 5)
    np.testing.assert_array_equal(a.history["loss"], b.history["loss"])
    jax.tree.map(np.testing.assert_array_equal, a.state, b.state)
    assert not np.allclose(a.history["loss"], c.history["loss"])  # another key, other masks
    # dropout is on in training: the same run without it trains differently
    plain = models.functional(BatchNormNet(rngs=nnx.Rngs(7)))
    d = train.train(plain, plain.params, data, jax.random.key(1), optimizer=optax.adam(1e-2), num_steps=12,
                    batch_size=8, progress=False)
    assert not np.allclose(a.history["loss"], d.history["loss"])
    seen = []
    run(jax.random.key(1), 5, eval_fn=lambda p, s: seen.append(s) or {"m": s["norm"]["mean"][0]}, eval_every=6)
    assert len(seen) == 3 and not np.allclose(seen[0]["norm"]["mean"], seen[-1]["norm"]["mean"])
    with pytest.raises(ValueError, match="dropout masks"):
        train.train(fn, fn.params, data, None, optimizer=optax.adam(1e-2), num_steps=2)


def test_stateless_functional_trains_like_its_loss_fn():
    data = _data(4, 30)
    fn = models.functional(models.MLP(5, [7], 3, rngs=nnx.Rngs(4), param_dtype=jnp.float64), l2=0.01)
    a = train.train(fn, fn.params, data, jax.random.key(0), optimizer=optax.adam(1e-2), num_steps=6, batch_size=10,
                    progress=False)
    b = train.train(fn.loss_fn, fn.params, data, jax.random.key(0), optimizer=optax.adam(1e-2), num_steps=6,
                    batch_size=10, progress=False)
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
    assert a.state == {} and b.state is None


def test_one_boundary_errors_name_what_was_given():
    fn = models.functional(BatchNormNet(rngs=nnx.Rngs(0)))
    x, y = _data(0)
    model = BatchNormNet(rngs=nnx.Rngs(0))
    for call in (lambda: influence.make("cg", model, fn.params, (x, y)),
                 lambda: curvature.operator(model, fn.params, (x, y)),
                 lambda: train.train(model, fn.params, (x, y), None, optimizer=optax.sgd(0.1), num_steps=1)):
        with pytest.raises(TypeError, match=r"got a Flax model \(BatchNormNet\) where a loss belongs.*models.functional"):
            call()
    with pytest.raises(ValueError, match=r"needs a batch-mean loss_fn.*returns shape \(2,\): a per-example loss"):
        influence.make("grad_dot", fn.per_example_loss_fn, fn.params, (x, y))
    with pytest.raises(ValueError, match=r"missing: predict_fn, output_loss_fn.*pass the model's models.Functional"):
        influence.make("cg", fn.loss_fn, fn.params, (x, y), kind="ggn")
    with pytest.raises(TypeError, match=r"key must be a JAX PRNG key, e.g. jax.random.key\(0\), got int 0"):
        influence.make("arnoldi", fn, fn.params, (x, y), key=0)
    with pytest.raises(TypeError, match="key must be a JAX PRNG key"):
        train.train(fn, fn.params, (x, y), 3, optimizer=optax.sgd(0.1), num_steps=1)
    with pytest.raises(TypeError, match="loss_fn must be a callable"):
        as_loss(3.0, role="data", caller="here")
    with pytest.raises(ValueError, match=r"needs a per-example loss .* returns shape \(\): a batch mean"):
        check_loss_output(fn.loss_fn, fn.params, (x, y), expects="per_example", caller="here")
    assert check_key(jax.random.PRNGKey(0)).shape == (2,)
    assert "state in ['norm: BatchNorm']" in repr(fn)


def test_functional_roles_reach_every_curvature_kind_through_make():
    """make("cg", Functional, kind=...) resolves the GGN's roles and the l2 term from the Functional."""
    fn = models.functional(BatchNormNet(rngs=nnx.Rngs(2)), l2=0.3)
    fn = fn.with_state(_perturbed_stats(fn, 2))
    data = _data(2, 16)
    test = jax.tree.map(lambda a: a[:3], data)
    damping = influence.damping_above_min_eigenvalue(fn, fn.params, data).damping
    for kind in ("hessian", "ggn"):
        op = curvature.operator(fn, fn.params, data, kind)
        matrix = op.dense() + damping * jnp.eye(op.dim)
        grads = lambda batch: jax.vmap(lambda z: jax.flatten_util.ravel_pytree(
            jax.grad(lambda p: fn.per_example_loss_fn(p, jax.tree.map(lambda a: a[None], z))[0])(fn.params))[0])(batch)
        expected = grads(test) @ jnp.linalg.solve(matrix, grads(data).T)
        scores = influence.make("cg", fn, fn.params, data, kind=kind, damping=damping).scores(test)
        np.testing.assert_allclose(np.asarray(scores), np.asarray(expected), rtol=1e-6, atol=1e-9)


def test_sketch_takes_a_functional_and_names_a_per_example_loss(tmp_path):
    from workbench import sketch

    fn = models.functional(BatchNormNet(dropout=0.3, rngs=nnx.Rngs(1)), l2=0.5)
    data = _data(1, 12)
    phi = sketch.make("srht", jax.random.key(0), jax.flatten_util.ravel_pytree(fn.params)[0].size, 16)
    from_fn = sketch.per_example_gradients(fn, fn.params, data, phi)
    data_loss = lambda p, batch: jnp.mean(fn.per_example_loss_fn(p, batch))  # without the l2 term
    np.testing.assert_allclose(from_fn, sketch.per_example_gradients(data_loss, fn.params, data, phi), rtol=1e-12)
    with pytest.raises(ValueError, match=r"sketch.per_example_gradients needs a batch-mean loss_fn.*shape \(2,\)"):
        sketch.per_example_gradients(fn.per_example_loss_fn, fn.params, data, phi)
    store = sketch.write_gradient_store(fn, fn.params, data, phi, tmp_path / "store")
    np.testing.assert_allclose(np.asarray(store.sketches[:]), from_fn, rtol=1e-12)


def test_trak_output_follows_the_functionals_loss():
    """A classifier's Functional gets Park et al.'s margin, a regression's the loss (the margin of a
    squared error is meaningless)."""
    x = jax.random.normal(jax.random.key(0), (20, 5), jnp.float64)
    y = jnp.sin(x[:, 0])
    fn = models.functional(models.MLP(5, [4], 1, rngs=nnx.Rngs(0), param_dtype=jnp.float64), "mse", l2=0.1)
    options = dict(key=jax.random.key(1), dim=16)
    default = influence.make("trak", fn, fn.params, (x, y), **options).scores((x[:3], y[:3]))
    as_loss_output = influence.make("trak", fn, fn.params, (x, y), output_fn="loss", **options).scores((x[:3], y[:3]))
    np.testing.assert_array_equal(default, as_loss_output)
