"""The unlearning papers' claimed metrics and their negative controls, against references built
another way: SSD's Fisher ratio from per-example gradients taken one example at a time, the
gradient-ascent cliff's counts by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench import unlearning as U
from workbench.data import Dataset
from workbench.train import NonFiniteLossError


def predict_fn(params, x):
    return x @ params["w"] + params["b"]


def loss_fn(params, batch):
    x, y = batch
    lp = jax.nn.log_softmax(predict_fn(params, x))
    return -jnp.mean(jnp.take_along_axis(lp, y[:, None], axis=1))


def _problem(key, dtype, n=40, d=5, c=3, n_forget=5):
    """A linear softmax model whose last feature is non-zero on the forget examples only: the
    weights of that feature are used by the forget set alone, so their Fisher ratio is |D|/|D_f|."""
    kx, ky, kp = jax.random.split(key, 3)
    x = jax.random.normal(kx, (n, d), dtype)
    x = x.at[n_forget:, -1].set(0.0)
    y = jax.random.randint(ky, (n,), 0, c).astype(jnp.int32)
    params = {"w": 0.3 * jax.random.normal(kp, (d, c), dtype), "b": jnp.zeros((c,), dtype)}
    return U.split(Dataset(x, y), np.arange(n_forget)), params


def _ratio_reference(params, s, reference="full"):
    """F_forget / F_full (or / F_retain) from a Python loop of single-example gradients (no
    per-example engine)."""
    grad = jax.jit(jax.grad(loss_fn))
    full = Dataset(jnp.concatenate([s.forget.x, s.retain.x]), jnp.concatenate([s.forget.y, s.retain.y]))
    g = [grad(params, Dataset(full.x[i:i + 1], full.y[i:i + 1])) for i in range(full.y.shape[0])]
    n_f = s.forget.y.shape[0]
    out = {}
    for k in params:
        sq = np.stack([np.asarray(gi[k], np.float64) ** 2 for gi in g])
        f_f, f_d = sq[:n_f].mean(0), (sq.mean(0) if reference == "full" else sq[n_f:].mean(0))
        out[k] = np.where(f_d > 0, f_f / np.where(f_d > 0, f_d, 1), 0.0)
    return out


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fisher_ratio_matches_a_loop_of_single_example_gradients_and_reaches_the_bound(seed, dtype):
    s, params = _problem(jax.random.key(seed), dtype)
    ratio = U.fisher_ratio(loss_fn, params, s.forget, s.retain, chunk_size=7)
    ref = _ratio_reference(params, s)
    rtol = 1e-10 if dtype == jnp.float64 else 2e-4
    bound = 40 / 5
    for k in params:
        assert ratio[k].dtype == dtype
        np.testing.assert_allclose(np.asarray(ratio[k], np.float64), ref[k], rtol=rtol, atol=1e-12)
        assert np.all(np.asarray(ratio[k]) <= bound * (1 + rtol))
    # the last feature's weights are used by the forget set only: ratio = |D| / |D_f| exactly
    np.testing.assert_allclose(np.asarray(ratio["w"][-1], np.float64), bound, rtol=rtol)
    assert np.all(np.asarray(ratio["w"][:-1]) < 0.99 * bound)
    # the broken variant against the retain Fisher: unbounded, 0 where the retain set uses no weight
    broken = U.fisher_ratio(loss_fn, params, s.forget, s.retain, reference="retain", chunk_size=7)
    ref_broken = _ratio_reference(params, s, "retain")
    for k in params:
        np.testing.assert_allclose(np.asarray(broken[k], np.float64), ref_broken[k], rtol=rtol, atol=1e-12)
    assert np.all(np.asarray(broken["w"][-1]) == 0)
    # the fraction above alpha is SSD's selected fraction
    out = U.ssd(loss_fn, params, s.forget, s.retain, alpha=2.0, lam=0.5)
    frac = sum(float(np.sum(np.asarray(r) > 2.0)) for r in ratio.values()) / 18
    assert float(out.selected) == pytest.approx(frac)


def test_fisher_ratio_refuses_nan_params_and_bad_sets(key):
    s, params = _problem(key, jnp.float64)
    with pytest.raises(NonFiniteLossError, match="fisher_ratio"):
        U.fisher_ratio(loss_fn, {**params, "b": params["b"].at[0].set(jnp.nan)}, s.forget, s.retain)
    with pytest.raises(ValueError, match="reference"):
        U.fisher_ratio(loss_fn, params, s.forget, s.retain, reference="test")
    with pytest.raises(ValueError, match="chunk_size"):
        U.fisher_ratio(loss_fn, params, s.forget, s.retain, chunk_size=0)
    with pytest.raises(ValueError, match="forget"):
        U.fisher_ratio(loss_fn, params, Dataset(s.forget.x[:0], s.forget.y[:0]), s.retain)
