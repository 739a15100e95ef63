"""What pytree code needs beyond `optax.tree`: flattening at an algorithm's boundary, and one
check that two trees match (paths, shapes and dtype kinds) with a message naming the first leaf
that differs.

Tree arithmetic (`vdot`, `norm`, `add_scale`, `scale`, `sub`, `size`, `cast`, `random_like`)
is `optax.tree`'s, used directly everywhere.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

PyTree = Any


def ravel(x: PyTree) -> tuple[jax.Array, Any]:
    """(flat vector, unravel function); use only at the boundary of flat-vector algorithms.

    Args:
        x: the pytree.

    Returns:
        The tuple (flat [size], unravel) of `jax.flatten_util.ravel_pytree`.
    """
    return ravel_pytree(x)


def check_same_structure(a: PyTree, b: PyTree, a_name: str = "params", b_name: str = "vector") -> None:
    """Raise ValueError naming the first leaf where `a` and `b` differ in path, shape or dtype kind.

    Shapes must match exactly; dtypes may differ in precision (float32 vs float64) but not in kind.

    Args:
        a: the reference pytree.
        b: the pytree checked against it.
        a_name: what `a` is called in the message.
        b_name: what `b` is called in the message.

    Raises:
        ValueError: the structures, shapes or dtype kinds differ (the first difference is named).
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
