"""Curvature operators and chunked sums: properties no test checked until the mutation run
(benchmarks/mutations.py) changed them unnoticed. The accumulation dtype of the dataset sum, a
remainder of a single row, and `dense()` of an operator that is not symmetric."""

import jax
import jax.numpy as jnp
import numpy as np
import softmax_reference  # tests/ helper module

from workbench import curvature
from workbench.core.per_example import sum_chunks


def _quadratic_loss(params, batch):
    """mean_i 0.5 c_i |w|^2: the Hessian is mean(c) I, and the chunk of example i adds c_i I."""
    return jnp.mean(0.5 * batch * jnp.sum(params["w"] ** 2))


def test_float64_accumulation_keeps_the_terms_a_float32_sum_rounds_away():
    """Curvatures 2^25, sixty-four 1s, then -2^25, one example per chunk, summed in that order.
    In float32 every 1 is lost against 2^25 (the spacing of float32 there is 4), so the mean
    comes out 0; accumulated in float64 as asked, it is 64 / 66 exactly."""
    c = np.concatenate([[2.0**25], np.ones(64), [-(2.0**25)]]).astype(np.float32)
    params = {"w": jnp.ones((3,), jnp.float32)}
    op = curvature.operator(_quadratic_loss, params, jnp.asarray(c), chunk_size=1,
                            accumulate_dtype=jnp.float64, devices=jax.local_devices()[:1])
    out = op.matvec(jnp.ones((3,), jnp.float32))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, np.full(3, 64 / 66), rtol=1e-6)


def test_a_remainder_of_one_row_is_summed():
    data = jnp.arange(1.0, 22.0)  # 21 = 4 chunks of 5 + 1
    assert float(sum_chunks(jnp.sum, data, 5)) == 231.0
    assert float(sum_chunks(jnp.sum, data, 20)) == 231.0  # one full chunk + 1


def test_operator_with_a_one_example_last_batch_equals_the_full_batch():
    """16 examples in chunks of 5 (three full chunks and a last batch of one example), against
    the Hessian of the mean loss written out in NumPy."""
    l2 = 1e-2
    for seed in (0, 1):
        params, x, y = softmax_reference.problem(seed, 16)
        op = curvature.operator(softmax_reference.loss(l2), params, (x, y), chunk_size=5)
        np.testing.assert_allclose(op.dense(), softmax_reference.hessian(params, x, l2), rtol=1e-10, atol=1e-13)


def test_dense_of_an_operator_that_is_not_symmetric_is_its_matrix():
    """Column j of `dense()` is the product with e_j: a transposed result shows only when the
    operator is not symmetric (every curvature is)."""
    a = np.random.default_rng(0).normal(size=(7, 7))
    op = curvature.from_matrix(jnp.asarray(a))
    np.testing.assert_allclose(op.dense(), a, rtol=1e-15)
    np.testing.assert_allclose(op.dense(max_vectors=3), a, rtol=1e-15)
