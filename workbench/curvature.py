"""Curvature operators on pytrees: Hessian, Gauss-Newton and empirical-Fisher products.

- `hvp(loss_fn, params, batch, v)`: Hessian-vector product by forward-over-reverse.
- `ggn_vp(predict_fn, output_loss_fn, params, batch, v)`: Gauss-Newton J^T H_out J v.
- `fisher_vp(loss_fn, params, batch, v)`: empirical Fisher (1/B) sum_i g_i g_i^T v.
- `operator(loss_fn, params, data, kind=..., chunk_size=...)`: the curvature of the loss averaged
  over a whole dataset (each chunk of examples weighted by its size), as a `LinearOperator`
  whose `matvec` takes a flat vector or a params-shaped pytree. Chunks are summed by
  `core.per_example.sum_chunks`, and sharded over devices (`sharded_sum`) when several are
  present: the reduction `distributed.curvature_operator` runs over several processes.
- `dense_hessian(loss_fn, params, data)`: the package's one dense Hessian (the operator's columns).
- `from_matrix(A)` / `linear_operator(mv, like)`: the same operator type around any matvec.
"""

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

from workbench.core import tree as tu
from workbench.core.numerics import check_floating, check_positive_int, num_examples
from workbench.core.per_example import (
    map_chunks,
    mean_loss,
    per_example_losses,
    sharded_sum,
    sum_chunks,
)
from workbench.models import Functional

PyTree = Any
KINDS = ("hessian", "ggn", "fisher")
_AUTO_FULL_BATCH = 4096  # chunk_size=None: the whole dataset in one chunk up to this many examples


# ----------------------------------------------------------------------------- single-batch products


def _cast_like(v: PyTree, params: PyTree) -> PyTree:
    return jax.tree.map(lambda vi, pi: jnp.asarray(vi).astype(pi.dtype), v, params)


def hvp(loss_fn: Callable, params: PyTree, batch: Any, v: PyTree) -> PyTree:
    """Hessian of `loss_fn(params, batch)` times `v` (params-shaped), by forward-over-reverse.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`.
        params: the point (pytree).
        batch: the batch `loss_fn` is evaluated on.
        v: the vector, shaped like `params` (cast to the params' dtypes).

    Returns:
        H v, shaped like `params`.
    """
    v = _cast_like(v, params)
    return jax.jvp(lambda p: jax.grad(loss_fn)(p, batch), (params,), (v,))[1]


def ggn_vp(
    predict_fn: Callable,
    output_loss_fn: Callable,
    params: PyTree,
    batch: Any,
    v: PyTree,
    l2: float = 0.0,
) -> PyTree:
    """Generalized Gauss-Newton product J^T H_out J v (+ l2 v).

    `predict_fn(params, x)` gives outputs, `output_loss_fn(outputs, y)` per-example losses whose
    batch mean is the loss; H_out is the Hessian of that mean with respect to the outputs.

    Args:
        predict_fn: `predict_fn(params, x) -> outputs`.
        output_loss_fn: `output_loss_fn(outputs, y) -> [n]` per-example losses.
        params: the point (pytree).
        batch: an (x, y) pair.
        v: the vector, shaped like `params`.
        l2: the multiple of `v` added (the regulariser's curvature); 0 adds nothing.

    Returns:
        (J^T H_out J + l2 I) v, shaped like `params`.
    """
    x, y = batch
    v = _cast_like(v, params)
    outputs, jv = jax.jvp(lambda p: predict_fn(p, x), (params,), (v,))
    mean_loss = lambda o: jnp.mean(output_loss_fn(o, y))
    hjv = jax.jvp(jax.grad(mean_loss), (outputs,), (jv,))[1]
    _, vjp = jax.vjp(lambda p: predict_fn(p, x), params)
    out = vjp(hjv)[0]
    return optax.tree.add_scale(out, l2, v) if l2 else out


