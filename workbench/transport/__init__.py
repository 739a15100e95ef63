"""Transport maps between distributions: problems with a known answer, networks, trainers for
neural optimal maps (heuristic flows, the entropic dual, supervised reductions, flow matching,
the entropic map, the Monge gap) and the metrics that judge them.

- `problems`: Gaussian to Gaussian (closed-form Monge map and W2), a Brenier pair (a Gaussian
  pushed through the gradient of a known convex potential, so the optimal map is exact) and the
  unit disk onto four disks (judged against exact assignments of samples);
- `plans`: a fixed-iteration log-domain Sinkhorn for use inside training loops, the
  barycentric projection of a plan, the entropic map, exact assignments (SciPy);
  `workbench.distributed.ot` stays the large-scale solver (the same potentials' convention);
- `networks`: Flax NNX maps (residual MLPs), potentials (input-convex or plain) and velocity
  fields, each split once into `Model(params, apply_fn)`;
- `training`: the trainers, pure `lax.scan` loops over fresh batches with explicit keys;
- `metrics`: L2 unexplained variance against the true map, the transport cost against W2^2,
  exact-assignment W2 next to the target-vs-target floor.
The paper's method table (Schioppa 2019) is built in `workbench.experiments.transport`.

Examples:
    The closed-form Gaussian map between N(0, I) and N(1, diag(4, 1)), its W2^2, and the
    barycentric projection of a Sinkhorn plan between samples, which recovers the map (L2-UVP
    near 0, where not moving scores about 60%).

    >>> import jax, jax.numpy as jnp, numpy as np
    >>> from workbench import transport
    >>> a, shift = transport.gaussian_map(np.zeros(2), np.eye(2), np.ones(2), np.diag([4.0, 1.0]))
    >>> np.round(a, 6).tolist(), shift.tolist()
    ([[2.0, 0.0], [0.0, 1.0]], [1.0, 1.0])
    >>> round(transport.gaussian_w2_squared(np.zeros(2), np.eye(2), np.ones(2), np.diag([4.0, 1.0])), 6)
    3.0
    >>> x = jax.random.normal(jax.random.key(0), (400, 2))
    >>> y = x @ jnp.asarray(a).T + jnp.asarray(shift)
    >>> plan = transport.sinkhorn(x, y, 0.05, num_iters=300).plan
    >>> projected = transport.barycentric_projection(plan, y)
    >>> transport.l2_uvp(x, y, 5.0) > 50, transport.l2_uvp(projected, y, 5.0) < 1
    (True, True)
"""

from workbench.transport import metrics, networks, plans, problems, training
from workbench.transport.metrics import (
    W2AgainstFloor,
    assignment_map,
    assignment_w2,
    cost_ratio,
    l2_uvp,
    transport_cost,
    w2_against_floor,
)
from workbench.transport.networks import (
    Model,
    map_model,
    potential_gradient,
    potential_model,
    velocity_model,
)
from workbench.transport.plans import (
    SinkhornResult,
    assignment,
    assignment_in_jit,
    barycentric_projection,
    entropic_map,
    sinkhorn,
    squared_distances,
)
from workbench.transport.problems import (
    BrenierPotential,
    Problem,
    brenier,
    brenier_map,
    brenier_potential,
    brenier_value,
    disks,
    gaussian,
    gaussian_map,
    gaussian_w2_squared,
)
from workbench.transport.training import (
    COUPLINGS,
    DISCREPANCIES,
    FittedMap,
    batch_targets,
    couple,
    discrepancy,
    euler,
    fit_entropic_map,
    monge_gap,
    sinkhorn_divergence,
    train_flow,
    train_flow_matching,
    train_monge_gap,
    train_seguy,
    train_sinkhorn_regression,
)

__all__ = [
    "Problem", "gaussian", "brenier", "disks", "gaussian_map", "gaussian_w2_squared", "BrenierPotential",
    "brenier_potential", "brenier_value", "brenier_map", "sinkhorn", "SinkhornResult", "squared_distances",
    "barycentric_projection", "entropic_map", "assignment", "assignment_in_jit", "Model", "map_model",
    "potential_model", "potential_gradient", "velocity_model", "FittedMap", "DISCREPANCIES", "COUPLINGS",
    "discrepancy", "train_flow", "train_seguy", "batch_targets", "train_sinkhorn_regression", "couple", "euler",
    "train_flow_matching", "fit_entropic_map", "monge_gap", "sinkhorn_divergence", "train_monge_gap", "l2_uvp",
    "transport_cost", "cost_ratio", "assignment_w2", "w2_against_floor", "W2AgainstFloor", "assignment_map",
    "metrics", "networks", "plans", "problems", "training",
]
