"""Influence functions and training data attribution behind one interface.

    est = influence.make(name, loss_fn, params, train_data, **options)
    est.scores(test_batch)        # [n_test, n_train]
    est.self_influence()          # [n_train]
    est.proponents(test_batch, k) # top-k helpful training examples per test point
    est.opponents(test_batch, k)  # top-k harmful ones

`loss_fn(params, batch)` is the training objective (a mean over the batch, plus any
regulariser); `train_data` a pytree of arrays with a leading example axis (e.g. a
`workbench.data.Dataset`). Per-example gradients are gradients of loss_fn on a batch of one.

**Sign convention, shared by every estimator: score > 0 means removing the training example
would increase the test loss (a helpful example, a proponent); score < 0 an opponent.**
Damping is always an explicit option (`damping=`, default 0.0) and is reported in `est.info`.

Estimators (`ESTIMATORS`): `exact` (dense inverse Hessian, small models), `grad_dot`,
`grad_cos`, `tracin` (checkpoints + learning rates); `cg`, `lissa` (on `workbench.curvature`),
`arnoldi` (on `workbench.spectrum`), `trak` (on `workbench.sketch` stores), `kfac`,
`ekfac` (layer-wise Kronecker-factored curvature, `workbench.curvature.kfac`) and `logra`
(layer-wise Kronecker-structured gradient projections, `workbench.sketch.logra`, with their
damped per-layer covariance); the last three need the model's `Functional`, whose layers they
read.

Ground-truth evaluations (leave-one-out, LDS, mislabel detection, correcting mispredictions,
influence fading) live in `workbench.influence.validation`.

Examples:
    Exact influence on a least-squares fit (4 parameters, 6 examples): training example 0
    helps its own fit the most, and example 4 is its strongest opponent (removing it would
    lower example 0's loss the most).

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from workbench import influence
    >>> x = jnp.array([[1.0, 0, 0, 1], [0, 1, 0, 1], [0, 0, 1, 1], [1, 1, 0, 1], [0, 1, 1, 1], [1, 0, 1, 1]])
    >>> y = jnp.array([1.0, 2.0, 3.0, 3.5, 4.0, 4.5])
    >>> loss_fn = lambda w, batch: jnp.mean((batch[0] @ w - batch[1]) ** 2)
    >>> w = jnp.linalg.lstsq(x, y)[0]  # the optimum
    >>> est = influence.make("exact", loss_fn, w, (x, y))
    >>> print(np.round(est.scores((x[:1], y[:1])), 3))
    [[ 2.   -0.25 -0.25 -0.25 -1.   -0.25]]
    >>> print(est.opponents((x[:1], y[:1]), k=1).indices)
    [[4]]
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable

import jax

from workbench.core.losses import as_loss, check_loss_output
from workbench.core.numerics import check_finite, check_floating, check_key, num_examples
from workbench.influence import validation
from workbench.influence.arnoldi import TAIL_SPREAD_WARNING, arnoldi
from workbench.influence.ekfac import ekfac, kfac
from workbench.influence.estimator import Estimator, Ranked
from workbench.influence.gradient import grad_cos, grad_dot, tracin
from workbench.influence.inverse import (
    DampingChoice,
    damping_above_min_eigenvalue,
    exact,
)
from workbench.influence.iterative import cg, lissa
from workbench.influence.logra_influence import logra
from workbench.influence.trak import margin_output, trak
from workbench.models import Functional

ESTIMATORS: dict[str, Callable[..., Estimator]] = {
    "exact": exact,
    "grad_dot": grad_dot,
    "grad_cos": grad_cos,
    "tracin": tracin,
    "cg": cg,
    "lissa": lissa,
    "arnoldi": arnoldi,
    "trak": trak,
    "kfac": kfac,
    "ekfac": ekfac,
    "logra": logra,
}


CURVATURE_ESTIMATORS = ("exact", "cg", "lissa", "arnoldi")
LAYERWISE_ESTIMATORS = ("kfac", "ekfac", "logra")  # they read the model's layers: a Functional is required


def make(name: str, loss_fn, params, train_data, **options) -> Estimator:
    """Build the influence estimator `name` for `loss_fn` at `params` on `train_data`.

    Three roles are kept apart:
    - the **objective** whose curvature is inverted (`objective_fn=`, default `loss_fn`): the
      training objective, regulariser included;
    - the **per-example data loss** whose gradients are attributed (`loss_fn`, applied to one
      example at a time): no regulariser, or every training gradient carries +l2 * theta;
    - the **test measure** (`measure_fn=`, default the data loss).
    Pass a `workbench.models.Functional` as `loss_fn` and the roles are taken from it: its
    objective (mean loss + 0.5 l2 |theta|^2) for the curvature, its per-example loss without
    the regulariser for the gradients and the test measure, and for "trak" the output function
    Park et al. use (the margin of a cross-entropy classifier from its logits; the loss for any
    other loss, e.g. "mse"). Passing the regularised objective
    as a plain `loss_fn` mixes the roles (the scores then rank wrongly when l2 matters).
    "kfac", "ekfac" and "logra" read the model's layers and accept only a `Functional`.

    Options common to all: `chunk_size` (examples per vmapped chunk, default 256) and
    `cache_bytes` (keep training features in memory up to this size, default 1 GiB; beyond it
    scores stream over the training set). Randomised estimators (arnoldi, lissa without
    `scale=`, trak, logra without `projection=`) need `key=`. Estimator-specific options are documented on the factory
    functions (`workbench.influence.exact`, `tracin`, ...).

    Args:
        name: the estimator, a key of `ESTIMATORS` ("exact", "grad_dot", "grad_cos", "tracin",
            "cg", "lissa", "arnoldi", "trak", "kfac", "ekfac", "logra").
        loss_fn: `loss_fn(params, batch) -> scalar`, the per-example data loss (a mean over the
            batch), or a `workbench.models.Functional` (its roles are then taken from it).
        params: pytree, the trained model.
        train_data: pytree of arrays with a leading example axis [n, ...], n >= 2.
        **options: the estimator's options (`damping`, `key`, `k`, `num_iters`, `measure_fn`,
            `objective_fn`, `chunk_size`, `cache_bytes`, ...).

    Returns:
        The `Estimator` (`scores`, `self_influence`, `proponents`, `opponents`, `info`).

    Raises:
        ValueError: for an unknown name, `objective_fn` on a curvature-free estimator, fewer
            than 2 examples, NaN in params or data, or an invalid option.
        TypeError: if `loss_fn` is neither callable nor a `Functional`.
    """
    if name not in ESTIMATORS:
        raise ValueError(f"unknown influence estimator {name!r}; choose one of {sorted(ESTIMATORS)}")
    caller = f"influence.make({name!r})"
    if isinstance(loss_fn, Functional):
        model = loss_fn
        if name in CURVATURE_ESTIMATORS:  # the curvature operator resolves every kind's roles from it
            options.setdefault("objective_fn", model)
        if name == "trak" and "output_fn" not in options:  # Park et al.: the margin for a classifier
            classifier = getattr(model.output_loss_fn, "__name__", "") == "cross_entropy"
            options["output_fn"] = margin_output(model.predict_fn) if classifier else "loss"
        if name in LAYERWISE_ESTIMATORS:
            options.setdefault("model", model)
    loss_fn = as_loss(loss_fn, role="data", caller=caller)
    if "objective_fn" in options and name not in CURVATURE_ESTIMATORS:
        raise ValueError(f"objective_fn= applies to the curvature estimators {CURVATURE_ESTIMATORS}, "
                         f"not to {name!r}")
    _check_option_names(name, options)
    if options.get("key") is not None:
        check_key(options["key"])
    check_floating(params, "params")  # an integer leaf has no gradient
    check_finite(params, "params")
    n = num_examples(train_data, "train_data")
    if n < 2:
        raise ValueError(f"train_data needs at least 2 examples, got {n}")
    check_finite(train_data, "train_data")
    check_loss_output(loss_fn, params, jax.tree.map(lambda a: a[:2], train_data), expects="scalar", caller=caller)
    return ESTIMATORS[name](loss_fn, params, train_data, **options)


ESTIMATOR_OPTIONS = ("chunk_size", "cache_bytes")  # every estimator's (the `Estimator` itself)


def option_names(name: str) -> list[str]:
    """The options `make(name, ...)` accepts: its factory's keywords and the common ones.

    Args:
        name: an estimator name, a key of `ESTIMATORS`.

    Returns:
        The sorted option names.
    """
    parameters = inspect.signature(ESTIMATORS[name]).parameters.values()
    own = {p.name for p in parameters if p.kind is p.KEYWORD_ONLY or (
        p.kind is p.POSITIONAL_OR_KEYWORD and p.name not in ("loss_fn", "params", "train_data"))}
    return sorted(own | set(ESTIMATOR_OPTIONS))


def _check_option_names(name: str, options: dict) -> None:
    valid = option_names(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        close = {u: difflib.get_close_matches(u, valid, n=1) for u in unknown}
        hints = "".join(f" ({u!r}: did you mean {c[0]!r}?)" for u, c in close.items() if c)
        raise ValueError(f"influence.make({name!r}): unknown option(s) {unknown}{hints}; "
                         f"{name!r} accepts {valid}")


__all__ = [
    "CURVATURE_ESTIMATORS",
    "ESTIMATORS",
    "LAYERWISE_ESTIMATORS",
    "TAIL_SPREAD_WARNING",
    "DampingChoice",
    "Estimator",
    "Ranked",
    "arnoldi",
    "cg",
    "damping_above_min_eigenvalue",
    "ekfac",
    "exact",
    "grad_cos",
    "grad_dot",
    "kfac",
    "lissa",
    "logra",
    "make",
    "margin_output",
    "option_names",
    "tracin",
    "trak",
    "validation",
]
