"""Every error the influence docstrings promise, one case each (the ones the other files do not
already exercise): a named cause, never a plausible number."""

import re

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from plain_logreg import fitted_digits, plain_logreg  # tests/ helper module

from workbench import influence
from workbench.core import statistics
from workbench.influence import inverse
from workbench.influence import validation as ev

LogReg = plain_logreg(1e-2)


@pytest.fixture(scope="module")
def problem():
    return fitted_digits(LogReg, 40, 5)


def _cases(params, train, test, key, tmp_path):
    n = len(train)
    mk = lambda name, **o: influence.make(name, LogReg.loss_fn, params, train, **o)
    big = {"w": jnp.zeros((inverse.MAX_EXACT_PARAMS + 1,))}
    return [
        ("loss_fn must be a callable loss_fn\\(params, batch\\) or a models.Functional, got builtins.int", lambda: influence.make("exact", 3, params, train)),
        ("train_data needs at least 2 examples", lambda: influence.make(
            "exact", LogReg.loss_fn, params, train.take(slice(0, 1)))),
        ("use it for models with at most", lambda: inverse.exact(lambda p, b: jnp.sum(p["w"]), big, train)),
        ("must have shapes", lambda: mk("exact", hessian=(jnp.ones(3), jnp.eye(3)))),
        ("eigendecomposition contains NaN", lambda: mk("exact", hessian=(
            jnp.full(650, jnp.nan), jnp.eye(650)))),
        ("hessian must have shape", lambda: mk("exact", hessian=jnp.eye(3))),
        ("the Hessian contains NaN", lambda: mk("exact", hessian=jnp.full((650, 650), jnp.nan))),
        ("num_iters=.* must exceed k", lambda: mk("arnoldi", k=10, num_iters=5, key=key)),
        ("curvature beyond the top 2 eigenpairs is not positive", lambda: influence.make(
            "arnoldi", lambda p, b: jnp.mean(jnp.sum(p["w"] ** 2) * b[0][:, 0]) * 0.0 + 0.5 * p["w"][0] ** 2,
            {"w": jnp.ones(4)}, (jnp.ones((6, 1)), jnp.zeros(6)), k=2, key=key)),
        ("scale must be positive", lambda: mk("lissa", scale=-1.0)),
        ("learning_rates has no entry", lambda: mk("tracin", checkpoints={0: params, 5: params},
                                                 learning_rates={0: 0.1})),
        ("learning_rates has 1 entries for 2", lambda: mk("tracin", checkpoints={0: params, 5: params},
                                                        learning_rates=[0.1])),
        ("learning_rates must be non-negative", lambda: mk("tracin", checkpoints={0: params},
                                                         learning_rates=-0.1)),
        ("tracin needs learning_rates", lambda: mk("tracin", checkpoints={0: params})),
        ("models must hold at least one", lambda: mk("trak", models=[], key=key)),
        ("dim must be an int >= 1", lambda: mk("trak", dim=0, key=key)),
        ("singular for model 0: use damping > 0", lambda: mk("trak", dim=64, damping=0.0, key=key,
                                                            measure_fn=None, models=[params],
                                                            batch_size=8)),
        ("was made with another configuration", lambda: _store_mismatch(params, train, key, tmp_path)),
        ("chunk_size must be an int >= 1", lambda: mk("grad_dot", chunk_size=0)),
        ("weights must have shape", lambda: ev.retrain_weighted(LogReg.loss_fn, params, train, jnp.ones((2, n + 1)))),
        ("method='optax' needs optimizer", lambda: ev.retrain_weighted(LogReg.loss_fn, params, train,
                                                            jnp.ones((1, n)), method="optax")),
        ("method must be 'newton' or 'optax'", lambda: ev.retrain_weighted(LogReg.loss_fn, params, train,
                                                                jnp.ones((1, n)), method="adam")),
        (r"retraining \(optax\) produced NaN.*step size", lambda: ev.retrain_weighted(LogReg.loss_fn, params, train, jnp.ones((1, n)),
                                                      method="optax", optimizer=optax.sgd(1e30), num_steps=50)),
        ("removed must be a non-empty", lambda: ev.loo(LogReg.loss_fn, params, train, test, [])),
        ("fraction must lie in", lambda: ev.lds_ground_truth(LogReg.loss_fn, params, train, key, test, fraction=1.0)),
        ("num_subsets must be an int >= 2", lambda: ev.lds_ground_truth(LogReg.loss_fn, params, train, key, test, num_subsets=1)),
        ("auc needs at least one positive", lambda: statistics.auc(np.arange(4.0), np.zeros(4, bool))),
        ("scores has 3 entries", lambda: statistics.auc(np.arange(3.0), np.zeros(4, bool))),
        ("shapes differ", lambda: statistics.pearson_rows(np.ones((2, 3)), np.ones((2, 4)))),
    ]


def _store_mismatch(params, train, key, tmp_path):
    path = tmp_path / "store"
    influence.make("trak", LogReg.loss_fn, params, train, dim=16, key=key, stores=[path])
    return influence.make("trak", LogReg.loss_fn, params, train.take(slice(0, 30)), dim=16, key=key, stores=[path])


def test_every_promised_error_is_raised_with_its_cause(problem, key, tmp_path):
    params, train, test = problem
    missing = []
    for pattern, call in _cases(params, train, test, key, tmp_path):
        try:
            call()
        except (ValueError, TypeError, FloatingPointError, RuntimeError) as err:
            if not re.search(pattern, str(err)):
                missing.append(f"{pattern!r}: raised {type(err).__name__}: {err}")
        else:
            missing.append(f"{pattern!r}: nothing raised")
    assert not missing, "\n".join(missing)
