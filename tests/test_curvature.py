"""Curvature products and dataset-averaged operators against dense float64 references."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from workbench import curvature, data, models
from workbench.core import tree as tu


@pytest.fixture(scope="module")
def small():
    """A 6-5-3 tanh MLP on 37 Gaussian-blob examples, float64, with L2."""
    ds = data.make_classification(jax.random.key(1), 37, 6, num_classes=3, dtype=jnp.float64)
    model = models.MLP(6, [5], 3, rngs=nnx.Rngs(2), param_dtype=jnp.float64)
    fn = models.functional(model, l2=1e-2)
    flat, unravel = tu.ravel(fn.params)
    hess = jax.jit(jax.hessian(lambda x: fn.loss_fn(unravel(x), ds)))(flat)  # eager is ~10x slower
    return fn, ds, flat, unravel, hess


def _dense_ggn(fn, ds, flat, unravel):
    return jax.jit(lambda f: _dense_ggn_impl(fn, ds, f, unravel))(flat)


def _dense_fisher(fn, ds, flat, unravel):
    return jax.jit(lambda f: _dense_fisher_impl(fn, ds, f, unravel))(flat)


def _dense_ggn_impl(fn, ds, flat, unravel):
    jac = jax.jacfwd(lambda x: fn.predict_fn(unravel(x), ds.x))(flat)  # [n, out, dim]
    outputs = fn.predict_fn(unravel(flat), ds.x)
    h_out = jax.vmap(jax.hessian(lambda o, y: fn.output_loss_fn(o[None], y[None])[0]))(outputs, ds.y)
    return jnp.einsum("nad,nab,nbe->de", jac, h_out, jac) / len(ds) + fn.l2 * jnp.eye(flat.size)


def _dense_fisher_impl(fn, ds, flat, unravel):
    """mean_i g_i g_i^T + l2 I, g_i the gradient of example i's data loss (no regulariser),
    written from the model's outputs: independent of curvature.fisher_vp and of Functional."""
    def example_loss(q, x, y):
        logits = fn.predict_fn(unravel(q), x[None])[0]
        return jax.nn.logsumexp(logits) - logits[y]

    grads = jax.vmap(lambda x, y: jax.grad(example_loss)(flat, x, y))(ds.x, ds.y)
    return grads.T @ grads / len(ds) + fn.l2 * jnp.eye(flat.size)


def test_hvp_matches_dense_hessian(small, key):
    fn, ds, flat, unravel, hess = small
    v = jax.random.normal(key, flat.shape, jnp.float64)
    out = jax.jit(curvature.hvp, static_argnums=0)(fn.loss_fn, fn.params, ds, unravel(v))
    np.testing.assert_allclose(tu.ravel(out)[0], hess @ v, rtol=1e-12, atol=1e-13)


