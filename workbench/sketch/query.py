"""Asking a gradient store: its sketch rebuilt from the path alone, test gradients scored against it.

A store (`workbench.sketch.store`) holds the sketched per-example training gradients
Phi g_i [n_train, D]. `sketch_from_store(path)` remakes the exact sketch Phi from the store's
metadata (kind, key data, dims, options), checked against the recorded hash of its random state.
`score_store(path, loss_fn, params, data, test_data)` sketches each test example's gradient
with that same Phi, by the same code path as the stored rows (`per_example_gradients`), and
scores it against every stored row:

    scores[t, i] = <Phi g_test_t, Phi g_i>    (normalize=True: divided by both norms, a cosine)

an estimate of <g_test_t, g_i> (the `grad_dot` / TracIn-at-one-checkpoint score), unbiased over
the sketch's draw (every kind is scaled so that E[Phi^T Phi] = I). The stored rows are read in blocks of `chunk_rows` rows, each
scored and merged into a running top-k (the `top_k` highest scores, the proponents, and the
`top_k` lowest, the opponents) before the next is read, so the store is never in memory at once;
with `keep_scores=False` the [n_test, n_train] matrix is never formed either. A store is scored
only if it is complete and was made with these params, this loss and this training data (the
checks of `check_store`); anything else is refused with the reason.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from workbench.core.losses import as_loss
from workbench.core.numerics import check_positive_int, num_examples
from workbench.models import Functional
from workbench.sketch.base import Sketch
from workbench.sketch.provenance import check_resumable, sketch_from_metadata
from workbench.sketch.store import (
    GradientStore,
    _committed,
    check_store,
    open_store,
    per_example_gradients,
)

COSINE_EPS = 1e-12  # g / (||g|| + eps), as `influence.grad_cos`: a zero gradient has cosine 0


class StoreScores(NamedTuple):
    """What `score_store` returns (train indices are rows of the store, i.e. of `data`).

    - `scores`: [n_test, n_train] <Phi g_test, Phi g_i> (cosines with `normalize=True`), or None
      when `keep_scores=False`;
    - `proponents`, `proponent_scores`: [n_test, top_k] the train indices with the highest
      scores and those scores, highest first (None when `top_k` is None);
    - `opponents`, `opponent_scores`: [n_test, top_k] the lowest scores, lowest first;
    - `test_sketches`: [n_test, D] the sketched test gradients Phi g_test (not normalised).
    Equal scores are ordered by train index.
    """

    scores: jax.Array | None
    proponents: jax.Array | None
    proponent_scores: jax.Array | None
    opponents: jax.Array | None
    opponent_scores: jax.Array | None
    test_sketches: jax.Array


def _as_store(store: GradientStore | str | Path) -> GradientStore:
    return store if isinstance(store, GradientStore) else open_store(store)


def sketch_from_store(store: GradientStore | str | Path) -> Sketch:
    """The exact `Sketch` a store was written with, rebuilt from its metadata alone.

    Args:
        store: the store's path, or an opened `GradientStore`.

    Returns:
        The `Sketch` (same kind, key, dims and options: the same map as the one that wrote it).

    Raises:
        FileNotFoundError: no store at the path.
        ValueError: the path is not a gradient store, or its sketch cannot be rebuilt exactly
            (`provenance.sketch_from_metadata` names what differs).
    """
    store = _as_store(store)
    return sketch_from_metadata(store.metadata, store.path)


def _check_complete(store: GradientStore) -> None:
    if store.complete:
        return
    missing = sorted(set(range(store.metadata["num_chunks"])) - _committed(store.path))
    shown = ", ".join(map(str, missing[:8])) + (f", ... ({len(missing)} in all)" if len(missing) > 8 else "")
    raise ValueError(
        f"store: {store.path} is incomplete: chunk(s) [{shown}] of {store.metadata['num_chunks']} are not "
        f"committed (an interrupted or still running write); finish it with write_gradient_store first")


def _check_test_data(test_data, data) -> int:
    """The number of test examples, after checking each leaf fits the training data's per-example shape."""
    n_test = num_examples(test_data, "test_data")
    train, test = jax.tree.leaves(data), jax.tree.leaves(test_data)
    if len(train) != len(test):
        raise ValueError(f"test_data: has {len(test)} arrays per example, the store's data has {len(train)}")
    for i, (a, b) in enumerate(zip(train, test)):
        # floats must match exactly (they meet the params); integer labels of another width are fine
        other_dtype = a.dtype != b.dtype and (np.dtype(a.dtype).kind != np.dtype(b.dtype).kind or
                                             jnp.issubdtype(a.dtype, jnp.floating))
        if tuple(a.shape[1:]) != tuple(b.shape[1:]) or other_dtype:
            raise ValueError(
                f"test_data: array {i} holds examples of shape {tuple(b.shape[1:])} and dtype {b.dtype}, the "
                f"store's data holds {tuple(a.shape[1:])} and {a.dtype}")
    return n_test


