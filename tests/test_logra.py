"""LoGra (`workbench.sketch.logra`) against references built from the full per-example gradients
(`jax.grad` of each example's loss, cut into layer matrices by `capture.layer_matrix`): the
projected gradient per layer, unbiased inner products, the store's round trip and refusals."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from workbench import data, influence, models, sketch
from workbench.core.per_example import mean_loss, per_example_grads
from workbench.curvature.capture import layer_matrix
from workbench.sketch import logra


@pytest.fixture(scope="module")
def mlp():
    """A 6-5-3 tanh MLP (float64, untrained) on 24 Gaussian blobs."""
    fn = models.functional(models.MLP(6, [5], 3, rngs=nnx.Rngs(0), param_dtype=jnp.float64))
    train = data.make_classification(jax.random.key(1), 24, 6, num_classes=3, dtype=jnp.float64)
    return fn, fn.params, train


@pytest.fixture(scope="module")
def transformer():
    """A one-block TinyTransformer (vocabulary 5, 4 positions, d_model 8, 2 heads) on 6 sequences."""
    fn = models.functional(models.TinyTransformer(5, 4, d_model=8, num_heads=2, rngs=nnx.Rngs(1),
                                                  param_dtype=jnp.float64))
    tokens = np.random.default_rng(3).integers(0, 5, (6, 5)).astype(np.int32)
    return fn, fn.params, data.Dataset(*jax.device_put((tokens[:, :4], tokens[:, 1:])))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _full_layer_gradients(fn, layers, params, batch):
    """Each example's full gradient of each layer, [n, activation_dim, out_features], from jax.grad."""
    grads = per_example_grads(mean_loss(fn.per_example_loss_fn), params, batch)
    return {layer.name: layer_matrix(layer, grads) for layer in layers}


def _reference(projection, fn, params, batch):
    """P_in^T G_n P_out per layer from the full per-example gradients, raveled and concatenated."""
    full = _full_layer_gradients(fn, projection.layers, params, batch)
    blocks = [np.einsum("ik,nio,ol->nkl", p_in, full[layer.name], p_out).reshape(len(full[layer.name]), -1)
              for layer, p_in, p_out in zip(projection.layers, projection.inputs, projection.outputs)]
    return np.concatenate(blocks, axis=1), full


def test_mlp_matches_projected_full_gradient(mlp):
    fn, params, train = mlp
    projection = logra.logra_projection(fn, jax.random.key(0), 4, 3)
    assert [layer.name for layer in projection.layers] == ["layers/0", "layers/1"]
    assert projection.left_out == ()
    got = np.asarray(logra.logra_project(projection, fn, params, train, chunk_size=7))  # last chunk padded
    want, _ = _reference(projection, fn, params, train)
    assert got.shape == (24, 2 * 4 * 3) == (24, projection.dim)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.standard_promotion  # flax's LayerNorm promotes float64 with float32
def test_transformer_matches_per_layer(transformer):
    """Attention projections (LinearGeneral), MLP Linears, the embedding and the head, summed over positions."""
    fn, params, batch = transformer
    projection = logra.logra_projection(fn, jax.random.key(2), 3, 2)
    kinds = {layer.name: layer.kind for layer in projection.layers}
    assert kinds["embed"] == "embed" and "blocks/0/attn/query" in kinds and "head" in kinds
    assert any(path == "pos" for path, _ in projection.left_out)  # a bare nnx.Param: listed, not projected
    got = np.asarray(logra.logra_project(projection, fn, params, batch, chunk_size=4))
    want, _ = _reference(projection, fn, params, batch)
    size = 3 * 2
    for i, layer in enumerate(projection.layers):
        block = slice(i * size, (i + 1) * size)
        scale = np.abs(want[:, block]).max()
        assert scale > 0, layer.name
        np.testing.assert_allclose(got[:, block], want[:, block], rtol=0, atol=1e-10 * scale, err_msg=layer.name)


