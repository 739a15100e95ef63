"""The float64 NumPy reference for GD read off the tokens (`icl.gd_reference_predictions`): a case
worked by hand, the LSA construction in float64 against it, and the construction error with its
negative control (an off-by-one normalisation of the construction)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench import icl
from workbench.experiments import icl as recipes


def test_gd_reference_on_a_case_worked_by_hand():
    """d = 1, N = 2: x = (1, 2), y = (1, 3), x_q = 1. From w0 = 0 with eta = 1 the gradient of
    L(w) = 1/4 sum_j (w x_j - y_j)^2 is -3.5, so w1 = 3.5; at w1 the residuals are 2.5 and 4, the
    gradient 5.25, so w2 = -1.75. From w0 = 1 the residuals are 0 and -1: w1 = 2."""
    tokens = np.array([[[1.0, 1.0], [2.0, 3.0], [1.0, 0.0]]])
    np.testing.assert_allclose(icl.gd_reference_predictions(tokens, 1.0, 2), [[3.5], [-1.75]], rtol=1e-15)
    np.testing.assert_allclose(icl.gd_reference_predictions(tokens, 1.0), [[3.5]], rtol=1e-15)
    np.testing.assert_allclose(icl.gd_reference_predictions(tokens, 1.0, w0=np.array([1.0])), [[2.0]], rtol=1e-15)


@pytest.mark.parametrize("num_steps", [1, 3])
def test_construction_in_float64_equals_the_reference(key, num_steps):
    for i, (dim, n) in enumerate([(4, 7), (2, 12)]):
        k_tasks, k_w0 = jax.random.split(jax.random.fold_in(key, i))
        tasks = icl.sample_tasks(k_tasks, 64, dim=dim, context_length=n, inputs="gaussian", dtype=jnp.float64)
        w0 = jax.random.normal(k_w0, (dim,), jnp.float64)
        toks = icl.tokens(tasks, w0)
        got = icl.layer_predictions(icl.gd_weights(dim, n, 0.6, num_layers=num_steps, w0=w0, dtype=jnp.float64), toks)
        want = icl.gd_reference_predictions(toks, 0.6, num_steps, w0=np.asarray(w0))
        assert want.shape == (num_steps, 64) and want.dtype == np.float64
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-11, atol=1e-11)
    # the one-step closed form is the first step of the loop (atol: a prediction near 0 is a
    # difference of O(1) terms, so its round-off is absolute, about 1e-16)
    np.testing.assert_allclose(icl.gd_reference_predictions(toks, 0.6, 1, w0=np.asarray(w0))[0],
                               icl.gd_reference_predictions(toks, 0.6, 2, w0=np.asarray(w0))[0], rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_construction_error_and_its_control(seed):
    setup = recipes.TaskSetup(dim=5, context_length=8)
    key = jax.random.key(seed)
    assert recipes.construction_error(setup, key, num_tasks=256) < 1e-5  # float32 rounding
    assert recipes.construction_error(setup, key, num_tasks=256, dtype=jnp.float64) < 1e-12
    assert recipes.construction_error(setup, key, num_tasks=256, num_layers=2, dtype=jnp.float64) < 1e-12
    # the off-by-one normalisation P = eta / (N + 1): wrong by a ninth of the update
    assert recipes.construction_error(setup, key, num_tasks=256, normalization=9) > 1e-2


def test_gd_reference_refuses_bad_input():
    tokens = np.zeros((2, 4, 3))
    with pytest.raises(ValueError, match="tokens"):
        icl.gd_reference_predictions(np.zeros((4, 3)), 0.5)
    with pytest.raises(ValueError, match="w0"):
        icl.gd_reference_predictions(tokens, 0.5, w0=np.zeros(3))
    with pytest.raises(ValueError, match="num_steps"):
        icl.gd_reference_predictions(tokens, 0.5, 0)
    with pytest.raises(ValueError, match="normalization"):
        recipes.construction_error(recipes.TaskSetup(dim=2, context_length=3), jax.random.key(0), normalization=0)
