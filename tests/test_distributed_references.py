"""The distributed paper's one-machine references and work counts: the softmax and lasso optima
satisfy their optimality conditions checked with JAX autodiff of the losses the job minimises
(no code shared with the references), agree with the distributed solvers on one process, and the
rows each process evaluates tell a split dataset from one held whole by every process."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from workbench import distributed as dist
from workbench.experiments import distributed as exp
from workbench.experiments.distributed_problems import (
    lasso_reference,
    softmax_loss,
    softmax_reference,
    sparse_regression,
    squared_loss,
)


def _classification(seed, n=80, d=5, classes=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = np.argmax(x @ rng.normal(size=(d, classes)) + rng.normal(size=(n, classes)), axis=1)
    return x, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_softmax_reference_is_the_optimum(seed):
    x, y = _classification(seed)
    l2 = 1e-2
    ref = softmax_reference(x, y, l2, num_classes=3)
    params = {"w": jnp.asarray(ref.w), "b": jnp.asarray(ref.b)}
    objective = lambda p: softmax_loss(p, (jnp.asarray(x), jnp.asarray(y))) + 0.5 * l2 * optax.tree.vdot(p, p)
    grad = jax.grad(objective)(params)
    grad_norm = float(jnp.sqrt(optax.tree.vdot(grad, grad)))
    assert grad_norm < 1e-12 and ref.grad_norm < 1e-12, (grad_norm, ref.grad_norm)
    # and the distributed L-BFGS on one process reaches it
    got = dist.lbfgs(softmax_loss, {"w": np.zeros((5, 3)), "b": np.zeros(3)}, dist.shard_examples((x, y)),
                     l2=l2, tol=1e-11)
    np.testing.assert_allclose(got.params["w"], ref.w, atol=1e-9)
    np.testing.assert_allclose(got.params["b"], ref.b, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lasso_reference_satisfies_the_optimality_conditions(seed):
    x, y, w_true = sparse_regression(seed, 120, 12)
    l1 = 0.05
    ref = lasso_reference(x, y, l1)
    # the subgradient condition, the gradient by JAX autodiff of the job's loss
    g = np.asarray(jax.grad(squared_loss)({"w": jnp.asarray(ref.w)}, (jnp.asarray(x), jnp.asarray(y)))["w"])
    on = ref.w != 0
    assert on.any() and not on.all()
    np.testing.assert_allclose(g[on], -l1 * np.sign(ref.w[on]), atol=1e-12)
    assert np.all(np.abs(g[~on]) <= l1 + 1e-12)
    assert ref.kkt_violation < 1e-12
    got = dist.owlqn(squared_loss, {"w": np.zeros(12)}, dist.shard_examples((x, y)), l1=l1, tol=1e-11)
    np.testing.assert_allclose(got.params["w"], ref.w, atol=1e-9)
    assert np.array_equal(got.params["w"] == 0, ~on)


def test_references_refuse_bad_strengths():
    x, y = _classification(0)
    with pytest.raises(ValueError, match="l2"):
        softmax_reference(x, y, 0.0, num_classes=3)
    with pytest.raises(ValueError, match="labels"):
        softmax_reference(x, y, 1e-2, num_classes=2)
    with pytest.raises(ValueError, match="l1"):
        lasso_reference(x, x[:, 0], -1.0)
    with pytest.raises(ValueError, match="block"):
        exp.reference_optima(exp.JobConfig(), block=(2, 2))


def test_rows_per_process_and_load_over_even_share():
    """One process: its rows are the examples padded over its local devices; holding the data
    twice over doubles the load, and the load is counted from the arrays, not the argument."""
    x = np.arange(30.0).reshape(10, 3)
    devices = jax.local_device_count()
    padded = -(-10 // devices) * devices
    data = dist.shard_examples(x)
    assert dist.rows_per_process(data) == (padded,)
    assert dist.load_over_even_share(data, 10) == pytest.approx(padded / 10)
    doubled = dist.shard_examples(np.concatenate([x, x]))
    assert dist.load_over_even_share(doubled, 10) == pytest.approx(-(-20 // devices) * devices / 10)
    with pytest.raises(TypeError, match="ShardedData"):
        dist.rows_per_process(x)
    with pytest.raises(ValueError, match="dataset_size"):
        dist.load_over_even_share(data, 0)


def test_reference_optima_and_differences_small_job():
    """The notebook's references on a small configuration: the whole data against process 0's
    block of two (the no-all-reduce control) differ clearly; a set of optima against itself is 0."""
    config = exp.JobConfig(seed=1, regression_examples=200, regression_features=20, ot_points=40)
    whole = exp.reference_optima(config)
    block = exp.reference_optima(config, block=(0, 2))
    assert exp.reference_differences(whole, whole) == (0.0, 0.0, 0.0)
    diff = exp.reference_differences(block, whole)
    assert diff.classification > 1e-3 and diff.sparse_regression > 1e-3 and diff.ot_dual_relative > 1e-4, diff