def test_determinism(mlp):
    fn, _, _ = mlp
    first, again = (logra.logra_projection(fn, jax.random.key(5), 4, 3) for _ in range(2))
    other = logra.logra_projection(fn, jax.random.key(6), 4, 3)
    for a, b, c in zip(first.inputs + first.outputs, again.inputs + again.outputs, other.inputs + other.outputs):
        np.testing.assert_array_equal(a, b)
        assert not np.allclose(a, c)
    # the documented draw: layer i from split(fold_in(key, i)), Gaussian over sqrt(k)
    for i, layer in enumerate(first.layers):
        key_in, key_out = jax.random.split(jax.random.fold_in(jax.random.key(5), i))
        np.testing.assert_allclose(first.inputs[i], jax.random.normal(key_in, (layer.activation_dim, 4)) / 2,
                                   rtol=1e-15)
        np.testing.assert_allclose(first.outputs[i], jax.random.normal(key_out, (layer.out_features, 3)) / np.sqrt(3),
                                   rtol=1e-15)


def test_inner_products_unbiased_and_concentrating(mlp):
    """Gram matrices of projected gradients approach the full ones: relative error falls with k, averaged over keys."""
    fn, params, train = mlp
    batch = jax.tree.map(lambda a: a[:8], train)
    base = logra.logra_projection(fn, jax.random.key(0), 1, 1)
    _, full = _reference(base, fn, params, batch)
    flat = np.concatenate([full[layer.name].reshape(8, -1) for layer in base.layers], axis=1)
    exact = flat @ flat.T
    errors, means = [], []
    for k in (2, 6, 18):
        grams = []
        for seed in range(4):
            projection = logra.logra_projection(fn, jax.random.key(100 + seed), k, k)
            p = np.asarray(logra.logra_project(projection, fn, params, batch))
            grams.append(p @ p.T)
        errors.append(np.mean([np.linalg.norm(g - exact) for g in grams]) / np.linalg.norm(exact))
        means.append(np.linalg.norm(np.mean(grams, axis=0) - exact) / np.linalg.norm(exact))
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.5 * errors[0], errors
    assert means[2] < errors[2], (means, errors)  # averaging over keys helps: unbiased


def test_store_round_trip_and_scores(mlp, tmp_path):
    fn, params, train = mlp
    projection = logra.logra_projection(fn, jax.random.key(0), 3, 2)
    path = tmp_path / "logra"
    store = logra.logra_store(projection, fn, params, train, path, chunk_size=10)
    assert store.complete and store.metadata["kind"] == "logra" and store.metadata["dim_out"] == projection.dim
    rows = np.asarray(store.sketches[:])
    np.testing.assert_allclose(rows, np.asarray(logra.logra_project(projection, fn, params, train)), rtol=1e-12)
    again = logra.logra_store(projection, fn, params, train, path)  # a repeated run: a no-op
    np.testing.assert_array_equal(np.asarray(again.sketches[:]), rows)
    test = jax.tree.map(lambda a: a[:3], train)
    test_rows = np.asarray(logra.logra_project(projection, fn, params, test))
    plain = logra.logra_scores(path, projection, fn, params, train, test, top_k=2)
    np.testing.assert_allclose(np.asarray(plain.scores), test_rows @ rows.T, rtol=1e-10)
    np.testing.assert_array_equal(np.asarray(plain.proponents)[:, 0], np.argmax(test_rows @ rows.T, axis=1))
    damped = logra.logra_scores(path, projection, fn, params, train, test, damping=1e-3)
    cov = rows.T @ rows / len(rows)
    want = test_rows @ np.linalg.inv(cov + 1e-3 * np.eye(len(cov))) @ rows.T
    np.testing.assert_allclose(np.asarray(damped.scores), want, rtol=1e-8)
    blocks = logra.logra_scores(path, projection, fn, params, train, test, damping=1e-3, block_diagonal=True)
    size = 3 * 2
    mask = np.kron(np.eye(2), np.ones((size, size)))
    want = test_rows @ np.linalg.inv(cov * mask + 1e-3 * np.eye(len(cov))) @ rows.T
    np.testing.assert_allclose(np.asarray(blocks.scores), want, rtol=1e-8)


