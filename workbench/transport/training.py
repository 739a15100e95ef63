"""Trainers for neural transport maps: pure functions over infinite samplers, each one
`lax.scan` of Adam steps (`workbench.train.step`), a fresh pair of batches per step drawn from
its own key.

Every trainer takes the samplers `sample_source(key, n)` and `sample_target(key, n)` (a
`problems.Problem`'s, or any pure functions of a key) and returns a `FittedMap`, callable on
points. Each step's batches are drawn from its key before the loop runs and passed to it as data,
so one compiled loop serves every problem of the same shapes (networks of one architecture share
their apply function). The families compared by Schioppa (2019), as we read them (we could read only the
paper's abstract here; the constructions below are ours where the paper's details were needed):

- `train_flow`: heuristic flows. T follows the gradient flow, in its parameters, of a
  discrepancy between the batch T(x) and a target batch y (`DISCREPANCIES`): "knn" (each T(x_i)
  to its k nearest y), "symmetric" (also each y_j to its k nearest T(x)), "kernel" (a
  squared MMD with the exponential kernel exp(-|a - b|^2 / h), h the mean squared distance
  within the target batch) and "covariance" (means and covariances). Each can add a transport
  cost term. Both terms are scale-normalised per batch, loss = D(T(x), y) / D(x, y) +
  cost_weight * mean|T(x) - x|^2 / mean|x - y|^2 (denominators without gradient), so
  `cost_weight` is a dimensionless trade-off that means the same on every problem.
- `train_seguy`: Seguy et al. (2018): neural potentials u, v ascend the dual of the entropic
  Kantorovich problem, E u(x) + E v(y) - eps E exp((u(x) + v(y) - c(x, y)) / eps), on
  independent batches; then T regresses on the barycentric projection, minimising
  E[H(x, y) |T(x) - y|^2] with H = exp((u + v - c) / eps) the plan's density.
- `train_sinkhorn_regression`: the supervised reduction. Each step solves entropic OT between
  the batches (`plans.sinkhorn`, no gradient) and regresses T(x_i) on the barycentric
  projection of the batch plan. `num_iters=1` (a broken Sinkhorn) and `transpose_plan=True`
  (the plan read the wrong way round) are the controls the paper's claims are tested against.
- `train_flow_matching`: a velocity field v(x, t) regresses on x1 - x0 at x_t = (1 - t) x0 +
  t x1 for pairs (x0, x1) from a coupling: "independent", "sinkhorn" (x1 drawn from the
  batch's entropic plan row of x0) or "exact" (the batch's optimal assignment); the map is the
  Euler integration of v from t = 0 to 1 (`euler`).
- `fit_entropic_map`: no network: Sinkhorn on one large pair of samples, then the entropic
  map (Pooladian & Niles-Weed 2021) at any point.
- `train_monge_gap`: Uscidda & Cuturi (2023): fit T#mu to nu (a debiased Sinkhorn divergence,
  ours) plus the Monge gap of T on the source batch, computed with ott-jax's Sinkhorn.

The cost is c(x, y) = |x - y|^2 throughout; entropic regularisations are given relative to the
batch's mean cost (`epsilon=0.01` means 1% of it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from workbench.core.numerics import check_positive_int
from workbench.train import step
from workbench.transport.networks import Model
from workbench.transport.plans import (
    assignment_in_jit,
    barycentric_projection,
    entropic_map,
    sinkhorn,
    squared_distances,
)

PyTree = Any
Sampler = Callable[[jax.Array, int], jax.Array]


class FittedMap(NamedTuple):
    """A learnt map: `fitted(x)` is `apply_fn(params, x)` on points [n, dim]; `losses` holds the
    training loss before each step (for two-phase trainers, both phases one after the other)."""

    params: PyTree
    apply_fn: Callable
    losses: jax.Array

    def __call__(self, x):
        return self.apply_fn(self.params, x)


def _check_common(num_steps, batch_size, learning_rate):
    num_steps = check_positive_int("num_steps", num_steps)
    batch_size = check_positive_int("batch_size", batch_size, least=2)
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
    return num_steps, batch_size


def _check_epsilon(epsilon):
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0 (relative to the batch's mean cost), got {epsilon!r}")


# Compile once: the compiled programs below are keyed on static configuration only (the loss, its
# networks' shared apply functions, its options, the learning rate, the batches' shapes). The
# problem enters as data: every batch is drawn before training by `_draw` (a small program of
# its own per sampler) and the scan steps over the drawn batches, so one compiled trainer serves
# every problem of the same shapes. Each step's batches are those the step's key draws, as if
# drawn inside the loop.

_CHUNK_BYTES = 2**26  # the most bytes of drawn batches held at once; longer runs go in chunks


def _batches(sample_source, sample_target, key, batch_size):
    ks, kt = jax.random.split(key)
    return sample_source(ks, batch_size), sample_target(kt, batch_size)


@functools.partial(jax.jit, static_argnames=("sample_source", "sample_target", "batch_size"))
def _draw(keys, *, sample_source, sample_target, batch_size):
    """The batches of each key of `keys` [num_steps]: ([num_steps, batch_size, dim]) x 2, one key
    at a time (`lax.map`: the same operations, so the same numbers, as drawing inside the loop)."""
    return jax.lax.map(lambda k: _batches(sample_source, sample_target, k, batch_size), keys)


@functools.partial(jax.jit, static_argnames=("loss", "static", "learning_rate"))
def _adam_steps(params, opt_state, batches, args, *, loss, static, learning_rate):
    """One Adam step of `loss(params, batch, args, static)` per leading index of `batches`."""
    optimizer = optax.adam(learning_rate)

    def body(carry, batch):
        p, s = carry
        p, s, value = step(lambda q, b: loss(q, b, args, static), optimizer, p, s, batch)
        return (p, s), value

    with jax.numpy_dtype_promotion("standard"):  # optax's bias correction mixes int and float
        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), batches)
    return params, opt_state, losses


def _adam_loop(loss, static, params, args, keys, make_batches, learning_rate):
    """Adam on `loss` over the batches `make_batches(keys[i])` of every step i, drawn and run in
    chunks of at most `_CHUNK_BYTES` of batches (one chunk for the usual sizes)."""
    num_steps = keys.shape[0]
    with jax.numpy_dtype_promotion("standard"):  # as when the samplers ran inside the training loop
        shapes = jax.eval_shape(make_batches, keys[:1])
        per_step = sum(a.size * (a.dtype.itemsize if jnp.issubdtype(a.dtype, jnp.number) else 8)
                       for a in jax.tree.leaves(shapes))
        chunk = max(1, min(num_steps, _CHUNK_BYTES // max(per_step, 1)))
        opt_state = optax.adam(learning_rate).init(params)
        losses = []
        for start in range(0, num_steps, chunk):
            params, opt_state, part = _adam_steps(params, opt_state, make_batches(keys[start:start + chunk]), args,
                                                  loss=loss, static=static, learning_rate=learning_rate)
            losses.append(part)
    return params, losses[0] if len(losses) == 1 else jnp.concatenate(losses)


def _drawer(sample_source, sample_target, batch_size):
    return functools.partial(_draw, sample_source=sample_source, sample_target=sample_target,
                             batch_size=batch_size)


# ----------------------------------------------------------------------------- heuristic flows


def _knn(a, y, k):
    d = squared_distances(a, y)
    return jnp.mean(-jax.lax.top_k(-d, k)[0])


def _symmetric(a, y, k):
    return _knn(a, y, k) + _knn(y, a, k)


def _kernel(a, y, k):
    del k
    h = jax.lax.stop_gradient(jnp.mean(squared_distances(y, y)))
    gram = lambda p, q: jnp.mean(jnp.exp(-squared_distances(p, q) / h))
    return gram(a, a) + gram(y, y) - 2.0 * gram(a, y)


def _covariance(a, y, k):
    del k
    ma, my = jnp.mean(a, 0), jnp.mean(y, 0)
    ca = (a - ma).T @ (a - ma) / a.shape[0]
    cy = (y - my).T @ (y - my) / y.shape[0]
    return jnp.sum((ma - my) ** 2) + jnp.sum((ca - cy) ** 2)


DISCREPANCIES = {"knn": _knn, "symmetric": _symmetric, "kernel": _kernel, "covariance": _covariance}


def discrepancy(kind: str, a: jax.Array, y: jax.Array, k: int = 1) -> jax.Array:
    """The discrepancy D(a, y) between two batches that a heuristic flow descends (see the
    module docstring); 0 when a equals y as a set, for "knn" and "symmetric" only then.

    Args:
        kind: one of `DISCREPANCIES`: "knn", "symmetric", "kernel", "covariance".
        a: [n, dim] the moving batch (T(x)).
        y: [m, dim] the target batch.
        k: the neighbours of "knn" and "symmetric".

    Returns:
        The scalar discrepancy.

    Raises:
        ValueError: an unknown kind, or k larger than a batch.
    """
    if kind not in DISCREPANCIES:
        raise ValueError(f"kind must be one of {sorted(DISCREPANCIES)}, got {kind!r}")
    k = check_positive_int("k", k)
    if kind in ("knn", "symmetric") and k > min(a.shape[0], y.shape[0]):
        raise ValueError(f"k={k} neighbours needs batches of at least {k} points, got {a.shape[0]} and {y.shape[0]}")
    return DISCREPANCIES[kind](a, y, k)


def _flow_loss(p, batch, cost_weight, static):
    apply_fn, kind, k = static
    fn = DISCREPANCIES[kind]
    x, y = batch
    tx = apply_fn(p, x)
    scale = jax.lax.stop_gradient(jnp.maximum(fn(x, y, k), 1e-12))
    cost_scale = jax.lax.stop_gradient(jnp.mean(jnp.sum((x - y) ** 2, 1)))
    return fn(tx, y, k) / scale + cost_weight * jnp.mean(jnp.sum((tx - x) ** 2, 1)) / cost_scale


def train_flow(model: Model, sample_source: Sampler, sample_target: Sampler, key: jax.Array, *,
               kind: str = "knn", k: int = 1, cost_weight: float = 0.0, num_steps: int = 500,
               batch_size: int = 128, learning_rate: float = 1e-3) -> FittedMap:
    """A heuristic flow: Adam on D(T(x), y) / D(x, y) + cost_weight * mean|T(x) - x|^2 /
    mean|x - y|^2 over fresh batches (see the module docstring).

    Args:
        model: the map network (`networks.map_model`).
        sample_source: `sample_source(key, n) -> [n, dim]`, draws from mu.
        sample_target: `sample_target(key, n) -> [n, dim]`, draws from nu.
        key: PRNG key drawing every batch.
        kind: the discrepancy, one of `DISCREPANCIES`.
        k: the neighbours of "knn" and "symmetric".
        cost_weight: the weight of the normalised transport cost (0: none).
        num_steps: Adam steps.
        batch_size: points per batch of each distribution.
        learning_rate: Adam's step size.

    Returns:
        The `FittedMap`.

    Raises:
        ValueError: an unknown kind, a negative cost weight, or a bad count.
    """
    num_steps, batch_size = _check_common(num_steps, batch_size, learning_rate)
    if kind not in DISCREPANCIES:
        raise ValueError(f"kind must be one of {sorted(DISCREPANCIES)}, got {kind!r}")
    k = check_positive_int("k", k)
    if k > batch_size:
        raise ValueError(f"k={k} neighbours needs batch_size >= k, got {batch_size}")
    if not cost_weight >= 0:
        raise ValueError(f"cost_weight must be >= 0, got {cost_weight!r}")
    dtype = jax.tree.leaves(model.params)[0].dtype
    params, losses = _adam_loop(_flow_loss, (model.apply_fn, kind, k), model.params, jnp.asarray(cost_weight, dtype),
                                jax.random.split(key, num_steps), _drawer(sample_source, sample_target, batch_size),
                                float(learning_rate))
    return FittedMap(params, model.apply_fn, losses)


# ----------------------------------------------------------------------------- Seguy et al. (2018)


@jax.jit
def _mean_cost(x, y):
    return jnp.mean(squared_distances(x, y))


def _log_density(u_fn, v_fn, pot, x, y, scale, epsilon):  # (u_i + v_j - c_ij) / eps in units of the mean cost
    return (u_fn(pot[0], x)[:, None] + v_fn(pot[1], y)[None, :] - squared_distances(x, y) / scale) / epsilon


def _dual_loss(pot, batch, scale, static):
    u_fn, v_fn, epsilon = static
    x, y = batch
    u, v = u_fn(pot[0], x), v_fn(pot[1], y)
    return -(jnp.mean(u) + jnp.mean(v) - epsilon * jnp.mean(jnp.exp(_log_density(u_fn, v_fn, pot, x, y, scale,
                                                                                 epsilon))))


def _barycentric_loss(p, batch, args, static):
    u_fn, v_fn, t_fn, epsilon = static
    potentials, scale = args
    x, y = batch
    h = jax.lax.stop_gradient(jnp.exp(_log_density(u_fn, v_fn, potentials, x, y, scale, epsilon)))
    return jnp.mean(h * squared_distances(t_fn(p, x), y)) / scale


def train_seguy(model: Model, potential_u: Model, potential_v: Model, sample_source: Sampler,
                sample_target: Sampler, key: jax.Array, *, epsilon: float = 0.05, num_steps: int = 500,
                batch_size: int = 128, learning_rate: float = 1e-3) -> FittedMap:
    """Seguy et al. (2018): `num_steps` steps on the entropic dual with neural potentials u
    (on mu) and v (on nu), then `num_steps` steps regressing T on the barycentric projection
    (see the module docstring). Costs are divided by the mean cost of one pair of 1024-point
    samples, so `epsilon` is relative to it.

    Args:
        model: the map network (`networks.map_model`).
        potential_u: the potential on the source (`networks.potential_model(kind="mlp")`).
        potential_v: the potential on the target.
        sample_source: draws from mu.
        sample_target: draws from nu.
        key: PRNG key drawing every batch.
        epsilon: the entropic regularisation, relative to the mean cost (> 0).
        num_steps: Adam steps of each phase.
        batch_size: points per batch of each distribution.
        learning_rate: Adam's step size (both phases).

    Returns:
        The `FittedMap` (losses: the negative dual, then the regression loss).

    Raises:
        ValueError: a non-positive epsilon or a bad count.
    """
    num_steps, batch_size = _check_common(num_steps, batch_size, learning_rate)
    _check_epsilon(epsilon)
    k_scale, k_dual, k_map = jax.random.split(key, 3)
    scale = _mean_cost(*jax.tree.map(lambda a: a[0], _drawer(sample_source, sample_target, 1024)(k_scale[None])))
    draw = _drawer(sample_source, sample_target, batch_size)
    u_fn, v_fn, epsilon = potential_u.apply_fn, potential_v.apply_fn, float(epsilon)
    potentials, dual_losses = _adam_loop(_dual_loss, (u_fn, v_fn, epsilon), (potential_u.params, potential_v.params),
                                         scale, jax.random.split(k_dual, num_steps), draw, float(learning_rate))
    params, map_losses = _adam_loop(_barycentric_loss, (u_fn, v_fn, model.apply_fn, epsilon), model.params,
                                    (potentials, scale), jax.random.split(k_map, num_steps), draw,
                                    float(learning_rate))
    return FittedMap(params, model.apply_fn, jnp.concatenate([dual_losses, map_losses]))


# ----------------------------------------------------------------------------- supervised reduction


def batch_targets(x: jax.Array, y: jax.Array, epsilon: float, num_iters: int = 100,
                  transpose_plan: bool = False) -> jax.Array:
    """The regression targets of a batch: the barycentric projection of the entropic plan
    between x and y (`epsilon` relative to the batch's mean cost), without gradient.

    Args:
        x: [n, dim] the source batch.
        y: [n, dim] the target batch.
        epsilon: the entropic regularisation relative to the mean cost (> 0).
        num_iters: Sinkhorn iterations (1: the broken-Sinkhorn control); may be traced.
        transpose_plan: read the plan the wrong way round (P^T, the transposed-plan control); a
            bool, or a traced boolean when x and y have the same size.

    Returns:
        [n, dim] the target of each x_i.
    """
    x, y = jax.lax.stop_gradient(x), jax.lax.stop_gradient(y)
    c = squared_distances(x, y)
    result = sinkhorn(x, y, epsilon * jnp.mean(c), num_iters, cost=c)
    if isinstance(transpose_plan, bool):
        plan = result.plan.T if transpose_plan else result.plan
    else:  # traced (one compiled program for the method and its control); needs n == m
        plan = jnp.where(transpose_plan, result.plan.T, result.plan)
    return jax.lax.stop_gradient(barycentric_projection(plan, y))


def _regression_loss(p, batch, args, static):
    # num_iters and transpose_plan are traced: the method and its two controls share one program
    num_iters, transpose_plan = args
    apply_fn, epsilon = static
    x, y = batch
    target = batch_targets(x, y, epsilon, num_iters, transpose_plan)
    scale = jax.lax.stop_gradient(jnp.mean(squared_distances(x, y)))
    return jnp.mean(jnp.sum((apply_fn(p, x) - target) ** 2, 1)) / scale


def train_sinkhorn_regression(model: Model, sample_source: Sampler, sample_target: Sampler, key: jax.Array, *,
                              epsilon: float = 0.01, num_iters: int = 100, transpose_plan: bool = False,
                              num_steps: int = 500, batch_size: int = 128,
                              learning_rate: float = 1e-3) -> FittedMap:
    """The supervised reduction: regress T(x_i) on `batch_targets(x, y, ...)` for fresh batches.

    Args:
        model: the map network (`networks.map_model`).
        sample_source: draws from mu.
        sample_target: draws from nu.
        key: PRNG key drawing every batch.
        epsilon: the entropic regularisation relative to each batch's mean cost (> 0).
        num_iters: Sinkhorn iterations per batch.
        transpose_plan: use P^T (the control).
        num_steps: Adam steps.
        batch_size: points per batch of each distribution.
        learning_rate: Adam's step size.

    Returns:
        The `FittedMap`.

    Raises:
        ValueError: a non-positive epsilon or a bad count.
    """
    num_steps, batch_size = _check_common(num_steps, batch_size, learning_rate)
    _check_epsilon(epsilon)
    num_iters = check_positive_int("num_iters", num_iters)
    params, losses = _adam_loop(_regression_loss, (model.apply_fn, float(epsilon)), model.params,
                                (jnp.asarray(num_iters, jnp.int32), jnp.asarray(bool(transpose_plan))),
                                jax.random.split(key, num_steps), _drawer(sample_source, sample_target, batch_size),
                                float(learning_rate))
    return FittedMap(params, model.apply_fn, losses)


# ----------------------------------------------------------------------------- flow matching

COUPLINGS = ("independent", "sinkhorn", "exact")


def euler(velocity_fn: Callable, params: PyTree, x: jax.Array, num_steps: int = 32) -> jax.Array:
    """Integrate dx/dt = v(x, t) from t = 0 to 1 with `num_steps` explicit Euler steps.

    Args:
        velocity_fn: `velocity_fn(params, x [n, dim], t [n]) -> [n, dim]`.
        params: its params.
        x: [n, dim] the starting points.
        num_steps: Euler steps (static).

    Returns:
        [n, dim] the points at t = 1.
    """
    h = 1.0 / num_steps

    def body(i, z):
        t = jnp.full((z.shape[0],), i * h, z.dtype)
        return z + h * velocity_fn(params, z, t)

    return jax.lax.fori_loop(0, num_steps, body, x)


class _Integrated(NamedTuple):
    """The map of a velocity field: `euler(velocity_fn, params, x, num_steps)` (compares by value,
    so maps of one architecture share compiled programs)."""

    velocity_fn: Callable
    num_steps: int

    def __call__(self, params, x):
        return euler(self.velocity_fn, params, x, self.num_steps)


def couple(x: jax.Array, y: jax.Array, key: jax.Array, coupling: str, epsilon: float = 0.01,
           num_iters: int = 100) -> jax.Array:
    """Reorder the target batch so that (x_i, y'_i) are pairs of a coupling: "independent"
    (y as drawn), "sinkhorn" (y'_i drawn from row i of the batch's entropic plan, `epsilon`
    relative to the mean cost) or "exact" (the batch's optimal assignment).

    Args:
        x: [n, dim] the source batch.
        y: [n, dim] the target batch.
        key: PRNG key drawing from the plan's rows ("sinkhorn" only).
        coupling: one of `COUPLINGS`.
        epsilon: the entropic regularisation of "sinkhorn".
        num_iters: Sinkhorn iterations of "sinkhorn".

    Returns:
        [n, dim] the paired target points.
    """
    if coupling == "independent":
        return y
    if coupling == "exact":
        return y[assignment_in_jit(x, y)]
    if coupling == "sinkhorn":
        x, y = jax.lax.stop_gradient(x), jax.lax.stop_gradient(y)
        c = squared_distances(x, y)
        eps = epsilon * jnp.mean(c)
        result = sinkhorn(x, y, eps, num_iters, cost=c)
        logits = (result.g[None, :] - c) / eps  # row i of the plan, up to its normaliser
        return y[jax.random.categorical(key, logits, axis=1)]
    raise ValueError(f"coupling must be one of {COUPLINGS}, got {coupling!r}")


def _flow_matching_loss(p, batch, args, static):
    del args
    apply_fn, coupling, epsilon = static
    x0, y, kc, kt = batch
    x1 = couple(x0, y, kc, coupling, epsilon)
    t = jax.random.uniform(kt, (x0.shape[0],), x0.dtype)
    xt = (1.0 - t)[:, None] * x0 + t[:, None] * x1
    scale = jax.lax.stop_gradient(jnp.mean(jnp.sum((x1 - x0) ** 2, 1)))
    return jnp.mean(jnp.sum((apply_fn(p, xt, t) - (x1 - x0)) ** 2, 1)) / scale


def _flow_matching_batches(keys, draw):
    """Each step's key splits into (batches, coupling, times) keys, as `_flow_matching_loss` reads them."""
    parts = jax.vmap(lambda k: jax.random.split(k, 3))(keys)
    return (*draw(parts[:, 0]), parts[:, 1], parts[:, 2])


def train_flow_matching(model: Model, sample_source: Sampler, sample_target: Sampler, key: jax.Array, *,
                        coupling: str = "exact", epsilon: float = 0.01, num_steps: int = 500,
                        batch_size: int = 128, learning_rate: float = 1e-3, euler_steps: int = 32) -> FittedMap:
    """Flow matching with a coupling (see `couple`); the fitted map integrates the velocity.

    Args:
        model: the velocity network (`networks.velocity_model`).
        sample_source: draws from mu.
        sample_target: draws from nu.
        key: PRNG key drawing batches, couplings and times.
        coupling: one of `COUPLINGS`.
        epsilon: the entropic regularisation of the "sinkhorn" coupling, relative to the mean cost.
        num_steps: Adam steps.
        batch_size: points per batch of each distribution.
        learning_rate: Adam's step size.
        euler_steps: Euler steps of the fitted map.

    Returns:
        The `FittedMap` (apply_fn integrates from t = 0 to 1).

    Raises:
        ValueError: an unknown coupling, a non-positive epsilon or a bad count.
    """
    num_steps, batch_size = _check_common(num_steps, batch_size, learning_rate)
    if coupling not in COUPLINGS:
        raise ValueError(f"coupling must be one of {COUPLINGS}, got {coupling!r}")
    _check_epsilon(epsilon)
    euler_steps = check_positive_int("euler_steps", euler_steps)
    make_batches = functools.partial(_flow_matching_batches, draw=_drawer(sample_source, sample_target, batch_size))
    params, losses = _adam_loop(_flow_matching_loss, (model.apply_fn, coupling, float(epsilon)), model.params, (),
                                jax.random.split(key, num_steps), make_batches, float(learning_rate))
    return FittedMap(params, _Integrated(model.apply_fn, euler_steps), losses)


# ----------------------------------------------------------------------------- entropic map


_sinkhorn_jit = jax.jit(sinkhorn, static_argnames="num_iters")


def _entropic_apply(params, x):
    return entropic_map(x, params["y"], params["g"], params["epsilon"])


def fit_entropic_map(sample_source: Sampler, sample_target: Sampler, key: jax.Array, *, num_samples: int = 1024,
                     epsilon: float = 0.01, num_iters: int = 500) -> FittedMap:
    """The entropic map estimator: Sinkhorn between `num_samples` source and target samples
    (`epsilon` relative to their mean cost), then `plans.entropic_map` with its g.

    Args:
        sample_source: draws from mu.
        sample_target: draws from nu.
        key: PRNG key drawing the two samples.
        num_samples: points of each sample.
        epsilon: the entropic regularisation relative to the mean cost (> 0).
        num_iters: Sinkhorn iterations.

    Returns:
        The `FittedMap` (params: y, g and the absolute epsilon; losses: [the final marginal error]).

    Raises:
        FloatingPointError: Sinkhorn produced a non-finite potential.
    """
    num_samples = check_positive_int("num_samples", num_samples, least=2)
    _check_epsilon(epsilon)
    x, y = _batches(sample_source, sample_target, key, num_samples)
    c = squared_distances(x, y)
    eps = epsilon * jnp.mean(c)
    result = _sinkhorn_jit(x, y, eps, num_iters=num_iters, cost=c)
    if not bool(result.finite):
        raise FloatingPointError("fit_entropic_map: Sinkhorn produced non-finite potentials")
    return FittedMap({"y": y, "g": result.g, "epsilon": eps}, _entropic_apply, result.marginal_error[None])


# ----------------------------------------------------------------------------- Monge gap (ott-jax)


def monge_gap(x: jax.Array, mapped: jax.Array, epsilon, num_iters: int = 200) -> jax.Array:
    """The entropic Monge gap of Uscidda & Cuturi (2023) on a sample, with ott-jax's Sinkhorn:
    mean_i |x_i - T(x_i)|^2 - W_eps(x, T(x)), W_eps the entropic OT cost ott reports as
    `ent_reg_cost` (what `ott.neural.methods.monge_gap.monge_gap_from_samples` computes; that
    module needs diffrax, which we do not install, so we call the solver directly).
    Non-negative up to the entropic bias; 0 for an optimal map as eps -> 0.

    Args:
        x: [n, dim] source points.
        mapped: [n, dim] their images T(x_i).
        epsilon: the absolute entropic regularisation (> 0).
        num_iters: the most Sinkhorn iterations of ott's solver.

    Returns:
        The scalar gap (differentiable in `mapped`, by ott's implicit differentiation).
    """
    from ott.geometry import pointcloud
    from ott.solvers import linear

    with jax.numpy_dtype_promotion("standard"):  # ott-jax mixes int and float internally
        geom = pointcloud.PointCloud(x, mapped, epsilon=epsilon)
        out = linear.solve(geom, max_iterations=num_iters, threshold=1e-3)
        return jnp.mean(jnp.sum((x - mapped) ** 2, 1)) - out.ent_reg_cost


def sinkhorn_divergence(a: jax.Array, y: jax.Array, epsilon, num_iters: int = 50) -> jax.Array:
    """The debiased Sinkhorn divergence OT_eps(a, y) - (OT_eps(a, a) + OT_eps(y, y)) / 2 with the
    dual value of our fixed-iteration `sinkhorn` as OT_eps (differentiable through the
    iterations).

    Args:
        a: [n, dim] points.
        y: [m, dim] points.
        epsilon: the absolute entropic regularisation (> 0).
        num_iters: Sinkhorn iterations of each of the three problems.

    Returns:
        The scalar divergence (0 when a and y coincide).
    """
    def value(p, q):
        r = sinkhorn(p, q, epsilon, num_iters)
        return jnp.mean(r.f) + jnp.mean(r.g)  # the dual at the final iterate (its exp term is eps)

    return value(a, y) - 0.5 * (value(a, a) + value(y, y))


def _monge_gap_loss(p, batch, args, static):
    del args
    apply_fn, epsilon, gap_weight = static
    x, y = batch
    scale = jax.lax.stop_gradient(jnp.mean(squared_distances(x, y)))
    tx = apply_fn(p, x)
    fit = sinkhorn_divergence(tx, y, epsilon * scale)
    return (fit + gap_weight * monge_gap(x, tx, epsilon * scale)) / scale


def train_monge_gap(model: Model, sample_source: Sampler, sample_target: Sampler, key: jax.Array, *,
                    epsilon: float = 0.01, gap_weight: float = 1.0, num_steps: int = 500, batch_size: int = 128,
                    learning_rate: float = 1e-3) -> FittedMap:
    """A map fitted by a Sinkhorn divergence to nu plus `gap_weight` times its Monge gap on the
    source batch (Uscidda & Cuturi 2023), both with `epsilon` relative to the batch's mean cost.

    Args:
        model: the map network (`networks.map_model`).
        sample_source: draws from mu.
        sample_target: draws from nu.
        key: PRNG key drawing every batch.
        epsilon: the entropic regularisation relative to the mean cost (> 0).
        gap_weight: the weight of the Monge gap (>= 0).
        num_steps: Adam steps.
        batch_size: points per batch of each distribution.
        learning_rate: Adam's step size.

    Returns:
        The `FittedMap`.
    """
    num_steps, batch_size = _check_common(num_steps, batch_size, learning_rate)
    _check_epsilon(epsilon)
    if not gap_weight >= 0:
        raise ValueError(f"gap_weight must be >= 0, got {gap_weight!r}")
    params, losses = _adam_loop(_monge_gap_loss, (model.apply_fn, float(epsilon), float(gap_weight)), model.params,
                                (), jax.random.split(key, num_steps), _drawer(sample_source, sample_target, batch_size),
                                float(learning_rate))
    return FittedMap(params, model.apply_fn, losses)
