"""Leave-one-out retraining of a non-convex model: the default (line-search Newton-CG) converges
from an Adam-trained MLP and agrees with an independent trust-region solve; an impossible budget
raises with the gradient norm reached."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize
from flax import nnx
from jax.flatten_util import ravel_pytree

from workbench import data, models, train
from workbench.influence import validation as ev


@pytest.fixture(scope="module")
def mlp():
    """A 64-4-10 MLP (310 parameters) after 150 Adam steps on 60 digits: not a stationary point,
    its Hessian indefinite (the former fixed-preconditioner Newton returned NaN here)."""
    jax.config.update("jax_enable_x64", True)
    train_set, test_set = data.load_digits(dtype=jnp.float64)
    train_set, test_set = train_set.take(np.arange(60)), test_set.take(np.arange(4))
    model = models.functional(models.MLP(64, [4], 10, rngs=nnx.Rngs(0), param_dtype=jnp.float64), l2=1e-2)
    run = train.train(model.loss_fn, model.params, train_set, jax.random.key(0), optimizer=optax.adam(1e-2),
                      num_steps=150)
    return model, run.params, train_set, test_set


_COMPILED = {}  # (model, train set) -> the jitted objective, gradient and Hessian in (x, weights)


def _trust_region(model, params, train_set, weights):
    """The reference: scipy's exact-Hessian trust region on J_w to a gradient norm of 1e-12."""
    flat0, unravel = ravel_pytree(params)
    key = (model, id(train_set))
    if key not in _COMPILED:  # compiled once for every removal: the weights are an argument
        objective = ev.per_example_objective(model.loss_fn, train_set)
        f = lambda x, w: objective(unravel(x), w)
        _COMPILED[key] = (jax.jit(f), jax.jit(jax.grad(f)), jax.jit(jax.hessian(f)))
    f, grad, hess = _COMPILED[key]
    res = scipy.optimize.minimize(lambda x: float(f(x, weights)), np.asarray(flat0),
                                  jac=lambda x: np.asarray(grad(x, weights)),
                                  hess=lambda x: np.asarray(hess(x, weights)), method="trust-exact",
                                  options={"gtol": 1e-12, "maxiter": 2000})
    assert np.linalg.norm(np.asarray(grad(res.x, weights))) < 1e-10
    return unravel(jnp.asarray(res.x))


def test_loo_default_converges_on_an_mlp_and_matches_a_trust_region_reference(mlp):
    model, params, train_set, test_set = mlp
    removed = np.array([3, 17, 41])
    result = ev.loo(model.loss_fn, params, train_set, test_set, removed)
    assert result.grad_norm.max() <= 1e-10
    # loo first refines params to the nearest full-data minimum (`fit`): the trust region, started
    # there, must stay there (a local minimum of J) and start every removal from it. From the Adam
    # params themselves the two methods may reach different minima of this non-convex J.
    fitted = ev.fit(model.loss_fn, params, train_set).params
    full = _trust_region(model, fitted, train_set, jnp.ones(60))
    np.testing.assert_allclose(ravel_pytree(full)[0], ravel_pytree(fitted)[0], atol=1e-8)
    assert np.linalg.eigvalsh(np.asarray(jax.hessian(lambda x: ev.per_example_objective(model.loss_fn, train_set)(
        ravel_pytree(full)[1](x), jnp.ones(60)))(ravel_pytree(full)[0])))[0] > 0  # a minimum, not a saddle
    base = ev.outputs(model.loss_fn, jax.tree.map(lambda a: a[None], full), test_set)[0]
    for j, i in enumerate(removed):
        w = jnp.ones(60).at[i].set(0.0)
        after = ev.outputs(model.loss_fn, jax.tree.map(lambda a: a[None], _trust_region(model, full, train_set, w)),
                           test_set)[0]
        np.testing.assert_allclose(result.actual[:, j], np.asarray(after - base), rtol=1e-5, atol=1e-9)


def test_loo_raises_with_the_gradient_norm_when_the_budget_is_impossible(mlp):
    model, params, train_set, test_set = mlp
    with pytest.raises(RuntimeError, match=r"1 of 1 models .* gradient norm [0-9.e+-]+\)\. Raise num_iters"):
        ev.loo(model.loss_fn, params, train_set, test_set, [3], num_iters=1, cg_num_iters=1)
    with pytest.raises(RuntimeError, match=r"fit did not converge: gradient norm [0-9.e+-]+ > tol=1e-10"):
        ev.fit(model.loss_fn, params, train_set, num_refreshes=1, num_iters=1)
