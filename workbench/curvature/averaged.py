"""The curvature of a loss averaged over a whole dataset as a `LinearOperator`: each chunk's
product weighted by its size, chunks summed by `core.per_example.sum_chunks` and sharded over local
devices by `sharded_sum` (the reduction `distributed.curvature_operator` runs over processes);
and the package's one dense Hessian, read off the operator's columns."""


from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from workbench.core.losses import as_loss
from workbench.core.numerics import (
    check_floating,
    check_nonnegative,
    check_positive_int,
    num_examples,
)
from workbench.core.per_example import (
    mean_loss,
    sharded_sum,
    sum_chunks,
)
from workbench.curvature.linear import LinearOperator, _selection_mask
from workbench.curvature.products import _cast_like, fisher_vp, ggn_vp, hvp
from workbench.models import Functional

PyTree = Any
KINDS = ("hessian", "ggn", "fisher")
_AUTO_FULL_BATCH = 4096  # chunk_size=None: the whole dataset in one chunk up to this many examples




def resolve_roles(loss_fn, kind: str, predict_fn=None, output_loss_fn=None, l2=None):
    """(loss_fn, predict_fn, output_loss_fn, l2) for a curvature of `kind`, validated.

    One convention for the three kinds: data curvature + l2 I. From a `models.Functional` the
    Hessian differentiates the objective (which carries its l2 already); GGN and Fisher are built
    from the data loss alone and get `l2` I added. Explicit arguments override the Functional's.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar` or a `models.Functional`.
        kind: "hessian", "ggn" or "fisher".
        predict_fn: for "ggn": `predict_fn(params, x) -> outputs` (default the Functional's).
        output_loss_fn: for "ggn": `output_loss_fn(outputs, y) -> [n]` (default the Functional's).
        l2: the multiple of I added to "ggn" and "fisher" (default the Functional's, else None).

    Returns:
        The tuple (loss_fn, predict_fn, output_loss_fn, l2) with the Functional resolved.

    Raises:
        TypeError: `loss_fn` is neither callable nor a Functional.
        ValueError: an unknown kind, "ggn" without its two functions, or an `l2` for "hessian"
            other than the one its `loss_fn` carries (it would be ignored).
    """
    given_l2, carried_l2, fn_given = l2, 0.0, loss_fn
    if isinstance(loss_fn, Functional):
        fn = loss_fn
        loss_fn = mean_loss(fn.per_example_loss_fn) if kind == "fisher" else fn.loss_fn
        predict_fn = predict_fn or fn.predict_fn
        output_loss_fn = output_loss_fn or fn.output_loss_fn
        l2 = fn.l2 if l2 is None else l2
        carried_l2 = fn.l2
    if kind == "hessian" and given_l2 is not None and given_l2 != carried_l2:
        # the Hessian differentiates loss_fn as given: an l2 it does not carry would be ignored
        carried = (f"the Functional carries l2={carried_l2!r}" if isinstance(fn_given, Functional) else
                   "a plain loss_fn carries its own regulariser, if any")
        raise ValueError(f"kind='hessian' differentiates loss_fn as given, so l2={given_l2!r} would be ignored "
                         f"({carried}): put the regulariser in loss_fn (models.functional(model, l2=...)), "
                         "or pass l2 with kind='ggn' or 'fisher'")
    loss_fn = as_loss(loss_fn, role="objective", caller="curvature.operator")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "ggn" and (predict_fn is None or output_loss_fn is None):
        missing = [name for name, f in (("predict_fn", predict_fn), ("output_loss_fn", output_loss_fn)) if f is None]
        raise ValueError(f"kind='ggn' needs predict_fn and output_loss_fn (missing: {', '.join(missing)}): "
                         "pass the model's models.Functional as loss_fn (it carries both), or pass them "
                         "as keywords")
    return loss_fn, predict_fn, output_loss_fn, l2