def test_store_refusals(mlp, tmp_path):
    fn, params, train = mlp
    projection = logra.logra_projection(fn, jax.random.key(0), 3, 2)
    path = tmp_path / "logra"
    logra.logra_store(projection, fn, params, train, path, chunk_size=10)
    other_key = logra.logra_projection(fn, jax.random.key(1), 3, 2)
    with pytest.raises(ValueError, match="key differs"):
        logra.logra_store(other_key, fn, params, train, path)
    with pytest.raises(ValueError, match="dimension D differs|options differ"):
        logra.logra_store(logra.logra_projection(fn, jax.random.key(0), 4, 2), fn, params, train, path)
    moved = jax.tree.map(lambda w: w + 1e-3, params)
    with pytest.raises(ValueError, match="params' values differ"):
        logra.logra_store(projection, fn, moved, train, path)
    other_data = jax.tree.map(lambda a: a[::-1], train)
    with pytest.raises(ValueError, match="data's values differ"):
        logra.logra_store(projection, fn, params, other_data, path)
    test = jax.tree.map(lambda a: a[:2], train)
    with pytest.raises(ValueError, match="key differs"):
        logra.logra_scores(path, other_key, fn, params, train, test)
    with pytest.raises(ValueError, match="params' values differ"):
        logra.logra_scores(path, projection, fn, moved, train, test)
    with pytest.raises(ValueError, match="logra_scores"):  # not a sketch store: sketch.score_store points here
        sketch.score_store(path, fn, params, train, test)


def test_clear_errors(mlp, transformer):
    fn, params, train = mlp
    with pytest.raises(TypeError, match="Functional"):
        logra.logra_projection(fn.loss_fn, jax.random.key(0), 2, 2)
    for k_in, k_out in ((0, 2), (2, 0), (-1, 3)):
        with pytest.raises(ValueError, match="k_in|k_out"):
            logra.logra_projection(fn, jax.random.key(0), k_in, k_out)
    projection = logra.logra_projection(fn, jax.random.key(0), 2, 2)
    with pytest.raises(TypeError, match="Functional"):
        logra.logra_project(projection, fn.loss_fn, params, train)
    with pytest.raises(ValueError, match="another model"):
        logra.logra_project(projection, transformer[0], transformer[1], transformer[2])
    with pytest.raises(ValueError, match="damping"):
        logra.logra_scores("nowhere", projection, fn, params, train, train, damping=-1.0)


def test_float32_matches_float64(mlp):
    """The same model and projection in float32: within float32 round-off of float64's projected gradients."""
    fn, params, train = mlp
    fn32 = models.functional(models.MLP(6, [5], 3, rngs=nnx.Rngs(0), param_dtype=jnp.float32))
    params32 = jax.tree.map(lambda w: w.astype(jnp.float32), params)
    train32 = jax.tree.map(lambda a: a.astype(jnp.float32) if jnp.issubdtype(a.dtype, jnp.floating) else a, train)
    projection = logra.logra_projection(fn, jax.random.key(0), 4, 3)
    projection32 = logra.logra_projection(fn32, jax.random.key(0), 4, 3)
    assert projection32.inputs[0].dtype == jnp.float32
    projection32 = projection32._replace(inputs=tuple(p.astype(jnp.float32) for p in projection.inputs),
                                         outputs=tuple(p.astype(jnp.float32) for p in projection.outputs))
    got = np.asarray(logra.logra_project(projection32, fn32, params32, train32))
    want = np.asarray(logra.logra_project(projection, fn, params, train))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


# ----------------------------------------------------------------------------- the influence estimator


def _layer_gradients(fn, layers, params, batch):
    """Each example's full gradient of each layer, raveled row-major: a list of [n, d_in * d_out] (jax.grad)."""
    full = _full_layer_gradients(fn, layers, params, batch)
    return [np.asarray(full[layer.name]).reshape(len(full[layer.name]), -1) for layer in layers]


def _dense_influence(train_blocks, test_blocks, dampings):
    """sum_l <(C_l + damping_l I)^-1 t_l, g_l>, C_l = G_l^T G_l / n: dense solves, block by block."""
    out = 0.0
    for g, t, lam in zip(train_blocks, test_blocks, dampings):
        cov = g.T @ g / len(g)
        out = out + t @ np.linalg.solve(cov + lam * np.eye(len(cov)), g.T)
    return out


def _coisometry(key, rows, cols):
    """[rows, cols] (rows <= cols) with orthonormal rows: P P^T = I, so P P^T (A + lam I)^-1 = (A + lam I)^-1."""
    q, _ = np.linalg.qr(np.asarray(jax.random.normal(key, (cols, cols), jnp.float64)))
    return q[:rows]


