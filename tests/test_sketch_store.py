"""Per-example gradient sketches: exact against a loop of single gradients, zarr store resume/refusal."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from workbench import data as wd
from workbench import models
from workbench import sketch as sk
from workbench.core import tree as tu
from workbench.sketch.store import open_store


@pytest.fixture(scope="module")
def problem():
    model = models.MLP(4, [5], 3, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    fn = models.functional(model)
    data = wd.make_classification(jax.random.key(1), 23, 4, 3, dtype=jnp.float64)
    data = wd.Dataset(data.x.astype(jnp.float64), data.y)
    return fn, data


def _exact(fn, data, sketch):
    rows, grad = [], jax.jit(jax.grad(fn.loss_fn))
    for i in range(len(data)):
        g = grad(fn.params, data.take(slice(i, i + 1)))
        rows.append(sketch.apply_tree(g))
    return np.stack(rows)


def test_in_memory_matches_single_gradients(problem, key):
    fn, data = problem
    s = sk.make("srht", key, optax.tree.size(fn.params), 8)
    got = sk.per_example_gradients(fn.loss_fn, fn.params, data, s, chunk_size=5)  # 23 = 4*5 + 3
    np.testing.assert_allclose(got, _exact(fn, data, s), rtol=1e-10, atol=1e-12)
    # default batch size from the memory cap gives the same numbers
    np.testing.assert_allclose(sk.per_example_gradients(fn.loss_fn, fn.params, data, s), got, rtol=1e-12)


def test_store_round_trips_resumes_and_refuses(problem, key, tmp_path):
    fn, data = problem
    s = sk.make("affd", key, optax.tree.size(fn.params), 8)
    path = tmp_path / "grads.zarr"
    exact = _exact(fn, data, s)

    class Stop(Exception):
        pass

    seen = []

    def interrupt(chunk, values):
        seen.append(chunk)
        if chunk == 2:
            raise Stop

    with pytest.raises(Stop):
        sk.write_gradient_store(fn.loss_fn, fn.params, data, s, path, chunk_size=5, callback=interrupt)
    partial = open_store(path)
    assert not partial.complete and partial.metadata["kind"] == "affd"
    np.testing.assert_allclose(partial.sketches[:10], exact[:10], rtol=1e-10)  # chunks 0, 1 kept
    assert np.isnan(partial.sketches[10:]).all()  # chunk 2 never written

    seen.clear()
    out = sk.write_gradient_store(fn.loss_fn, fn.params, data, s, path,
                                  callback=lambda c, v: seen.append(c))
    assert seen == [2, 3, 4]  # resumed, with the stored chunk size
    assert out.complete and out.sketches.shape == (23, 8)
    np.testing.assert_allclose(out.sketches[:], exact, rtol=1e-10)
    meta = out.metadata
    assert (meta["dim_in"], meta["dim_out"], meta["n_data"], meta["dtype"]) == (optax.tree.size(fn.params), 8, 23, "float64")

    seen.clear()  # a repeated run recomputes nothing and changes nothing
    sk.write_gradient_store(fn.loss_fn, fn.params, data, s, path, callback=lambda c, v: seen.append(c))
    assert seen == []

    other = sk.make("affd", jax.random.key(5), optax.tree.size(fn.params), 8)
    with pytest.raises(ValueError, match="another configuration.*(seed|sketch_state_hash)"):
        sk.write_gradient_store(fn.loss_fn, fn.params, data, other, path)
    with pytest.raises(ValueError, match="n_data"):
        sk.write_gradient_store(fn.loss_fn, fn.params, data.take(slice(0, 20)), s, path)
    with pytest.raises(ValueError, match="chunk_rows"):
        sk.write_gradient_store(fn.loss_fn, fn.params, data, s, path, chunk_size=7)
    np.testing.assert_allclose(open_store(path).sketches[:], exact, rtol=1e-10)  # nothing lost


def test_bad_inputs(problem, key, tmp_path):
    fn, data = problem
    with pytest.raises(ValueError, match="dim_in=10 but params have"):
        sk.per_example_gradients(fn.loss_fn, fn.params, data, sk.make("srht", key, 10, 4))
    s = sk.make("srht", key, optax.tree.size(fn.params), 4)
    with pytest.raises(ValueError, match="chunk_size"):
        sk.per_example_gradients(fn.loss_fn, fn.params, data, s, chunk_size=0)
    with pytest.raises(FileNotFoundError):
        open_store(tmp_path / "missing.zarr")


def test_raw_gradients_without_a_sketch(problem, tmp_path):
    fn, data = problem
    raw = sk.per_example_gradients(fn.loss_fn, fn.params, data, None, chunk_size=7)
    g0 = jax.flatten_util.ravel_pytree(jax.grad(fn.loss_fn)(fn.params, data.take(slice(0, 1))))[0]
    assert raw.shape == (23, optax.tree.size(fn.params))
    # atol: entries near 0 (1e-7 here) are differences of O(0.1) terms, their round-off absolute
    np.testing.assert_allclose(raw[0], g0, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="store needs a sketch"):
        sk.write_gradient_store(fn.loss_fn, fn.params, data, None, tmp_path / "x.zarr")


def test_per_leaf_kronecker_matches_the_raveled_gradients(problem, key, tmp_path):
    """The per-leaf path (no concatenation) gives Phi applied to each raveled gradient."""
    fn, data = problem
    s = sk.for_params("kronecker", key, fn.params, 12)
    assert s.options["leaf_shapes"] == tuple(tuple(leaf.shape) for leaf in jax.tree.leaves(fn.params))
    got = sk.per_example_gradients(fn.loss_fn, fn.params, data, s, chunk_size=5)
    grad = jax.jit(jax.grad(fn.loss_fn))
    flat = np.stack([tu.ravel(grad(fn.params, data.take(slice(i, i + 1))))[0] for i in range(len(data))])
    np.testing.assert_allclose(got, s.apply(jnp.asarray(flat)), rtol=1e-10, atol=1e-12)
    # its nested leaf_shapes option survives the store's JSON metadata: reopening is not refused
    first = sk.write_gradient_store(fn.loss_fn, fn.params, data, s, tmp_path / "g.zarr", chunk_size=5)
    again = sk.write_gradient_store(fn.loss_fn, fn.params, data, s, tmp_path / "g.zarr", chunk_size=5)
    np.testing.assert_allclose(np.asarray(again.sketches[:]), np.asarray(first.sketches[:]))
    np.testing.assert_allclose(np.asarray(first.sketches[:]), got, rtol=1e-12)


# --- stores keyed by what made them (issue 27): a tiny float64 logistic regression, 24 examples ---

N_LOGREG, FEATURES, CLASSES = 24, 5, 3


def _logreg_loss(params, batch):
    x, y = batch
    logits = x @ params["w"] + params["b"]
    return jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1)[:, 0])


def _logreg_params(key):
    kw, kb = jax.random.split(key)
    return {"w": jax.random.normal(kw, (FEATURES, CLASSES), jnp.float64),
            "b": 0.1 * jax.random.normal(kb, (CLASSES,), jnp.float64)}


@pytest.fixture(scope="module")
def logreg_data():
    x = jax.random.normal(jax.random.key(101), (N_LOGREG, FEATURES), jnp.float64)
    y = jax.random.randint(jax.random.key(102), (N_LOGREG,), 0, CLASSES)
    return wd.Dataset(x, y)


def _logreg_exact(params, data, sketch):
    """Phi grad loss(example i), one example at a time in float64 (the reference)."""
    grad = jax.jit(jax.grad(_logreg_loss))
    return np.stack([np.asarray(sketch.apply_tree(grad(params, data.take(slice(i, i + 1)))))
                     for i in range(len(data))])


def _snapshot(path):
    """Every file's bytes and every folder under `path`: a refusal must leave all of it as it was."""
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else None) for p in sorted(path.rglob("*"))}