def _merge(best_vals, best_idx, vals, idx, k):
    """The k largest of (best, new) along axis 1, earlier columns first among equals."""
    top, where = jax.lax.top_k(jnp.concatenate([best_vals, vals], axis=1), k)
    return top, jnp.take_along_axis(jnp.concatenate([best_idx, idx], axis=1), where, axis=1)


@functools.partial(jax.jit, static_argnames=("k", "normalize"))
def _score_block(test, block, lo, count, state, *, k, normalize):
    # one compiled program per (shapes, k, normalize): every block is padded to chunk_rows rows
    if normalize:
        block = block / (jnp.linalg.norm(block, axis=1, keepdims=True) + COSINE_EPS)
    scores = test @ block.T  # [n_test, chunk_rows]
    if k is None:
        return scores, state
    positions = jnp.arange(block.shape[0], dtype=jnp.int32)
    valid = positions < count
    idx = jnp.broadcast_to(lo + positions, scores.shape)
    inf = jnp.asarray(jnp.inf, scores.dtype)
    pro_vals, pro_idx, opp_vals, opp_idx = state
    pro = _merge(pro_vals, pro_idx, jnp.where(valid, scores, -inf), idx, k)
    neg_opp = _merge(-opp_vals, opp_idx, jnp.where(valid, -scores, -inf), idx, k)
    return scores, (*pro, -neg_opp[0], neg_opp[1])


