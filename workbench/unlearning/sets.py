"""Forget and retain sets: validated splits of a training set for the unlearning methods.

`split(train_data, forget, retain=None)` builds a `Split` from indices or a boolean mask;
`check_sets(forget, retain)` is the boundary check every method runs (both sets non-empty, the
same structure, and no example of the forget set in the retain set).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


class Split(NamedTuple):
    """A training set cut into the examples to forget and those to keep, with their indices."""

    forget: PyTree
    retain: PyTree
    forget_indices: np.ndarray
    retain_indices: np.ndarray


# ----------------------------------------------------------------------------- validation


def _num(data: PyTree, name: str) -> int:
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError(f"{name} holds no arrays")
    sizes = {int(np.shape(a)[0]) if np.ndim(a) else -1 for a in leaves}
    if len(sizes) != 1 or -1 in sizes:
        raise ValueError(f"{name}: every array needs the same leading example axis, got sizes {sorted(sizes)}")
    return sizes.pop()


def _row_keys(data: PyTree) -> list[bytes]:
    """One hashable key per example: the bytes of all its leaves."""
    leaves = [np.ascontiguousarray(np.asarray(a).reshape(np.shape(a)[0], -1)) for a in jax.tree.leaves(data)]
    return [b"".join(leaf[i].tobytes() for leaf in leaves) for i in range(leaves[0].shape[0])]


def is_traced(tree: PyTree) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree))


def check_sets(forget: PyTree, retain: PyTree) -> tuple[int, int]:
    """Both sets non-empty, with one structure; no forget example appears in the retain set."""
    n_f, n_r = _num(forget, "forget"), _num(retain, "retain")
    if n_f == 0:
        raise ValueError("forget is empty: there is nothing to unlearn (pass at least one example)")
    if n_r == 0:
        raise ValueError("retain is empty: every method needs examples to keep")
    if jax.tree.structure(forget) != jax.tree.structure(retain):
        raise ValueError(f"forget and retain need one structure, got {jax.tree.structure(forget)} "
                         f"and {jax.tree.structure(retain)}")
    if is_traced(forget) or is_traced(retain):
        return n_f, n_r
    for name, data in (("forget", forget), ("retain", retain)):
        for leaf in jax.tree.leaves(data):
            if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact) and not np.all(np.isfinite(np.asarray(leaf))):
                raise ValueError(f"{name} contains NaN or infinite values")
    shared = set(_row_keys(forget)) & set(_row_keys(retain))
    if shared:
        raise ValueError(f"retain overlaps forget: {len(shared)} forget example(s) also appear in retain; "
                         "an example cannot be both forgotten and kept (build the sets with unlearning.split)")
    return n_f, n_r


def split(train_data: PyTree, forget, retain=None) -> Split:
    """Cut `train_data` into (forget, retain).

    `forget` is an integer index array, a boolean mask over the examples, or a pytree of examples
    (matched to rows of `train_data` exactly). `retain` (indices) defaults to every other example.
    Raises ValueError when the forget set is empty, has indices out of range or repeated, holds
    examples that are not in `train_data`, or when `retain` overlaps it.
    """
    n = _num(train_data, "train_data")
    if isinstance(forget, (np.ndarray, jax.Array, list, range)):  # indices or a mask
        idx = np.asarray(forget)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise ValueError(f"a boolean forget mask needs shape ({n},), got {idx.shape}")
            idx = np.flatnonzero(idx)
        elif idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"forget indices must be integers, got dtype {idx.dtype}")
        idx = idx.astype(np.int64)
    else:  # examples: find them in the training set
        keys = {k: i for i, k in enumerate(_row_keys(train_data))}
        try:
            rows = _row_keys(forget)
        except (ValueError, IndexError) as err:
            raise ValueError(f"forget must be indices, a mask or examples shaped like train_data: {err}") from err
        missing = [j for j, k in enumerate(rows) if k not in keys]
        if missing:
            raise ValueError(f"forget is not a subset of train_data: {len(missing)} of its {len(rows)} examples "
                             f"(e.g. row {missing[0]}) are not in the training set")
        idx = np.asarray([keys[k] for k in rows], dtype=np.int64)
    if idx.size == 0:
        raise ValueError("forget is empty: there is nothing to unlearn (pass at least one example)")
    if idx.min() < 0 or idx.max() >= n:
        raise ValueError(f"forget indices must lie in [0, {n}) (the training set), got range "
                         f"[{idx.min()}, {idx.max()}]: forget is not a subset of train_data")
    if np.unique(idx).size != idx.size:
        raise ValueError("forget indices repeat an example")
    if retain is None:
        ridx = np.setdiff1d(np.arange(n), idx)
    else:
        ridx = np.asarray(retain, dtype=np.int64)
        if ridx.size and (ridx.min() < 0 or ridx.max() >= n):
            raise ValueError(f"retain indices must lie in [0, {n})")
        both = np.intersect1d(idx, ridx)
        if both.size:
            raise ValueError(f"retain overlaps forget: {both.size} example(s), e.g. index {both[0]}, are in both")
    if ridx.size == 0:
        raise ValueError("retain is empty: forgetting every training example leaves nothing to keep")
    take = lambda ix: jax.tree.map(lambda a: a[ix], train_data)
    return Split(take(idx), take(ridx), idx, ridx)
