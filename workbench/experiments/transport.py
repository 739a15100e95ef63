"""The neural-transport paper's recipes: its methods by name, each fitted on a problem with a
known answer and scored against it, over seeds.

`METHODS` names every method of the comparison (heuristic flows with and without the cost term,
the Seguy dual, the supervised reduction and its two broken controls, flow matching with three
couplings, the entropic map and the Monge gap); `fit` trains one, `evaluate` scores it
(`transport.metrics`), `compare` runs a method x problem x seed grid and `table` averages it.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np

from workbench import transport
from workbench.transport import metrics, networks, training


class Method(NamedTuple):
    """A method of the comparison: `trainer` is one of "identity" (the baseline T(x) = x), "flow",
    "seguy", "regression", "flow_matching", "entropic", "monge_gap"; `family` how the paper groups it; `options` the
    trainer's keyword arguments."""

    trainer: str
    family: str
    options: tuple = ()


METHODS = {
    "not moving": Method("identity", "baseline"),
    "1-NN flow": Method("flow", "heuristic", (("kind", "knn"), ("k", 1))),
    "1-NN flow + cost": Method("flow", "heuristic", (("kind", "knn"), ("k", 1), ("cost_weight", 1.0))),
    "5-NN flow": Method("flow", "heuristic", (("kind", "knn"), ("k", 5))),
    "symmetric flow": Method("flow", "heuristic", (("kind", "symmetric"),)),
    "symmetric flow + cost": Method("flow", "heuristic", (("kind", "symmetric"), ("cost_weight", 0.3))),
    "kernel flow": Method("flow", "heuristic", (("kind", "kernel"),)),
    "kernel flow + cost": Method("flow", "heuristic", (("kind", "kernel"), ("cost_weight", 0.3))),
    "covariance flow": Method("flow", "heuristic", (("kind", "covariance"),)),
    "Seguy dual": Method("seguy", "dual", (("learning_rate", 1e-3),)),
    "Sinkhorn regression": Method("regression", "supervised"),
    "control: 1-iteration Sinkhorn": Method("regression", "control", (("num_iters", 1),)),
    "control: transposed plan": Method("regression", "control", (("transpose_plan", True),)),
    "flow matching, independent": Method("flow_matching", "flow matching", (("coupling", "independent"),)),
    "flow matching, Sinkhorn": Method("flow_matching", "flow matching", (("coupling", "sinkhorn"),)),
    "flow matching, exact OT": Method("flow_matching", "flow matching", (("coupling", "exact"),)),
    "entropic map": Method("entropic", "entropic"),
    "Monge gap": Method("monge_gap", "Monge gap"),
}


def make_problem(name: str, dim: int, seed: int = 0) -> transport.problems.Problem:
    """A problem of the paper by name: "gaussian", "brenier" (random instances from `seed`) or
    "disks" (dim 2 only).

    Args:
        name: "gaussian", "brenier" or "disks".
        dim: the dimension.
        seed: the seed of the random instance.

    Returns:
        The `Problem`.

    Raises:
        ValueError: an unknown name, or disks in a dimension other than 2.
    """
    key = jax.random.key(seed)
    if name == "gaussian":
        return transport.problems.gaussian(key, dim)
    if name == "brenier":
        return transport.problems.brenier(key, dim)
    if name == "disks":
        if dim != 2:
            raise ValueError(f"the disks problem is 2-d, got dim={dim}")
        return transport.problems.disks()
    raise ValueError(f"problem must be 'gaussian', 'brenier' or 'disks', got {name!r}")