def _full_dimension_projection(fn, key):
    """k_in, k_out = the largest layer's sizes; each layer's P_in, P_out with orthonormal rows (layer 0's square)."""
    base = logra.logra_projection(fn, key, 1, 1)
    k_in = max(layer.activation_dim for layer in base.layers)
    k_out = max(layer.out_features for layer in base.layers)
    keys = jax.random.split(key, 2 * len(base.layers))
    inputs = tuple(jnp.asarray(_coisometry(keys[2 * i], layer.activation_dim, k_in)) for i, layer in enumerate(base.layers))
    outputs = tuple(jnp.asarray(_coisometry(keys[2 * i + 1], layer.out_features, k_out))
                    for i, layer in enumerate(base.layers))
    return base._replace(inputs=inputs, outputs=outputs, k_in=k_in, k_out=k_out)


def test_estimator_full_dimension_is_block_diagonal_fisher_influence(mlp, key):
    """Projections covering each layer's whole gradient space (P P^T = I): LoGra's scores are the
    per-layer block-diagonal empirical-Fisher influence, computed densely from jax.grad."""
    _, params, train = mlp
    fn = models.functional(models.MLP(6, [5], 3, rngs=nnx.Rngs(0), param_dtype=jnp.float64), l2=0.05)
    test = jax.tree.map(lambda a: a[:5], data.make_classification(jax.random.key(9), 8, 6, num_classes=3,
                                                                  dtype=jnp.float64))
    for k, damping in ((key, 1e-3), (jax.random.key(0), 0.3), (jax.random.key(7), 1e-3)):
        projection = _full_dimension_projection(fn, k)
        assert projection.layers[0].activation_dim == projection.k_in  # layer 0's P_in is square: orthogonal
        est = influence.make("logra", fn, params, train, projection=projection, damping=damping)
        got = np.asarray(est.scores(test))
        layers = projection.layers
        want = _dense_influence(_layer_gradients(fn, layers, params, train), _layer_gradients(fn, layers, params, test),
                                [damping + 0.05] * len(layers))  # the objective's l2 joins the damping
        np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10 * np.abs(want).max())
        np.testing.assert_allclose(np.asarray(est.self_influence()),
                                   np.diag(_dense_influence(_layer_gradients(fn, layers, params, train),
                                                            _layer_gradients(fn, layers, params, train),
                                                            [damping + 0.05] * len(layers))), rtol=1e-8)


def _projected_blocks(projection, fn, params, batch):
    """The explicitly materialised projected per-example gradients (P_in^T G P_out from jax.grad), per layer."""
    want, _ = _reference(projection, fn, params, batch)
    size = projection.k_in * projection.k_out
    return [want[:, i * size : (i + 1) * size] for i in range(len(projection.layers))]


def test_estimator_random_projection_matches_dense_formula(mlp, key, tmp_path):
    """Gaussian projections: the dense formula on the materialised projected gradients, per layer and
    whole, at a given damping and at LogIX's default (0.1 x each block's mean eigenvalue)."""
    fn, params, train = mlp
    test = jax.tree.map(lambda a: a[:4], data.make_classification(jax.random.key(9), 8, 6, num_classes=3,
                                                                  dtype=jnp.float64))
    for k in (key, jax.random.key(0), jax.random.key(3)):
        est = influence.make("logra", fn, params, train, key=k, k_in=3, k_out=2, damping=1e-2)
        projection = logra.logra_projection(fn, k, 3, 2)
        for a, b in zip(est.state["inputs"] + est.state["outputs"], projection.inputs + projection.outputs):
            np.testing.assert_array_equal(a, b)  # the documented draw
        train_blocks = _projected_blocks(projection, fn, params, train)
        test_blocks = _projected_blocks(projection, fn, params, test)
        want = _dense_influence(train_blocks, test_blocks, [1e-2] * 2)
        np.testing.assert_allclose(np.asarray(est.scores(test)), want, rtol=1e-8)
        heuristic = [0.1 * np.trace(g.T @ g / len(g)) / g.shape[1] for g in train_blocks]
        est = influence.make("logra", fn, params, train, key=k, k_in=3, k_out=2)
        assert list(est.info["damping"]) == est.info["layers"]
        np.testing.assert_allclose(list(est.info["damping"].values()), heuristic, rtol=1e-10)
        np.testing.assert_allclose(np.asarray(est.scores(test)), _dense_influence(train_blocks, test_blocks, heuristic),
                                   rtol=1e-8)
    # k_in = layer 0's 7 inputs, k_out its 5 outputs: square Gaussian (not orthogonal) projections, where a transposed
    # matrix has the right shape and only the values tell
    square = influence.make("logra", fn, params, train, key=key, k_in=7, k_out=5, damping=1e-2)
    projection = logra.logra_projection(fn, key, 7, 5)
    np.testing.assert_allclose(np.asarray(square.scores(test)), _dense_influence(
        _projected_blocks(projection, fn, params, train), _projected_blocks(projection, fn, params, test), [1e-2] * 2),
        rtol=1e-8)
    whole = influence.make("logra", fn, params, train, key=key, k_in=3, k_out=2, damping=1e-2, block_diagonal=False)
    projection = logra.logra_projection(fn, key, 3, 2)
    p_train, _ = _reference(projection, fn, params, train)
    p_test, _ = _reference(projection, fn, params, test)
    np.testing.assert_allclose(np.asarray(whole.scores(test)), _dense_influence([p_train], [p_test], [1e-2]), rtol=1e-8)
    # a store of the projected training gradients: the same scores, read back from disk
    stored = influence.make("logra", fn, params, train, key=key, k_in=3, k_out=2, damping=1e-2,
                            store=tmp_path / "logra", chunk_size=10)
    want = _dense_influence(_projected_blocks(projection, fn, params, train),
                            _projected_blocks(projection, fn, params, test), [1e-2] * 2)
    np.testing.assert_allclose(np.asarray(stored.scores(test)), want, rtol=1e-8)
    assert logra.check_logra_store(projection, fn, params, train, tmp_path / "logra").complete