def operator(
    loss_fn,
    params: PyTree,
    data: Any,
    kind: str = "hessian",
    *,
    chunk_size: int | None = None,
    select: str | Sequence[str] | Callable[[str], bool] | None = None,
    predict_fn: Callable | None = None,
    output_loss_fn: Callable | None = None,
    l2: float | None = None,
    accumulate_dtype=None,
    devices: Sequence[jax.Device] | None = None,
) -> LinearOperator:
    """Curvature of the loss averaged over the whole of `data`, as a `LinearOperator`.

    `loss_fn(params, batch)` is the mean loss of a batch, or a `workbench.models.Functional`
    (then GGN products use its `predict_fn`, `output_loss_fn` and `l2`). `kind` is "hessian",
    "ggn" (needs predict_fn/output_loss_fn, from the Functional or passed here) or "fisher".
    The three kinds follow one convention: data curvature + l2 I. "hessian" differentiates
    `loss_fn` as given (a Functional's objective carries 0.5 l2 |theta|^2, so l2 I comes with it);
    "ggn" and "fisher" use the data loss and add `l2` I: with a Functional the Fisher's
    per-example gradients come from its per-example loss without the regulariser; with a plain
    `loss_fn`, pass the data loss and `l2=` separately.
    The batch operators are summed weighted by batch size and divided by N, so a short last batch
    does not bias the result. `chunk_size=None` takes the whole dataset at once up to 4096
    examples and batches of 1024 beyond. `select` restricts the operator to a subset of the params
    (a '/'-path prefix like "layers/0", a list of them, or a predicate on the path); its vectors
    are then the selected leaves only. `accumulate_dtype` is the dtype of the batch sum (default
    the params' dtype). With several `devices` (default: all local devices) the full batches are
    split across them with `shard_map` and summed.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar` (a batch mean) or a `models.Functional`.
        params: the point (pytree of floating arrays).
        data: pytree of arrays with a leading example axis [N, ...].
        kind: "hessian", "ggn" or "fisher".
        chunk_size: examples per batch product (None: all N at once up to 4096, else 1024).
        select: the params the operator acts on (path prefix, list of prefixes or predicate);
            None takes all.
        predict_fn: for "ggn" (overrides the Functional's).
        output_loss_fn: for "ggn" (overrides the Functional's).
        l2: the multiple of I added to "ggn" and "fisher" (default the Functional's, else 0).
        accumulate_dtype: the dtype of the sum over batches (default the params' dtype).
        devices: the devices the full batches are split over (default all local devices).

    Returns:
        A `LinearOperator` of dimension p (the selected params' size) in the params' dtype.

    Raises:
        TypeError: `loss_fn` is neither callable nor a Functional.
        ValueError: an unknown kind, missing GGN roles, non-floating params, empty or
            inconsistent data, a bad `chunk_size` or a `select` matching nothing.
    """
    loss_fn, predict_fn, output_loss_fn, l2 = resolve_roles(loss_fn, kind, predict_fn, output_loss_fn, l2)
    l2 = check_nonnegative("l2", l2 or 0.0, "it is the regulariser's curvature, l2 I")
    check_floating(params)
    n = num_examples(data)
    if chunk_size is None:
        chunk_size = n if n <= _AUTO_FULL_BATCH else 1024
    chunk_size = min(check_positive_int("chunk_size", chunk_size), n)

    flat_leaves, treedef = jax.tree.flatten(params)
    mask = tuple(_selection_mask(params, select))
    sub = treedef.unflatten([leaf if m else None for leaf, m in zip(flat_leaves, mask, strict=True)])
    fixed = [leaf for leaf, m in zip(flat_leaves, mask, strict=True) if not m]
    dtype = jnp.result_type(*jax.tree.leaves(sub))
    acc_dtype = jnp.dtype(accumulate_dtype or dtype)

    devices = tuple(jax.local_devices() if devices is None else devices)
    num_full = n // chunk_size
    per_device = num_full // len(devices) if len(devices) > 1 else 0
    num_sharded = per_device * len(devices) * chunk_size  # rows of the full chunks spread over devices
    mesh = Mesh(np.array(devices), ("batch",)) if num_sharded else None

    args = {"sub": sub, "fixed": fixed}
    if num_sharded:
        sharding = NamedSharding(mesh, P("batch"))
        args["sharded"] = jax.tree.map(lambda a: jax.device_put(jnp.asarray(a)[:num_sharded], sharding), data)
    if num_sharded < n:
        args["rows"] = jax.tree.map(lambda a: jnp.asarray(a)[num_sharded:], data)
    fn = _dataset_product(
        loss_fn, kind, predict_fn, output_loss_fn, l2, treedef, mask, chunk_size, n, mesh, acc_dtype,
    )
    return LinearOperator(fn, args, jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), sub))