def score_store(
    store: GradientStore | str | Path,
    loss_fn: Callable | Functional,
    params,
    data,
    test_data,
    *,
    top_k: int | None = None,
    keep_scores: bool = True,
    normalize: bool = False,
    chunk_rows: int | None = None,
    test_chunk_size: int | None = None,
    progress: bool = False,
) -> StoreScores:
    """Score sketched test gradients against every row of a store, streaming it from disk.

    scores[t, i] = <Phi g_test_t, Phi g_i>, with Phi rebuilt from the store (`sketch_from_store`)
    and g_test_t = grad loss_fn(params, test example t alone), sketched by `per_example_gradients`
    exactly as the stored rows were. With `normalize=True` both sides are first divided by their
    norms (+1e-12, as `influence.grad_cos`): cosines in [-1, 1].

    Memory: the stored rows are read `chunk_rows` at a time, so at most the test sketches
    [n_test, D], one block [chunk_rows, D] and its scores [n_test, chunk_rows], the running
    top-k (4 arrays [n_test, top_k]) and, when `keep_scores`, the result [n_test, n_train] are
    held, plus a [test_chunk_size, dim_in] block of raw test gradients; never the whole store. The training `data` is read once, to check it
    is the data the store was made from (its hash; the loss is probed on its first examples).

    Args:
        store: the store's path, or an opened `GradientStore`.
        loss_fn: `loss_fn(params, batch) -> scalar` batch-mean loss the store was written with, or a
            `workbench.models.Functional` (its per-example data loss, without the l2 term).
        params: the params pytree the store was written at.
        data: the training data the store was written from (row i of the store is example i).
        test_data: the test examples [n_test, ...]: per example, the shapes of `data`, its floating
            dtypes, and its kinds of the other dtypes (integer labels of any width).
        top_k: how many proponents (highest scores) and opponents (lowest) to return per test
            example, merged block by block; None returns none.
        keep_scores: return the full [n_test, n_train] score matrix; False (needs `top_k`) keeps
            memory independent of n_train.
        normalize: score cosines instead of dot products.
        chunk_rows: stored rows read and scored at a time; None = the store's own chunk rows.
        test_chunk_size: test examples per vmapped gradient chunk; None = the store's chunk rows,
            so the test gradients run the very program (and memory) that wrote the store.
        progress: show a progress bar over the blocks.

    Returns:
        `StoreScores(scores, proponents, proponent_scores, opponents, opponent_scores,
        test_sketches)`, in the store's dtype; indices are int32 rows of the store.

    Raises:
        FileNotFoundError: no store at the path.
        TypeError: `loss_fn` is neither callable nor a `Functional`.
        ValueError: the store is incomplete (its uncommitted chunks named), was written before
            format 3, was made with other params, another loss, other data or a sketch that cannot
            be rebuilt (each difference named); `test_data` does not fit the data's per-example
            shapes; `top_k` is not in [1, n_train]; `keep_scores=False` without `top_k`; a size is
            not a positive int.
        FloatingPointError: a test example's gradient is NaN or inf (named).
    """
    store = _as_store(store)
    loss_fn = as_loss(loss_fn, role="data", caller="sketch.score_store")
    meta = store.metadata
    n_train = meta["n_data"]
    if top_k is not None and not 1 <= check_positive_int("top_k", top_k) <= n_train:
        raise ValueError(f"top_k must be at most the store's {n_train} examples, got {top_k}")
    if not keep_scores and top_k is None:
        raise ValueError("keep_scores=False needs top_k: otherwise there is nothing to return")
    rows = meta["chunk_rows"] if chunk_rows is None else check_positive_int("chunk_rows", chunk_rows)
    check_resumable(meta, store.path)  # format 3: the params and the loss can be checked
    _check_complete(store)
    sketch = sketch_from_metadata(meta, store.path)
    _check_test_data(test_data, data)
    check_store(loss_fn, params, data, sketch, store.path)
    test = per_example_gradients(loss_fn, params, test_data, sketch,
                                 meta["chunk_rows"] if test_chunk_size is None else test_chunk_size)
    dtype = np.dtype(meta["dtype"])
    return _stream(store, test.astype(dtype), rows, top_k, keep_scores, normalize, progress)


def _stream(store, test, rows, k, keep_scores, normalize, progress) -> StoreScores:
    """Score `test` [n_test, D] against the store's rows, `rows` at a time (see `score_store`)."""
    from workbench.core.progress import bar

    n_train, dim = store.metadata["n_data"], store.metadata["dim_out"]
    n_test, dtype = test.shape[0], test.dtype
    rows = min(rows, n_train)
    scored = test / (jnp.linalg.norm(test, axis=1, keepdims=True) + COSINE_EPS) if normalize else test
    state = None
    if k is not None:
        none = jnp.full((n_test, k), -1, jnp.int32)
        state = (jnp.full((n_test, k), -jnp.inf, dtype), none, jnp.full((n_test, k), jnp.inf, dtype), none)
    scores = np.empty((n_test, n_train), dtype) if keep_scores else None
    for lo in bar(range(0, n_train, rows), disable=not progress, desc="scoring the store"):
        hi = min(n_train, lo + rows)
        # a fresh buffer per block: JAX on CPU may alias a NumPy argument and runs the call
        # asynchronously, so refilling one shared buffer could change a block still being scored
        block = np.zeros((rows, dim), dtype)  # padding rows of the last block: masked out of the top-k
        block[: hi - lo] = store.sketches[lo:hi]
        out, state = _score_block(scored, block, jnp.int32(lo), jnp.int32(hi - lo), state, k=k, normalize=normalize)
        if keep_scores:
            scores[:, lo:hi] = np.asarray(out)[:, : hi - lo]
    top = (None,) * 4 if k is None else (state[1], state[0], state[3], state[2])  # indices, then scores
    return StoreScores(None if scores is None else jnp.asarray(scores), *top, test)
