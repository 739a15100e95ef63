"""Per-example gradient sketches: exact against a loop of single gradients, zarr store resume/refusal."""

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
    np.testing.assert_allclose(raw[0], g0, rtol=1e-12)
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
