"""The linear operator type every spectrum, influence and sketch routine takes: a matvec on flat
vectors or params-shaped pytrees plus a description of its input, built around any matvec
(`linear_operator`), a dense matrix (`from_matrix`), or a dataset's curvature
(`workbench.curvature.operator`); exported to SciPy (`to_scipy`) and as matfree's
`matvec(v, *params)` (`as_matvec`). `leaf_names` names the params leaves an operator can be
restricted to."""


from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from workbench.core import tree as tu
from workbench.core.numerics import check_positive_int
from workbench.core.per_example import (
    map_chunks,
)

PyTree = Any


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


def to_scipy(op: LinearOperator, dtype=None):
    """`op` as a `scipy.sparse.linalg.LinearOperator` on flat NumPy vectors (for `eigsh`,
    `cg`, `minres`, `svds` ...).

    Each product moves the vector to the device, runs the operator's compiled product in
    `op.dtype` and hands back a NumPy array in `dtype`; `matmat` pushes the columns through the
    operator together (vmapped). The operator is taken as symmetric (every curvature operator
    is): `rmatvec` is `matvec` and `rmatmat` is `matmat`.

    Args:
        op: the operator.
        dtype: the real floating dtype SciPy sees (default `op.dtype`; float64 for ARPACK in
            double precision: the products themselves still run in `op.dtype`).

    Returns:
        A `scipy.sparse.linalg.LinearOperator` of shape (dim, dim).

    Raises:
        TypeError: `op` is not a `LinearOperator`, or `dtype` is not a real floating dtype.
    """
    from scipy.sparse.linalg import LinearOperator as ScipyLinearOperator

    if not isinstance(op, LinearOperator):
        raise TypeError(f"op must be a curvature.LinearOperator, got {type(op).__name__}")
    dtype = np.dtype(op.dtype if dtype is None else dtype)
    if not np.issubdtype(dtype, np.floating):
        raise TypeError(f"dtype must be a real floating dtype, got {dtype}")

    def device_input(x: np.ndarray) -> jax.Array:
        if np.iscomplexobj(x):
            raise TypeError("the exported operator is real: complex vectors are not supported")
        return jnp.asarray(x, dtype=op.dtype)

    def matvec(x):
        x = np.asarray(x)
        out = _apply(op, device_input(x.reshape(-1)))
        return np.asarray(out, dtype=dtype).reshape(x.shape)

    def matmat(xs):
        out = _apply_rows(op, device_input(np.asarray(xs).T))  # [k, dim]: row j = A x_j
        return np.asarray(out, dtype=dtype).T

    return ScipyLinearOperator((op.dim, op.dim), matvec=matvec, rmatvec=matvec, matmat=matmat,
                               rmatmat=matmat, dtype=dtype)


@functools.lru_cache(maxsize=64)
def _params_matvec(fn: Callable, dtype) -> Callable:
    """One function object per operator kind, so matfree's compiled loops are reused."""

    def matvec(v, args):
        return fn(args, jnp.asarray(v).astype(dtype))

    return matvec


def as_matvec(op: LinearOperator) -> tuple[Callable, tuple]:
    """`op` as matfree takes a linear map: a pure `matvec(v, *params)` and its `params`.

    `matvec(v, *params)` is `op`'s product on a flat vector [dim] with the arrays it needs (the
    params and data of a dataset operator) passed in explicitly, so it works under `jit`,
    `vmap` and `grad` and inside matfree's decompositions and estimators:
    `matfree.decomp.tridiag_sym(k)(matvec, v0, *params)`. Operators of one kind share one
    `matvec` (only `params` differ), so compiled programs are reused across them.

    Args:
        op: the operator.

    Returns:
        The pair (matvec, params): `matvec(v, *params) == op.mv(v)`; `params` a tuple.

    Raises:
        TypeError: `op` is not a `LinearOperator`.
    """
    if not isinstance(op, LinearOperator):
        raise TypeError(f"op must be a curvature.LinearOperator, got {type(op).__name__}")
    return _params_matvec(op.fn, jnp.dtype(op.dtype)), (op.args,)


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
