"""In-context linear regression tasks and their token sequences.

A task draws weights w ~ N(0, I_d), N context inputs and one query input (uniform on
[-input_range, input_range]^d or Gaussian N(0, covariance)), targets y = w.x (+ Gaussian noise on
the context targets). Tokens follow von Oswald et al.: e_j = (x_j, y_j) for the context and
(x_q, -w0.x_q) for the query (0 when gradient descent starts from w0 = 0); a model's prediction is
minus the query token's last entry after the last layer.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from workbench.core.numerics import check_positive_int

INPUT_KINDS = ("uniform", "gaussian")


class Tasks(NamedTuple):
    """A batch of regression tasks: context inputs/targets, query input/target, true weights."""

    x: jax.Array  # [B, N, d] context inputs
    y: jax.Array  # [B, N] context targets
    query_x: jax.Array  # [B, d]
    query_y: jax.Array  # [B] noiseless target at the query
    w: jax.Array  # [B, d] the task weights

    @property
    def dim(self) -> int:
        """The input dimension d."""
        return self.x.shape[-1]

    @property
    def context_length(self) -> int:
        """The number N of context pairs per task."""
        return self.x.shape[-2]


def covariance_factor(covariance, dim: int) -> jax.Array:
    """The Cholesky factor of `covariance` ([dim, dim], symmetric positive definite).

    Args:
        covariance: the input covariance [dim, dim].
        dim: the input dimension it must match.

    Returns:
        The lower-triangular L [dim, dim] with L L^T = covariance (float64 values).

    Raises:
        ValueError: naming the problem: wrong shape, non-finite entries, asymmetry, or not
            positive definite.
    """
    c = np.asarray(covariance, dtype=np.float64)
    if c.shape != (dim, dim):
        raise ValueError(f"covariance must have shape ({dim}, {dim}) to match dim={dim}, got {c.shape}")
    if not np.all(np.isfinite(c)):
        raise ValueError("covariance has non-finite entries")
    if not np.allclose(c, c.T, rtol=1e-10, atol=1e-12 * max(1.0, np.abs(c).max())):
        raise ValueError("covariance must be symmetric")
    lo = np.linalg.eigvalsh(c)[0]
    if lo <= 0:
        raise ValueError(f"covariance must be positive definite; its smallest eigenvalue is {lo:.3g}")
    return jnp.asarray(np.linalg.cholesky(c))


def conditioned_covariance(dim: int, condition_number: float, key: jax.Array | None = None) -> np.ndarray:
    """A [dim, dim] covariance with eigenvalues spaced geometrically from 1 down to
    1/condition_number (condition_number=1 gives the identity). With `key` the eigenbasis is a
    random rotation drawn from it; without, the covariance is diagonal (axis-aligned).

    Args:
        dim: the input dimension, an int >= 1.
        condition_number: the ratio of the largest to the smallest eigenvalue, >= 1.
        key: the PRNG key of a random eigenbasis (default None: the diagonal covariance; no
            randomness is used then).

    Returns:
        The covariance [dim, dim], float64 NumPy.

    Raises:
        ValueError: if `dim` or `condition_number` is out of range.
    """
    dim = check_positive_int("dim", dim)
    if not np.isfinite(condition_number) or condition_number < 1:
        raise ValueError(f"condition_number must be a finite number >= 1, got {condition_number!r}")
    eigs = np.geomspace(1.0, 1.0 / condition_number, dim)
    if key is None:
        return np.diag(eigs)
    q, r = np.linalg.qr(np.asarray(jax.random.normal(key, (dim, dim)), dtype=np.float64))
    q = q * np.sign(np.diag(r))
    return (q * eigs) @ q.T


MIN_TASK_BUCKET = 4096


def sample_tasks(
    key: jax.Array,
    num_tasks: int,
    *,
    dim: int,
    context_length: int,
    inputs: str = "uniform",
    input_range: float = 1.0,
    covariance=None,
    noise_std: float = 0.0,
    dtype=jnp.float32,
) -> Tasks:
    """`num_tasks` regression tasks y = w.x, w ~ N(0, I_dim), each with `context_length` pairs.

    The first rows of a larger draw are exactly a smaller draw from the same key, so a task
    count can grow without changing the tasks already drawn.

    Args:
        key: the PRNG key the weights, inputs and noise are drawn from.
        num_tasks: the number of tasks B, an int >= 1.
        dim: the input dimension d, an int >= 1.
        context_length: the number N of context pairs per task, an int >= 1.
        inputs: "uniform" (x ~ U[-input_range, input_range]^dim) or "gaussian"
            (x ~ N(0, covariance), identity when covariance is None).
        input_range: the half-width of the uniform inputs, positive (uniform inputs only).
        covariance: [dim, dim] symmetric positive definite (gaussian inputs only).
        noise_std: standard deviation of Gaussian noise added to the context targets.
        dtype: the dtype of the tasks (default float32).

    Returns:
        `Tasks(x [B, N, d], y [B, N], query_x [B, d], query_y [B], w [B, d])`.

    Raises:
        ValueError: if an argument is out of range or does not fit the input kind.
    """
    num_tasks = check_positive_int("num_tasks", num_tasks)
    dim = check_positive_int("dim", dim)
    context_length = check_positive_int("context_length", context_length)
    if inputs not in INPUT_KINDS:
        raise ValueError(f"inputs must be one of {INPUT_KINDS}, got {inputs!r}")
    if noise_std < 0 or not np.isfinite(noise_std):
        raise ValueError(f"noise_std must be finite and >= 0, got {noise_std!r}")
    if inputs == "uniform" and covariance is not None:
        raise ValueError("covariance applies to inputs='gaussian' only")
    if inputs == "uniform" and not (np.isfinite(input_range) and input_range > 0):
        raise ValueError(f"input_range must be positive and finite, got {input_range!r}")
    factor = None
    if inputs == "gaussian":
        factor = jnp.eye(dim, dtype=dtype) if covariance is None else covariance_factor(covariance, dim).astype(dtype)
    # Draw at a bucketed task count and keep the first num_tasks: JAX's (default, partitionable)
    # threefry numbers each entry by its position, so the first rows of a larger draw are exactly the draw of num_tasks rows; every
    # count up to the bucket then shares one compiled sampler (a threefry program costs ~1 s to compile)
    bucket = max(MIN_TASK_BUCKET, 1 << max(0, num_tasks - 1).bit_length())
    tasks = sample_with_factor(key, factor, bucket, dim, context_length, inputs, float(input_range), float(noise_std), dtype)
    if bucket == num_tasks:
        return tasks
    return Tasks(*(jnp.asarray(np.asarray(a)[:num_tasks]) for a in tasks))  # host slice: no per-count program


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6, 7, 8))
def sample_with_factor(key, factor, num_tasks, dim, context_length, inputs, input_range, noise_std, dtype) -> Tasks:
    """The sampler without validation (used inside jitted training losses).

    Args:
        key: the PRNG key (split into weights, inputs and noise).
        factor: the Cholesky factor [dim, dim] of the input covariance (gaussian inputs; None or
            ignored for uniform inputs).
        num_tasks: the number of tasks B (static).
        dim: the input dimension d (static).
        context_length: the context pairs N per task (static).
        inputs: "uniform" or "gaussian" (static).
        input_range: the half-width of uniform inputs (static).
        noise_std: the standard deviation of the context-target noise (static).
        dtype: the dtype of the tasks (static).

    Returns:
        The `Tasks` (see `sample_tasks`).
    """
    kw, kx, kn = jax.random.split(key, 3)
    w = jax.random.normal(kw, (num_tasks, dim), dtype)
    shape = (num_tasks, context_length + 1, dim)
    if inputs == "uniform":
        xs = jax.random.uniform(kx, shape, dtype, minval=-input_range, maxval=input_range)
    else:
        xs = jnp.einsum("btk,dk->btd", jax.random.normal(kx, shape, dtype), factor)
    ys = jnp.einsum("btd,bd->bt", xs, w)
    y = ys[:, :-1]
    if noise_std > 0:
        y = y + noise_std * jax.random.normal(kn, y.shape, dtype)
    return Tasks(xs[:, :-1], y, xs[:, -1], ys[:, -1], w)


def tokens(tasks: Tasks, w0: jax.Array | None = None) -> jax.Array:
    """[B, N + 1, d + 1] token sequences: (x_j, y_j) for the context, (x_q, -w0.x_q) last.

    With the query entry -w0.x_q, the constructed gradient-descent layers started from w0 leave
    minus the prediction of GD from w0 there (w0 = None: start from zero).

    Args:
        tasks: the `Tasks`.
        w0: the start point of the GD the tokens are read by [d] (default None: zero).

    Returns:
        The tokens [B, N + 1, d + 1].

    Raises:
        ValueError: if `w0` does not have shape [d].
    """
    if w0 is not None and np.shape(w0) != (tasks.dim,):
        raise ValueError(f"w0 must have shape ({tasks.dim},) to match the tasks' dim, got {np.shape(w0)}")
    q = jnp.zeros_like(tasks.query_y) if w0 is None else -(tasks.query_x @ jnp.asarray(w0, tasks.x.dtype))
    context = jnp.concatenate([tasks.x, tasks.y[..., None]], axis=-1)
    query = jnp.concatenate([tasks.query_x, q[:, None]], axis=-1)[:, None]
    return jnp.concatenate([context, query], axis=1)


def icl_loss(predictions: jax.Array, tasks: Tasks) -> jax.Array:
    """The in-context loss of the papers: 0.5 * mean over tasks of (prediction - query_y)^2.

    Args:
        predictions: the predictions at the queries [B].
        tasks: the `Tasks` (their noiseless query targets).

    Returns:
        The loss, a scalar.
    """
    return 0.5 * jnp.mean((predictions - tasks.query_y) ** 2)


def icl_losses(predictions: jax.Array, tasks: Tasks) -> jax.Array:
    """`icl_loss` of each row of predictions: the loss after every step or layer.

    Args:
        predictions: predictions at the queries after each of K steps or layers [K, B].
        tasks: the `Tasks`.

    Returns:
        The losses [K].
    """
    return jax.vmap(lambda p: icl_loss(p, tasks))(predictions)
