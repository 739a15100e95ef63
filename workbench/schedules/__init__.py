"""Learning-rate schedules as plain optax schedules, schedule refinement, and a last-iterate bound.

Every schedule here is a callable `step -> lr` (an `optax.Schedule`), so it drops into any optax
chain: `optax.sgd(linear_decay(0.1, 1000))`. Steps are 0-indexed: a run of T steps evaluates the
schedule at s = 0, ..., T-1.

- `shapes`: constant, inverse_sqrt, linear_decay, cosine, wsd, step, from_values, scaled, values,
  the named families (`standard_shapes`, `custom_shape`) and `warmup_fraction` (where a schedule
  peaks);
- `refinement`: `refine(grad_norms)` turns the gradient norms observed in one run into the
  schedule that minimises the last-iterate bound for those norms (Defazio, Cutkosky, Mehta,
  Mishchenko 2023); with constant norms it is linear decay, with norms that fall early and rise
  late it grows a warm-up and a fast anneal. `grad_norm_callback` observes the norms in training;
- `bounds`: `last_iterate_bound(schedule, grad_norms, D)` evaluates that bound, so schedules can
  be compared without training; `bound_curve` over horizons, `refined_bound_curve` for the
  schedule refined to each horizon's norms, `log_slope` for how fast a curve grows with log T.
The digits experiment that refines a schedule is `workbench.experiments.schedules`.

Examples:
    Linear decay's last-iterate bound is 2 D G / sqrt(T) up to lower-order terms; a constant step
    pays a log factor; refining for constant norms gives linear decay back:

    >>> import numpy as np
    >>> from workbench import schedules
    >>> float(schedules.linear_decay(1.0, num_steps=4)(2))
    0.5
    >>> [round(float(b), 2) for b in schedules.bound_curve(lambda T: schedules.linear_decay(1.0, T), [100, 1000])]
    [2.0, 2.0]
    >>> print(round(float(schedules.bound_curve(lambda T: schedules.constant(1.0), [1000])[0]), 2))
    2.89
    >>> np.round(schedules.refine(np.ones(5)).values, 2)
    array([1.  , 0.75, 0.5 , 0.25, 0.  ])
"""

from workbench.schedules.bounds import Bound, bound_curve, last_iterate_bound, log_slope
from workbench.schedules.refinement import (
    Refined,
    grad_norm_callback,
    per_step,
    refine,
    refined_bound_curve,
)
from workbench.schedules.shapes import (
    Schedule,
    constant,
    cosine,
    custom_shape,
    from_values,
    inverse_sqrt,
    linear_decay,
    scaled,
    standard_shapes,
    step,
    values,
    warmup_fraction,
    wsd,
)

__all__ = [
    "constant", "inverse_sqrt", "linear_decay", "cosine", "wsd", "step", "from_values", "scaled",
    "values", "warmup_fraction", "refine", "Refined", "last_iterate_bound", "Bound", "standard_shapes",
    "custom_shape", "bound_curve", "log_slope", "grad_norm_callback", "per_step", "Schedule", "refined_bound_curve",
]