@pytest.mark.standard_promotion  # flax's LayerNorm promotes float64 with float32
def test_estimator_transformer_and_measure(transformer, key):
    """Many layers (embedding, attention, MLP, head) in order; a measure's projected gradients (full
    jax.grad) agree with the captured ones when the measure is the data loss itself."""
    fn, params, batch = transformer
    train, test = jax.tree.map(lambda a: a[:4], batch), jax.tree.map(lambda a: a[4:], batch)
    est = influence.make("logra", fn, params, train, key=key, k_in=3, k_out=2, damping=0.1)
    projection = logra.logra_projection(fn, key, 3, 2)
    want = _dense_influence(_projected_blocks(projection, fn, params, train),
                            _projected_blocks(projection, fn, params, test), [0.1] * len(projection.layers))
    np.testing.assert_allclose(np.asarray(est.scores(test)), want, rtol=1e-6, atol=1e-6 * np.abs(want).max())  # LayerNorm computes partly in float32
    assert "pos" in [path for path, _ in est.info["left_out"]]
    measured = influence.make("logra", fn, params, train, key=key, k_in=3, k_out=2, damping=0.1,
                              measure_fn=mean_loss(fn.per_example_loss_fn))
    np.testing.assert_allclose(np.asarray(measured.scores(test)), want, rtol=1e-6, atol=1e-6 * np.abs(want).max())  # LayerNorm computes partly in float32


def test_estimator_clear_errors(mlp, transformer):
    fn, params, train = mlp
    with pytest.raises(ValueError, match="Functional"):
        influence.make("logra", fn.loss_fn, params, train, key=jax.random.key(0))
    with pytest.raises(ValueError, match="did you mean 'k_in'"):
        influence.make("logra", fn, params, train, key=jax.random.key(0), kin=3)
    with pytest.raises(ValueError, match="key="):
        influence.make("logra", fn, params, train)
    with pytest.raises(ValueError, match="another model"):
        influence.make("logra", fn, params, train, projection=logra.logra_projection(transformer[0], jax.random.key(0), 2, 2))
    with pytest.raises(ValueError, match="damping"):
        influence.make("logra", fn, params, train, key=jax.random.key(0), damping=-1.0)
    with pytest.raises(ValueError, match="k_in"):
        influence.make("logra", fn, params, train, key=jax.random.key(0), k_in=0)
    with pytest.raises(ValueError, match="singular"):  # 24 examples cannot span a block of 8 x 8 = 64 directions
        influence.make("logra", fn, params, train, key=jax.random.key(0), k_in=8, k_out=8, damping=0.0)
    assert "logra" in influence.ESTIMATORS and "k_in" in influence.option_names("logra")
