"""Beyond one machine: JAX's own multi-process engine (`jax.distributed` + named shardings) for
the dataset-averaged curvature operator, the per-example gradient store and quasi-Newton
minimisation. A job is N processes running the same script (SPMD): `launch` starts them on this
machine (`python -m workbench.distributed launch -n 2 --devices 2 SCRIPT`), `initialize` joins
one (the launcher's variables, or a real cluster's SLURM / MPI / k8s environment through
`jax.distributed.initialize()`). Examples are sharded by example over every device of every
process (`shard_examples`); `curvature_operator` is `workbench.curvature.operator` over them (so
`spectrum.top_eigenpairs`, `spectral_density` and `trace` run unchanged); `lbfgs` (optax) and
`owlqn` (L1, implemented here) minimise objectives over them; `entropic_ot` solves entropic
optimal transport by L-BFGS on the dual potentials, building the cost per block; and
`gradient_store` fills one zarr gradient store from every process at once. Every sum over the
examples goes through `global_sum`, the same reduction (`core.per_example.sharded_sum`) that
`curvature.operator` runs over one machine's devices.

Examples:
    One process, its local devices: the Gauss-Newton matrix of least squares is X^T X / n.

    >>> import jax.numpy as jnp, numpy as np
    >>> from workbench import distributed as dist
    >>> x = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], np.float32)
    >>> data = dist.shard_examples((x, np.array([1.0, 2.0, 0.0], np.float32)))
    >>> loss = lambda w, batch: 0.5 * jnp.mean((batch[0] @ w - batch[1]) ** 2)
    >>> op = dist.curvature_operator(loss, jnp.zeros(2, jnp.float32), data)
    >>> np.round(np.asarray(op.dense()), 4)
    array([[0.6667, 0.3333],
           [0.3333, 1.6667]], dtype=float32)
"""

from workbench.distributed import ot, profile
from workbench.distributed.launch import (
    JobInfo,
    LaunchError,
    LaunchResult,
    barrier,
    free_port,
    initialize,
    launch,
    shutdown,
)
from workbench.distributed.minimize import (
    MinimizeResult,
    block_params,
    lbfgs,
    minimize_lbfgs,
    objective_value,
    owlqn,
    pseudo_gradient,
)
from workbench.distributed.operator import curvature_operator
from workbench.distributed.ot import (
    OTResult,
    dual_problem,
    entropic_ot,
    negative_dual,
    negative_dual_sharded,
    plan,
)
from workbench.distributed.profile import CollectiveBytes, collective_bytes
from workbench.distributed.sharding import (
    ShardedData,
    gather_rows,
    global_sum,
    load_over_even_share,
    local_block,
    mesh,
    replicate,
    rows_per_process,
    shard_examples,
    to_host,
)
from workbench.distributed.store import gradient_store

__all__ = [
    "CollectiveBytes", "JobInfo", "LaunchError", "LaunchResult", "MinimizeResult", "OTResult", "ShardedData",
    "barrier", "block_params", "collective_bytes", "curvature_operator", "dual_problem", "entropic_ot", "free_port", "gather_rows",
    "global_sum", "gradient_store", "initialize", "launch", "lbfgs", "load_over_even_share", "local_block", "mesh",
    "minimize_lbfgs", "negative_dual", "negative_dual_sharded", "objective_value", "ot", "owlqn", "profile", "plan", "pseudo_gradient", "replicate", "rows_per_process",
    "shard_examples", "shutdown", "to_host",
]
