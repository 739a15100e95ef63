"""Data sharded by example across processes and devices, and the global sums every routine needs.

`shard_examples(data)` takes the rows this process holds (a pytree of arrays with a leading
example axis) and returns a `ShardedData`: global `jax.Array`s built with
`jax.make_array_from_process_local_data`, split by example over a 1-D mesh of every device of
every process (axis "batch"). Processes may hold different numbers of rows: each pads its block to
a common length with copies of its last row and weight 0, so sums over `weights` count every real
example exactly once. Before anything is built, the processes compare the structure, trailing
shapes and dtypes of what they hold and refuse a mismatch with an error naming both processes.

`global_sum(fn, replicated, data)` sums `fn(replicated, rows, weights)` over every device's rows in
chunks (`shard_map` + `psum`); it is how the curvature operator and the objectives reduce over the
dataset. `to_host` / `gather_rows` bring results back to numpy on every process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from workbench.core.per_example import sharded_sum

AXIS = "batch"
_DESC_BYTES = 2048


def mesh() -> Mesh:
    """A 1-D mesh ("batch") over every device of every process, in process order.

    Returns:
        The `jax.sharding.Mesh` with axis "batch".
    """
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    return Mesh(np.array(devices), (AXIS,))


@jax.tree_util.register_pytree_node_class
class ShardedData:
    """Examples sharded over `mesh`: `data` (pytree of global arrays [slots, ...]), `weights`
    [slots] (1 for a real example, 0 for padding), `num_examples` real examples in all, `counts`
    real examples per process (process order), `slots_per_process` rows each process holds."""

    def __init__(self, data, weights, num_examples: int, counts: tuple[int, ...], slots_per_process: int, mesh: Mesh):
        self.data = data
        self.weights = weights
        self.num_examples = num_examples
        self.counts = counts
        self.slots_per_process = slots_per_process
        self.mesh = mesh

    def tree_flatten(self):
        return (self.data, self.weights), (self.num_examples, self.counts, self.slots_per_process, self.mesh)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, *aux)

    @property
    def slots_per_device(self) -> int:
        return self.slots_per_process // (len(self.mesh.devices.flat) // len(self.counts))

    def __repr__(self):
        return (f"ShardedData(num_examples={self.num_examples}, counts={self.counts}, "
                f"devices={self.mesh.devices.size}, slots_per_device={self.slots_per_device})")


def local_block(num_examples: int, process_index: int | None = None, process_count: int | None = None) -> slice:
    """The contiguous block of `num_examples` this process takes (sizes differ by at most one).

    Args:
        num_examples: the size of the whole dataset.
        process_index: the process (default this one).
        process_count: the number of processes (default the job's).

    Returns:
        The slice of example indices this process holds.
    """
    i = jax.process_index() if process_index is None else process_index
    k = jax.process_count() if process_count is None else process_count
    bounds = np.linspace(0, num_examples, k + 1).round().astype(int)
    return slice(int(bounds[i]), int(bounds[i + 1]))


def _describe(data) -> str:
    leaves, treedef = jax.tree.flatten(data)
    shapes = ", ".join(f"(n, {', '.join(map(str, np.shape(a)[1:]))}) {np.asarray(a).dtype}" for a in leaves)
    return f"{treedef} leaves: {shapes}"


def _allgather_host(values: np.ndarray) -> np.ndarray:
    """[process_count, ...] of a same-shaped host array from every process."""
    if jax.process_count() == 1:
        return values[None]
    return np.asarray(multihost_utils.process_allgather(values, tiled=False))


def _encode(text: str, size: int = _DESC_BYTES) -> np.ndarray:
    raw = text.encode()[:size]
    return np.frombuffer(raw.ljust(size, b"\0"), np.uint8).astype(np.int32)


def _decode(codes: np.ndarray) -> str:
    return bytes(np.asarray(codes, np.uint8)).rstrip(b"\0").decode(errors="replace")


def shard_examples(data: Any, *, mesh: Mesh | None = None) -> ShardedData:
    """Shard this process's rows of `data` (pytree of arrays, leading example axis) by example
    over every device of every process. Every process must call it with the same structure,
    trailing shapes and dtypes (a `ValueError` names the first process that differs); row
    counts may differ (at least one row each).

    Args:
        data: this process's rows, a pytree of arrays with a leading example axis.
        mesh: the mesh (default `mesh()`: every device of every process).

    Returns:
        The `ShardedData` (global arrays padded per process, weights 0 on padding).

    Raises:
        ValueError: no arrays, a scalar leaf, disagreeing row counts, a process with no rows, or
            processes whose structure, shapes or dtypes differ (both named).
    """
    mesh = mesh or globals()["mesh"]()
    leaves = [np.asarray(a) for a in jax.tree.leaves(data)]
    if not leaves:
        raise ValueError("data must hold at least one array with a leading example axis")
    if any(a.ndim == 0 for a in leaves):
        raise ValueError("data: every array needs a leading example axis (got a scalar)")
    n_local = leaves[0].shape[0]
    if any(a.shape[0] != n_local for a in leaves):
        raise ValueError(f"data arrays disagree on the number of examples: {[a.shape for a in leaves]}")
    desc = _describe(data)
    gathered = _allgather_host(np.concatenate([np.array([n_local], np.int32), _encode(desc)]))
    counts = tuple(int(c) for c in gathered[:, 0])
    descs = [_decode(row[1:]) for row in gathered]
    for p, d in enumerate(descs):
        if d != descs[0]:
            raise ValueError(
                f"data: processes disagree on the shapes or dtypes of their examples: process {p} "
                f"has {d} where process 0 has {descs[0]}")
    empty = [p for p, c in enumerate(counts) if c == 0]
    if empty:
        raise ValueError(f"data: processes {empty} hold no examples; every process needs at least one")
    local_devices = mesh.devices.size // jax.process_count()
    slots = -(-max(counts) // local_devices) * local_devices
    pad = slots - n_local
    idx = np.concatenate([np.arange(n_local), np.full(pad, n_local - 1)])
    weights = np.concatenate([np.ones(n_local), np.zeros(pad)])
    sharding = NamedSharding(mesh, P(AXIS))
    total_slots = slots * jax.process_count()

    def build(a, index=True):
        a = a[idx] if index else a
        return jax.make_array_from_process_local_data(sharding, a, (total_slots,) + a.shape[1:])

    dtype = jnp.result_type(*[a.dtype for a in leaves if np.issubdtype(a.dtype, np.floating)] or [jnp.float32])
    global_data = jax.tree.unflatten(jax.tree.structure(data), [build(a) for a in leaves])
    return ShardedData(global_data, build(weights.astype(dtype), index=False), int(sum(counts)), counts, slots, mesh)


def rows_per_process(data: ShardedData) -> tuple[int, ...]:
    """The rows each process holds of `data` (its examples and their padding: what it evaluates on
    every pass over the data), counted from the shards of `data.weights` each process can address
    and gathered from every process.

    Args:
        data: the `ShardedData`.

    Returns:
        The row count of every process, in process order.

    Raises:
        TypeError: `data` is not a `ShardedData`.
    """
    if not isinstance(data, ShardedData):
        raise TypeError(f"data must be a ShardedData (see distributed.shard_examples), got {type(data).__name__}")
    local = sum(int(shard.data.shape[0]) for shard in data.weights.addressable_shards)
    return tuple(int(c) for c in _allgather_host(np.array([local], np.int32))[:, 0])


def load_over_even_share(data: ShardedData, dataset_size: int) -> float:
    """The most rows any process evaluates per pass over `data`, over an even share of the
    dataset, dataset_size / process_count: 1 when the dataset is split evenly (up to a row of
    padding per device), process_count when every process holds every example.

    A distributed objective gives the single-process optimum whether the processes split the
    examples or each holds all of them; this ratio is what tells the two apart.

    Args:
        data: the `ShardedData`.
        dataset_size: the number of distinct examples of the dataset `data` was built from.

    Returns:
        max(rows_per_process(data)) * process_count / dataset_size, a Python float.

    Raises:
        TypeError: `data` is not a `ShardedData`.
        ValueError: `dataset_size` is not a positive int.
    """
    if isinstance(dataset_size, bool) or not isinstance(dataset_size, int | np.integer) or dataset_size < 1:
        raise ValueError(f"dataset_size must be a positive int, got {dataset_size!r}")
    rows = rows_per_process(data)
    return max(rows) * len(rows) / int(dataset_size)


def replicate(tree: Any, mesh: Mesh | None = None) -> Any:
    """Host values (the same on every process) as global arrays replicated on every device.

    Args:
        tree: host arrays, the same on every process.
        mesh: the mesh (default `mesh()`).

    Returns:
        The pytree of global arrays replicated on every device of `mesh`.
    """
    mesh = mesh or globals()["mesh"]()
    sharding = NamedSharding(mesh, P())

    def put(a):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

    return jax.tree.map(put, tree)


def to_host(tree: Any) -> Any:
    """Global arrays (replicated or sharded) as numpy arrays on every process.

    Args:
        tree: a pytree of global (or local) arrays.

    Returns:
        The pytree of numpy arrays, the whole arrays on every process.
    """

    def get(a):
        if not isinstance(a, jax.Array) or a.is_fully_addressable:
            return np.asarray(a)
        if a.is_fully_replicated:
            return np.asarray(a.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(a, tiled=True))

    return jax.tree.map(get, tree)


def gather_rows(data: ShardedData, values: Any) -> Any:
    """Per-example values laid out like `data` ([slots, ...], sharded) as numpy arrays holding only
    the real examples, in process order (process 0's rows first), on every process.

    Args:
        data: the `ShardedData` the values are laid out like.
        values: a pytree of [slots, ...] arrays sharded like `data.weights`.

    Returns:
        The pytree of numpy arrays [num_examples, ...], padding dropped.
    """
    host = to_host(values)
    s = data.slots_per_process
    keep = np.concatenate([np.arange(p * s, p * s + c) for p, c in enumerate(data.counts)])
    return jax.tree.map(lambda a: a[keep], host)


def global_sum(fn: Callable, replicated: Any, data: ShardedData, *, rows: Any = None, weights=None,
               chunk_size: int | None = None) -> Any:
    """The sum over every device of every process of `fn(replicated, rows_chunk, weights_chunk)`.

    `core.per_example.sharded_sum` over the `ShardedData`'s mesh (the same reduction the
    single-process `curvature.operator` runs over local devices): each device's rows in chunks
    of `chunk_size` under `shard_map`, then `psum` across the mesh. Call it inside `jit` with
    `data` as an argument.

    Args:
        fn: `fn(replicated, rows_chunk, weights_chunk) -> pytree`, a sum over the chunk's rows
            with the weights already applied by `fn`.
        replicated: pytree replicated on every device (params, vectors).
        data: the `ShardedData` whose mesh and rows are reduced over.
        rows: per-example arrays laid out like `data.data` (default `data.data`).
        weights: [slots] weights laid out like `data.weights` (default `data.weights`; 0 marks
            padding).
        chunk_size: rows each device passes to `fn` at once (default: all of its rows).

    Returns:
        The summed pytree, replicated on every device.
    """
    rows = data.data if rows is None else rows
    weights = data.weights if weights is None else weights
    per_device = weights.shape[0] // data.mesh.devices.size
    chunk = per_device if chunk_size is None else max(1, min(int(chunk_size), per_device))
    return sharded_sum(lambda rep, c: fn(rep, *c), replicated, (rows, weights), data.mesh, chunk, AXIS)