@pytest.mark.parametrize("seed", [0, 7])
def test_a_store_is_refused_for_any_other_configuration_and_left_untouched(logreg_data, tmp_path, seed):
    """Other params values (p + 0.5, another init of the same architecture), 3 * loss, another
    loss, other data, another sketch key or chunk size: each refused, naming the field, before
    any gradient is computed; the store's bytes are unchanged."""
    data = logreg_data
    k_init, k_sketch, k_other = jax.random.split(jax.random.key(seed), 3)
    params = _logreg_params(k_init)
    s = sk.make("dense", k_sketch, FEATURES * CLASSES + CLASSES, 6)
    path = tmp_path / "g.zarr"
    store = sk.write_gradient_store(_logreg_loss, params, data, s, path, chunk_size=8)
    assert store.complete and store.metadata["format_version"] == 3
    np.testing.assert_allclose(store.sketches[:], _logreg_exact(params, data, s), rtol=1e-12, atol=1e-14)
    assert sk.check_store(_logreg_loss, params, data, s, path).complete  # its own configuration passes
    before = _snapshot(path)

    def triple(p, b):
        return 3 * _logreg_loss(p, b)

    def smoothed(p, b):  # another loss: label smoothing 0.1
        x, y = b
        logp = jax.nn.log_softmax(x @ p["w"] + p["b"])
        target = 0.9 * jax.nn.one_hot(y, CLASSES, dtype=logp.dtype) + 0.1 / CLASSES
        return -jnp.mean(jnp.sum(target * logp, axis=1))

    perturbed = wd.Dataset(data.x.at[17, 2].add(1e-3), data.y)  # beyond the probed examples 0..3
    cases = [
        (dict(params=jax.tree.map(lambda a: a + 0.5, params)),
         r"params_values: the params' values differ from those the store was made with \(same structure"),
        (dict(params=_logreg_params(k_other)), r"params_values: the params' values differ"),
        (dict(loss_fn=triple), r"loss_probe: the loss differs: at example 0 the store's loss was"),
        (dict(loss_fn=smoothed), r"loss_probe: the loss differs: at example 0"),
        (dict(data=perturbed), r"data_hash: the data's values differ from those the store was made with"),
        (dict(data=data.take(slice(0, 20))), r"n_data: the data differs: the store has 24 examples, this run 20"),
        (dict(sketch=sk.make("dense", k_other, s.dim_in, 6)), r"seed: the sketch's key differs"),
        (dict(chunk_size=5), r"chunk_rows: the store has 8 rows per chunk, this run asks for 5"),
    ]
    computed = []  # chunks computed by any refused run: none
    for change, expected in cases:
        run = {"loss_fn": _logreg_loss, "params": params, "data": data, "sketch": s, "chunk_size": None, **change}
        with pytest.raises(ValueError, match=f"another configuration: {expected}") as refusal:
            sk.write_gradient_store(run["loss_fn"], run["params"], run["data"], run["sketch"], path,
                                    run["chunk_size"], callback=lambda c, v: computed.append(c))
        message = str(refusal.value)
        assert "Nothing in it was changed; use another path, or delete" in message
        assert computed == [], "refused before any gradient is computed"
        if "params" in change or "data" in change:  # the cause is named, not its consequence
            assert "loss_probe" not in message
        if change.get("loss_fn") is triple:  # the numbers quoted are the two losses of example 0
            old, new = map(float, re.search(r"store's loss was (\S+), this run's is (\S+) ", message).groups())
            assert old == pytest.approx(float(_logreg_loss(params, data.take(slice(0, 1)))), rel=1e-12)
            assert new == pytest.approx(3 * old, rel=1e-12)
        with pytest.raises(ValueError, match=expected):  # the read-only check says the same
            sk.check_store(run["loss_fn"], run["params"], run["data"], run["sketch"], path, run["chunk_size"])
        assert _snapshot(path) == before, f"the refusal of {sorted(change)} changed the store"
    np.testing.assert_allclose(open_store(path).sketches[:], _logreg_exact(params, data, s), rtol=1e-12, atol=1e-14)


