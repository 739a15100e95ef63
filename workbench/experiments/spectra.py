"""Recipes on curvature spectra: gradient descent with sharpness tracking (edge of stability:
`gd_sharpness_run`, then `stability_ratio` for the hovering at 2 / lr and `sharpening` for the
rise before it), and exact against sketched top eigenvalues."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from workbench import curvature, spectrum
from workbench.sketch import Sketch, sketched_operator
from workbench.train import train


class SharpnessRun(NamedTuple):
    learning_rate: float
    history: dict[str, np.ndarray]  # train history: "step", "loss", "callback_step", "sharpness"
    params: Any
    diverged: bool


class ExactAndSketched(NamedTuple):
    """Top Hessian eigenvalues, exact and of the sketched Hessian, largest first (numpy)."""

    exact: np.ndarray
    sketched: np.ndarray


class StabilityRatio(NamedTuple):
    """Sharpness / (2 / lr) over the last part of a run."""

    mean: float
    min: float
    max: float


def gd_sharpness_run(
    loss_fn: Callable,
    params: Any,
    data: Any,
    key: jax.Array,
    *,
    learning_rate: float,
    num_steps: int,
    every: int = 10,
    num_iters: int = 20,
    progress: bool = True,
) -> SharpnessRun:
    """Full-batch gradient descent with step size `learning_rate`, sharpness every `every` steps
    (Cohen et al. 2021, "Edge of Stability").

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, a batch mean.
        params: the initial params.
        data: the training data (used whole at every step).
        key: PRNG key of the sharpness callback's Lanczos start vectors.
        learning_rate: the step size (> 0).
        num_steps: gradient-descent steps.
        every: steps between sharpness measurements.
        num_iters: the Lanczos depth of each measurement.
        progress: show a progress bar.

    Returns:
        A `SharpnessRun(learning_rate, history, params, diverged)`; a run whose loss became
        non-finite stops there with `diverged=True`.
    """
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate!r}")
    callback = spectrum.sharpness_callback(loss_fn, data, key, num_iters=num_iters)
    result = train(
        loss_fn, params, data, key, optimizer=optax.sgd(learning_rate), num_steps=num_steps,
        batch_size=None, callback=callback, callback_every=every, on_nonfinite="stop",
        progress=progress,
    )
    return SharpnessRun(float(learning_rate), result.history, result.params, bool(result.diverged))


def stability_ratio(run: SharpnessRun, last_fraction: float = 0.5, threshold: float = 2.0) -> StabilityRatio:
    """Sharpness / (threshold / lr) over the last `last_fraction` of the recorded steps: mean, min, max.

    Args:
        run: a `SharpnessRun`.
        last_fraction: the fraction of the recorded steps, from the end, in (0, 1].
        threshold: the stability threshold times lr, > 0: 2 (GD on a quadratic diverges once the
            sharpness passes 2 / lr); 1 is the wrong threshold a derivation that drops the 2 gives.

    Returns:
        A `StabilityRatio(mean, min, max)` (1 is the edge of stability).

    Raises:
        ValueError: a bad `last_fraction` or `threshold`, no sharpness record, or a non-finite one.
    """
    if not threshold > 0:
        raise ValueError(f"threshold must be positive, got {threshold!r}")
    tail = _sharpness_tail(run, last_fraction) * run.learning_rate / threshold
    return StabilityRatio(float(tail.mean()), float(tail.min()), float(tail.max()))


def _sharpness_tail(run: SharpnessRun, last_fraction: float) -> np.ndarray:
    """The sharpness values recorded over the last `last_fraction` of the run's steps."""
    if not 0 < last_fraction <= 1:
        raise ValueError(f"last_fraction must lie in (0, 1], got {last_fraction!r}")
    steps = np.asarray(run.history["callback_step"])
    values = np.asarray(run.history["sharpness"], dtype=np.float64)
    if steps.size == 0 or steps.shape != values.shape:
        raise ValueError("run.history has no sharpness record (or its steps and values disagree)")
    if not np.all(np.isfinite(values)):
        raise ValueError("run.history's sharpness has NaN or inf entries (a diverged run has no ratio)")
    return values[steps >= steps.max() * (1 - last_fraction)]


def sharpening(run: SharpnessRun, last_fraction: float = 0.5) -> float:
    """Progressive sharpening: the mean sharpness over the last `last_fraction` of the run over
    the sharpness at its first record (the initialisation when the callback ran at step 0).

    Above 1 when the sharpness rose during training (Cohen et al. 2021's first phase), below 1
    when it was pushed down (a step size whose 2 / lr lies below the initial sharpness: the
    catapult), exactly 1 on a quadratic, whose Hessian does not move.

    Args:
        run: a `SharpnessRun`.
        last_fraction: the fraction of the recorded steps, from the end, in (0, 1].

    Returns:
        The ratio, a Python float.

    Raises:
        ValueError: a bad `last_fraction`, no record, a non-finite record or a first sharpness
            that is not positive.
    """
    tail = _sharpness_tail(run, last_fraction)
    steps = np.asarray(run.history["callback_step"])
    first = float(np.asarray(run.history["sharpness"], dtype=np.float64)[np.argmin(steps)])
    if not first > 0:
        raise ValueError(f"the first recorded sharpness is {first:.3g}, not positive: no ratio")
    return float(tail.mean() / first)


def top_eigenvalues_exact_and_sketched(loss_fn, params, data, sketch: Sketch, key, k: int) -> ExactAndSketched:
    """Top-k Hessian eigenvalues of the dataset loss, exact and from Phi H Phi^T (thick-restart
    Lanczos on both).

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, a batch mean.
        params: the point.
        data: the dataset the Hessian averages over.
        sketch: the `Sketch` Phi.
        key: PRNG key of the Lanczos start vectors (the same for both).
        k: the number of eigenvalues.

    Returns:
        `ExactAndSketched(exact [k], sketched [k])`, numpy, largest first.
    """
    op = curvature.operator(loss_fn, params, data, kind="hessian")
    exact = spectrum.top_eigenpairs(op, key, k).values
    approx = spectrum.top_eigenpairs(sketched_operator(op, sketch), key, k).values
    return ExactAndSketched(np.sort(np.asarray(exact))[::-1], np.sort(np.asarray(approx))[::-1])


def digits_sharpness_run(data: Any, key: jax.Array, *, learning_rate: float, hidden_size: int = 64,
                         num_steps: int = 400, every: int = 25, seed: int = 0, progress: bool = True) -> SharpnessRun:
    """`gd_sharpness_run` for a fresh 64-h-h-10 tanh MLP (squared loss on one-hot `data.y`, as in
    the edge-of-stability paper), initialised from `seed`: one call per (step size, width).

    Args:
        data: the training `Dataset` (y one-hot or regression targets [n, 10]).
        key: PRNG key of the sharpness measurements.
        learning_rate: the step size.
        hidden_size: the width of both hidden layers.
        num_steps: gradient-descent steps.
        every: steps between sharpness measurements.
        seed: the initialisation seed.
        progress: show a progress bar.

    Returns:
        The `SharpnessRun`.
    """
    from flax import nnx

    from workbench import models

    model = models.MLP(64, [hidden_size, hidden_size], 10, activation="tanh", rngs=nnx.Rngs(seed))
    fn = models.functional(model, loss="mse")
    return gd_sharpness_run(fn.loss_fn, fn.params, data, key, learning_rate=learning_rate, num_steps=num_steps,
                            every=every, progress=progress)
