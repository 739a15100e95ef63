"""Per-example losses and gradients: the ONE implementation, flat, per-leaf or sketched.

Everything that needs each example's own gradient (the empirical Fisher, every influence
estimator, TRAK, the gradient stores, retraining objectives) goes through these functions, so a
batch of one is built the same way everywhere: `loss_fn(params, batch)` is a batch mean and the
loss of example z is `loss_fn(params, one_example(z))`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from workbench.core.numerics import num_examples

PyTree = Any


def one_example(z: PyTree) -> PyTree:
    """A batch of size one from a single example (leaves without their example axis).

    Args:
        z: one example, a pytree of arrays without the example axis.

    Returns:
        The same pytree with a leading axis of size 1.
    """
    return jax.tree.map(lambda a: a[None], z)


def example_loss(loss_fn: Callable, params: PyTree, z: PyTree) -> jax.Array:
    """The loss of the single example `z` (leaves without their example axis).

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, a batch mean.
        params: the parameters.
        z: one example (leaves without their example axis).

    Returns:
        The scalar loss of `z`.
    """
    return loss_fn(params, one_example(z))


def per_example_losses(loss_fn: Callable, params: PyTree, batch: PyTree) -> jax.Array:
    """[n] losses, one per example of `batch`.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, a batch mean.
        params: the parameters.
        batch: a pytree of arrays with a leading example axis [n, ...].

    Returns:
        [n] the loss of each example alone.
    """
    return jax.vmap(lambda z: example_loss(loss_fn, params, z))(batch)


def per_example_grads(loss_fn: Callable, params: PyTree, batch: PyTree) -> PyTree:
    """Per-leaf per-example gradients: a params-shaped tree whose leaves gain a leading [n] axis.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, a batch mean.
        params: the parameters.
        batch: a pytree of arrays with a leading example axis [n, ...].

    Returns:
        A params-shaped pytree with leaves [n, *leaf.shape], the gradient of each example's loss.
    """
    return jax.vmap(jax.grad(lambda p, z: example_loss(loss_fn, p, z)), in_axes=(None, 0))(params, batch)


def flat_per_example_grads(loss_fn: Callable, params: PyTree, batch: PyTree) -> jax.Array:
    """[n, p] per-example gradients in `ravel_pytree(params)` order.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, a batch mean.
        params: the parameters (p entries in all).
        batch: a pytree of arrays with a leading example axis [n, ...].

    Returns:
        [n, p] the flat gradient of each example's loss.
    """
    flat, unravel = ravel_pytree(params)
    grad_one = jax.grad(lambda f, z: example_loss(loss_fn, unravel(f), z))
    return jax.vmap(grad_one, in_axes=(None, 0))(flat, batch)


def sketched_per_example_grads(loss_fn: Callable, params: PyTree, batch: PyTree, sketch) -> jax.Array:
    """[n, D] sketched per-example gradients `sketch.apply_tree(g_i)` (any object with a batched
    `apply_tree`, e.g. a `workbench.sketch.Sketch`); `sketch=None` gives the flat gradients.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, a batch mean.
        params: the parameters.
        batch: a pytree of arrays with a leading example axis [n, ...].
        sketch: the sketch (with `apply_tree(tree, batched=True)`), or None for no sketch.

    Returns:
        [n, D] sketched gradients ([n, p] flat gradients when `sketch` is None).
    """
    if sketch is None:
        return flat_per_example_grads(loss_fn, params, batch)
    return sketch.apply_tree(per_example_grads(loss_fn, params, batch), batched=True)


@functools.lru_cache(maxsize=64)
def mean_loss(per_example_loss_fn: Callable) -> Callable:
    """(params, batch) -> the batch mean of `per_example_loss_fn(params, batch)` [n]: a model's data
    loss without its regulariser. One stable function per model, so the operators and estimators
    built on it share compiled code."""
    return lambda params, batch: jnp.mean(per_example_loss_fn(params, batch))


def map_chunks(fn: Callable, data: PyTree, chunk_size: int, *, even: bool = False) -> PyTree:
    """`fn(chunk)` over fixed-size chunks of `data` under `lax.map`, concatenated: the one way the
    package bounds the memory of a batched computation over many rows (examples, probes,
    basis vectors) while compiling `fn` for one chunk shape only.

    By default the rows are padded (with copies of the first row) to a multiple of `chunk_size`
    and the padding rows are dropped from the result. With `even=True` the chunk is instead the
    largest divisor of the row count that is at most `chunk_size`, when that divisor is at least
    `chunk_size / 2` (no padding, no wasted rows), and padding is used otherwise; and when every
    row fits in one chunk, `fn(data)` runs once, outside any loop.

    Args:
        fn: `fn(chunk) -> pytree of [c, ...]`, rows of the output matching the rows of the chunk
            (e.g. `jax.vmap(per_row_fn)`).
        data: a pytree of arrays with a common leading row axis [n, ...].
        chunk_size: the most rows `fn` sees at once (values above n mean one chunk).
        even: prefer an unpadded chunk size that divides n (see above).

    Returns:
        The pytree `fn` returns, with leading axis n (the rows of every chunk, in order).
    """
    n = num_examples(data)
    chunk_size = max(1, min(int(chunk_size), n))
    if even:
        if chunk_size == n:
            return fn(data)
        divisor = max(d for d in range(1, chunk_size + 1) if n % d == 0)
        if 2 * divisor >= chunk_size:
            chunk_size = divisor
    num_chunks = -(-n // chunk_size)
    pad = num_chunks * chunk_size - n

    def pad_reshape(a):
        if pad:
            a = jnp.concatenate([a, jnp.repeat(a[:1], pad, axis=0)], axis=0)
        return a.reshape(num_chunks, chunk_size, *a.shape[1:])

    out = jax.lax.map(fn, jax.tree.map(pad_reshape, data))
    return jax.tree.map(lambda o: o.reshape(num_chunks * chunk_size, *o.shape[2:])[:n], out)


def sum_chunks(fn: Callable, data: PyTree, chunk_size: int, varying_axis: str | None = None) -> PyTree:
    """The sum of `fn(chunk)` over consecutive chunks of `data`: the full chunks under one
    `lax.scan` (one compiled chunk shape, whatever the row count), the remainder as one smaller
    chunk. The accumulation of every dataset-averaged quantity (curvature operators, local or
    sharded over processes).

    The scan starts from zeros shaped like `fn`'s value (read off `jax.eval_shape`, so `fn` is
    compiled once for the full chunks and once for the remainder, never a third time for a
    first chunk outside the loop); 0 + x = x, so one chunk is `fn(data)` exactly.

    Args:
        fn: `fn(chunk) -> pytree of arrays` (a sum or a size-weighted value over the chunk's rows;
            the chunk holds `chunk_size` rows, the remainder fewer).
        data: a pytree of arrays with a common leading row axis [n, ...].
        chunk_size: rows per chunk (values above n mean one chunk).
        varying_axis: inside `shard_map`, the mesh axis the rows vary over: the zero carry is
            typed device-varying like `fn`'s value (None outside `shard_map`).

    Returns:
        The pytree sum of `fn` over the chunks.
    """
    n = num_examples(data)
    chunk_size = max(1, min(int(chunk_size), n))
    num_full, tail = divmod(n, chunk_size)
    take = lambda a: a[: num_full * chunk_size].reshape((num_full, chunk_size) + a.shape[1:])  # noqa: E731
    chunks = jax.tree.map(take, data)
    shapes = jax.eval_shape(fn, jax.tree.map(lambda a: a[0], chunks))
    total = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    if varying_axis is not None:
        total = jax.lax.pcast(total, varying_axis, to="varying")
    if num_full == 1:  # one chunk: no loop
        total = jax.tree.map(jnp.add, total, fn(jax.tree.map(lambda a: a[0], chunks)))
    else:
        body = lambda acc, c: (jax.tree.map(jnp.add, acc, fn(c)), None)  # noqa: E731
        total = jax.lax.scan(body, total, chunks)[0]
    if tail:
        part = fn(jax.tree.map(lambda a: a[num_full * chunk_size:], data))
        total = jax.tree.map(jnp.add, total, part)
    return total


def sharded_sum(fn: Callable, replicated: PyTree, data: PyTree, mesh, chunk_size: int | None = None,
                axis: str = "batch") -> PyTree:
    """`sum_chunks` of `fn(replicated, chunk)` on every device's rows of `data`, `psum`-med over
    the mesh: the one reduction of a dataset-averaged quantity over local devices and over the
    devices of several processes alike.

    `replicated` (params, the vector) is marked device-varying inside the `shard_map`, so
    differentiating with respect to it does not insert its own `psum` (which would count
    every row twice). Call it inside `jit`.

    Args:
        fn: `fn(replicated, chunk) -> pytree of arrays`, summed over chunks and devices.
        replicated: pytree replicated on every device.
        data: pytree of arrays [rows, ...] split over `axis` (each device holds rows / devices).
        mesh: the `jax.sharding.Mesh` whose `axis` the rows are split over.
        chunk_size: rows each device passes to `fn` at once (None: all of its rows).
        axis: the mesh axis name.

    Returns:
        The pytree sum over every row of every device, replicated.
    """
    from jax.sharding import PartitionSpec as P

    per_device = num_examples(data) // mesh.devices.size
    chunk = per_device if chunk_size is None else chunk_size

    def local(rep, rows):
        rep = jax.lax.pcast(rep, axis, to="varying")
        return jax.lax.psum(sum_chunks(lambda c: fn(rep, c), rows, chunk, varying_axis=axis), axis)

    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(axis)), out_specs=P())(replicated, data)


@functools.partial(jax.jit, static_argnums=(0, 4))
def sketched_gradients(loss_fn: Callable, sketch, params: PyTree, data: PyTree, chunk_size: int) -> jax.Array:
    """`sketched_per_example_grads` over a whole dataset in fixed-size chunks, jitted once per
    (loss_fn, chunk_size): a sketch is a pytree, so new sketch keys or params reuse the compile."""
    return map_chunks(lambda c: sketched_per_example_grads(loss_fn, params, c, sketch), data, chunk_size)
