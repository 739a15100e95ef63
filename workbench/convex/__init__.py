"""Convex non-smooth problems with exact optima, and SGD vmapped over hundreds of seeds.

Problems (a `Problem` NamedTuple: data, a batch objective, its exact minimiser and value):
  - `least_absolute_deviations`: f(w) = mean |x_i.w - y_i|, an LP (scipy HiGHS);
  - `hinge_svm`: f(w) = mean max(0, 1 - y_i x_i.w) + l1 ||w||_1, an LP;
  - `l1_logistic`: f(w) = mean log(1 + exp(-y_i x_i.w)) + l1 ||w||_1, solved to ~1e-12 by
    L-BFGS-B on the split w = u - v, u, v >= 0 (a smooth bound-constrained problem).

`make_sgd(problem, schedule, num_steps=T)` compiles one SGD run (lax.scan over steps) and its vmap
over seeds; each run records the last iterate, the uniform average and the suffix average at a
log-spaced set of T, so one compiled call gives the whole suboptimality-vs-T curve for every seed.

`compare_schedules` runs several schedule shapes on the same seeds (a `ScheduleComparison`),
`final_quantiles` reads the quantiles across seeds at the largest T and `last_over_average` how
much worse the last iterate ends than an average.

`harvey_gd(T)` is the Harvey, Liaw, Plan, Randhawa (2019) construction on which deterministic
gradient descent with steps 1/sqrt(t) has a last iterate Theta(log T / sqrt T) above the optimum.

Problems take a `jax.random.key`; their data are drawn by NumPy from the key's bits, so
`jax.random.key(s)` gives the data `np.random.default_rng(s)` gave.

Examples:
    SGD with linear decay on a small LAD regression, 8 seeds in one compiled call, ends close to
    the exact optimum; on Harvey et al.'s function the last iterate of GD stays above the
    theorem's log(T) / (32 sqrt T):

    >>> import jax
    >>> import numpy as np
    >>> from workbench import convex, schedules
    >>> problem = convex.least_absolute_deviations(jax.random.key(0), n=40, dim=2)
    >>> res = convex.run_sgd(problem, schedules.linear_decay(0.2, 300), jax.random.key(1),
    ...                      num_steps=300, num_seeds=8)
    >>> res.last.shape[0], int(res.steps[-1])
    (8, 300)
    >>> bool(np.median(res.last[:, -1]) < 0.02 < np.median(res.last[:, 0]))
    True
    >>> np.round(convex.harvey_gd([16, 64]).over_rate("last"), 3)
    array([0.065, 0.058])
"""

from workbench.convex.harvey import HarveyResult, HarveyValue, harvey_gd, harvey_value
from workbench.convex.problems import (
    PROBLEMS,
    Problem,
    hinge_svm,
    l1_logistic,
    least_absolute_deviations,
    make_problem,
    objective,
)
from workbench.convex.runner import (
    ScheduleComparison,
    SGDResult,
    SGDRunner,
    Trace,
    compare_schedules,
    final_quantiles,
    last_over_average,
    log_steps,
    make_sgd,
    quantiles,
    run_sgd,
    sample_indices,
    suboptimality,
)

__all__ = [
    "Problem", "least_absolute_deviations", "hinge_svm", "l1_logistic", "objective",
    "log_steps", "sample_indices", "SGDRunner", "Trace", "make_sgd", "suboptimality", "run_sgd", "SGDResult",
    "quantiles", "make_problem", "compare_schedules", "ScheduleComparison", "final_quantiles", "PROBLEMS", "HarveyResult", "HarveyValue", "harvey_gd",
    "harvey_value", "last_over_average",
]
