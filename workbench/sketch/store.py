"""Per-example gradient sketches, computed by vmap in memory-capped chunks and streamed to zarr.

Store layout (a zarr v3 group at PATH):
- array `sketches` [n_data, dim_out], one zarr chunk per computation chunk of `chunk_rows` rows;
- group attribute `workbench_sketch_store`: what made the store (`provenance.store_metadata`):
  `format_version` (3); the sketch (`kind`, `seed` (its key data), `sketch_state_hash`, `dim_in`,
  `dim_out`, `options`); `dtype`; the params (`params_structure`: a hash of leaf paths, shapes
  and dtypes; `params_values`: a hash of every leaf's bytes); the loss (`loss_probe`: {"dtype",
  "values"}, the losses of the first min(n, 4) examples, each alone, as floats); the data
  (`n_data`, `data_hash`); `chunk_rows`, `num_chunks`. Reopening a store for another
  configuration (`check_store`, and `write_gradient_store` before resuming) is refused with an
  error naming what differs in user terms ("the params' values differ ...", "the loss differs:
  at example 0 ..."); nothing in it is touched;
- `_commits/<chunk>`: one empty marker per finished chunk, created by an atomic rename *after*
  the chunk's data is written. A chunk without a marker is (re)computed; a chunk with one is
  never rewritten, so an interrupted run resumes where it stopped and a repeated run is a no-op.
  A chunk whose gradients hold NaN or inf is refused before it is written (an error naming the
  chunk and the examples), so every committed chunk is finite and a `complete` store is usable.
The group itself is created in a temporary directory and renamed into place, so a half-created
store never exists. `workbench.sketch.query` asks a store: its sketch rebuilt from this metadata
alone (`sketch_from_store`), test gradients scored against its rows (`score_store`).

Older formats (`provenance.check_format`). Format 2 lacks the params' values and the loss probe:
`open_store` still reads it as it is (it takes no params to check against), but it is never
resumed or checked against a run (`check_resumable`: recompute it). Format 1 is read likewise for
the kinds whose map is unchanged (dense, countsketch, srht); a format-1 store of fjl, ffd, affd,
afjl or qk (rebuilt in issue 17 as the paper defines them) holds sketches of a map no kind
computes any more and is refused outright, naming the change (`CHANGED_KINDS`).
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from workbench.core.losses import as_loss, check_loss_output
from workbench.core.numerics import check_finite, check_floating, check_positive_int, num_examples
from workbench.core.per_example import example_loss, sketched_per_example_grads
from workbench.sketch.base import Sketch
from workbench.sketch.gradients import METHODS, implicit_grad_fn
from workbench.sketch.provenance import (  # noqa: F401  (CHANGED_KINDS, FORMAT_VERSION: re-exported)
    CHANGED_KINDS,
    FORMAT_VERSION,
    check_format,
    check_resumable,
    configuration_differences,
    describe_differences,
    store_metadata,
)

STORE_ATTR = "workbench_sketch_store"
DEFAULT_MAX_MEMORY_BYTES = 256 * 2**20


class GradientStore(NamedTuple):
    """An opened store: `sketches` (a read-only zarr array [n_data, dim_out]) and its `metadata`."""

    sketches: Any
    metadata: dict
    path: Path

    @property
    def complete(self) -> bool:
        """Every chunk committed, and so finite (format 3 commits only finite chunks; an older
        store is read through to check)."""
        if len(_committed(self.path)) != self.metadata["num_chunks"]:
            return False
        if self.metadata.get("format_version") == FORMAT_VERSION:
            return True
        rows = self.metadata["chunk_rows"]
        return all(np.all(np.isfinite(self.sketches[lo : lo + rows]))
                   for lo in range(0, self.metadata["n_data"], rows))


def _committed(path: Path) -> set[int]:
    commits = Path(path) / "_commits"
    return {int(p.name) for p in commits.iterdir() if p.name.isdigit()} if commits.exists() else set()


def _commit(path: Path, chunk: int) -> None:
    commits = Path(path) / "_commits"
    fd, tmp = tempfile.mkstemp(dir=commits, prefix=".tmp-")
    os.close(fd)
    os.replace(tmp, commits / f"{chunk:08d}")


def open_store(path: str | Path, mode: str = "r") -> GradientStore:
    """Open an existing store (read-only by default), as it is: nothing checks what made it.

    `check_store` opens a store only after checking it against a (loss, params, data, sketch).
    Stores of formats 2 and 1 (unchanged kinds) are read too, though they can no longer be
    checked or resumed (see the module docstring).

    Args:
        path: the store's directory.
        mode: zarr mode, "r" (read-only) or "r+" (to resume writing).

    Returns:
        The `GradientStore`.

    Raises:
        FileNotFoundError: no store at `path`.
        ValueError: `path` is a zarr group but not a gradient store, or of a refused format.
    """
    import zarr

    path = Path(path)
    if not (path / "zarr.json").exists():
        raise FileNotFoundError(f"store: no gradient store at {path}")
    group = zarr.open_group(str(path), mode=mode)
    meta = dict(group.attrs.get(STORE_ATTR) or {})
    if not meta:
        raise ValueError(f"store: {path} is a zarr group but not a workbench gradient store")
    check_format(meta, path)
    return GradientStore(group["sketches"], meta, path)


def _check_against(path: Path, stored: dict, run: dict, explicit_chunk_rows: bool) -> None:
    """Refuse the store at `path` (metadata `stored`) unless the `run` configuration made it."""
    check_resumable(stored, path)
    if not explicit_chunk_rows and isinstance(stored.get("chunk_rows"), int) and stored["chunk_rows"] > 0:
        rows = stored["chunk_rows"]
        run = {**run, "chunk_rows": rows, "num_chunks": -(-run["n_data"] // rows)}
    differences = configuration_differences(stored, run)
    if differences:
        raise ValueError(
            f"store: {path} was made with another configuration: {describe_differences(differences)}. "
            f"Nothing in it was changed; use another path, or delete {path} to recompute it")


def check_store(loss_fn: Callable, params, data, sketch: Sketch, path: str | Path,
                chunk_size: int | None = None) -> GradientStore:
    """Open the store at `path` read-only after checking that (loss_fn, params, data, sketch) made it.

    Nothing is written. The params' structure and values, the loss (its probe: the first
    examples' losses, compared with `provenance.probe_rtol`), the data and the sketch are compared
    with those the store recorded; `write_gradient_store` runs the same check before resuming.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar` batch-mean loss.
        params: the params pytree (one floating dtype).
        data: a `Dataset` or pytree of arrays with a common leading example axis [n, ...].
        sketch: the `Sketch` the store should hold.
        path: the store's directory.
        chunk_size: rows per chunk the store must have; None accepts the store's.

    Returns:
        The read-only `GradientStore` (check `complete` before relying on every row).

    Raises:
        FileNotFoundError: no store at `path`.
        ValueError: the store was made with another configuration (each difference named), was
            written before format 3 (no fingerprints to check), or the arguments are malformed.
    """
    loss_fn = _data_loss(loss_fn, params, data, "sketch.check_store")
    stored = open_store(path).metadata
    check_resumable(stored, path)
    rows = stored["chunk_rows"] if chunk_size is None else chunk_size
    plan = _plan(loss_fn, params, data, sketch, rows, DEFAULT_MAX_MEMORY_BYTES, "explicit")
    _check_against(Path(path), stored, store_metadata(loss_fn, params, data, sketch, plan.chunk_size, plan.dtype),
                   chunk_size is not None)
    return open_store(path)


def _create_or_open(path: Path, meta: dict, explicit_chunk_rows: bool) -> GradientStore:
    """The store at `path` opened for writing: checked against `meta` if present, else created."""
    import zarr

    if path.exists():
        _check_against(path, open_store(path).metadata, meta, explicit_chunk_rows)  # read-only until accepted
        return open_store(path, mode="r+")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        group = zarr.open_group(str(tmp), mode="w", attributes={STORE_ATTR: meta})
        group.create_array(
            "sketches", shape=(meta["n_data"], meta["dim_out"]), dtype=meta["dtype"],
            chunks=(meta["chunk_rows"], meta["dim_out"]), fill_value=np.nan,
        )
        (tmp / "_commits").mkdir()
        os.rename(tmp, path)  # atomic: the store appears complete with its metadata, or not at all
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (path / "zarr.json").exists():
            raise
        return _create_or_open(path, meta, explicit_chunk_rows)  # another process created it first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return open_store(path, mode="r+")


@functools.partial(jax.jit, static_argnums=(0, 4))
def _sketch_chunk(loss_fn, sketch, params, batch, method="explicit"):
    # module level and keyed on loss_fn: repeated calls (new sketches, params, chunks) reuse the compile
    if method == "implicit":
        grad_w = implicit_grad_fn(lambda p, z: example_loss(loss_fn, p, z), sketch, params)
        return jax.vmap(grad_w)(batch)
    return sketched_per_example_grads(loss_fn, params, batch, sketch)


class _Plan(NamedTuple):
    n: int  # examples in `data`
    chunk_size: int  # examples per computed chunk
    dtype: Any  # the params' one floating dtype


def _plan(loss_fn, params, data, sketch, chunk_size, max_memory_bytes, method) -> _Plan:
    """Validate the arguments shared by `per_example_gradients` and `write_gradient_store`."""
    check_floating(params)  # an integer leaf has no gradient
    n_params = optax.tree.size(params)
    if method not in METHODS:
        raise ValueError(f"method must be 'explicit' or 'implicit', got {method!r}")
    if sketch is None and method == "implicit":
        raise ValueError("method='implicit' needs a sketch")
    if sketch is not None and sketch.dim_in != n_params:
        raise ValueError(f"sketch: dim_in={sketch.dim_in} but params have {n_params} scalars")
    n = num_examples(data)
    dtypes = {jnp.asarray(p).dtype for p in jax.tree.leaves(params)}
    if len(dtypes) != 1:
        raise ValueError(f"params: all leaves must share one floating dtype, got {sorted(map(str, dtypes))}")
    dtype = dtypes.pop()
    if chunk_size is None:
        chunk_size = max(1, min(n, int(max_memory_bytes) // (4 * n_params * np.dtype(dtype).itemsize)))
    return _Plan(n, check_positive_int("chunk_size", chunk_size), dtype)


def _check_params_finite(params, who: str) -> None:
    """Refuse non-finite params up front: every gradient at them would be NaN, and a NaN is never stored."""
    try:
        check_finite(params, "params")
    except ValueError as error:
        raise ValueError(f"{who}: {error}, so every per-example gradient would be NaN or inf; nothing "
                         "was computed or written") from None


def _check_chunk_finite(values: np.ndarray, chunk: int, lo: int, path: Path | None) -> None:
    """Refuse a chunk holding NaN or inf, naming its examples (before any callback, write or commit)."""
    bad = np.flatnonzero(~np.all(np.isfinite(values), axis=1))
    if bad.size == 0:
        return
    shown = ", ".join(str(lo + int(i)) for i in bad[:8]) + (f", ... ({bad.size} in all)" if bad.size > 8 else "")
    fate = "" if path is None else f"; the chunk was not written, so {path} stays incomplete"
    raise FloatingPointError(
        f"per-example gradients: chunk {chunk} (examples {lo} to {lo + len(values) - 1}) is NaN or inf at "
        f"examples [{shown}]: the loss or its gradient is not finite there (the params are finite: check "
        f"the loss function and these examples' data){fate}")


def _compute_chunks(loss_fn, params, data, sketch, method, n, chunk_size, chunks, callback, progress, path=None):
    """Yield (chunk, lo, hi, values [hi - lo, D]) for each chunk index in `chunks`, each checked finite."""
    from workbench.core.progress import bar

    for c in bar(chunks, disable=not progress, desc="per-example gradients"):
        lo, hi = c * chunk_size, min(n, (c + 1) * chunk_size)
        idx = np.minimum(np.arange(lo, lo + chunk_size), n - 1)  # pad the last chunk: one compile
        batch = jax.tree.map(lambda a, idx=idx: a[idx], data)
        values = np.asarray(_sketch_chunk(loss_fn, sketch, params, batch, method))[: hi - lo]
        _check_chunk_finite(values, c, lo, path)
        if callback is not None:
            callback(c, values)
        yield c, lo, hi, values


def _data_loss(loss_fn, params, data, caller: str) -> Callable:
    """The batch-mean data loss: a `Functional`'s (without its l2 term), or `loss_fn` as given
    after checking it returns a scalar (a per-example loss is named as such)."""
    loss_fn = as_loss(loss_fn, role="data", caller=caller)
    check_loss_output(loss_fn, params, jax.tree.map(lambda a: a[:2], data), expects="scalar", caller=caller)
    return loss_fn


def per_example_gradients(
    loss_fn: Callable,
    params,
    data,
    sketch: Sketch | None,
    chunk_size: int | None = None,
    *,
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
    callback: Callable[[int, np.ndarray], None] | None = None,
    progress: bool = False,
    method: str = "explicit",
) -> jax.Array:
    """Sketched per-example gradients Phi grad_theta loss(theta, example_i) for every example, in memory.

    Gradients are computed by `vmap` over `chunk_size` examples at a time, sketched with
    `sketch.apply_tree(..., batched=True)` and discarded, so memory holds one [chunk, dim_in]
    block at a time. `loss_fn(params, batch)` is evaluated on one-example batches (a batch mean
    of one). The last chunk is padded with copies of the last example, so every chunk shares
    one compiled program. `write_gradient_store` streams the same rows to a resumable zarr store.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar` batch-mean loss, or a `models.Functional` (its
            data loss, without the l2 term).
        params: the params pytree theta (one floating dtype); the gradients ravel it as `ravel_pytree`.
        data: a `Dataset` or pytree of arrays with a common leading example axis [n, ...].
        sketch: a `Sketch` with dim_in = number of params, or None for the raw flattened gradients.
        chunk_size: examples per vmapped chunk; None = as many as fit in `max_memory_bytes`.
        max_memory_bytes: memory cap used to choose `chunk_size` (counting ~4 copies of a
            [chunk, dim_in] gradient block).
        callback: `callback(chunk, values)` after each chunk is computed (None: nothing).
        progress: show a progress bar over chunks.
        method: "explicit" (sketch the gradient) or "implicit" (d/dw loss(theta0 + Phi^T w) at w = 0,
            `workbench.sketch.gradients`): the same numbers by another route.

    Returns:
        A [n, dim_out] array ([n, n_params] when `sketch` is None), in the params' dtype.

    Raises:
        ValueError: the params hold NaN or inf, the sketch does not match the params, the data has
            no common example axis, `chunk_size` is not a positive int, or `method` is unknown /
            implicit without a sketch.
        FloatingPointError: a chunk's gradients hold NaN or inf at finite params (the loss or the
            data is not finite at the examples named); never returned as rows.
    """
    loss_fn = _data_loss(loss_fn, params, data, "sketch.per_example_gradients")
    plan = _plan(loss_fn, params, data, sketch, chunk_size, max_memory_bytes, method)
    _check_params_finite(params, "per_example_gradients")
    chunks = range(-(-plan.n // plan.chunk_size))
    rows = [values for *_, values in _compute_chunks(loss_fn, params, data, sketch, method, plan.n,
                                                      plan.chunk_size, chunks, callback, progress)]
    return jnp.asarray(np.concatenate(rows, axis=0))


def write_gradient_store(
    loss_fn: Callable,
    params,
    data,
    sketch: Sketch,
    path: str | Path,
    chunk_size: int | None = None,
    *,
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
    callback: Callable[[int, np.ndarray], None] | None = None,
    progress: bool = False,
    shard: tuple[int, int] | None = None,
    method: str = "explicit",
) -> GradientStore:
    """`per_example_gradients` streamed to a resumable zarr store at `path` (see the module docstring).

    Each chunk of `chunk_size` rows is checked finite, written and then committed by an atomic
    marker, so an interrupted run resumes at the first uncommitted chunk and a repeated run is a
    no-op. An existing store is first checked against this run as `check_store` does: one made
    with other params (structure or values), another loss, other data, another sketch or chunk
    size, or written before format 3, is refused and left untouched.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar` batch-mean loss.
        params: the params pytree (one floating dtype).
        data: a `Dataset` or pytree of arrays with a common leading example axis [n, ...].
        sketch: a `Sketch` with dim_in = number of params (raw gradients are never stored).
        path: the store's directory (created atomically when missing).
        chunk_size: rows per chunk; None = the existing store's, or as many as fit in
            `max_memory_bytes` for a new store. An explicit value must match an existing store.
        max_memory_bytes: memory cap used to choose `chunk_size`.
        callback: `callback(chunk, values)` after each chunk is computed and before it is
            written (a raising callback simulates an interruption).
        progress: show a progress bar over chunks.
        shard: (index, count): compute only the chunks c with c % count == index, so `count`
            processes fill one store together (`workbench.distributed.gradient_store`); None: all.
        method: "explicit" or "implicit", as in `per_example_gradients` (stores do not record it).

    Returns:
        The reopened read-only `GradientStore` (`sketches` [n, dim_out] zarr array, `metadata`).

    Raises:
        ValueError: `sketch` is None, `shard` is malformed, the params hold NaN or inf (nothing is
            created), the store was made with another configuration or an older format, or any
            argument `per_example_gradients` refuses.
        FloatingPointError: the loss is not finite at a probed example (nothing is created), or a
            chunk's gradients hold NaN or inf (that chunk is neither written nor committed, so
            the store stays incomplete; the error names the chunk and its examples).
    """
    loss_fn = _data_loss(loss_fn, params, data, "sketch.write_gradient_store")
    if sketch is None:
        raise ValueError("store needs a sketch: raw gradients are returned in memory only")
    if shard is not None and (len(shard) != 2 or not 0 <= shard[0] < shard[1]):
        raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard!r}")
    plan = _plan(loss_fn, params, data, sketch, chunk_size, max_memory_bytes, method)
    path = Path(path)
    _check_params_finite(params, f"store {path}")
    meta = store_metadata(loss_fn, params, data, sketch, plan.chunk_size, plan.dtype)
    probe = meta["loss_probe"]["values"]
    if not np.all(np.isfinite(probe)):
        i = int(np.flatnonzero(~np.isfinite(probe))[0])
        raise FloatingPointError(
            f"store {path}: the loss of example {i} alone is {probe[i]} at finite params (check the loss "
            f"function and that example's data); nothing was written")
    gstore = _create_or_open(path, meta, chunk_size is not None)
    rows = gstore.metadata["chunk_rows"]
    done = _committed(gstore.path)
    todo = [c for c in range(-(-plan.n // rows)) if c not in done and (shard is None or c % shard[1] == shard[0])]
    for c, lo, hi, values in _compute_chunks(loss_fn, params, data, sketch, method, plan.n, rows, todo,
                                             callback, progress, gstore.path):
        gstore.sketches[lo:hi] = values
        _commit(gstore.path, c)
    return open_store(gstore.path)
