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
        return self.x.shape[-1]

    @property
    def context_length(self) -> int:
        return self.x.shape[-2]


def _check_positive_int(name: str, value) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def covariance_factor(covariance, dim: int) -> jax.Array:
    """The Cholesky factor of `covariance` ([dim, dim], symmetric positive definite); raises a
    ValueError naming the problem (shape, asymmetry, not positive definite) otherwise."""
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
    random rotation drawn from it; without, the covariance is diagonal (axis-aligned)."""
    dim = _check_positive_int("dim", dim)
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

    Args:
      inputs: "uniform" (x ~ U[-input_range, input_range]^dim) or "gaussian"
        (x ~ N(0, covariance), identity when covariance is None).
      covariance: [dim, dim] symmetric positive definite (gaussian inputs only).
      noise_std: standard deviation of Gaussian noise added to the context targets.
    """
    num_tasks = _check_positive_int("num_tasks", num_tasks)
    dim = _check_positive_int("dim", dim)
    context_length = _check_positive_int("context_length", context_length)
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
    """The sampler without validation (used inside jitted training losses); `factor` is the
    Cholesky factor for gaussian inputs."""
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
    minus the prediction of GD from w0 there (w0 = None: start from zero)."""
    if w0 is not None and np.shape(w0) != (tasks.dim,):
        raise ValueError(f"w0 must have shape ({tasks.dim},) to match the tasks' dim, got {np.shape(w0)}")
    q = jnp.zeros_like(tasks.query_y) if w0 is None else -(tasks.query_x @ jnp.asarray(w0, tasks.x.dtype))
    context = jnp.concatenate([tasks.x, tasks.y[..., None]], axis=-1)
    query = jnp.concatenate([tasks.query_x, q[:, None]], axis=-1)[:, None]
    return jnp.concatenate([context, query], axis=1)


def icl_loss(predictions: jax.Array, tasks: Tasks) -> jax.Array:
    """The in-context loss of the papers: 0.5 * mean over tasks of (prediction - query_y)^2."""
    return 0.5 * jnp.mean((predictions - tasks.query_y) ** 2)