def test_ggn_and_fisher_match_dense(small, key):
    fn, ds, flat, unravel, _ = small
    v = jax.random.normal(key, flat.shape, jnp.float64)
    ggn = jax.jit(curvature.ggn_vp, static_argnums=(0, 1, 5))(
        fn.predict_fn, fn.output_loss_fn, fn.params, ds, unravel(v), fn.l2)
    np.testing.assert_allclose(tu.ravel(ggn)[0], _dense_ggn(fn, ds, flat, unravel) @ v, rtol=1e-11, atol=1e-13)
    data_loss = lambda p, b: jnp.mean(fn.per_example_loss_fn(p, b))
    fisher = jax.jit(curvature.fisher_vp, static_argnums=0)(data_loss, fn.params, ds, unravel(v))
    dense = _dense_fisher(fn, ds, flat, unravel) - fn.l2 * jnp.eye(flat.size)  # fisher_vp: data only
    np.testing.assert_allclose(tu.ravel(fisher)[0], dense @ v, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("kind", ["hessian", "ggn", "fisher"])
def test_dataset_operator_with_short_last_batch_equals_full_batch(small, kind):
    fn, ds, flat, unravel, hess = small
    dense = {"hessian": hess, "ggn": _dense_ggn(fn, ds, flat, unravel),
             "fisher": _dense_fisher(fn, ds, flat, unravel)}[kind]
    for chunk_size in (None, 10):  # 37 = 3 * 10 + 7: a short last batch
        op = curvature.operator(fn, fn.params, ds, kind, chunk_size=chunk_size)
        assert op.dim == flat.size and op.dtype == jnp.float64
        np.testing.assert_allclose(op.dense(), dense, rtol=1e-10, atol=1e-12)


def test_operator_accepts_flat_and_pytree_and_rejects_mismatch(small, key):
    fn, ds, flat, unravel, hess = small
    op = curvature.operator(fn.loss_fn, fn.params, ds)
    v = jax.random.normal(key, flat.shape, jnp.float64)
    tree_out = op.matvec(unravel(v))
    assert jax.tree.structure(tree_out) == jax.tree.structure(fn.params)
    np.testing.assert_allclose(tu.ravel(tree_out)[0], hess @ v, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(op.matvec(v), hess @ v, rtol=1e-12, atol=1e-13)
    bad = unravel(v)
    bad["layers"][1]["kernel"] = jnp.zeros((3, 5))
    with pytest.raises(ValueError, match=r"\['layers'\]\[1\]\['kernel'\]"):
        op.matvec(bad)
    renamed = {"layers": {0: bad["layers"][0], 1: {"bias": bad["layers"][1]["bias"], "w": jnp.zeros((5, 3))}}}
    with pytest.raises(ValueError, match="first mismatched leaf"):
        op.matvec(renamed)


def test_parameter_subset_is_the_hessian_block(small, key):
    fn, ds, flat, unravel, hess = small
    op = curvature.operator(fn, fn.params, ds, select="layers/1")
    names = curvature.leaf_names(fn.params)
    sizes = [int(np.prod(a.shape)) for a in jax.tree.leaves(fn.params)]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    idx = np.concatenate([np.arange(offsets[i], offsets[i + 1])
                          for i, name in enumerate(names) if name.startswith("layers/1/")])
    assert op.dim == idx.size == 5 * 3 + 3
    np.testing.assert_allclose(op.dense(), hess[np.ix_(idx, idx)], rtol=1e-11, atol=1e-13)
    only_kernel = curvature.operator(fn, fn.params, ds, select=lambda n: n.endswith("kernel"))
    assert only_kernel.dim == 6 * 5 + 5 * 3
    with pytest.raises(ValueError, match="matches no parameter"):
        curvature.operator(fn, fn.params, ds, select="decoder")


def test_float32_params_accumulate_in_float64(small, key):
    fn, ds, flat, unravel, hess = small
    p32 = optax.tree.cast(fn.params, jnp.float32)
    ds32 = data.Dataset(ds.x.astype(jnp.float32), ds.y)
    op = curvature.operator(fn, p32, ds32, chunk_size=5, accumulate_dtype=jnp.float64)
    assert op.dtype == jnp.float32
    v = jax.random.normal(key, flat.shape, jnp.float32)
    out = op.matvec(v)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, hess @ v.astype(jnp.float64), rtol=1e-4, atol=1e-5)


def test_operator_bad_input(small):
    fn, ds, *_ = small
    with pytest.raises(ValueError, match="kind must be one of"):
        curvature.operator(fn, fn.params, ds, "laplacian")
    with pytest.raises(ValueError, match="kind='ggn' needs predict_fn"):
        curvature.operator(fn.loss_fn, fn.params, ds, "ggn")
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1"):
        curvature.operator(fn, fn.params, ds, chunk_size=0)
    with pytest.raises(ValueError, match="disagree on the number of examples"):
        curvature.operator(fn, fn.params, data.Dataset(ds.x, ds.y[:5]))
    with pytest.raises(ValueError, match="must be square"):
        curvature.from_matrix(jnp.ones((2, 3)))


def test_hessian_refuses_an_l2_it_would_ignore(small):
    """The Hessian differentiates the loss as given: an l2 it does not carry is refused (it used
    to be dropped silently); the l2 the Functional carries, or 0 for a plain loss, is accepted."""
    fn, ds, flat, _, hess = small
    for loss, l2 in ((fn.loss_fn, 0.3), (fn, 0.3), (fn, 0.0)):
        with pytest.raises(ValueError, match="would be ignored"):
            curvature.operator(loss, fn.params, ds, "hessian", l2=l2)
    v = jnp.arange(flat.size, dtype=jnp.float64)
    for loss, l2 in ((fn, fn.l2), (fn.loss_fn, 0.0), (fn, None)):
        np.testing.assert_allclose(curvature.operator(loss, fn.params, ds, "hessian", l2=l2).matvec(v), hess @ v,
                                   rtol=1e-10)


# Self-contained source (run here and in a subprocess with 4 forced CPU devices); not imported
# from this module by name, since an installed package may shadow `tests`.
_DEVICES_CASE = textwrap.dedent(
    """
    import jax, jax.numpy as jnp
    from flax import nnx
    from workbench import curvature, data, models, spectrum

    def devices_case():
        ds = data.make_classification(jax.random.key(1), 203, 6, num_classes=3, dtype=jnp.float64)
        fn = models.functional(models.MLP(6, [5], 3, rngs=nnx.Rngs(2), param_dtype=jnp.float64))
        v = jax.random.normal(jax.random.key(3), (53,), jnp.float64)
        op = curvature.operator(fn, fn.params, ds, chunk_size=20)  # 10 full batches + 3 examples
        top = spectrum.top_eigenpairs(op, jax.random.key(4), 3).values
        return {"devices": jax.device_count(), "mv": op.mv(v).tolist(), "top": top.tolist()}
    """
)
_SCRIPT = (
    'import json, jax\njax.config.update("jax_enable_x64", True)\n'
    + _DEVICES_CASE
    + "\nprint(json.dumps(devices_case()))\n"
)


def test_one_and_four_devices_agree():
    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    four = json.loads(out.stdout.strip().splitlines()[-1])
    namespace = {}
    exec(_DEVICES_CASE, namespace)
    one = namespace["devices_case"]()  # this process has one CPU device
    assert one["devices"] == 1 and four["devices"] == 4
    np.testing.assert_allclose(four["mv"], one["mv"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(four["top"], one["top"], rtol=1e-10)
