"""K-FAC and EK-FAC (`workbench.curvature.kfac`, `influence.make("kfac" / "ekfac")`) against dense
references built without the factors: per-example gradients from `jax.grad`, Gauss-Newton blocks
from per-example Jacobians and output Hessians, empirical Fisher blocks from per-example
gradients, and the exact influence functions."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from workbench import data, influence, models
from workbench.core.per_example import mean_loss, per_example_grads
from workbench.core.statistics import spearman_rows
from workbench.curvature import kfac


def _trained_mlp(loss="cross_entropy", dtype=jnp.float64, hidden=(5,), outputs=3, l2=1e-2, steps=400):
    rng = np.random.default_rng(0)  # three Gaussian blobs, drawn and split on the host (no program to compile)
    labels = rng.integers(0, 3, 48).astype(dtype if loss == "mse" else np.int32)
    x = (1.5 * rng.normal(size=(3, 6))[labels.astype(int)] + rng.normal(size=(48, 6))).astype(dtype)
    fn = models.functional(models.MLP(6, list(hidden), outputs, rngs=nnx.Rngs(0), param_dtype=dtype), loss, l2)
    train_data, test_data = (data.Dataset(*jax.device_put((x[rows], labels[rows]))) for rows in (slice(40), slice(40, 48)))

    @jax.jit
    def descend(params):  # full-batch gradient descent: compiles in a fraction of train.train's time
        step = lambda _, p: jax.tree.map(lambda w, g: w - 0.5 * g, p, jax.grad(fn.loss_fn)(p, train_data))
        return jax.lax.fori_loop(0, steps, step, params)

    return fn, descend(fn.params) if steps else fn.params, train_data, test_data


@pytest.fixture(scope="module")
def mlp():
    """A 6-5-3 tanh MLP trained on 40 blobs (8 held out), l2 = 1e-2, float64."""
    return _trained_mlp()


@pytest.fixture(scope="module")
def mlp_ggn(mlp):
    """The trained MLP's factors with the exact output Hessian (fisher="ggn"), in chunks of 17 (the last padded)."""
    fn, params, train_data, _ = mlp
    return kfac.fit(fn, params, train_data, fisher="ggn", chunk_size=17)


@pytest.fixture(scope="module")
def transformer():
    """A one-block TinyTransformer (vocabulary 5, 4 positions, d_model 8, 2 heads) on 6 sequences."""
    fn = models.functional(models.TinyTransformer(5, 4, d_model=8, num_heads=2, rngs=nnx.Rngs(1),
                                                  param_dtype=jnp.float64))
    tokens = np.random.default_rng(3).integers(0, 5, (6, 5)).astype(np.int32)
    return fn, fn.params, data.Dataset(*jax.device_put((tokens[:, :4], tokens[:, 1:])))


@pytest.fixture(scope="module")
def transformer_empirical(transformer):
    """The transformer's factors at the data labels."""
    with jax.numpy_dtype_promotion("standard"):  # flax's LayerNorm promotes float64 with float32
        return kfac.fit(*transformer, fisher="empirical", chunk_size=4)


def _np(tree):
    """Arrays to NumPy: the checks then run on the host (an eager jnp op compiles a program per shape)."""
    return jax.tree.map(np.asarray, tree)


def _rows(tree, count):
    """The first `count` examples of a dataset, sliced on the host."""
    return jax.tree.map(lambda a: jax.device_put(np.asarray(a)[:count]), tree)


@functools.cache
def _data_loss(fn):
    return mean_loss(fn.per_example_loss_fn)


@functools.partial(jax.jit, static_argnums=0)
def _example_grads(fn, params, batch):
    """jax.grad of each example's data loss, as a params-shaped pytree [n, ...] (one compiled program)."""
    return per_example_grads(_data_loss(fn), params, batch)


@functools.partial(jax.jit, static_argnums=0)
def _layer_matrices(layers, tree):
    """{layer: kfac.layer_matrix(layer, tree)} in one compiled program (an eager call compiles every op)."""
    return {layer.name: kfac.layer_matrix(layer, tree) for layer in layers}


