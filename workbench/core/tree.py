"""Tree math in one place: inner products, norms and axpy over params-shaped pytrees.

Every curvature, spectrum and influence routine works on pytrees; these helpers keep that code
free of `jax.tree.map` boilerplate and give one place that checks two trees match.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

PyTree = Any


def vdot(a: PyTree, b: PyTree) -> jax.Array:
    """Sum over leaves of <a_leaf, b_leaf>, accumulated in the leaves' result dtype."""
    parts = jax.tree.leaves(jax.tree.map(lambda x, y: jnp.vdot(x, y), a, b))
    return sum(parts[1:], parts[0]) if parts else jnp.zeros(())


def norm(a: PyTree) -> jax.Array:
    """Euclidean norm of the whole tree, as if it were one flat vector."""
    return jnp.sqrt(vdot(a, a))


def axpy(alpha: jax.Array | float, x: PyTree, y: PyTree) -> PyTree:
    """alpha * x + y, leaf by leaf."""
    return jax.tree.map(lambda xi, yi: alpha * xi + yi, x, y)


def scale(alpha: jax.Array | float, x: PyTree) -> PyTree:
    return jax.tree.map(lambda xi: alpha * xi, x)


def add(x: PyTree, y: PyTree) -> PyTree:
    return jax.tree.map(jnp.add, x, y)


def sub(x: PyTree, y: PyTree) -> PyTree:
    return jax.tree.map(jnp.subtract, x, y)


def zeros_like(x: PyTree) -> PyTree:
    return jax.tree.map(jnp.zeros_like, x)


def size(x: PyTree) -> int:
    """Number of scalars in the tree."""
    return sum(int(leaf.size) for leaf in jax.tree.leaves(x))


def cast(x: PyTree, dtype) -> PyTree:
    """Cast every floating leaf to `dtype` (integer leaves are left alone)."""
    return jax.tree.map(
        lambda leaf: leaf.astype(dtype) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf, x
    )


def random_like(key: jax.Array, x: PyTree, kind: str = "normal") -> PyTree:
    """A tree shaped like `x` with i.i.d. entries: `normal` or `rademacher` (+-1)."""
    leaves, treedef = jax.tree.flatten(x)
    keys = jax.random.split(key, len(leaves))
    if kind == "normal":
        draw = lambda k, leaf: jax.random.normal(k, leaf.shape, leaf.dtype)
    elif kind == "rademacher":
        draw = lambda k, leaf: jax.random.rademacher(k, leaf.shape, leaf.dtype)
    else:
        raise ValueError(f"kind must be 'normal' or 'rademacher', got {kind!r}")
    return jax.tree.unflatten(treedef, [draw(k, leaf) for k, leaf in zip(keys, leaves)])


def ravel(x: PyTree) -> tuple[jax.Array, Any]:
    """(flat vector, unravel function); use only at the boundary of flat-vector algorithms."""
    return ravel_pytree(x)


def check_same_structure(a: PyTree, b: PyTree, a_name: str = "params", b_name: str = "vector"):
    """Raise ValueError naming the first leaf where `a` and `b` differ in path, shape or dtype kind.

    Shapes must match exactly; dtypes may differ in precision (float32 vs float64) but not in kind.
    """
    a_paths = jax.tree_util.tree_flatten_with_path(a)[0]
    b_paths = jax.tree_util.tree_flatten_with_path(b)[0]
    for (pa, la), (pb, lb) in zip(a_paths, b_paths):
        name_a, name_b = jax.tree_util.keystr(pa), jax.tree_util.keystr(pb)
        if name_a != name_b:
            raise ValueError(
                f"{b_name} does not match {a_name}: first mismatched leaf is {name_b or '<root>'} "
                f"where {a_name} has {name_a or '<root>'}"
            )
        if jnp.shape(la) != jnp.shape(lb):
            raise ValueError(
                f"{b_name} does not match {a_name} at leaf {name_a or '<root>'}: "
                f"shape {jnp.shape(lb)} where {a_name} has {jnp.shape(la)}"
            )
    if len(a_paths) != len(b_paths):
        longer, name = (a_paths, a_name) if len(a_paths) > len(b_paths) else (b_paths, b_name)
        extra = jax.tree_util.keystr(longer[min(len(a_paths), len(b_paths))][0])
        raise ValueError(
            f"{b_name} does not match {a_name}: {a_name} has {len(a_paths)} leaves and {b_name} "
            f"has {len(b_paths)}; first unmatched leaf {extra or '<root>'} (in {name})"
        )
