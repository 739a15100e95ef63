"""Forget and retain sets: validated splits of a training set for the unlearning methods.

`split(train_data, forget, retain=None)` builds a `Split` from indices or a boolean mask;
`check_sets(forget, retain)` is the boundary check every method runs (both sets non-empty, the
same structure, and no example of the forget set in the retain set); it returns their `SetSizes`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from workbench.core.numerics import num_examples

PyTree = Any


class Split(NamedTuple):
    """A training set cut into the examples to forget and those to keep, with their indices."""

    forget: PyTree
    retain: PyTree
    forget_indices: np.ndarray
    retain_indices: np.ndarray


class SetSizes(NamedTuple):
    """The number of examples in the forget and the retain set."""

    forget: int
    retain: int


# ----------------------------------------------------------------------------- validation


def _row_keys(data: PyTree) -> list[bytes]:
    """One hashable key per example: the bytes of all its leaves."""
    leaves = [np.ascontiguousarray(np.asarray(a).reshape(np.shape(a)[0], -1)) for a in jax.tree.leaves(data)]
    return [b"".join(leaf[i].tobytes() for leaf in leaves) for i in range(leaves[0].shape[0])]


def is_traced(tree: PyTree) -> bool:
    """Whether any leaf of `tree` is a JAX tracer (inside `jit`/`vmap`, where host checks are skipped).

    Args:
      tree: any pytree.

    Returns:
      True when at least one leaf is a `jax.core.Tracer`.
    """
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree))


def check_sets(forget: PyTree, retain: PyTree) -> SetSizes:
    """The boundary check every method runs: two valid, disjoint sets of examples.

    Both sets are non-empty with one structure and finite values, and no forget example appears
    in the retain set (examples are compared by the bytes of all their leaves). Under tracing only
    the shapes are checked.

    Args:
      forget: the examples to forget, a pytree with a leading example axis.
      retain: the examples to keep, with the structure of `forget`.

    Returns:
      `SetSizes(forget, retain)`, the number of examples of each.

    Raises:
      ValueError: when a set is empty or its arrays disagree on the example count, the structures
        differ, a set holds NaN/inf, or the sets overlap.
    """
    n_f, n_r = num_examples(forget, "forget"), num_examples(retain, "retain")
    if jax.tree.structure(forget) != jax.tree.structure(retain):
        raise ValueError(f"forget and retain need one structure, got {jax.tree.structure(forget)} "
                         f"and {jax.tree.structure(retain)}")
    if is_traced(forget) or is_traced(retain):
        return SetSizes(n_f, n_r)
    for name, data in (("forget", forget), ("retain", retain)):
        for leaf in jax.tree.leaves(data):
            if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact) and not np.all(np.isfinite(np.asarray(leaf))):
                raise ValueError(f"{name} contains NaN or infinite values")
    shared = set(_row_keys(forget)) & set(_row_keys(retain))
    if shared:
        raise ValueError(f"retain overlaps forget: {len(shared)} forget example(s) also appear in retain; "
                         "an example cannot be both forgotten and kept (build the sets with unlearning.split)")
    return SetSizes(n_f, n_r)


def split(train_data: PyTree, forget, retain=None) -> Split:
    """Cut `train_data` into a forget set and a retain set, validated.

    Args:
      train_data: the training set, a pytree of arrays with a leading example axis (e.g. a
        `Dataset`).
      forget: an integer index array, a boolean mask over the examples, or a pytree of examples
        (matched to rows of `train_data` exactly).
      retain: integer indices of the examples to keep; None means every other example.

    Returns:
      `Split(forget, retain, forget_indices, retain_indices)`: the two sets (leaves indexed by
      the indices) and their int64 indices into `train_data`.

    Raises:
      ValueError: when the forget set is empty, has indices out of range or repeated, holds
        examples that are not in `train_data`, when `retain` overlaps it, or nothing is left to
        keep.
    """
    n = num_examples(train_data, "train_data")
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
