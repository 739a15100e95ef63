"""Per-example gradient sketches, computed by vmap in memory-capped chunks and streamed to zarr.

Store layout (a zarr v3 group at PATH):
- array `sketches` [n_data, dim_out], one zarr chunk per computation chunk of `chunk_rows` rows;
- group attribute `workbench_sketch_store`: the configuration (sketch kind, key data, a hash of
  the sketch's random state, dims, options, dtype, a hash of the params structure, the data size
  and a hash of the data, chunk_rows). Opening a store with another configuration is refused
  with an error naming the fields that differ; nothing in it is touched;
- `_commits/<chunk>`: one empty marker per finished chunk, created by an atomic rename *after*
  the chunk's data is written. A chunk without a marker is (re)computed; a chunk with one is
  never rewritten, so an interrupted run resumes where it stopped and a repeated run is a no-op.
The group itself is created in a temporary directory and renamed into place, so a half-created
store never exists.

Format 2 (issue 17): the kinds fjl, ffd, affd, afjl and qk were rebuilt as the paper defines them,
so a format-1 store written by one of them holds sketches of a map no kind computes any more. It
is refused (reading and resuming) with a message naming the change (`CHANGED_KINDS`); format-1
stores of the unchanged kinds (dense, countsketch, srht) are still read and resumed.
"""

from __future__ import annotations

import functools
import hashlib
import json
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

from workbench.core.numerics import check_positive_int, num_examples
from workbench.core.per_example import example_loss, sketched_per_example_grads
from workbench.sketch.base import Sketch
from workbench.sketch.gradients import METHODS, implicit_grad_fn

STORE_ATTR = "workbench_sketch_store"
FORMAT_VERSION = 2
# kind -> what it meant in format 1, and what to use now
CHANGED_KINDS = {
    "ffd": "a block-diagonal Fastfood (blocks of 1024) followed by row subsampling; 'ffd' is now the "
           "paper's FFD (the transpose of the Fastfood feature map: a sum over input blocks of size D)",
    "affd": "a sum of independent per-block Fastfoods with permutation gathers and random kept rows; "
            "'affd' is now the paper's global R_D(sqrt(N/D) H^pi2 G H^pi1 B x)",
    "afjl": "a blocked Hadamard followed by a hashed sparse Gaussian scatter; 'afjl' is now the "
            "paper's R_D(sqrt(N/D) G H^pi1 B x)",
    "qk": "a Kronecker product of i.i.d. Gaussian factors (balanced, per leaf through for_params), "
          "now the kind 'kronecker'; 'qk' is now the paper's Haar-orthogonal QK truncated to the first D",
    "fjl": "a Hadamard followed by a column-hashed sparse Gaussian (sparsity nonzeros per column); "
           "'fjl' is now the paper's FJL with ~D log^2 N i.i.d. sparse Gaussian non-zeros",
}
DEFAULT_MAX_MEMORY_BYTES = 256 * 2**20


class GradientStore(NamedTuple):
    """An opened store: `sketches` (a read-only zarr array [n_data, dim_out]) and its `metadata`."""

    sketches: Any
    metadata: dict
    path: Path

    @property
    def complete(self) -> bool:
        return len(_committed(self.path)) == self.metadata["num_chunks"]


def params_fingerprint(params) -> str:
    """Hash of the params structure: leaf paths, shapes and dtypes (not the values).

    Args:
        params: a params pytree.

    Returns:
        A 16-hex-digit hash that changes with the structure, shapes or dtypes, not with the values.
    """
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    desc = [(jax.tree_util.keystr(p), tuple(np.shape(x)), str(jnp.asarray(x).dtype)) for p, x in leaves]
    return hashlib.sha256(repr(desc).encode()).hexdigest()[:16]