def fit(problem: transport.problems.Problem, method: str, key: jax.Array, *, num_steps: int = 500,
        batch_size: int = 128, learning_rate: float = 5e-3, hidden: int = 64, depth: int = 2,
        **overrides) -> training.FittedMap:
    """Train `METHODS[method]` on `problem` (networks drawn from `key`, batches from a key
    folded from it).

    Args:
        problem: the `Problem`.
        method: a key of `METHODS`.
        key: PRNG key of the networks' initialisation and of every batch.
        num_steps: Adam steps (each phase of the Seguy dual).
        batch_size: points per batch.
        learning_rate: Adam's step size.
        hidden: the networks' width.
        depth: the networks' hidden layers.
        **overrides: trainer options replacing the method's own.

    Returns:
        The `FittedMap`.

    Raises:
        ValueError: an unknown method.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    spec = METHODS[method]
    options = {"num_steps": num_steps, "batch_size": batch_size, "learning_rate": learning_rate,
               **dict(spec.options), **overrides}
    k_net, k_u, k_v, k_train = jax.random.split(key, 4)
    source, target, dim = problem.sample_source, problem.sample_target, problem.dim
    if spec.trainer == "identity":
        return training.FittedMap({}, _identity, jax.numpy.zeros((0,)))
    if spec.trainer == "entropic":
        options = {k: v for k, v in options.items() if k not in ("num_steps", "batch_size", "learning_rate")}
        return training.fit_entropic_map(source, target, k_train, **options)
    if spec.trainer == "flow_matching":
        model = networks.velocity_model(k_net, dim, hidden, depth)
        return training.train_flow_matching(model, source, target, k_train, **options)
    model = networks.map_model(k_net, dim, hidden, depth)
    if spec.trainer == "flow":
        return training.train_flow(model, source, target, k_train, **options)
    if spec.trainer == "regression":
        return training.train_sinkhorn_regression(model, source, target, k_train, **options)
    if spec.trainer == "monge_gap":
        return training.train_monge_gap(model, source, target, k_train, **options)
    u = networks.potential_model(k_u, dim, hidden, depth, kind="mlp")
    v = networks.potential_model(k_v, dim, hidden, depth, kind="mlp")
    return training.train_seguy(model, u, v, source, target, k_train, **options)


def _identity(params, x):
    del params
    return x


class Row(NamedTuple):
    """A map's scores: l2_uvp (%), cost_ratio (its cost over W2^2), w2 W2(T(x), y), floor
    W2(y, y'), excess w2 - floor (all on `num_points` samples)."""

    l2_uvp: float
    cost_ratio: float
    w2: float
    floor: float
    excess: float


def evaluate(problem: transport.problems.Problem, mapped_fn, key: jax.Array, num_points: int = 1000) -> Row:
    """Score a map on fresh samples: against the true map (or, without one, the exact assignment
    of the source sample to a target sample), its cost against W2^2 (closed form, E|x - T*(x)|^2,
    or the assignment's cost), and W2 to a target sample next to the floor.

    Args:
        problem: the `Problem`.
        mapped_fn: the map, `mapped_fn(x [n, dim]) -> [n, dim]` (a `FittedMap`).
        key: PRNG key drawing the evaluation samples.
        num_points: points in each sample.

    Returns:
        The `Row`.
    """
    kx, ky, ky2 = jax.random.split(key, 3)
    x = problem.sample_source(kx, num_points)
    y, y2 = np.asarray(problem.sample_target(ky, num_points)), np.asarray(problem.sample_target(ky2, num_points))
    mapped = np.asarray(mapped_fn(x))
    if problem.true_map is not None:
        reference = np.asarray(problem.true_map(x))
    else:
        reference = metrics.assignment_map(x, y)
    w2_squared = problem.w2_squared or metrics.transport_cost(x, reference)
    w2 = metrics.w2_against_floor(mapped, y, y2)
    return Row(metrics.l2_uvp(mapped, reference, problem.target_variance), metrics.cost_ratio(x, mapped, w2_squared),
               w2.w2, w2.floor, w2.excess)


class Comparison(NamedTuple):
    """`compare`'s output: results {(problem label, method): [Row per seed]} and fitted
    {(problem label, method): the first seed's `FittedMap`}."""

    results: dict
    fitted: dict


def merge(*comparisons: Comparison) -> Comparison:
    """One `Comparison` holding the entries of several.

    Args:
        *comparisons: `compare` outputs.

    Returns:
        The merged `Comparison`.
    """
    return Comparison({k: v for c in comparisons for k, v in c.results.items()},
                      {k: v for c in comparisons for k, v in c.fitted.items()})


def compare(problems: dict, methods: Sequence[str], seeds: Sequence[int], *, num_points: int = 1000,
            progress: bool = True, **fit_kwargs) -> Comparison:
    """Every method on every problem for every seed (training key `method_key(seed, method)`, so a
    method's numbers do not depend on which others run; evaluation samples from a key of their
    own).

    Args:
        problems: label -> `Problem`.
        methods: keys of `METHODS`.
        seeds: the training seeds.
        num_points: evaluation points.
        progress: show a progress bar.
        **fit_kwargs: passed to `fit` (num_steps, batch_size, ...).

    Returns:
        The `Comparison` (rows per seed, and the first seed's fitted maps).
    """
    from workbench.core.progress import bar

    results, fitted_maps = {}, {}
    with bar(total=len(problems) * len(methods) * len(seeds), desc="transport", disable=not progress) as pbar:
        for label, problem in problems.items():
            for method in methods:
                rows = []
                for seed in seeds:
                    key = method_key(seed, method)
                    fitted = fit(problem, method, key, **fit_kwargs)
                    fitted_maps.setdefault((label, method), fitted)
                    rows.append(evaluate(problem, fitted, jax.random.fold_in(jax.random.key(seed), 10_000),
                                         num_points))
                    pbar.update(1)
                results[(label, method)] = rows
    return Comparison(results, fitted_maps)


def method_key(seed: int, method: str) -> jax.Array:
    """The training key of `method` at `seed`: key(seed) folded with a checksum of the name.

    Args:
        seed: the training seed.
        method: the method's name.

    Returns:
        The PRNG key.
    """
    return jax.random.fold_in(jax.random.key(seed), zlib.crc32(method.encode()) & 0x7FFFFFFF)


def draw(problem: transport.problems.Problem, fitted: dict, seed: int, num_points: int = 500) -> dict:
    """Samples to draw each fitted map with: {method: (x, T(x), y)} on one source and one target
    sample (the same for every method).

    Args:
        problem: the `Problem`.
        fitted: method -> `FittedMap`.
        seed: the seed of the samples.
        num_points: points per sample.

    Returns:
        {method: (x, mapped, y)} as numpy arrays.
    """
    key = jax.random.fold_in(jax.random.key(seed), 20_000)
    x = problem.sample_source(jax.random.fold_in(key, 1), num_points)
    y = np.asarray(problem.sample_target(jax.random.fold_in(key, 2), num_points))
    return {m: (np.asarray(x), np.asarray(f(x)), y) for m, f in fitted.items()}


def table(results: dict) -> dict:
    """The mean and the spread (max - min) over seeds of each entry of `compare`'s results.

    Args:
        results: `Comparison.results`.

    Returns:
        {(problem, method): {"mean": Row, "spread": Row}}.
    """
    out = {}
    for k, rows in results.items():
        arr = np.asarray(rows, np.float64)
        out[k] = {"mean": Row(*arr.mean(0)), "spread": Row(*(arr.max(0) - arr.min(0)))}
    return out


class Explored(NamedTuple):
    """One panel run: the problem, the method, the fitted map, its row and a sample to draw."""

    problem: str
    method: str
    fitted: training.FittedMap
    row: Row
    x: np.ndarray
    mapped: np.ndarray
    y: np.ndarray


def explore(problems: dict, *, problem: str, method: str, num_steps: int, seed: int = 0,
            num_points: int = 500, **fit_kwargs) -> Explored:
    """Fit one method on one problem and keep what the panel draws.

    Args:
        problems: label -> `Problem`.
        problem: the label to fit.
        method: a key of `METHODS`.
        num_steps: Adam steps.
        seed: the training seed.
        num_points: points drawn and scored.
        **fit_kwargs: passed to `fit`.

    Returns:
        The `Explored` result.
    """
    p = problems[problem]
    fitted = fit(p, method, method_key(seed, method), num_steps=num_steps, **fit_kwargs)
    key = jax.random.fold_in(jax.random.key(seed), 10_000)
    row = evaluate(p, fitted, key, num_points)
    x = p.sample_source(jax.random.fold_in(key, 1), num_points)
    return Explored(problem, method, fitted, row, np.asarray(x), np.asarray(fitted(x)),
                    np.asarray(p.sample_target(jax.random.fold_in(key, 2), num_points)))