@jax.jit
def _inverse_hvp(pre, matrices):
    return kfac.inverse_hvp(pre, matrices)


def _with_layer(params, layer, matrix):
    """params with `layer`'s kernel and bias set from its gradient-matrix layout [d_a, d_out]."""
    updates = kfac.layer_params(layer, matrix, params)

    def put(path, leaf):
        keys = tuple(getattr(k, "key", k) for k in path)
        return updates.get(keys, leaf)

    return jax.tree_util.tree_map_with_path(put, params)


@functools.partial(jax.jit, static_argnums=0)
def _jacobians_and_output_hessians(fn, params, batch):
    """Per-example Jacobians of the outputs with respect to every param [n, O, *param] and output Hessians [n, O, O]."""
    x, y = batch

    def jacobian(xn):
        return jax.jacrev(lambda p: fn.predict_fn(p, xn[None]).ravel())(params)

    def output_hessian(xn, yn):
        out = fn.predict_fn(params, xn[None])
        return jax.hessian(lambda o: fn.output_loss_fn(o.reshape(out.shape), yn[None])[0])(out.ravel())

    return jax.vmap(jacobian)(x), jax.vmap(output_hessian)(x, y)


def _ggn_blocks(fn, params, batch):
    """Each covered layer's Gauss-Newton block mean_n J_n^T H_n J_n [D, D] (D = d_a d_out, in the layer's
    row-major [d_a, d_out] order), from per-example Jacobians and output Hessians."""
    jacobians, hessians = _jacobians_and_output_hessians(fn, params, batch)
    blocks = {}
    for layer in kfac.coverage(fn).layers:
        j = np.asarray(_layer_matrices((layer,), jacobians)[layer.name]).reshape(*hessians.shape[:2], -1)
        blocks[layer.name] = np.einsum("nod,noe,nef->df", j, np.asarray(hessians), j) / len(j)
    return blocks


def _kronecker_basis(layer_factors):
    q_a = layer_factors.activation_vectors
    q_a = np.eye(layer_factors.activation.shape[0]) if q_a is None else np.asarray(q_a)
    return np.kron(q_a, np.asarray(layer_factors.gradient_vectors))