def array_fingerprint(tree) -> str:
    """Hash of every leaf's shape, dtype and bytes (PRNG keys by their key data): what a store was made from.

    Args:
        tree: a pytree of arrays (the data, or a sketch's random state).

    Returns:
        A 16-hex-digit hash of the values.
    """
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        a = np.asarray(jax.random.key_data(leaf) if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key) else leaf)
        h.update(repr((a.shape, str(a.dtype))).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def store_metadata(sketch: Sketch, params, data, chunk_rows: int, dtype) -> dict:
    """The configuration a store records and checks on reopening (see the module docstring).

    Args:
        sketch: the `Sketch` whose rows are stored.
        params: the params pytree (its structure is recorded, not its values).
        data: the dataset (its size and a hash of its values are recorded).
        chunk_rows: rows per chunk.
        dtype: the stored dtype.

    Returns:
        A JSON-serialisable dict (format version, kind, seed, state hash, dims, options, dtype,
        params structure, data size and hash, chunk_rows, num_chunks).
    """
    n = int(jax.tree.leaves(data)[0].shape[0])
    options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in sketch.options.items()}
    return {
        "format_version": FORMAT_VERSION,
        "kind": sketch.kind,
        "seed": np.asarray(jax.random.key_data(sketch.state["key"])).tolist(),
        "sketch_state_hash": array_fingerprint({k: v for k, v in sketch.state.items() if k != "key"}),
        "dim_in": sketch.dim_in,
        "dim_out": sketch.dim_out,
        "options": json.loads(json.dumps(options, default=str)),
        "dtype": str(np.dtype(dtype)),
        "params_structure": params_fingerprint(params),
        "n_data": n,
        "data_hash": array_fingerprint(data),
        "chunk_rows": int(chunk_rows),
        "num_chunks": -(-n // int(chunk_rows)),
    }


def _committed(path: Path) -> set[int]:
    commits = Path(path) / "_commits"
    return {int(p.name) for p in commits.iterdir() if p.name.isdigit()} if commits.exists() else set()


def _commit(path: Path, chunk: int) -> None:
    commits = Path(path) / "_commits"
    fd, tmp = tempfile.mkstemp(dir=commits, prefix=".tmp-")
    os.close(fd)
    os.replace(tmp, commits / f"{chunk:08d}")


def open_store(path: str | Path, mode: str = "r") -> GradientStore:
    """Open an existing store (read-only by default).

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


def check_format(meta: dict, path) -> None:
    """Refuse a store whose sketch kind has changed meaning since it was written (never reinterpret).

    Args:
        meta: the store's recorded metadata.
        path: the store's path (for the message).

    Raises:
        ValueError: a format-1 store of a changed kind, or an unknown format version.
    """
    version = meta.get("format_version")
    if version == FORMAT_VERSION:
        return
    kind = meta.get("kind")
    if version == 1 and kind in CHANGED_KINDS:
        raise ValueError(
            f"store: {path} was written (format 1) by the old {kind!r} sketch, {CHANGED_KINDS[kind]}. "
            f"Its sketches cannot be read as the new {kind!r}; recompute it into a new path")
    if version != 1:
        raise ValueError(f"store: {path} has format_version {version!r}; this workbench reads 1 (unchanged kinds) and {FORMAT_VERSION}")


def _create_or_open(path: Path, meta: dict, explicit_chunk_rows: bool) -> GradientStore:
    import zarr

    if path.exists():
        store = open_store(path, mode="r+")
        old = store.metadata
        if old.get("format_version") == 1:  # an unchanged kind (check_format refused the rest)
            meta = {**meta, "format_version": 1}
        if not explicit_chunk_rows and old.get("chunk_rows") != meta["chunk_rows"]:
            meta = {**meta, "chunk_rows": old["chunk_rows"], "num_chunks": old["num_chunks"]}
        diff = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
        if diff:
            details = "; ".join(f"{k}: store has {old.get(k)!r}, this run has {meta.get(k)!r}" for k in diff)
            raise ValueError(
                f"store: {path} was made with another configuration ({details}); "
                f"use another path or delete it"
            )
        return store
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


def _compute_chunks(loss_fn, params, data, sketch, method, n, chunk_size, chunks, callback, progress):
    """Yield (chunk, lo, hi, values [hi - lo, D]) for each chunk index in `chunks`."""
    from workbench.core.progress import bar

    for c in bar(chunks, disable=not progress, desc="per-example gradients"):
        lo, hi = c * chunk_size, min(n, (c + 1) * chunk_size)
        idx = np.minimum(np.arange(lo, lo + chunk_size), n - 1)  # pad the last chunk: one compile
        batch = jax.tree.map(lambda a, idx=idx: a[idx], data)
        values = np.asarray(_sketch_chunk(loss_fn, sketch, params, batch, method))[: hi - lo]
        if callback is not None:
            callback(c, values)
        yield c, lo, hi, values


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
        loss_fn: `loss_fn(params, batch) -> scalar` batch-mean loss (or a `Functional`'s loss_fn).
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
        ValueError: the sketch does not match the params, the data has no common example axis,
            `chunk_size` is not a positive int, or `method` is unknown / implicit without a sketch.
    """
    plan = _plan(loss_fn, params, data, sketch, chunk_size, max_memory_bytes, method)
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

    Each chunk of `chunk_size` rows is written and then committed by an atomic marker, so an
    interrupted run resumes at the first uncommitted chunk and a repeated run is a no-op; a store
    made with another configuration (sketch, params structure, data, chunk size) is refused.

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
        ValueError: `sketch` is None, `shard` is malformed, the store was made with another
            configuration, or any argument `per_example_gradients` refuses.
    """
    if sketch is None:
        raise ValueError("store needs a sketch: raw gradients are returned in memory only")
    if shard is not None and (len(shard) != 2 or not 0 <= shard[0] < shard[1]):
        raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard!r}")
    plan = _plan(loss_fn, params, data, sketch, chunk_size, max_memory_bytes, method)
    meta = store_metadata(sketch, params, data, plan.chunk_size, plan.dtype)
    gstore = _create_or_open(Path(path), meta, chunk_size is not None)
    rows = gstore.metadata["chunk_rows"]
    done = _committed(gstore.path)
    todo = [c for c in range(-(-plan.n // rows)) if c not in done and (shard is None or c % shard[1] == shard[0])]
    for c, lo, hi, values in _compute_chunks(loss_fn, params, data, sketch, method, plan.n, rows, todo,
                                             callback, progress):
        gstore.sketches[lo:hi] = values
        _commit(gstore.path, c)
    return open_store(gstore.path)