def fisher_vp(loss_fn: Callable, params: PyTree, batch: Any, v: PyTree) -> PyTree:
    """Empirical Fisher (1/B) sum_i g_i (g_i . v), g_i the gradient of `loss_fn` on example i alone.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, a batch mean (evaluated on one-example batches).
        params: the point (pytree).
        batch: the batch, a pytree with a leading example axis [B, ...].
        v: the vector, shaped like `params`.

    Returns:
        F v, shaped like `params`.
    """
    v = _cast_like(v, params)
    n = jax.tree.leaves(batch)[0].shape[0]

    losses_at = lambda p: per_example_losses(loss_fn, p, batch)
    losses, vjp = jax.vjp(losses_at, params)
    jv = jax.jvp(losses_at, (params,), (v,))[1]
    return optax.tree.scale(jnp.asarray(1.0 / n, losses.dtype), vjp(jv)[0])


# ----------------------------------------------------------------------------- linear operators


@jax.tree_util.register_pytree_node_class
class LinearOperator:
    """A linear map on flat vectors of length `dim`, described by `fn(args, flat) -> flat`.

    The arrays it needs (params, data) live in `args`, so an operator is a pytree: it can be
    passed through `jax.jit`/`vmap` and algorithms compile once per operator kind, not per call.
    - `mv(flat) -> flat`: the product on flat vectors (what algorithms call);
    - `matvec(v)`: the product on a flat vector or a pytree shaped like `like` (same kind back);
    - `matmat(vs)`: products with the rows of `vs` [m, dim];
    - `dim`, `dtype`, `like` (pytree of `jax.ShapeDtypeStruct`), `ravel(tree)`, `unravel(flat)`.
    """

    def __init__(self, fn: Callable, args: Any, like: PyTree):
        self.fn = fn
        self.args = args
        leaves, self._treedef = jax.tree.flatten(like)
        self._shapes = tuple(
            jax.ShapeDtypeStruct(tuple(jnp.shape(a)), jnp.result_type(a)) for a in leaves
        )
        self.dim = int(sum(int(np.prod(s.shape)) for s in self._shapes))
        self.dtype = jnp.result_type(*[s.dtype for s in self._shapes])

    def tree_flatten(self):
        return (self.args,), (self.fn, self._treedef, self._shapes)

    @classmethod
    def tree_unflatten(cls, aux, children):
        fn, treedef, shapes = aux
        return cls(fn, children[0], treedef.unflatten(shapes))

    @property
    def like(self) -> PyTree:
        return self._treedef.unflatten(self._shapes)

    def ravel(self, v: PyTree) -> jax.Array:
        leaves = jax.tree.leaves(v)
        if not leaves:
            return jnp.zeros((0,), self.dtype)
        return jnp.concatenate([jnp.ravel(a).astype(self.dtype) for a in leaves])

    def unravel(self, flat: jax.Array) -> PyTree:
        out, start = [], 0
        for s in self._shapes:
            size = int(np.prod(s.shape))
            out.append(flat[start : start + size].reshape(s.shape).astype(s.dtype))
            start += size
        return self._treedef.unflatten(out)

    def mv(self, x: jax.Array) -> jax.Array:
        return self.fn(self.args, x)

    def matvec(self, v):
        """The product with a flat vector [dim] or a pytree shaped like `like` (jit-compiled)."""
        if isinstance(v, jax.Array | np.ndarray) and jnp.ndim(v) == 1 and v.shape[0] == self.dim:
            return _apply(self, jnp.asarray(v).astype(self.dtype))
        tu.check_same_structure(self.like, v, "operator input", "vector")
        return self.unravel(_apply(self, self.ravel(v)))

    def matmat(self, vs: jax.Array) -> jax.Array:
        """Products with the rows of `vs` [m, dim], vmapped (jit-compiled)."""
        return _apply_rows(self, jnp.asarray(vs).astype(self.dtype))

    def dense(self, max_vectors: int | None = None) -> jax.Array:
        """The full [dim, dim] matrix (dim matvecs): for references on small problems only.

        Args:
            max_vectors: the most products computed together (vmapped); None computes all dim
                at once. Bounds the memory (`core.per_example.map_chunks`) without changing the
                columns.

        Returns:
            The matrix A [dim, dim], column j the product with the j-th unit vector.
        """
        eye = jnp.eye(self.dim, dtype=self.dtype)
        if max_vectors is None:
            return self.matmat(eye).T
        return _apply_rows_chunked(self, eye, check_positive_int("max_vectors", max_vectors)).T

    def __repr__(self):
        return f"LinearOperator(dim={self.dim}, dtype={self.dtype})"