def _relative(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


# ----------------------------------------------------------------------------- capture


class _Twice(nnx.Module):
    """One Linear applied twice (shared weights): its gradient sums both calls."""

    def __init__(self, rngs):
        self.shared = nnx.Linear(3, 3, rngs=rngs, param_dtype=jnp.float64)
        self.head = nnx.Linear(3, 2, rngs=rngs, param_dtype=jnp.float64)

    def __call__(self, x):
        return self.head(jnp.tanh(self.shared(jnp.tanh(self.shared(x)))))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _rebuilt_and_expected(fn, layers, params, batch):
    """Per-example gradient matrices rebuilt from a capture, from jax.grad, and jax.grad's first one put into
    the params by layer_params and read back."""
    captured = kfac.capture(fn, params, batch)  # under jit, as the estimators use it
    grads = per_example_grads(_data_loss(fn), params, batch)
    rebuilt = {layer.name: kfac.layer_gradients(layer, captured.inputs[layer.name], captured.output_grads[layer.name])
               for layer in layers}
    expected = {layer.name: kfac.layer_matrix(layer, grads) for layer in layers}
    round_trip = {layer.name: kfac.layer_matrix(layer, _with_layer(params, layer, expected[layer.name][0]))
                  for layer in layers}
    return rebuilt, expected, round_trip, fn.per_example_loss_fn(params, batch), captured.losses


@pytest.mark.standard_promotion  # flax's LayerNorm promotes float64 with float32
def test_captured_inputs_and_output_gradients_rebuild_per_example_gradients(mlp, transformer):
    """G_n = sum_t a_t g_t^T equals jax.grad's per-example gradient for dense layers, attention
    projections (LinearGeneral), embeddings and a layer called twice."""
    twice = models.functional(_Twice(nnx.Rngs(2)))
    x, y = jax.device_put((np.random.default_rng(4).normal(size=(5, 3)), (np.arange(5) % 2).astype(np.int32)))
    cases = [mlp[:3], transformer, (twice, twice.params, (x, y))]
    for fn, params, batch in cases:
        layers = kfac.coverage(fn).layers
        rebuilt, expected, round_trip, losses, captured_losses = _np(_rebuilt_and_expected(fn, layers, params, batch))
        for layer in layers:
            assert rebuilt[layer.name].shape == (len(batch[0]), layer.activation_dim, layer.out_features)
            scale = np.abs(expected[layer.name]).max()
            np.testing.assert_allclose(rebuilt[layer.name], expected[layer.name], atol=1e-13 * scale, rtol=0)
            np.testing.assert_array_equal(round_trip[layer.name], expected[layer.name][0])  # layer_params inverts
        np.testing.assert_allclose(captured_losses, losses, rtol=1e-13)
    names = kfac.coverage(transformer[0]).names
    assert {"embed", "head", "blocks/0/up", "blocks/0/down"} | {f"blocks/0/attn/{p}" for p in
                                                                ("query", "key", "value", "out")} == set(names)
    left_out = dict(kfac.coverage(transformer[0]).left_out)
    assert set(left_out) == {"pos", "norm/scale", "norm/bias"} | {f"blocks/0/norm{i}/{p}" for i in (1, 2)
                                                                  for p in ("scale", "bias")}
    assert "LayerNorm" in left_out["norm/scale"] and "not a layer K-FAC covers" in left_out["pos"]
    assert kfac.coverage(twice).names == ("head", "shared")


def test_true_fisher_labels_are_sampled_per_example_from_the_model(mlp, keys):
    """fisher="true" draws labels from the model, reproducibly from the key (their distribution is
    checked by the true Fisher's convergence to the GGN below)."""
    fn, params, train_data, _ = mlp
    losses = [kfac.capture(fn, params, train_data, fisher="true", key=k).losses for k in keys[:3]]
    again = kfac.capture(fn, params, train_data, fisher="true", key=keys[0]).losses
    np.testing.assert_array_equal(losses[0], again)
    assert not (np.allclose(losses[0], losses[1]) and np.allclose(losses[0], losses[2]))


# ----------------------------------------------------------------------------- the factors


def test_ekfac_eigenvalues_are_the_gauss_newton_diagonal_in_the_kronecker_eigenbasis(mlp, mlp_ggn):
    """With the exact output Hessian (fisher="ggn"), Lambda_ij = (K^T B K)_(ij),(ij) for the dense per-layer
    GGN block B (from per-example Jacobians and output Hessians) and K = Q_A (x) Q_S."""
    fn, params, train_data, _ = mlp
    blocks = _ggn_blocks(fn, params, train_data)
    for layer in mlp_ggn.coverage.layers:
        basis = _kronecker_basis(mlp_ggn.layers[layer.name])
        expected = np.diag(basis.T @ blocks[layer.name] @ basis).reshape(layer.activation_dim, layer.out_features)
        np.testing.assert_allclose(mlp_ggn.layers[layer.name].corrected, expected,
                                   atol=1e-12 * np.abs(expected).max(), rtol=0, err_msg=layer.name)


def test_kfac_is_the_gauss_newton_block_when_it_factorises():
    """One linear layer, squared error, one output: the GGN block is E[a a^T] (x) 1, so K-FAC (and
    EK-FAC) equal it, and their inverse is the dense inverse."""
    fn, params, train_data, _ = _trained_mlp(loss="mse", hidden=(), outputs=1, l2=0.0, steps=0)
    factors = kfac.fit(fn, params, train_data, fisher="ggn")
    (layer,) = factors.coverage.layers
    block = _ggn_blocks(fn, params, train_data)[layer.name]
    lf = factors.layers[layer.name]
    np.testing.assert_allclose(lf.gradient, [[1.0]], rtol=1e-14)
    np.testing.assert_allclose(np.kron(lf.activation, lf.gradient), block, atol=1e-13 * np.abs(block).max())
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(block)), np.sort(np.ravel(lf.corrected)), rtol=1e-10)
    for kind in kfac.KINDS:
        pre = kfac.preconditioner(factors, kind, damping=1e-3)
        v = np.random.default_rng(5).normal(size=(layer.activation_dim, 1))
        solved = np.asarray(_inverse_hvp(pre, {layer.name: v})[layer.name])
        np.testing.assert_allclose(solved.ravel(), np.linalg.solve(block + 1e-3 * np.eye(len(block)), v.ravel()),
                                   rtol=1e-9)


