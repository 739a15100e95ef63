"""Data, models and tree helpers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from workbench import data, models
from workbench.core import tree as tu


def test_digits_split_is_deterministic_stratified_and_disjoint():
    tr1, te1 = data.load_digits(seed=3)
    tr2, te2 = data.load_digits(seed=3)
    tr3, _ = data.load_digits(seed=4)
    np.testing.assert_array_equal(tr1.x, tr2.x)
    np.testing.assert_array_equal(te1.y, te2.y)
    assert not np.array_equal(tr1.y, tr3.y)
    assert len(tr1) + len(te1) == 1797
    assert abs(len(te1) / 1797 - 0.25) < 0.01
    counts = np.bincount(np.asarray(te1.y), minlength=10)
    assert counts.min() >= 40  # every class in the test split
    assert float(tr1.x.max()) == 1.0 and float(tr1.x.min()) == 0.0
    rows = {tuple(r) for r in np.asarray(tr1.x)}
    assert sum(tuple(r) in rows for r in np.asarray(te1.x)) < 20  # only true duplicate images


def test_digits_image_shape():
    tr, _ = data.load_digits(image_shape=True)
    assert tr.x.shape[1:] == (8, 8, 1)


def test_synthetic_generators(key):
    reg, w = data.make_regression(key, 100, 5, noise=0.0, dtype=jnp.float64)
    np.testing.assert_allclose(reg.x @ w, reg.y, rtol=1e-12)
    cls = data.make_classification(key, 200, 4, num_classes=3)
    assert set(np.unique(np.asarray(cls.y))) == {0, 1, 2}
    with pytest.raises(ValueError, match="num_classes"):
        data.make_classification(key, 10, 2, num_classes=1)


def test_npz_roundtrip_and_errors(tmp_path):
    d = data.Dataset(jnp.arange(12.0).reshape(6, 2), jnp.arange(6))
    data.save_npz(tmp_path / "ok.npz", d)
    back = data.load_npz(tmp_path / "ok.npz")
    np.testing.assert_array_equal(back.x, d.x)
    assert back.y.dtype == jnp.int32
    np.savez(tmp_path / "bad_keys.npz", inputs=np.zeros((3, 2)), y=np.zeros(3))
    with pytest.raises(KeyError, match=r"lacks array\(s\) \['x'\].*holds \['inputs', 'y'\]"):
        data.load_npz(tmp_path / "bad_keys.npz")
    back = data.load_npz(tmp_path / "bad_keys.npz", x_key="inputs")
    assert back.y.dtype == jnp.float32
    np.savez(tmp_path / "bad_shape.npz", x=np.zeros((3, 2)), y=np.zeros(4))
    with pytest.raises(ValueError, match="'x' has 3 examples but 'y' has 4"):
        data.load_npz(tmp_path / "bad_shape.npz")
    np.savez(tmp_path / "nan.npz", x=np.array([[np.nan]]), y=np.zeros(1))
    with pytest.raises(ValueError, match="NaN"):
        data.load_npz(tmp_path / "nan.npz")
    with pytest.raises(FileNotFoundError):
        data.load_npz(tmp_path / "missing.npz")


def test_batches_cover_everything_once():
    d = data.Dataset(jnp.arange(10.0)[:, None], jnp.arange(10))
    sizes = [len(b) for b in data.batches(d, 4)]
    assert sizes == [4, 4, 2]


def test_text_data_is_shifted_by_one():
    d, vocab = data.load_text(seq_len=16)
    assert d.x.shape[1] == 16
    np.testing.assert_array_equal(d.x[0, 1:], d.y[0, :-1])
    assert int(d.x.max()) < len(vocab)


def test_unigram_entropy_is_the_best_context_free_loss():
    tokens = np.array([[0, 0, 1, 3], [3, 3, 3, 0]])  # frequencies 3/8, 1/8, 0, 4/8 (id 2 absent)
    f = np.array([3, 1, 4]) / 8
    assert data.unigram_entropy(tokens) == pytest.approx(-(f * np.log(f)).sum(), rel=1e-15)
    # the cross-entropy of predicting the frequencies is the entropy; any other fixed guess is worse
    assert data.unigram_entropy(np.zeros(5, np.int32)) == 0.0
    for bad in (np.array([], np.int32), np.array([0.5, 1.0]), np.array([1, -1])):
        with pytest.raises(ValueError, match="non-negative integer"):
            data.unigram_entropy(bad)


def _token_mutual_information(d):
    """I(x; y) in nats of the (context token, target) pairs at the same positions, from counts."""
    x, y = np.ravel(d.x), np.ravel(d.y)
    size = int(max(x.max(), y.max())) + 1
    joint = np.bincount(x * size + y, minlength=size * size).reshape(size, size) / x.size
    px, py = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / (px @ py)[nz])).sum())


def test_shuffle_tokens_keeps_frequencies_and_separates_targets_from_context(keys):
    d, _ = data.load_text(seq_len=16, modules=("textwrap",))
    for key in keys:
        shuffled = data.shuffle_tokens(d, key)
        assert shuffled.x.shape == d.x.shape and shuffled.y.dtype == d.y.dtype
        for a, b in ((shuffled.x, d.x), (shuffled.y, d.y)):
            np.testing.assert_array_equal(np.sort(np.ravel(a)), np.sort(np.ravel(b)))
        # the context token says (almost) nothing of its target any more: mutual information by counts
        assert _token_mutual_information(shuffled) < 0.2 * _token_mutual_information(d)
    with pytest.raises(ValueError, match="same shape"):
        data.shuffle_tokens(data.Dataset(d.x, d.y[:, :3]), keys[0])


@pytest.mark.parametrize(
    "make, batch",
    [
        (lambda r: models.LogisticRegression(64, 10, rngs=r), lambda: data.load_digits()[0]),
        (lambda r: models.MLP(64, [32], 10, rngs=r), lambda: data.load_digits()[0]),
        (lambda r: models.CNN(rngs=r), lambda: data.load_digits(image_shape=True)[0]),
    ],
)
def test_classifiers_functional_matches_module(make, batch):
    model = make(nnx.Rngs(0))
    f = models.functional(model)
    b = batch().take(slice(0, 32))
    np.testing.assert_allclose(f.predict_fn(f.params, b.x), model(b.x), rtol=1e-6)
    per = f.per_example_loss_fn(f.params, b)
    assert per.shape == (32,)
    np.testing.assert_allclose(f.loss_fn(f.params, b), per.mean(), rtol=1e-6)
    g = jax.grad(f.loss_fn)(f.params, b)
    tu.check_same_structure(f.params, g)


def test_digits_mlp_has_about_2_4k_params():
    f = models.functional(models.MLP(64, [32], 10, rngs=nnx.Rngs(0)))
    assert optax.tree.size(f.params) == 2410


def test_transformer_lm_loss_near_log_vocab_at_init():
    d, vocab = data.load_text(seq_len=16)
    f = models.functional(models.TinyTransformer(len(vocab), 16, rngs=nnx.Rngs(0)))
    out = f.predict_fn(f.params, d.x[:4])
    assert out.shape == (4, 16, len(vocab))
    assert abs(float(f.loss_fn(f.params, d.take(slice(0, 64)))) - np.log(len(vocab))) < 1.0


def test_l2_term_and_mse():
    f = models.functional(models.MLP(3, [4], 1, rngs=nnx.Rngs(0)), loss="mse", l2=0.5)
    b = data.Dataset(jnp.ones((5, 3), jnp.float32), jnp.zeros(5, jnp.float32))
    expected = f.per_example_loss_fn(f.params, b).mean() + 0.25 * optax.tree.vdot(f.params, f.params)
    np.testing.assert_allclose(f.loss_fn(f.params, b), expected, rtol=1e-6)
    out = f.predict_fn(f.params, b.x)[:, 0]
    np.testing.assert_allclose(f.per_example_loss_fn(f.params, b), 0.5 * out**2, rtol=1e-6)
    with pytest.raises(ValueError, match="loss must be one of"):
        models.functional(models.MLP(3, [4], 1, rngs=nnx.Rngs(0)), loss="hinge")


def test_tree_helpers(key):
    a = {"w": jnp.arange(3.0), "b": jnp.ones((2, 2))}
    b = optax.tree.random_like(key, a)
    flat_a, _ = tu.ravel(a)
    flat_b, unravel = tu.ravel(b)
    np.testing.assert_allclose(optax.tree.vdot(a, b), flat_a @ flat_b, rtol=1e-12)
    np.testing.assert_allclose(optax.tree.norm(a), jnp.linalg.norm(flat_a), rtol=1e-12)
    np.testing.assert_allclose(tu.ravel(optax.tree.add_scale(b, 2.0, a))[0], 2 * flat_a + flat_b)
    assert optax.tree.size(a) == 7
    r = optax.tree.random_like(key, a, jax.random.rademacher)
    assert set(np.unique(np.asarray(tu.ravel(r)[0]))) <= {-1.0, 1.0}


def test_check_same_structure_names_first_mismatch():
    a = {"layer0": {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)}}
    with pytest.raises(ValueError, match=r"\['layer0'\]\['w'\].*shape \(3, 2\)"):
        tu.check_same_structure(a, {"layer0": {"w": jnp.zeros((3, 2)), "b": jnp.zeros(3)}})
    with pytest.raises(ValueError, match="first mismatched leaf"):
        tu.check_same_structure(a, {"layer1": {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)}})
    with pytest.raises(ValueError, match="leaves"):
        tu.check_same_structure(a, {"layer0": {"b": jnp.zeros(3)}})


def test_quick_compile_on_cpu_compiles_with_its_options_and_inlines_under_jit():
    """Eager calls on CPU use the -O1 program; under an outer jit (traced or constant arguments
    only, where JAX refuses compiler options on a nested jit) the default one inlines."""
    from workbench.core.numerics import quick_compile_on_cpu

    scaled = quick_compile_on_cpu(lambda x, n: x * n, static_argnums=(1,))
    x = jnp.arange(3.0)
    eager = scaled(x, 2)
    assert (scaled._cpu._cache_size(), scaled._default._cache_size()) == (1, 0)
    np.testing.assert_array_equal(jax.jit(lambda y: scaled(y, 2))(x), eager)
    np.testing.assert_array_equal(jax.jit(lambda: scaled(x, 2))(), eager)
    np.testing.assert_array_equal(eager, [0.0, 2.0, 4.0])


def test_map_chunks_pads_or_divides_and_keeps_rows_in_order():
    from workbench.core.per_example import map_chunks

    x = jnp.arange(30.0).reshape(10, 3)
    calls = []

    def fn(chunk):
        calls.append(chunk.shape[0])  # traced once per compiled chunk shape
        return chunk.sum(axis=1) * 2

    expected = np.asarray(x.sum(axis=1) * 2)
    np.testing.assert_array_equal(map_chunks(fn, x, 4), expected)  # 3 chunks of 4, 2 padding rows
    np.testing.assert_array_equal(map_chunks(fn, x, 6, even=True), expected)  # 5 divides 10: no padding
    np.testing.assert_array_equal(map_chunks(fn, x, 100, even=True), expected)  # one chunk, no loop
    assert calls == [4, 5, 10]


def test_sum_chunks_equals_the_full_sum_with_a_short_tail():
    from workbench.core.per_example import sum_chunks

    data = (jnp.arange(23.0), jnp.ones((23, 2)))
    seen = []

    def fn(chunk):
        seen.append(chunk[0].shape[0])
        return {"a": jnp.sum(chunk[0]), "b": jnp.sum(chunk[1], axis=0)}

    out = sum_chunks(fn, data, 5)  # 4 chunks of 5 (one scan) + a tail of 3
    assert float(out["a"]) == float(np.arange(23.0).sum())
    np.testing.assert_array_equal(out["b"], [23.0, 23.0])
    assert seen == [5, 5, 3]  # the first chunk, the scan body, the tail
    one = sum_chunks(fn, data, 50)
    assert float(one["a"]) == float(out["a"])


def test_sharded_sum_counts_every_row_once_and_differentiates_without_double_psum():
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from workbench.core.per_example import sharded_sum

    mesh = Mesh(np.array(jax.devices()), ("batch",))
    rows = jax.device_put(jnp.arange(1.0, 13.0), NamedSharding(mesh, P("batch")))

    def total(w):
        return sharded_sum(lambda ww, c: jnp.sum(ww * c ** 2), w, rows, mesh, chunk_size=2)

    value, grad = jax.jit(jax.value_and_grad(total))(jnp.asarray(3.0))
    squares = float(np.sum(np.arange(1.0, 13.0) ** 2))
    assert float(value) == 3.0 * squares and float(grad) == squares
