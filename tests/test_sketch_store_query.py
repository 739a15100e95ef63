"""Asking a gradient store: its sketch rebuilt from the path alone, test gradients scored against
it in row blocks with a running top-k, against a dense float64 reference; every refusal named."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

from workbench import data as wd
from workbench import models
from workbench import sketch as sk
from workbench.core.per_example import mean_loss
from workbench.sketch.provenance import sketch_fields, sketch_from_metadata
from workbench.sketch.store import STORE_ATTR

N_TRAIN, N_TEST, FEATURES, CLASSES, D, ROWS = 37, 6, 5, 3, 8, 8  # 37 = 4 * 8 + 5: a short last chunk


def _loss(params, batch):
    x, y = batch
    logits = x @ params["w"] + params["b"]
    return jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1)[:, 0])


def _params(key, dtype=jnp.float64):
    kw, kb = jax.random.split(key)
    return {"w": jax.random.normal(kw, (FEATURES, CLASSES), dtype),
            "b": 0.1 * jax.random.normal(kb, (CLASSES,), dtype)}


def _data(key, n, dtype=jnp.float64):
    kx, ky = jax.random.split(key)
    return wd.Dataset(jax.random.normal(kx, (n, FEATURES), dtype), jax.random.randint(ky, (n,), 0, CLASSES))


@pytest.fixture(scope="module")
def problem():
    return _params(jax.random.key(11)), _data(jax.random.key(12), N_TRAIN), _data(jax.random.key(13), N_TEST)


def _dense_gradients(loss_fn, params, data):
    """[n, p] per-example gradients, each by jacrev of the one-example loss over the raveled params."""
    flat, unravel = ravel_pytree(params)
    one = jax.jacrev(lambda f, x, y: loss_fn(unravel(f), (x[None], y[None])))
    return np.asarray(jax.vmap(one, in_axes=(None, 0, 0))(flat, data.x, data.y), np.float64)


def _reference(sketch, params, data, test_data, normalize=False):
    """<Phi g_test, Phi g_i> in float64 from explicit gradients and the sketch's dense matrix."""
    phi = np.asarray(sketch.apply(jnp.eye(sketch.dim_in, dtype=jnp.float64)), np.float64).T  # [D, p]
    train = _dense_gradients(_loss, params, data) @ phi.T
    test = _dense_gradients(_loss, params, test_data) @ phi.T
    if normalize:
        train = train / (np.linalg.norm(train, axis=1, keepdims=True) + 1e-12)  # grad_cos's definition
        test = test / (np.linalg.norm(test, axis=1, keepdims=True) + 1e-12)
    return test @ train.T


def _sketch(kind, key, params):
    return sk.for_params(kind, key, params, D)


@pytest.mark.parametrize("kind", ["srht", "kronecker", "affd"])
def test_scores_and_top_k_equal_the_dense_reference(problem, keys, tmp_path, kind):
    params, data, test_data = problem
    for i, key in enumerate([keys[0], keys[4], keys[5]]):  # key(0) and two of this test's own
        sketch = _sketch(kind, key, params)
        path = tmp_path / f"{kind}-{i}.zarr"
        sk.write_gradient_store(_loss, params, data, sketch, path, chunk_size=ROWS)
        ref = _reference(sketch, params, data, test_data)
        got = sk.score_store(path, _loss, params, data, test_data, top_k=5)
        np.testing.assert_allclose(got.scores, ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max())
        np.testing.assert_array_equal(got.proponents, np.argsort(-ref, axis=1, kind="stable")[:, :5])
        np.testing.assert_array_equal(got.opponents, np.argsort(ref, axis=1, kind="stable")[:, :5])
        np.testing.assert_allclose(got.proponent_scores, np.sort(ref, axis=1)[:, ::-1][:, :5], rtol=1e-10)
        np.testing.assert_allclose(got.opponent_scores, np.sort(ref, axis=1)[:, :5], rtol=1e-10)
        assert got.scores.dtype == jnp.float64 and got.proponents.shape == (N_TEST, 5)

        cos = _reference(sketch, params, data, test_data, normalize=True)
        got = sk.score_store(path, _loss, params, data, test_data, top_k=3, keep_scores=False, normalize=True)
        assert got.scores is None
        np.testing.assert_array_equal(got.proponents, np.argsort(-cos, axis=1, kind="stable")[:, :3])
        np.testing.assert_allclose(got.proponent_scores, np.sort(cos, axis=1)[:, ::-1][:, :3], rtol=1e-10)
        np.testing.assert_allclose(got.opponent_scores, np.sort(cos, axis=1)[:, :3], rtol=1e-10)