def test_non_finite_params_are_refused_before_anything_is_written(logreg_data, tmp_path, key):
    data = logreg_data
    params = _logreg_params(jax.random.fold_in(key, 1))
    bad = {**params, "w": params["w"].at[2, 1].set(jnp.nan)}
    s = sk.make("countsketch", jax.random.fold_in(key, 2), FEATURES * CLASSES + CLASSES, 6)
    fresh = tmp_path / "fresh.zarr"
    nan_params = r"params contains NaN or infinite values \(at leaf \['w'\]\), so every per-example gradient"
    with pytest.raises(ValueError, match=nan_params):
        sk.write_gradient_store(_logreg_loss, bad, data, s, fresh, chunk_size=8)
    assert not fresh.exists() and list(tmp_path.iterdir()) == [], "nothing created, no temporary left"

    class Stop(Exception):
        pass

    def stop_at_1(chunk, values):
        if chunk == 1:
            raise Stop

    path = tmp_path / "partial.zarr"
    with pytest.raises(Stop):
        sk.write_gradient_store(_logreg_loss, params, data, s, path, chunk_size=8, callback=stop_at_1)
    before = _snapshot(path)
    with pytest.raises(ValueError, match=nan_params):
        sk.write_gradient_store(_logreg_loss, bad, data, s, path, chunk_size=8)
    assert _snapshot(path) == before and not open_store(path).complete
    with pytest.raises(ValueError, match=nan_params):
        sk.per_example_gradients(_logreg_loss, bad, data, s)
    with pytest.raises(ValueError, match=r"sketch_gradient: params contains NaN .*\['w'\].*gradient is NaN"):
        sk.sketch_gradient(_logreg_loss, bad, data, s)
    # under jit nothing can raise (documented): the NaN comes back, for the caller to check
    assert np.isnan(jax.jit(lambda p: sk.sketch_gradient(_logreg_loss, p, data, s))(bad)).all()
    # the store finishes with finite params and equals the reference
    done = sk.write_gradient_store(_logreg_loss, params, data, s, path)
    assert done.complete
    np.testing.assert_allclose(done.sketches[:], _logreg_exact(params, data, s), rtol=1e-12, atol=1e-14)


