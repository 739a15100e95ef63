"""The per-example gradient store written by every process of a job at once.

`gradient_store(loss_fn, params, data, sketch, path)` is `workbench.sketch.per_example_gradients`
with `store=path`, called on every process: the processes first compare the store configuration
each would write (`workbench.sketch.provenance.store_metadata`: the sketch, the params' structure
and values, the loss probe, the data hash, dtype, chunk rows) and refuse a mismatch with an error
naming the processes and what differs, before anything is written. Every field is computed by the
same code from the same arguments on each process (the loss probe by one compiled program), and
compared as a reopened store is (`configuration_differences`: the loss probe within its
dtype-aware tolerance, everything else exactly). Then
process k computes and writes the chunks c with c % process_count == k (each chunk its own zarr
chunk and commit marker, so writers never touch the same file); the metadata is written once,
by whichever process creates the store first (an atomic rename; the others open and check it).
A killed process leaves its finished chunks committed and its unfinished ones uncommitted: run
the job again and only the missing chunks are computed. Every wait has a timeout.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from workbench.distributed.launch import barrier
from workbench.distributed.sharding import _allgather_host, _decode, _encode
from workbench.sketch.provenance import configuration_differences, store_metadata
from workbench.sketch.store import (
    DEFAULT_MAX_MEMORY_BYTES,
    GradientStore,
    open_store,
    write_gradient_store,
)

_calls = itertools.count()


def gradient_store(
    loss_fn: Callable,
    params,
    data,
    sketch,
    path: str | Path,
    *,
    chunk_size: int | None = None,
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
    callback: Callable[[int, np.ndarray], None] | None = None,
    timeout_s: float = 600.0,
) -> GradientStore:
    """Fill the store at `path` with sketched per-example gradients, every process its share of
    the chunks; returns the opened (read-only) store once every process has finished. Every
    process passes the same `data` (the whole dataset: its hash is part of the configuration).
    `callback(chunk, values)` runs before each chunk is written (a raising callback simulates a
    killed process).

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, a batch mean.
        params: the point whose per-example gradients are stored (the same on every process).
        data: the whole dataset (pytree of arrays with a leading example axis).
        sketch: the sketch applied to each gradient (a store needs one).
        path: the zarr store's folder (shared by every process).
        chunk_size: examples per stored chunk (default: as many as `max_memory_bytes` allows).
        max_memory_bytes: the memory budget of one chunk's gradients.
        callback: `callback(chunk, values)` before each chunk is written.
        timeout_s: how long to wait for the other processes.

    Returns:
        The completed `GradientStore`, opened read-only.

    Raises:
        ValueError: no sketch, the processes' configurations differ (fields named), or anything
            `write_gradient_store` refuses (non-finite params, a store made with another
            configuration).
        FloatingPointError: a chunk's gradients hold NaN or inf (it is not written).
        RuntimeError: another process does not finish within `timeout_s`, or a chunk is missing.
    """
    if sketch is None:
        raise ValueError("sketch: a multi-process store needs a sketch (raw gradients stay in memory)")
    n_params = optax.tree.size(params)
    dtype = jnp.result_type(*jax.tree.leaves(params))
    n = int(jax.tree.leaves(data)[0].shape[0])
    rows = chunk_size or max(1, min(n, int(max_memory_bytes) // (4 * n_params * np.dtype(dtype).itemsize)))
    meta = store_metadata(loss_fn, params, data, sketch, rows, dtype)
    text = json.dumps(meta, sort_keys=True)
    metas = [_decode(row) for row in _allgather_host(_encode(text, 16384))]
    for p, other in enumerate(metas):
        if other == text:
            continue
        try:
            theirs = json.loads(other)
        except json.JSONDecodeError:
            theirs = None
        if not isinstance(theirs, dict):
            fields, details = ["(unreadable)"], f"process {p}'s configuration could not be read"
        else:
            fields = [field for field, _ in configuration_differences(theirs, meta)]
            details = "; ".join(f"{f}: process {p} has {theirs.get(f)!r}, process {jax.process_index()} has "
                                f"{meta.get(f)!r}" for f in fields)
        if fields:
            raise ValueError(
                f"store: process {jax.process_index()} and process {p} would write {path} with different "
                f"configurations (fields {', '.join(fields)}): {details}. Every process must pass the same "
                "sketch, params, loss, data and chunk_size")
    k, i = jax.process_count(), jax.process_index()
    write_gradient_store(loss_fn, params, data, sketch, path, rows,
                         max_memory_bytes=max_memory_bytes, callback=callback, shard=(i, k))
    barrier(f"workbench_gradient_store_{next(_calls)}", timeout_s)
    store = open_store(path)
    if not store.complete:
        raise RuntimeError(f"store: {path} is incomplete after every process finished (a chunk is missing)")
    return store
