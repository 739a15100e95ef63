"""The fitted digits logistic regression the influence papers start from, and the estimators the
evaluation paper builds on it."""

import jax
import numpy as np
import pytest

from workbench import influence
from workbench.experiments.influence import (
    Trained,
    digits_subsets,
    estimator_builders,
    fit_digits_logistic,
    train_for_attribution,
)
from workbench.influence import validation


def test_fit_digits_logistic_reaches_the_optimum():
    problem = fit_digits_logistic(60, 7, l2=0.01, seed=1)
    assert len(problem.train) == 60 and len(problem.test) == 7
    assert problem.grad_norm < 1e-9
    assert np.asarray(problem.params["linear"]["kernel"]).dtype == np.float64
    with pytest.raises(ValueError, match="n_train must be in"):
        fit_digits_logistic(1, 7, l2=0.01)
    with pytest.raises(ValueError, match="n_test"):
        fit_digits_logistic(60, 0, l2=0.01)


def test_estimator_builders_pass_budgets_and_key():
    problem = fit_digits_logistic(40, 3, l2=0.01, seed=0)
    loss_fn, params, train = problem.model.loss_fn, problem.params, problem.train
    budgets = dict(cg_num_iters=400, lissa_num_iters=11, arnoldi_k=5, trak_dim=16, trak_damping=0.01)
    key = jax.random.key(3)
    trained = Trained(params, {0: params}, 1.0, 0.1, None, None)
    builders = estimator_builders(problem.model, trained, train, key, **budgets)
    assert list(builders) == ["exact", "cg", "lissa", "arnoldi", "arnoldi_top_k", "trak", "grad_dot", "grad_cos",
                              "tracin"]
    no_cos = estimator_builders(problem.model, trained._replace(damping=0.0), train, key, cosine=False, **budgets)
    assert "grad_cos" not in no_cos and len(no_cos) == 8
    assert builders["cg"]().info["num_iters"] == 400 and builders["lissa"]().info["num_iters"] == 11
    for name, opts in (("cg", dict(num_iters=400)), ("lissa", dict(num_iters=11, key=key))):
        want = influence.make(name, loss_fn, params, train, damping=0.1, **opts).scores(problem.test)
        np.testing.assert_array_equal(np.asarray(builders[name]().scores(problem.test)), np.asarray(want))


def test_train_for_attribution_keeps_checkpoints_and_chooses_the_damping():
    problem = fit_digits_logistic(40, 3, l2=0.01, seed=0)
    key = jax.random.key(0)
    convex = train_for_attribution(problem.model, problem.train, key, optimizer_name="sgd", learning_rate=1.0,
                                   num_steps=20, fit_to_optimum=True)
    assert sorted(convex.checkpoints) == list(range(0, 20, 2)) and convex.learning_rate == 1.0
    optimum = validation.fit(problem.model.loss_fn, problem.model.params, problem.train).params
    np.testing.assert_array_equal(np.asarray(convex.params["linear"]["kernel"]),
                                  np.asarray(optimum["linear"]["kernel"]))
    assert convex.damping == 0.0 and convex.eigen is None and convex.lambda_min is None
    run = train_for_attribution(problem.model, problem.train, key, optimizer_name="sgd", learning_rate=0.5,
                                num_steps=10, damping_margin=0.05)  # adam needs standard dtype promotion
    choice = influence.damping_above_min_eigenvalue(problem.model.loss_fn, run.params, problem.train, margin=0.05)
    assert run.damping == choice.damping and run.lambda_min == choice.lambda_min
    assert not np.allclose(np.asarray(run.params["linear"]["kernel"]), np.asarray(optimum["linear"]["kernel"]))
    with pytest.raises(ValueError, match="optimizer_name"):
        train_for_attribution(problem.model, problem.train, key, optimizer_name="rmsprop", learning_rate=0.1,
                              num_steps=2)


def test_digits_subsets_are_the_first_examples_of_the_seeded_split():
    from workbench import data

    train, test = digits_subsets(30, 5, seed=2)
    full_train, full_test = data.load_digits(seed=2, dtype=np.float64)
    np.testing.assert_array_equal(np.asarray(train.x), np.asarray(full_train.x[:30]))
    np.testing.assert_array_equal(np.asarray(test.y), np.asarray(full_test.y[:5]))
    assert np.asarray(train.x).dtype == np.float64
    with pytest.raises(ValueError, match="n_train must be in"):
        digits_subsets(1, 5)
