"""The dataset-averaged curvature operator over examples sharded across processes.

`curvature_operator(loss_fn, params, data, kind)` is `workbench.curvature.operator` for a
`ShardedData`: the same Hessian / Gauss-Newton / empirical-Fisher products
(`curvature.hvp`, `ggn_vp`, `fisher_vp`), each example weighted by its `data.weights` entry so
padding counts for nothing, summed on every device in chunks, `psum`-med over every device of
every process (`global_sum`, i.e. `core.per_example.sharded_sum`: the reduction
`curvature.operator` runs over local devices) and divided by the number of real examples. The result is a
`curvature.LinearOperator` whose arrays (params, data) travel as arguments, so
`spectrum.top_eigenpairs`, `spectral_density` and `trace` run on it unchanged, under one `jit`,
on every process at once (SPMD) and return the same replicated numbers everywhere.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from workbench import curvature
from workbench.core.numerics import check_floating, check_positive_int
from workbench.core.per_example import per_example_losses
from workbench.distributed.sharding import ShardedData, global_sum, replicate

KINDS = curvature.KINDS


def _example_sum(loss_fn):
    """sum_i w_i loss_fn(params, example_i) over a chunk, each example as a batch of one."""

    def total(params, batch):
        rows, w = batch
        losses = per_example_losses(loss_fn, params, rows)
        return jnp.sum(w.astype(losses.dtype) * losses)

    return total


@functools.lru_cache(maxsize=64)
def _product_fn(loss_fn, kind, predict_fn, output_loss_fn, l2, treedef, shapes, chunk_size):
    """`fn(args, flat) -> flat` of the operator; cached so an equal configuration shares one
    function object (and so one compiled algorithm)."""
    example_sum = _example_sum(loss_fn)

    def chunk_product(rep, rows, w):
        params, v = rep
        if kind == "hessian":
            out = curvature.hvp(example_sum, params, (rows, w), v)
        elif kind == "fisher":  # fisher_vp averages g_i g_i^T v over the chunk: scale back to a sum
            root = lambda p, b: loss_fn(p, b[0]) * jnp.sqrt(b[1][0]).astype(_params_dtype(p))
            out = curvature.fisher_vp(root, params, (rows, w), v)
            out = jax.tree.map(lambda a: a * w.shape[0], out)
        else:  # ggn_vp differentiates the chunk mean of output_loss_fn: weight and scale to a sum
            x, y = rows
            b = w.shape[0]
            weighted = lambda o, yw: output_loss_fn(o, yw[0]) * yw[1].astype(o.dtype) * b
            out = curvature.ggn_vp(predict_fn, weighted, params, (x, (y, w)), v)
        return jnp.concatenate([jnp.ravel(a) for a in jax.tree.leaves(out)])

    def fn(args, flat):
        params, data, n = args["params"], args["data"], args["num_examples"]
        leaves, start = [], 0
        for shape, dtype in shapes:
            size = int(np.prod(shape))
            leaves.append(flat[start:start + size].reshape(shape).astype(dtype))
            start += size
        v = jax.tree.unflatten(treedef, leaves)
        total = global_sum(chunk_product, (params, v), data, chunk_size=chunk_size)
        out = (total / n.astype(total.dtype)).astype(flat.dtype)
        if kind in ("ggn", "fisher") and l2:
            out = out + jnp.asarray(l2, out.dtype) * flat
        return out

    return fn


def _params_dtype(params) -> Any:
    return jnp.result_type(*jax.tree.leaves(params))


def curvature_operator(
    loss_fn: Callable | Any,
    params: Any,
    data: ShardedData,
    kind: str = "hessian",
    *,
    predict_fn: Callable | None = None,
    output_loss_fn: Callable | None = None,
    l2: float | None = None,
    chunk_size: int | None = None,
) -> curvature.LinearOperator:
    """Curvature of the loss averaged over every real example of `data` (a `ShardedData`), as a
    `curvature.LinearOperator` on flat vectors (replicated on every device).

    One convention for the three kinds, as in `curvature.operator` (which gives the same
    operator on one process): data curvature + l2 I ("hessian" differentiates `loss_fn` as
    given; "ggn" and "fisher" add `l2` I to the data-loss curvature).

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, the mean loss of a batch (it is evaluated on
            one-example batches), or a `workbench.models.Functional` (then GGN uses its
            `predict_fn`, `output_loss_fn`, `l2`).
        params: the point (pytree of floating arrays, the same on every process).
        data: the examples, a `ShardedData` from `shard_examples`.
        kind: "hessian", "ggn" (data must be (x, y) pairs) or "fisher".
        predict_fn: `predict_fn(params, x) -> outputs` for "ggn" (overrides the Functional's).
        output_loss_fn: `output_loss_fn(outputs, y) -> [n]` for "ggn" (overrides the Functional's).
        l2: the multiple of the identity added for "ggn" and "fisher" (default the Functional's,
            else 0).
        chunk_size: the most examples each device differentiates at once (None: all of its rows).

    Returns:
        A `curvature.LinearOperator` of dimension p whose products are replicated on every
        device and process.

    Raises:
        TypeError: `data` is not a `ShardedData`, or `loss_fn` is neither callable nor a Functional.
        ValueError: an unknown `kind`, missing GGN roles, non-floating params or a bad `chunk_size`.
    """
    loss_fn, predict_fn, output_loss_fn, l2 = curvature.resolve_roles(
        loss_fn, kind, predict_fn, output_loss_fn, l2)
    if not isinstance(data, ShardedData):
        raise TypeError(f"data must be a ShardedData (see distributed.shard_examples), got {type(data).__name__}")
    if chunk_size is not None:
        chunk_size = check_positive_int("chunk_size", chunk_size)
    check_floating(params)
    leaves, treedef = jax.tree.flatten(params)
    shapes = tuple((tuple(np.shape(a)), jnp.result_type(a)) for a in leaves)
    fn = _product_fn(loss_fn, kind, predict_fn, output_loss_fn, float(l2 or 0.0), treedef, shapes, chunk_size)
    dtype = _params_dtype(params)
    args = {
        "params": replicate(params, data.mesh),
        "data": data,
        "num_examples": replicate(np.asarray(data.num_examples, dtype), data.mesh),
    }
    like = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)), params)
    return curvature.LinearOperator(fn, args, like)