def test_streaming_block_sizes_give_identical_results(problem, key, tmp_path):
    params, data, test_data = problem
    path = tmp_path / "g.zarr"
    sk.write_gradient_store(_loss, params, data, _sketch("srht", key, params), path, chunk_size=ROWS)
    whole = sk.score_store(path, _loss, params, data, test_data, top_k=7, chunk_rows=1000)
    for rows in (5, 1, None):  # 37 = 7 * 5 + 2; one row at a time; the store's own 8
        part = sk.score_store(path, _loss, params, data, test_data, top_k=7, chunk_rows=rows,
                              keep_scores=rows != 1)
        for name in ("proponents", "opponents", "test_sketches"):
            np.testing.assert_array_equal(getattr(part, name), getattr(whole, name), err_msg=f"{name}, rows={rows}")
        # the same numbers up to the matrix product's rounding, which its shape may change (gemv at 1 row)
        for name in ("proponent_scores", "opponent_scores", "scores"):
            if getattr(part, name) is not None:
                np.testing.assert_allclose(getattr(part, name), getattr(whole, name), rtol=1e-14, atol=1e-15,
                                           err_msg=f"{name}, rows={rows}")
    every = sk.score_store(path, _loss, params, data, test_data, top_k=N_TRAIN, chunk_rows=5)
    np.testing.assert_array_equal(np.sort(every.proponents, axis=1), np.tile(np.arange(N_TRAIN), (N_TEST, 1)))

    class Reads:  # the stored array, recording every slice read from it
        def __init__(self, array):
            self.array, self.rows = array, []

        def __getitem__(self, index):
            self.rows.append(len(range(*index.indices(self.array.shape[0]))))
            return self.array[index]

    store = sk.open_store(path)
    reads = Reads(store.sketches)
    bounded = sk.score_store(store._replace(sketches=reads), _loss, params, data, test_data, top_k=7,
                             chunk_rows=5, keep_scores=False)
    assert reads.rows == [5] * 7 + [2]  # the store is read block by block, never whole
    np.testing.assert_array_equal(bounded.proponents, whole.proponents)


