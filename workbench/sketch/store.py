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

from workbench.core.per_example import example_loss, sketched_per_example_grads
from workbench.sketch.base import Sketch
from workbench.sketch.gradients import implicit_grad_fn

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
    """Hash of the params structure: leaf paths, shapes and dtypes (not the values)."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    desc = [(jax.tree_util.keystr(p), tuple(np.shape(x)), str(jnp.asarray(x).dtype)) for p, x in leaves]
    return hashlib.sha256(repr(desc).encode()).hexdigest()[:16]


def array_fingerprint(tree) -> str:
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        a = np.asarray(jax.random.key_data(leaf) if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key) else leaf)
        h.update(repr((a.shape, str(a.dtype))).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def store_metadata(sketch: Sketch, params, data, chunk_rows: int, dtype) -> dict:
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
    """Open an existing store (read-only by default)."""
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
    """Refuse a store whose sketch kind has changed meaning since it was written (never reinterpret)."""
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


def per_example_gradients(
    loss_fn: Callable,
    params,
    data,
    sketch: Sketch | None,
    batch_size: int | None = None,
    store: str | Path | None = None,
    *,
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
    callback: Callable[[int, np.ndarray], None] | None = None,
    progress: bool = False,
    shard: tuple[int, int] | None = None,
    method: str = "explicit",
):
    """Sketched per-example gradients Phi grad_theta loss(theta, example_i) for every example.

    Gradients are computed by `vmap` over `batch_size` examples at a time (default: as many as
    fit in `max_memory_bytes`, counting a few copies of a [batch, dim_in] gradient block), sketched
    with `sketch.apply_tree(..., batched=True)` and discarded. `loss_fn(params, batch)` is
    evaluated on one-example batches. Returns a [n_data, dim_out] jax array, or, with
    `store=PATH`, a read-only `GradientStore` whose `sketches` is the zarr array (see the module
    docstring for resume and refusal rules). `callback(chunk, values)` runs after each chunk is
    computed and before it is written (a raising callback simulates an interruption).
    `sketch=None` returns the raw flattened gradients [n_data, n_params] (in memory only).
    `shard=(index, count)` (with `store`) computes only the chunks c with c % count == index, so
    `count` processes can fill one store together (see `workbench.distributed.gradient_store`).
    `method="implicit"` sketches each gradient as d/dw loss(theta0 + Phi^T w, example) at w = 0
    (`workbench.sketch.gradients`): the same numbers by another route (stores do not record it).
    """
    from workbench.core.progress import bar

    n_params = optax.tree.size(params)
    if method not in ("explicit", "implicit"):
        raise ValueError(f"method must be 'explicit' or 'implicit', got {method!r}")
    if sketch is None and method == "implicit":
        raise ValueError("method='implicit' needs a sketch")
    if sketch is None and store is not None:
        raise ValueError("store needs a sketch: raw gradients are returned in memory only")
    if shard is not None and (store is None or len(shard) != 2 or not 0 <= shard[0] < shard[1]):
        raise ValueError(f"shard must be (index, count) with 0 <= index < count and a store, got {shard!r}")
    if sketch is not None and sketch.dim_in != n_params:
        raise ValueError(f"sketch: dim_in={sketch.dim_in} but params have {n_params} scalars")
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError("data must be a Dataset (or a pytree of arrays with a leading example axis)")
    n = int(leaves[0].shape[0])
    if any(int(a.shape[0]) != n for a in leaves):
        raise ValueError(f"data: every array must have the same number of examples, got {[a.shape for a in leaves]}")
    dtypes = {jnp.asarray(p).dtype for p in jax.tree.leaves(params)}
    if len(dtypes) != 1:
        raise ValueError(f"params: all leaves must share one floating dtype, got {sorted(map(str, dtypes))}")
    dtype = dtypes.pop()
    explicit = batch_size is not None
    if batch_size is None:
        batch_size = max(1, min(n, int(max_memory_bytes) // (4 * n_params * np.dtype(dtype).itemsize)))
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")

    gstore = None
    if store is not None:
        meta = store_metadata(sketch, params, data, batch_size, dtype)
        gstore = _create_or_open(Path(store), meta, explicit)
        batch_size = gstore.metadata["chunk_rows"]
    num_chunks = -(-n // batch_size)
    done = _committed(gstore.path) if gstore is not None else set()
    todo = [c for c in range(num_chunks) if c not in done and (shard is None or c % shard[1] == shard[0])]
    results = []
    for c in bar(todo, disable=not progress, desc="per-example gradients"):
        lo, hi = c * batch_size, min(n, (c + 1) * batch_size)
        idx = np.minimum(np.arange(lo, lo + batch_size), n - 1)  # pad the last chunk: one compile
        values = np.asarray(_sketch_chunk(loss_fn, sketch, params, jax.tree.map(lambda a, idx=idx: a[idx], data), method))[: hi - lo]
        if callback is not None:
            callback(c, values)
        if gstore is None:
            results.append(values)
        else:
            gstore.sketches[lo:hi] = values
            _commit(gstore.path, c)
    if gstore is None:
        return jnp.asarray(np.concatenate(results, axis=0))
    return open_store(gstore.path)
