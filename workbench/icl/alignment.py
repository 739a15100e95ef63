"""How close a trained model is to an algorithm: prediction differences on test tasks, the cosine
between their sensitivities d y_hat / d x_q, the loss along the straight line between trained and
constructed weights, and which step of an algorithm each layer's read-out matches best."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from workbench.core.numerics import check_positive_int
from workbench.icl.lsa import (
    EffectiveWeights,
    canonical_scale,
    effective_weights,
    from_effective,
    has_mlp,
    predict,
)
from workbench.icl.tasks import Tasks, icl_loss, tokens


class Alignment(NamedTuple):
    """Model vs algorithm on the same tasks."""

    prediction_difference: float  # mean |y_model - y_alg|
    relative_prediction_difference: float  # sqrt(mean (y_model - y_alg)^2 / mean y_alg^2)
    sensitivity_cosine: float  # mean over tasks of cos(d y_model/d x_q, d y_alg/d x_q)
    sensitivity_difference: float  # mean || d y_model/d x_q - d y_alg/d x_q ||


def query_sensitivity(predict_fn: Callable[[Tasks], jax.Array], tasks: Tasks) -> jax.Array:
    """d prediction / d x_q for every task, [B, d]; `predict_fn(tasks) -> [B]` predicts each task
    from its own query, so the gradient of the sum is the per-task gradient.

    Args:
        predict_fn: `tasks -> predictions [B]`, differentiable in the queries.
        tasks: the `Tasks`.

    Returns:
        The sensitivities [B, d].
    """
    return jax.grad(lambda xq: jnp.sum(predict_fn(tasks._replace(query_x=xq))))(tasks.query_x)


def alignment(model_fn: Callable[[Tasks], jax.Array], algorithm_fn: Callable[[Tasks], jax.Array],
              tasks: Tasks) -> Alignment:
    """Compare two predictors `fn(tasks) -> [B]` (e.g. a trained LSA and GD with eta*).

    Args:
        model_fn: the first predictor, `tasks -> [B]` (e.g. `lsa_predictor(trained)`).
        algorithm_fn: the second predictor, the reference.
        tasks: the test `Tasks`.

    Returns:
        `Alignment(prediction_difference, relative_prediction_difference, sensitivity_cosine,
        sensitivity_difference)`, Python floats.

    Raises:
        FloatingPointError: if a measure is not finite.
    """
    a, b = model_fn(tasks), algorithm_fn(tasks)
    ga, gb = query_sensitivity(model_fn, tasks), query_sensitivity(algorithm_fn, tasks)
    na, nb = jnp.linalg.norm(ga, axis=-1), jnp.linalg.norm(gb, axis=-1)
    tiny = jnp.finfo(ga.dtype).tiny
    cos = jnp.sum(ga * gb, axis=-1) / jnp.maximum(na * nb, tiny)
    values = (jnp.mean(jnp.abs(a - b)), jnp.sqrt(jnp.mean((a - b) ** 2) / jnp.mean(b**2)), jnp.mean(cos),
              jnp.mean(jnp.linalg.norm(ga - gb, axis=-1)))
    values = [float(v) for v in values]
    if not all(np.isfinite(values)):
        raise FloatingPointError(f"alignment measures are not finite ({values}); check both predictors")
    return Alignment(*values)


def lsa_predictor(params) -> Callable[[Tasks], jax.Array]:
    """`tasks -> predictions` for LSA parameters (tokens with the query entry 0).

    Args:
        params: LSA parameters.

    Returns:
        The predictor `tasks -> [B]`.
    """
    return lambda tasks: predict(params, tokens(tasks))


def lsa_loss(params, tasks: Tasks) -> jax.Array:
    """The in-context loss of an LSA model on tasks (query entries 0).

    Args:
        params: LSA parameters.
        tasks: the `Tasks`.

    Returns:
        0.5 * mean over tasks of (prediction - query_y)^2, a scalar.
    """
    return icl_loss(predict(params, tokens(tasks)), tasks)


class Interpolation(NamedTuple):
    """The in-context loss at points t along the straight path from trained to constructed."""

    t: np.ndarray  # 0 = trained, 1 = constructed
    losses: np.ndarray


def interpolation_losses(trained, constructed, tasks: Tasks, num_points: int = 21) -> Interpolation:
    """The in-context loss along (1 - t) A + t B between the trained and constructed weights,
    interpolating each layer's products kq = W_K^T W_Q and pv = P W_V after removing their
    c / (1/c) scale symmetry (`canonical_scale`), so the path compares functions, not a
    parameterisation. Attention-only models (an MLP has no counterpart in the construction).

    Args:
        trained: LSA parameters of the trained model (attention only).
        constructed: LSA parameters of the construction, with as many layers.
        tasks: the `Tasks` the loss is measured on.
        num_points: the number of points t, evenly spaced in [0, 1], an int >= 2.

    Returns:
        `Interpolation(t [num_points], losses [num_points])`.

    Raises:
        ValueError: if a model has MLP layers or the two differ in shape.
    """
    check_positive_int("num_points", num_points, least=2)
    for name, p in (("trained", trained), ("constructed", constructed)):
        if has_mlp(p):
            raise ValueError(f"{name} has MLP layers; interpolation compares attention-only models")
    a, b = canonical_scale(effective_weights(trained)), canonical_scale(effective_weights(constructed))
    if a.kq.shape != b.kq.shape:
        raise ValueError(f"trained and constructed differ in shape: {a.kq.shape} vs {b.kq.shape}")
    ts = np.linspace(0.0, 1.0, num_points)
    toks = tokens(tasks)

    def loss(t):
        w = EffectiveWeights((1 - t) * a.kq + t * b.kq, (1 - t) * a.pv + t * b.pv)
        return icl_loss(predict(from_effective(w), toks), tasks)

    losses = np.asarray(jax.vmap(loss)(jnp.asarray(ts, a.kq.dtype)))
    return Interpolation(ts, losses)


class StepMatch(NamedTuple):
    """For each model layer: the algorithm step whose predictions are closest, and the relative
    error sqrt(mean (y_layer - y_step)^2 / mean y_step^2) at every step ([L, K])."""

    best_step: np.ndarray  # [L], 1-based step index (for Newton, k = 0..K-1 are steps 1..K)
    best_error: np.ndarray  # [L]
    errors: np.ndarray  # [L, K]


def match_steps(layer_preds: jax.Array, algorithm_preds: jax.Array) -> StepMatch:
    """Which step of an algorithm ([K, B] predictions) each layer read-out ([L, B]) tracks.

    Args:
        layer_preds: the read-out after each model layer [L, B] (`layer_predictions`).
        algorithm_preds: the algorithm's predictions after each step [K, B], on the same tasks.

    Returns:
        `StepMatch(best_step [L] (1-based), best_error [L], errors [L, K])`.

    Raises:
        ValueError: if the two cover different tasks.
    """
    lp, ap = jnp.asarray(layer_preds), jnp.asarray(algorithm_preds)
    if lp.shape[-1] != ap.shape[-1]:
        raise ValueError(f"layer and algorithm predictions cover different tasks: {lp.shape} vs {ap.shape}")
    err = jnp.sqrt(jnp.mean((lp[:, None] - ap[None]) ** 2, -1) / jnp.mean(ap**2, -1)[None])
    err = np.asarray(err)
    return StepMatch(np.argmin(err, axis=1) + 1, err.min(axis=1), err)
