"""Learning-rate schedules as plain optax schedules, schedule refinement, and a last-iterate bound.

Every schedule here is a callable `step -> lr` (an `optax.Schedule`), so it drops into any optax
chain: `optax.sgd(linear_decay(0.1, 1000))`. Steps are 0-indexed: a run of T steps evaluates the
schedule at s = 0, ..., T-1.

- `shapes`: constant, inverse_sqrt, linear_decay, cosine, wsd, step, from_values, scaled, values,
  and the named families (`standard_shapes`, `custom_shape`);
- `refinement`: `refine(grad_norms)` turns the gradient norms observed in one run into the
  schedule that minimises the last-iterate bound for those norms (Defazio, Cutkosky, Mehta,
  Mishchenko 2023); with constant norms it is linear decay, with norms that fall early and rise
  late it grows a warm-up and a fast anneal. `grad_norm_callback` observes the norms in training;
- `bounds`: `last_iterate_bound(schedule, grad_norms, D)` evaluates that bound, so schedules can
  be compared without training; `bound_curve` over horizons.
The digits experiment that refines a schedule is `workbench.experiments.schedules`.
"""

from workbench.schedules.bounds import Bound, bound_curve, last_iterate_bound
from workbench.schedules.refinement import Refined, grad_norm_callback, per_step, refine
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
    wsd,
)

__all__ = [
    "constant", "inverse_sqrt", "linear_decay", "cosine", "wsd", "step", "from_values", "scaled",
    "values", "refine", "Refined", "last_iterate_bound", "Bound", "standard_shapes",
    "custom_shape", "bound_curve", "grad_norm_callback", "per_step", "Schedule",
]
