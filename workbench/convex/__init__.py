"""Convex non-smooth problems with exact optima, and SGD vmapped over hundreds of seeds.

Problems (a `Problem` NamedTuple: data, a batch objective, its exact minimiser and value):
  - `least_absolute_deviations`: f(w) = mean |x_i.w - y_i|, an LP (scipy HiGHS);
  - `hinge_svm`: f(w) = mean max(0, 1 - y_i x_i.w) + l1 ||w||_1, an LP;
  - `l1_logistic`: f(w) = mean log(1 + exp(-y_i x_i.w)) + l1 ||w||_1, solved to ~1e-12 by
    L-BFGS-B on the split w = u - v, u, v >= 0 (a smooth bound-constrained problem).

`make_sgd(problem, schedule, num_steps=T)` compiles one SGD run (lax.scan over steps) and its vmap
over seeds; each run records the last iterate, the uniform average and the suffix average at a
log-spaced set of T, so one compiled call gives the whole suboptimality-vs-T curve for every seed.

`harvey_gd(T)` is the Harvey, Liaw, Plan, Randhawa (2019) construction on which deterministic
gradient descent with steps 1/sqrt(t) has a last iterate Theta(log T / sqrt T) above the optimum.
"""

from workbench.convex.harvey import HarveyResult, harvey_gd, harvey_value
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
    SGDResult,
    SGDRunner,
    Trace,
    compare_schedules,
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
    "quantiles", "make_problem", "compare_schedules", "PROBLEMS", "HarveyResult", "harvey_gd", "harvey_value",
]
