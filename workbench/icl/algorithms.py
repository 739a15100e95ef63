"""In-context baselines on the same tasks: gradient descent (with a line-searched step eta*),
GD++ (GD with a per-layer input transform, fitted), and iterative Newton (Fu et al.).

All return predictions at the queries after each step, [num_steps, B], so a depth-K model can be
compared with step K, and a trained model's layer l with every step.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from workbench.core.numerics import check_positive_int
from workbench.icl.tasks import Tasks, icl_loss
from workbench.train import optimize


def _gd_gradient(tasks: Tasks, w: jax.Array) -> jax.Array:
    """The gradient of L(w) = 1/(2N) sum_i (w.x_i - y_i)^2 for every task, [B, d]."""
    n = tasks.context_length
    return jnp.einsum("bnd,bn->bd", tasks.x, jnp.einsum("bnd,bd->bn", tasks.x, w) - tasks.y) / n


def _top_curvature(tasks: Tasks) -> float:
    """lambda_max of the mean X^T X / N over the tasks: the scale of stable GD step sizes."""
    s = jnp.einsum("bnd,bne->de", tasks.x, tasks.x) / (tasks.x.shape[0] * tasks.context_length)
    return float(jnp.linalg.eigvalsh(s)[-1])


def gd_predictions(tasks: Tasks, eta, num_steps: int, w0=None) -> jax.Array:
    """Predictions at the queries after 1..num_steps GD steps of size `eta` (scalar or one per
    step) on L(w) = 1/(2N) sum_i (w.x_i - y_i)^2 from w0 (zero by default): [num_steps, B].

    Args:
        tasks: the `Tasks` (each task runs its own GD on its context).
        eta: the step size, a scalar or one per step [num_steps].
        num_steps: the number of GD steps K, an int >= 1.
        w0: the start point [d] (or one per task [B, d]; default None: zero).

    Returns:
        The predictions after each step [K, B].
    """
    return _gd_predictions(tasks, eta, check_positive_int("num_steps", num_steps), w0)


@functools.partial(jax.jit, static_argnums=(2,))
def _gd_predictions(tasks: Tasks, eta, num_steps: int, w0=None) -> jax.Array:
    dtype = tasks.x.dtype
    etas = jnp.broadcast_to(jnp.asarray(eta, dtype), (num_steps,))
    w = jnp.zeros_like(tasks.query_x) if w0 is None else jnp.broadcast_to(jnp.asarray(w0, dtype), tasks.query_x.shape)

    def body(w, e):
        w = w - e * _gd_gradient(tasks, w)
        return w, jnp.einsum("bd,bd->b", w, tasks.query_x)

    return jax.lax.scan(body, w, etas)[1]


def gd_reference_predictions(tokens, eta: float, num_steps: int = 1, w0=None) -> np.ndarray:
    """GD predictions read off the token sequences and computed in float64 NumPy: the reference
    the LSA construction is checked against, sharing no code with the model or `gd_predictions`.

    Each task's context rows (x_j, y_j) and query row (x_q, .) are taken from its tokens; GD on
    L(w) = 1/(2N) sum_j (w.x_j - y_j)^2 from w0 takes w <- w + (eta/N) sum_j (y_j - w.x_j) x_j, so
    one step predicts in closed form x_q.w0 + (eta/N) sum_j (y_j - w0.x_j) (x_j.x_q).

    Args:
        tokens: [B, N + 1, d + 1] token sequences (`tokens(tasks, w0)`): N context rows, the query last.
        eta: the GD step size, a scalar.
        num_steps: the number of GD steps K, an int >= 1.
        w0: the start point [d] (default None: zero).

    Returns:
        The float64 predictions after each step, [K, B].

    Raises:
        ValueError: if `tokens` is not [B, N + 1, d + 1] with N >= 1 or `w0` is not [d].
    """
    num_steps = check_positive_int("num_steps", num_steps)
    e = np.asarray(tokens, np.float64)
    if e.ndim != 3 or e.shape[1] < 2 or e.shape[2] < 2:
        raise ValueError(f"tokens must be [B, N + 1, d + 1] with N, d >= 1, got shape {e.shape}")
    x, y, xq = e[:, :-1, :-1], e[:, :-1, -1], e[:, -1, :-1]
    n, d = x.shape[1], x.shape[2]
    w = np.zeros(d) if w0 is None else np.asarray(w0, np.float64)
    if w.shape != (d,):
        raise ValueError(f"w0 must have shape ({d},) to match the tokens, got {w.shape}")
    if num_steps == 1:  # the closed form of the docstring
        return (xq @ w + eta / n * np.sum((y - x @ w) * (x @ xq[:, :, None])[..., 0], axis=1))[None]
    w = np.broadcast_to(w, xq.shape).copy()
    out = []
    for _ in range(num_steps):
        w = w + eta / n * np.einsum("bnd,bn->bd", x, y - np.einsum("bnd,bd->bn", x, w))
        out.append(np.sum(w * xq, axis=1))
    return np.stack(out)


@jax.jit
def gdpp_predictions(tasks: Tasks, etas, gammas) -> jax.Array:
    """GD++ as a token algorithm (what `gdpp_weights` layers compute): each step moves the context
    targets by a GD step of size etas[k] and every input x to (I - gammas[k] X^T X / N) x.

    Args:
        tasks: the `Tasks`.
        etas: the GD step of each step [K].
        gammas: the input-transform strength of each step, one number or [K].

    Returns:
        The predictions after each step, [K, B].
    """
    dtype = tasks.x.dtype
    etas = jnp.asarray(etas, dtype).reshape(-1)
    gammas = jnp.broadcast_to(jnp.asarray(gammas, dtype).reshape(-1), etas.shape)
    n = tasks.context_length

    def body(state, eg):
        x, xq, r, s = state
        e, g = eg
        u = jnp.einsum("bnd,bn->bd", x, r) / n  # X^T r / N
        sx = jnp.einsum("bnd,bne->bde", x, x) / n  # X^T X / N
        r = r - e * jnp.einsum("bnd,bd->bn", x, u)
        s = s - e * jnp.einsum("bd,bd->b", xq, u)
        x = x - g * jnp.einsum("bnd,bde->bne", x, sx)
        xq = xq - g * jnp.einsum("bd,bde->be", xq, sx)
        return (x, xq, r, s), -s

    init = (tasks.x, tasks.query_x, tasks.y, jnp.zeros_like(tasks.query_y))
    return jax.lax.scan(body, init, (etas, gammas))[1]


def newton_predictions(tasks: Tasks, num_iters: int, alpha=None) -> jax.Array:
    """Iterative Newton (Fu et al.): M_0 = alpha S, M_{k+1} = 2 M_k - M_k S M_k with S = X^T X,
    prediction x_q^T M_k X^T y. Returns [num_iters + 1, B] for k = 0..num_iters.

    alpha defaults to 1 / ||S||_2^2 per task, the largest such scale for which every direction
    converges (M_k -> S^{-1}, the least-squares solution); 2 / ||S S^T||_2 would put the top
    eigen-direction exactly on the boundary, where it never converges.

    Args:
        tasks: the `Tasks`.
        num_iters: the number of Newton iterations, an int >= 1.
        alpha: the scale of M_0 = alpha S, a scalar or one per task [B] (default None:
            1 / ||S||_2^2 per task).

    Returns:
        The predictions after iterations 0..num_iters, [num_iters + 1, B].
    """
    return _newton_predictions(tasks, check_positive_int("num_iters", num_iters), alpha)


@functools.partial(jax.jit, static_argnums=(1,))
def _newton_predictions(tasks: Tasks, num_iters: int, alpha=None) -> jax.Array:
    s = jnp.einsum("bnd,bne->bde", tasks.x, tasks.x)
    if alpha is None:
        top = jnp.linalg.eigvalsh(s)[:, -1]
        alpha = 1.0 / top**2
    alpha = jnp.broadcast_to(jnp.asarray(alpha, s.dtype), s.shape[:1])
    xty = jnp.einsum("bnd,bn->bd", tasks.x, tasks.y)

    def pred(m):
        return jnp.einsum("bd,bde,be->b", tasks.query_x, m, xty)

    def body(m, _):
        m = 2 * m - m @ s @ m
        return m, pred(m)

    m0 = alpha[:, None, None] * s
    return jnp.concatenate([pred(m0)[None], jax.lax.scan(body, m0, None, length=num_iters)[1]])


@jax.jit
def least_squares_predictions(tasks: Tasks) -> jax.Array:
    """Minimum-norm least-squares predictions (the limit of Newton; pseudo-inverse), [B].

    Args:
        tasks: the `Tasks`.

    Returns:
        x_q . pinv(X) y for every task, [B].
    """
    w = jnp.einsum("bdn,bn->bd", jnp.linalg.pinv(tasks.x), tasks.y)
    return jnp.einsum("bd,bd->b", w, tasks.query_x)


class LineSearch(NamedTuple):
    """The step size minimising the in-context loss of `num_steps` GD steps on the given tasks."""

    eta: float
    loss: float
    grid: np.ndarray  # the log-spaced step sizes tried first
    grid_losses: np.ndarray


def line_search_eta(tasks: Tasks, num_steps: int = 1, *, num_grid: int = 64, num_iters: int = 40,
                    eta_range: tuple[float, float] | None = None) -> LineSearch:
    """eta* for `num_steps` GD steps: a log-spaced grid over `eta_range` (default a bracket around
    the stable range, 1e-3 .. 4 / lambda_max of the mean X^T X / N), then golden-section search in
    log eta between the grid neighbours of the best point (`num_iters` iterations).

    One step has a closed form (the loss is quadratic in eta); the search agrees with it.

    Args:
        tasks: the `Tasks` the step is tuned on (keep them apart from the test tasks).
        num_steps: the number of GD steps K the step size is tuned for, an int >= 1.
        num_grid: the number of log-spaced grid points, >= 3.
        num_iters: golden-section iterations after the grid, an int >= 1.
        eta_range: (lowest, highest) step size of the grid (default None: 1e-3 / lambda_max to
            4 / lambda_max).

    Returns:
        `LineSearch(eta, loss, grid, grid_losses)`: the best step, its in-context loss after K
        steps, and the grid tried with its losses.

    Raises:
        ValueError: if an argument is out of range.
        FloatingPointError: if every step size on the grid gives a non-finite loss.
    """
    num_steps = check_positive_int("num_steps", num_steps)
    check_positive_int("num_iters", num_iters)
    check_positive_int("num_grid", num_grid, least=3)
    if eta_range is None:
        top = _top_curvature(tasks)
        eta_range = (1e-3 / top, 4.0 / top)
    dtype = tasks.x.dtype
    log_grid = jnp.linspace(math.log(eta_range[0]), math.log(eta_range[1]), num_grid, dtype=dtype)
    eta, loss, losses = _line_search(log_grid, tasks, jnp.asarray(num_steps, jnp.int32), int(num_iters))
    losses = np.asarray(losses)
    if not np.isfinite(losses).any() or not math.isfinite(float(loss)):
        raise FloatingPointError("every step size on the grid gave a non-finite loss; check the tasks")
    grid = np.exp(np.asarray(log_grid))
    eta, loss = float(eta), float(loss)
    return LineSearch(eta, loss, grid, losses)


def _gd_last_prediction(tasks: Tasks, eta, num_steps) -> jax.Array:
    """The prediction after `num_steps` GD steps of size eta from zero (`_gd_predictions(...)[-1]`),
    with a traced step count: one compiled program for every count."""
    def body(_, w):
        return w - eta * _gd_gradient(tasks, w)

    w = jax.lax.fori_loop(0, num_steps, body, jnp.zeros_like(tasks.query_x))
    return jnp.einsum("bd,bd->b", w, tasks.query_x)


@functools.partial(jax.jit, static_argnums=(3,))
def _line_search(log_grid, tasks, num_steps, num_iters):
    """Grid, then golden-section search in log eta between the best grid point's neighbours
    (`num_steps` traced: line searches for 1, 2, 3 or 32 steps share one program)."""
    loss_at = jax.vmap(lambda le: icl_loss(_gd_last_prediction(tasks, jnp.exp(le).astype(tasks.x.dtype), num_steps),
                                           tasks))
    losses = loss_at(log_grid)
    safe = jnp.where(jnp.isfinite(losses), losses, jnp.inf)
    best = jnp.argmin(safe)
    a, b = log_grid[jnp.maximum(best - 1, 0)], log_grid[jnp.minimum(best + 1, log_grid.shape[0] - 1)]
    ratio = (math.sqrt(5) - 1) / 2

    def body(_, ab):
        a, b = ab
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        fc, fd = loss_at(jnp.stack([c, d]))
        fc, fd = jnp.where(jnp.isfinite(fc), fc, jnp.inf), jnp.where(jnp.isfinite(fd), fd, jnp.inf)
        return jnp.where(fc < fd, a, c), jnp.where(fc < fd, d, b)

    a, b = jax.lax.fori_loop(0, num_iters, body, (a, b))
    mid = (a + b) / 2
    f_mid = loss_at(jnp.stack([mid, mid]))[0]
    take_mid = jnp.isfinite(f_mid) & (f_mid <= safe[best])
    log_eta = jnp.where(take_mid, mid, log_grid[best])
    return jnp.exp(log_eta), jnp.where(take_mid, f_mid, safe[best]), losses


class GDPlusPlus(NamedTuple):
    """Fitted GD++ step sizes etas[k] and input-transform strengths gammas[k], and the loss reached."""

    etas: np.ndarray
    gammas: np.ndarray
    loss: float
    losses: np.ndarray  # fitting curve


def fit_gdpp(tasks: Tasks, key: jax.Array, num_layers: int, *, num_steps: int = 500,
             learning_rate: float = 0.02, batch_size: int | None = None) -> GDPlusPlus:
    """Fit the 2 K scalars of K-layer GD++ to minimise the in-context loss on `tasks` with Adam
    (through `workbench.train.optimize`), starting from the line-searched GD step and gamma = 0.
    The parameters are scaled by 1 / lambda_max of the mean X^T X / N so one learning rate suits
    every input scale.

    Args:
        tasks: the `Tasks` the scalars are fitted on (keep them apart from the test tasks).
        key: the PRNG key of the minibatches (used when `batch_size` is set).
        num_layers: the number of GD++ layers K, an int >= 1.
        num_steps: Adam steps, an int >= 1.
        learning_rate: Adam's step size on the scaled parameters.
        batch_size: tasks per Adam step (default None: all tasks every step).

    Returns:
        `GDPlusPlus(etas [K], gammas [K], loss, losses [num_steps])`: the fitted scalars, their
        in-context loss on `tasks`, and the fitting curve.

    Raises:
        FloatingPointError: if the fit diverges (lower `learning_rate`).
    """
    num_layers = check_positive_int("num_layers", num_layers)
    num_steps = check_positive_int("num_steps", num_steps)
    dtype = tasks.x.dtype
    scale = 1.0 / _top_curvature(tasks)
    eta0 = line_search_eta(tasks, num_layers).eta / scale
    params = {"eta": jnp.full((num_layers,), eta0, dtype), "gamma": jnp.zeros((num_layers,), dtype)}
    fitted, losses = _fit_gdpp(params, tasks, key, jnp.asarray(scale, dtype), float(learning_rate), num_steps,
                               batch_size)
    losses = np.asarray(losses)
    if not np.all(np.isfinite(losses)):
        raise FloatingPointError(f"GD++ fitting diverged (loss {losses[~np.isfinite(losses)][0]}); "
                                 "lower learning_rate")
    etas, gammas = np.asarray(fitted["eta"]) * scale, np.asarray(fitted["gamma"]) * scale
    loss = float(icl_loss(gdpp_predictions(tasks, etas, gammas)[-1], tasks))
    return GDPlusPlus(etas, gammas, loss, losses)


def _gdpp_loss(params, batch):
    tasks, scale = batch["tasks"], batch["scale"][0]
    return icl_loss(gdpp_predictions(tasks, params["eta"] * scale, params["gamma"] * scale)[-1], tasks)


@jax.jit(static_argnames=("learning_rate", "num_steps", "batch_size"))
def _fit_gdpp(params, tasks, key, scale, learning_rate, num_steps, batch_size):
    data = {"tasks": tasks, "scale": jnp.broadcast_to(scale, tasks.query_y.shape)}
    return optimize(_gdpp_loss, params, data, key, optimizer=optax.adam(learning_rate), num_steps=num_steps,
                    batch_size=batch_size)