def test_float32_store_matches_the_float64_reference(key, tmp_path):
    params = _params(jax.random.key(21), jnp.float32)
    data, test_data = _data(jax.random.key(22), N_TRAIN, jnp.float32), _data(jax.random.key(23), N_TEST, jnp.float32)
    sketch = _sketch("srht", key, params)
    path = tmp_path / "f32.zarr"
    sk.write_gradient_store(_loss, params, data, sketch, path, chunk_size=ROWS)
    got = sk.score_store(path, _loss, params, data, test_data, top_k=2)
    as64 = jax.tree.map(lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a, (params, data, test_data))
    ref = _reference(sketch, *as64)
    assert got.scores.dtype == jnp.float32
    np.testing.assert_allclose(got.scores, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("kind, options", [
    ("dense", {}), ("dense", {"materialize_max": 0, "chunk": 7}), ("kronecker", {"distribution": "rademacher"}),
    ("qk", {"max_factor": 4}), ("fjl", {}), ("countsketch", {}),
])
def test_the_sketch_is_rebuilt_from_the_metadata_alone(problem, keys, kind, options):
    params = problem[0]
    x = jax.random.normal(jax.random.key(5), (3, 18), jnp.float64)
    for key in (keys[0], keys[1], keys[6]):
        original = sk.for_params(kind, key, params, D, **options)
        rebuilt = sketch_from_metadata(json.loads(json.dumps(sketch_fields(original))))
        assert rebuilt.options == original.options
        np.testing.assert_array_equal(rebuilt.apply(x), original.apply(x))


def test_a_store_reopened_from_its_path_rebuilds_its_sketch_and_refuses_a_tampered_one(problem, key, tmp_path):
    import zarr

    params, data, _ = problem
    sketch = _sketch("kronecker", key, params)
    path = tmp_path / "g.zarr"
    sk.write_gradient_store(_loss, params, data, sketch, path, chunk_size=ROWS)
    rebuilt = sk.sketch_from_store(path)
    x = jax.random.normal(jax.random.key(6), (4, 18), jnp.float64)
    np.testing.assert_array_equal(rebuilt.apply(x), sketch.apply(x))
    np.testing.assert_array_equal(rebuilt.apply_tree(params), sketch.apply_tree(params))

    group = zarr.open_group(str(path), mode="r+")
    meta = dict(group.attrs[STORE_ATTR])
    group.attrs[STORE_ATTR] = {**meta, "seed": [meta["seed"][0] ^ 1, meta["seed"][1]]}
    with pytest.raises(ValueError, match="cannot be rebuilt exactly.*sketch_state_hash"):
        sk.sketch_from_store(path)
    group.attrs[STORE_ATTR] = {**meta, "options": {**meta["options"], "dims_out": [8, 1]}}
    with pytest.raises(ValueError, match="cannot be rebuilt exactly"):
        sk.score_store(path, _loss, params, data, problem[2], top_k=1)


def test_refusals_name_the_cause(problem, key, tmp_path):
    params, data, test_data = problem
    sketch = _sketch("srht", key, params)
    path = tmp_path / "g.zarr"

    class Stop(Exception):
        pass

    def stop_at_chunk_3(chunk, values):
        if chunk == 3:
            raise Stop

    with pytest.raises(Stop):
        sk.write_gradient_store(_loss, params, data, sketch, path, chunk_size=ROWS, callback=stop_at_chunk_3)
    with pytest.raises(ValueError, match=re.escape("is incomplete: chunk(s) [3, 4] of 5")):
        sk.score_store(path, _loss, params, data, test_data, top_k=1)
    sk.write_gradient_store(_loss, params, data, sketch, path)  # finish it
    sk.score_store(path, _loss, params, data, test_data, top_k=1, keep_scores=False)  # accepted now

    other = jax.tree.map(lambda a: a * (1 + 1e-6), params)
    with pytest.raises(ValueError, match="params' values differ"):
        sk.score_store(path, _loss, other, data, test_data, top_k=1)
    with pytest.raises(ValueError, match="the loss differs"):
        sk.score_store(path, lambda p, b: 2.0 * _loss(p, b), params, data, test_data, top_k=1)
    with pytest.raises(ValueError, match="data's values differ"):
        sk.score_store(path, _loss, params, wd.Dataset(data.x[::-1], data.y[::-1]), test_data)
    wide = wd.Dataset(jnp.zeros((N_TEST, FEATURES + 1)), test_data.y)
    with pytest.raises(ValueError, match=re.escape("test_data: array 0 holds examples of shape (6,)")):
        sk.score_store(path, _loss, params, data, wide, top_k=1)
    with pytest.raises(ValueError, match=re.escape("test_data: array 0 holds examples of shape (5,) and dtype float32")):
        sk.score_store(path, _loss, params, data, wd.Dataset(test_data.x.astype(jnp.float32), test_data.y))
    labels32 = sk.score_store(path, _loss, params, data, wd.Dataset(test_data.x, test_data.y.astype(jnp.int32)), top_k=1)
    np.testing.assert_array_equal(labels32.proponents, sk.score_store(path, _loss, params, data, test_data, top_k=1).proponents)
    with pytest.raises(ValueError, match="test_data: has 1 arrays"):
        sk.score_store(path, _loss, params, data, (test_data.x,), top_k=1)
    with pytest.raises(ValueError, match="top_k must be at most the store's 37"):
        sk.score_store(path, _loss, params, data, test_data, top_k=N_TRAIN + 1)
    with pytest.raises(ValueError, match="keep_scores=False needs top_k"):
        sk.score_store(path, _loss, params, data, test_data, keep_scores=False)
    with pytest.raises(ValueError, match="chunk_rows must be an int >= 1"):
        sk.score_store(path, _loss, params, data, test_data, chunk_rows=0)
    with pytest.raises(TypeError, match="loss_fn must be a callable"):
        sk.score_store(path, "cross_entropy", params, data, test_data)
    with pytest.raises(FileNotFoundError):
        sk.score_store(tmp_path / "nothing.zarr", _loss, params, data, test_data)


def test_a_functional_is_scored_by_its_data_loss_without_l2(key, tmp_path):
    model = models.MLP(3, [4], 2, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    fn = models.functional(model, l2=0.5)
    raw = wd.make_classification(jax.random.key(31), 30, 3, 2, dtype=jnp.float64)
    data = wd.Dataset(raw.x.astype(jnp.float64), raw.y)
    train, test = data.take(slice(0, 25)), data.take(slice(25, 30))
    sketch = sk.for_params("srht", key, fn.params, D)
    data_loss = mean_loss(fn.per_example_loss_fn)
    sk.write_gradient_store(data_loss, fn.params, train, sketch, tmp_path / "data.zarr", chunk_size=10)
    by_model = sk.score_store(tmp_path / "data.zarr", fn, fn.params, train, test, top_k=4)
    by_loss = sk.score_store(tmp_path / "data.zarr", data_loss, fn.params, train, test, top_k=4)
    np.testing.assert_array_equal(by_model.scores, by_loss.scores)
    np.testing.assert_array_equal(by_model.proponents, by_loss.proponents)
    # the objective (data loss + l2 term) has other gradients than the store holds: refused
    with pytest.raises(ValueError, match="the loss differs"):
        sk.score_store(tmp_path / "data.zarr", fn.loss_fn, fn.params, train, test, top_k=4)