@functools.lru_cache(maxsize=64)
def _dataset_product(
    loss_fn, kind, predict_fn, output_loss_fn, l2, treedef, mask, chunk_size, n, mesh, acc_dtype,
):
    """The `fn(args, flat)` of a dataset-averaged operator; cached so equal configurations share
    one function object (and so one compiled algorithm per operator kind). The sum over chunks
    is `core.per_example.sum_chunks` on this device and `sharded_sum` over `mesh`: the same
    reduction `distributed.curvature_operator` runs over the devices of several processes."""

    def merge(sub, fixed):
        chosen, rest = iter(jax.tree.leaves(sub)), iter(fixed)
        return treedef.unflatten([next(chosen) if m else next(rest) for m in mask])

    def batch_product(sub, fixed, batch, v):
        if kind == "hessian":
            return hvp(lambda q, b: loss_fn(merge(q, fixed), b), sub, batch, v)
        if kind == "fisher":
            out = fisher_vp(lambda q, b: loss_fn(merge(q, fixed), b), sub, batch, v)
            return optax.tree.add_scale(out, l2, _cast_like(v, sub)) if l2 else out
        return ggn_vp(lambda q, x: predict_fn(merge(q, fixed), x), output_loss_fn, sub, batch, v, l2=l2)

    def weighted_product(rep, chunk):
        """The chunk's product (a chunk mean) times its size: its share of the dataset sum."""
        sub, fixed, v = rep
        out = batch_product(sub, fixed, chunk, v)
        flat = jnp.concatenate([jnp.ravel(a).astype(acc_dtype) for a in jax.tree.leaves(out)])
        return flat * jnp.asarray(num_examples(chunk), acc_dtype)

    def fn(args, x):
        sub, fixed = args["sub"], args["fixed"]
        leaves = jax.tree.leaves(sub)
        dtype = jnp.result_type(*leaves)
        v, start = [], 0
        for a in leaves:
            v.append(x[start : start + a.size].reshape(a.shape).astype(a.dtype))
            start += a.size
        rep = (sub, fixed, jax.tree.unflatten(jax.tree.structure(sub), v))
        parts = []
        if mesh is not None:
            parts.append(sharded_sum(weighted_product, rep, args["sharded"], mesh, chunk_size))
        if "rows" in args:
            parts.append(sum_chunks(lambda chunk: weighted_product(rep, chunk), args["rows"], chunk_size))
        total = parts[0] if len(parts) == 1 else parts[0] + parts[1]
        return (total / jnp.asarray(n, acc_dtype)).astype(dtype)

    return fn


def dense_hessian(loss_fn, params: PyTree, data: Any, *, chunk_size: int | None = None,
                  max_vectors: int = 64) -> jax.Array:
    """The Hessian of the loss averaged over all of `data`, as a dense symmetric [p, p] matrix.

    The one dense Hessian of the package (influence's exact inverse, the sketching paper's
    references, tests): the columns are products of `operator(loss_fn, params, data)` with the
    unit vectors, each batch weighted by its size, so the result is the full-batch Hessian
    whatever `chunk_size`; it is then symmetrized, 0.5 (H + H^T), to remove rounding asymmetry.
    Costs p operator products: for references on small models only.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar` (a batch mean), or a `models.Functional`
            (its objective, l2 term included, is differentiated).
        params: the point (pytree of floating arrays, p entries in all, `ravel_pytree` order).
        data: pytree of arrays with a leading example axis.
        chunk_size: examples per batch product (as in `operator`; None: all at once up to 4096).
        max_vectors: the most Hessian-vector products computed together (memory bound).

    Returns:
        The symmetric Hessian [p, p] in the params' dtype.
    """
    hessian = operator(loss_fn, params, data, "hessian", chunk_size=chunk_size).dense(max_vectors)
    return 0.5 * (hessian + hessian.T)