def test_inverse_hvp_is_the_dense_solve_of_the_approximate_block(mlp):
    """Q_A ((Q_A^T V Q_S) / (Lambda + damping + l2)) Q_S^T is (K diag(Lambda) K^T + (damping + l2) I)^-1 vec V,
    with damping=None 0.1 x the layer's mean eigenvalue (kronfluence's heuristic)."""
    fn, params, train_data, _ = mlp
    factors = kfac.fit(fn, params, train_data, fisher="empirical")
    for kind in kfac.KINDS:
        for damping in (None, 0.03):
            pre = kfac.preconditioner(factors, kind, damping, l2=fn.l2)
            for layer in factors.coverage.layers:
                lf = factors.layers[layer.name]
                values = lf.corrected if kind == "ekfac" else np.outer(lf.activation_values, lf.gradient_values)
                expected_damping = 0.1 * float(np.mean(values)) if damping is None else damping
                assert pre.damping[layer.name] == pytest.approx(expected_damping, rel=1e-12)
                basis = _kronecker_basis(lf)
                matrix = basis @ np.diag(np.ravel(values)) @ basis.T
                if kind == "kfac":
                    np.testing.assert_allclose(matrix, np.kron(lf.activation, lf.gradient), atol=1e-12)
                v = np.random.default_rng(6).normal(size=(2, layer.activation_dim, layer.out_features))
                solved = np.asarray(_inverse_hvp(pre, {layer.name: v})[layer.name])
                shifted = matrix + (expected_damping + fn.l2) * np.eye(len(matrix))
                expected = np.linalg.solve(shifted, v.reshape(2, -1).T).T
                np.testing.assert_allclose(np.asarray(solved).reshape(2, -1), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.standard_promotion  # flax's LayerNorm promotes float64 with float32
def test_empirical_fisher_uses_the_data_labels(mlp, transformer, transformer_empirical):
    """fisher="empirical": Lambda is the diagonal of the dense empirical Fisher block mean_n vec(G_n) vec(G_n)^T
    (G_n from jax.grad at the data labels) in the Kronecker eigenbasis: dense layers, attention projections,
    an embedding (whose A is diagonal: token frequencies); the MLP's first A is E[[x, 1][x, 1]^T]."""
    fn, params, train_data, _ = mlp
    factors = kfac.fit(fn, params, train_data, fisher="empirical")
    for (model, at, batch), fitted in (((fn, params, train_data), factors), (transformer, transformer_empirical)):
        matrices = _np(_layer_matrices(fitted.coverage.layers, _example_grads(model, at, batch)))
        for layer in fitted.coverage.layers:
            g = np.asarray(matrices[layer.name]).reshape(len(batch.x), -1)
            fisher = g.T @ g / len(batch.x)
            basis = _kronecker_basis(fitted.layers[layer.name])
            np.testing.assert_allclose(np.ravel(fitted.layers[layer.name].corrected), np.diag(basis.T @ fisher @ basis),
                                       atol=1e-12 * fisher.max(), rtol=0, err_msg=layer.name)
    inputs = np.concatenate([np.asarray(train_data.x), np.ones((len(train_data), 1))], axis=1)
    np.testing.assert_allclose(factors.layers["layers/0"].activation, inputs.T @ inputs / len(train_data), rtol=1e-12)
    tokens = np.asarray(transformer[2].x)
    np.testing.assert_allclose(transformer_empirical.layers["embed"].activation,
                               np.bincount(tokens.ravel(), minlength=5) / tokens.size, rtol=1e-12)
    assert transformer_empirical.layers["embed"].activation_vectors is None


def test_true_fisher_converges_to_the_gauss_newton_factors(mlp, key):
    """Sampled labels average to the exact expectation: with 200 labels per example, S and Lambda are
    within 10% of fisher="ggn"'s (~2-5% measured; at the initial params, where the predictions are not
    yet confident: a confident model's rare unlikely labels make the estimate heavy-tailed, ~5-10% at
    1000 samples); A does not depend on the labels at all."""
    fn, _, train_data, _ = mlp
    params = fn.params
    exact = kfac.fit(fn, params, train_data, fisher="ggn", chunk_size=17)  # the chunks of mlp_ggn: one program
    sampled = kfac.fit(fn, params, train_data, fisher="true", key=key, num_samples=200)
    for name, lf in exact.layers.items():
        np.testing.assert_allclose(sampled.layers[name].activation, lf.activation, rtol=1e-12)
        assert _relative(sampled.layers[name].gradient, lf.gradient) < 0.1, name
        assert _relative(sampled.layers[name].corrected, lf.corrected) < 0.1, name


# ----------------------------------------------------------------------------- influence


def test_ekfac_influence_is_its_dense_block_inverse_and_ranks_like_the_gauss_newton(mlp, mlp_ggn, keys):
    """make("ekfac") with fisher="ggn" factors: its scores equal g_test^T M^-1 g_train for M built densely from the factors'
    eigenbases and the GGN's diagonal there (plus damping and l2). They rank like the exact block-GGN
    influence at the same damping (Spearman ~0.73 measured) and like exact influence (~0.59), well above
    curvature-free grad_dot (~0.57 and ~0.46: a transposed eigenbasis or a 10x damping falls to it);
    K-FAC and the true Fisher with one sampled label (several keys) come close."""
    fn, params, train_data, test_data = mlp
    factors = mlp_ggn
    est = influence.make("ekfac", fn, params, train_data, factors=factors)
    scores = np.asarray(est.scores(test_data))
    blocks = _ggn_blocks(fn, params, train_data)
    train_grads, test_grads = (_np(_layer_matrices(factors.coverage.layers, _example_grads(fn, params, d)))
                               for d in (train_data, test_data))
    expected, block = 0.0, 0.0
    for layer in factors.coverage.layers:
        basis = _kronecker_basis(factors.layers[layer.name])
        values = np.diag(basis.T @ blocks[layer.name] @ basis)
        damping = est.info["damping"][layer.name]
        assert damping == pytest.approx(0.1 * values.mean(), rel=1e-10)
        matrix = basis @ np.diag(values + damping + fn.l2) @ basis.T
        g_train, g_test = (np.asarray(g[layer.name]).reshape(-1, len(matrix)) for g in (train_grads, test_grads))
        expected = expected + np.linalg.solve(matrix, g_test.T).T @ g_train.T
        # the exact block-diagonal GGN influence at the same damping
        exact_block = blocks[layer.name] + (damping + fn.l2) * np.eye(len(matrix))
        block = block + np.linalg.solve(exact_block, g_test.T).T @ g_train.T
    np.testing.assert_allclose(scores, expected, rtol=1e-8, atol=1e-10 * np.abs(expected).max())
    assert est.info["layers"] == ["layers/0", "layers/1"] and est.info["left_out"] == []
    assert est.info["fisher"] == "ggn" and est.info["l2"] == fn.l2

    choice = influence.damping_above_min_eigenvalue(fn, params, train_data, margin=0.01)
    exact = np.asarray(influence.make("exact", fn, params, train_data, damping=choice.damping,
                                      hessian=choice.eigen).scores(test_data))
    plain = np.asarray(influence.make("grad_dot", fn, params, train_data).scores(test_data))

    def rho(a, b):
        return float(spearman_rows(a, b).mean())

    assert rho(scores, block) > max(0.68, rho(plain, block) + 0.1)
    assert rho(scores, exact) > max(0.5, rho(plain, exact) + 0.05)
    kfac_scores = influence.make("kfac", fn, params, train_data, factors=factors).scores(test_data)
    assert rho(kfac_scores, block) > 0.6
    for key in keys[:3]:
        sampled = influence.make("ekfac", fn, params, train_data, key=key).scores(test_data)  # fisher="true"
        assert rho(sampled, block) > 0.6


@pytest.mark.standard_promotion  # flax's LayerNorm promotes float64 with float32
def test_transformer_influence_covers_its_layers_and_names_what_it_leaves_out(transformer, transformer_empirical):
    """On a transformer the training gradients come from one capture per chunk: the scores equal the covered
    layers' jax.grad gradients through the factors' inverse; LayerNorms and position embeddings are left out
    by name."""
    fn, params, batch = transformer
    est = influence.make("ekfac", fn, params, batch, factors=transformer_empirical, chunk_size=4)
    scores = np.asarray(est.scores(batch))
    pre = kfac.preconditioner(transformer_empirical, "ekfac")
    matrices = _np(_layer_matrices(transformer_empirical.coverage.layers, _example_grads(fn, params, batch)))
    solved = _np(_inverse_hvp(pre, matrices))
    expected = sum(np.einsum("tio,nio->tn", solved[name], matrices[name]) for name in matrices)
    np.testing.assert_allclose(scores, expected, rtol=1e-9, atol=1e-12 * np.abs(expected).max())
    assert np.all(np.diag(scores) > 0)  # every sequence helps itself
    assert dict(est.info["left_out"])["pos"].startswith("held by TinyTransformer")
    assert est.info["left_out_params"] == 4 * 8 + 6 * 8 and est.info["covered_params"] == sum(
        layer.activation_dim * layer.out_features for layer in kfac.coverage(fn).layers)


# ----------------------------------------------------------------------------- the factors file


def test_factors_file_round_trip_refusals_and_atomic_writes(mlp, tmp_path, monkeypatch):
    """Saved factors reload equal; other params, data or Fisher are refused by name; a write that fails,
    or a fit that fails, leaves the good file as it was."""
    fn, params, train_data, _ = mlp
    path = tmp_path / "factors.npz"
    factors = kfac.fit(fn, params, train_data, fisher="empirical", path=path)
    loaded = kfac.load(path, fn, params, train_data)
    for name, lf in factors.layers.items():
        for field, value in lf._asdict().items():
            np.testing.assert_array_equal(getattr(loaded.layers[name], field), value)
    assert loaded.fisher == "empirical" and loaded.num_examples == len(train_data)
    assert kfac.fit(fn, params, train_data, fisher="empirical", path=path).metadata == factors.metadata  # reused
    scores = influence.make("ekfac", fn, params, train_data, factors=path).scores(_rows(train_data, 2))
    assert np.all(np.isfinite(scores))

    other = jax.tree.map(lambda a: jax.device_put(np.asarray(a) * 1.01), params)
    with pytest.raises(ValueError, match="params' values differ"):
        kfac.load(path, fn, other, train_data)
    with pytest.raises(ValueError, match="data's values differ"):
        kfac.load(path, fn, params, data.Dataset(jax.device_put(np.asarray(train_data.x) + 0.1), train_data.y))
    with pytest.raises(ValueError, match="fisher: the factors have 'empirical', this fit asks for 'ggn'"):
        kfac.fit(fn, params, train_data, fisher="ggn", path=path)
    with pytest.raises(ValueError, match="params' values differ"):
        influence.make("ekfac", fn, other, train_data, factors=factors)

    before = path.read_bytes()

    def broken_savez(file, **arrays):
        file.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        factors.save(path)
    monkeypatch.undo()
    poisoned = np.asarray(train_data.x).copy()
    poisoned[3, 0] = np.nan
    nan_data = data.Dataset(jax.device_put(poisoned), train_data.y)
    with pytest.raises(ValueError, match="NaN"):
        kfac.fit(fn, params, nan_data, fisher="empirical", path=tmp_path / "other.npz")
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["factors.npz"]


# ----------------------------------------------------------------------------- errors and float32


class _Tied(nnx.Module):
    """Output weights tied to the input embedding (Embed.attend)."""

    def __init__(self):
        self.embed = nnx.Embed(4, 3, rngs=nnx.Rngs(0), param_dtype=jnp.float64)

    def __call__(self, tokens):
        return self.embed.attend(jnp.tanh(self.embed(tokens)))


class _Scale(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.ones(3, jnp.float64))

    def __call__(self, x):
        return x * self.w[...]


def test_clear_errors(mlp, key):
    fn, params, train_data, _ = mlp
    with pytest.raises(ValueError, match=r"pass the model's workbench.models.Functional as loss_fn"):
        influence.make("ekfac", _data_loss(fn), params, train_data)
    with pytest.raises(TypeError, match="needs the model as a workbench.models.Functional"):
        kfac.fit(_data_loss(fn), params, train_data)
    scale = models.functional(_Scale())
    with pytest.raises(ValueError, match=r"no supported layer .* every parameter is left out: \['w'\]"):
        kfac.fit(scale, scale.params, jax.device_put((np.ones((4, 3)), np.zeros(4, np.int32))), fisher="empirical")
    tied = models.functional(_Tied())
    tokens = jax.device_put(np.arange(8, dtype=np.int32).reshape(4, 2) % 4)
    with pytest.raises(ValueError, match="'embed' is also used by Embed.attend"):
        kfac.capture(tied, tied.params, (tokens, tokens))
    with pytest.raises(ValueError, match="fisher must be one of"):
        kfac.fit(fn, params, train_data, fisher="fisher")
    with pytest.raises(ValueError, match="needs key="):
        influence.make("ekfac", fn, params, train_data)  # fisher="true" by default
    with pytest.raises(ValueError, match="needs factors fitted with the eigenvalue correction"):
        influence.make("ekfac", fn, params, train_data, factors=kfac.fit(fn, params, train_data, fisher="empirical",
                                                                          correct=False))
    with pytest.raises(ValueError, match="unknown option"):
        influence.make("kfac", fn, params, train_data, key=key, dampin=0.1)


def test_float32_matches_float64(mlp):
    """The same model in float32: finite factors within float32 round-off of float64's, the same ranking."""
    fn, params, train_data, test_data = mlp
    abstract = nnx.eval_shape(lambda: models.MLP(6, [5], 3, rngs=nnx.Rngs(0), param_dtype=jnp.float32))
    fn32 = models.functional(abstract, l2=fn.l2)  # the same architecture; its params come from the float64 model
    params32 = jax.tree.map(lambda a: jax.device_put(np.asarray(a, np.float32)), params)
    train32, test32 = (data.Dataset(jax.device_put(np.asarray(d.x, np.float32)), d.y) for d in (train_data, test_data))
    f64 = kfac.fit(fn, params, train_data, fisher="empirical")
    f32 = kfac.fit(fn32, params32, train32, fisher="empirical")
    for name, lf in f64.layers.items():
        assert f32.layers[name].corrected.dtype == jnp.float32
        assert np.all(np.isfinite(f32.layers[name].corrected))
        assert _relative(f32.layers[name].corrected, lf.corrected) < 1e-4, name
    s64 = influence.make("ekfac", fn, params, train_data, factors=f64).scores(test_data)
    s32 = influence.make("ekfac", fn32, params32, train32, factors=f32).scores(test32)
    assert s32.dtype == jnp.float32 and _relative(s32, s64) < 1e-3
    assert spearman_rows(s32, s64).min() > 0.999