def test_a_chunk_with_non_finite_gradients_is_never_written(logreg_data, tmp_path, key):
    """A NaN at example 13 (finite params): chunk 2 of 5-row chunks is refused naming its
    examples, before the callback, the write and the commit; the store stays incomplete."""
    data = logreg_data
    params = _logreg_params(jax.random.fold_in(key, 3))
    s = sk.make("srht", jax.random.fold_in(key, 4), FEATURES * CLASSES + CLASSES, 6)
    broken = wd.Dataset(data.x.at[13, 0].set(jnp.inf), data.y)
    path = tmp_path / "g.zarr"
    seen = []
    bad_chunk = r"chunk 2 \(examples 10 to 14\) is NaN or inf at examples \[13\]: the loss or its gradient"
    with pytest.raises(FloatingPointError, match=bad_chunk + r".*not written, so .*g.zarr stays incomplete"):
        sk.write_gradient_store(_logreg_loss, params, broken, s, path, chunk_size=5,
                                callback=lambda c, v: seen.append(c))
    assert seen == [0, 1]
    store = open_store(path)
    assert not store.complete and sorted(p.name for p in (path / "_commits").iterdir()) == ["00000000", "00000001"]
    np.testing.assert_allclose(store.sketches[:10], _logreg_exact(params, data.take(slice(0, 10)), s), rtol=1e-12)
    assert np.isnan(store.sketches[10:]).all()
    with pytest.raises(FloatingPointError, match=bad_chunk):
        sk.per_example_gradients(_logreg_loss, params, broken, s, chunk_size=5)
    with pytest.raises(FloatingPointError, match="sketch_gradient: the sketched gradient holds NaN or inf at finite"):
        sk.sketch_gradient(_logreg_loss, params, broken.take(slice(12, 15)), s)
    # a non-finite loss at a probed example: refused before the store is created
    first = wd.Dataset(data.x.at[0, 1].set(jnp.nan), data.y)
    with pytest.raises(FloatingPointError, match="the loss of example 0 alone is nan at finite params"):
        sk.write_gradient_store(_logreg_loss, params, first, s, tmp_path / "other.zarr")
    assert not (tmp_path / "other.zarr").exists()


def test_numpy_integers_are_accepted_as_sizes(logreg_data, key):
    s = sk.make("dense", key, np.int64(100), 10)
    assert (s.dim_in, s.dim_out) == (100, 10) and type(s.dim_in) is int
    assert sk.make("srht", key, 100, np.int32(10)).dim_out == 10
    with pytest.raises(ValueError, match="dim_in must be an int"):
        sk.make("dense", key, np.float64(100.0), 10)
    with pytest.raises(ValueError, match="dim_out must be an int"):
        sk.make("dense", key, 100, True)
    params = _logreg_params(key)
    phi = sk.for_params("countsketch", key, params, 6)
    np.testing.assert_array_equal(sk.per_example_gradients(_logreg_loss, params, logreg_data, phi, np.int64(5)),
                                  sk.per_example_gradients(_logreg_loss, params, logreg_data, phi, 5))


@pytest.mark.parametrize("dtype, scale", [(jnp.float32, 1 + 1e-3), (jnp.float64, 1 + 1e-8)])
def test_the_loss_probe_tolerance_follows_the_dtype(logreg_data, tmp_path, dtype, scale):
    """A resumed run with the same loss passes; a loss rescaled by 1e-3 (float32) or 1e-8 (float64)
    relative, far below what a plausible wrong store would show, is refused."""
    key = jax.random.key(11)
    params = jax.tree.map(lambda a: a.astype(dtype), _logreg_params(key))
    data = wd.Dataset(logreg_data.x.astype(dtype), logreg_data.y)
    s = sk.make("countsketch", jax.random.fold_in(key, 1), FEATURES * CLASSES + CLASSES, 6)
    path = tmp_path / "g.zarr"

    def stop(chunk, values):
        if chunk == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sk.write_gradient_store(_logreg_loss, params, data, s, path, chunk_size=8, callback=stop)
    assert open_store(path).metadata["loss_probe"]["dtype"] == np.dtype(dtype).name
    with pytest.raises(ValueError, match="loss_probe: the loss differs: at example 0"):
        sk.check_store(lambda p, b: scale * _logreg_loss(p, b), params, data, s, path)
    done = sk.write_gradient_store(_logreg_loss, params, data, s, path)  # resumes
    assert done.complete and done.sketches.dtype == dtype
    reference = _logreg_exact(jax.tree.map(lambda a: a.astype(jnp.float64), params),
                              wd.Dataset(data.x.astype(jnp.float64), data.y), s)
    np.testing.assert_allclose(done.sketches[:], reference, rtol=1e-4 if dtype == jnp.float32 else 1e-12,
                               atol=1e-6 if dtype == jnp.float32 else 1e-14)