@jax.jit
def _apply(op: LinearOperator, x: jax.Array) -> jax.Array:
    return op.mv(x)


@jax.jit
def _apply_rows(op: LinearOperator, xs: jax.Array) -> jax.Array:
    return jax.vmap(op.mv)(xs)


@functools.partial(jax.jit, static_argnums=2)
def _apply_rows_chunked(op: LinearOperator, xs: jax.Array, max_rows: int) -> jax.Array:
    return map_chunks(jax.vmap(op.mv), xs, max_rows, even=True)


def linear_operator(mv_tree: Callable[[PyTree], PyTree], like: PyTree) -> LinearOperator:
    """Wrap a pytree -> pytree linear map acting on vectors shaped like `like`.

    Args:
        mv_tree: the linear map, pytree -> same-structure pytree.
        like: a pytree of arrays (or `jax.ShapeDtypeStruct`s) describing the vectors it acts on.

    Returns:
        A `LinearOperator` of dimension size(like) on flat vectors and on pytrees shaped like `like`.
    """
    like = jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), like)
    holder: list[LinearOperator] = []

    def fn(args, x):
        op = holder[0]
        return op.ravel(mv_tree(op.unravel(x)))

    holder.append(LinearOperator(fn, (), like))
    return holder[0]


def _matrix_product(matrix, x):
    return matrix @ x


def from_matrix(matrix: jax.Array) -> LinearOperator:
    """The operator x -> matrix @ x on flat vectors (tests, synthetic spectra).

    Args:
        matrix: a square array [dim, dim].

    Returns:
        A `LinearOperator` of dimension dim in the matrix's dtype.

    Raises:
        ValueError: the matrix is not square.
    """
    matrix = jnp.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"matrix must be square, got shape {matrix.shape}")
    return LinearOperator(
        _matrix_product, matrix, jax.ShapeDtypeStruct((matrix.shape[0],), matrix.dtype)
    )


# ----------------------------------------------------------------------------- parameter subsets


def _path_name(path) -> str:
    parts = []
    for k in path:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def leaf_names(params: PyTree) -> list[str]:
    """'/'-joined path of every leaf, e.g. 'layers/0/kernel' (what `select=` matches).

    Args:
        params: a pytree.

    Returns:
        The names, one per leaf, in `jax.tree.leaves` order.
    """
    return [_path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def _selection_mask(params: PyTree, select) -> list[bool]:
    names = leaf_names(params)
    if select is None:
        return [True] * len(names)
    if callable(select):
        mask = [bool(select(n)) for n in names]
    else:
        prefixes = [select] if isinstance(select, str) else list(select)
        if not prefixes or not all(isinstance(s, str) for s in prefixes):
            raise ValueError(f"select must be a path prefix, a list of them or a predicate, got {select!r}")
        split = lambda s: [c for c in s.split("/") if c]
        mask = [any(split(n)[: len(split(s))] == split(s) for s in prefixes) for n in names]
    if not any(mask):
        raise ValueError(f"select={select!r} matches no parameter; leaves are {names}")
    return mask


# ----------------------------------------------------------------------------- dataset-averaged operator


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
        ValueError: an unknown kind, or "ggn" without its two functions.
    """
    if isinstance(loss_fn, Functional):
        fn = loss_fn
        loss_fn = mean_loss(fn.per_example_loss_fn) if kind == "fisher" else fn.loss_fn
        predict_fn = predict_fn or fn.predict_fn
        output_loss_fn = output_loss_fn or fn.output_loss_fn
        l2 = fn.l2 if l2 is None else l2
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable or a Functional, got {type(loss_fn).__name__}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "ggn" and (predict_fn is None or output_loss_fn is None):
        raise ValueError("kind='ggn' needs predict_fn and output_loss_fn (or pass a models.Functional)")
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
    l2 = float(l2 or 0.0)
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
