"""Task streams: several tasks of the same input and label shapes, stacked for a compiled loop.

A stream holds each task's training and test set on a leading task axis, so a step inside
`lax.scan` can draw any task's examples by index. Streams are built from data the caller
loaded (`rotated`, `permuted`, `stack_tasks`); no dataset is read here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from workbench.core.numerics import check_positive_int, num_examples


class TaskStream(NamedTuple):
    """Tasks seen one after another: `names` [T]; `train_x` [T, n, ...] and `train_y` [T, n, ...]
    (each task's training examples, the same count n per task); `test_x` [T, m, ...] and `test_y`
    [T, m, ...] (each task's held-out examples)."""

    names: tuple[str, ...]
    train_x: jax.Array
    train_y: jax.Array
    test_x: jax.Array
    test_y: jax.Array

    @property
    def num_tasks(self) -> int:
        """The number of tasks T."""
        return len(self.names)

    def task(self, k: int, split: str = "train") -> tuple[jax.Array, jax.Array]:
        """Task `k`'s examples as an (x, y) pair, `split` "train" or "test"."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        return (self.train_x[k], self.train_y[k]) if split == "train" else (self.test_x[k], self.test_y[k])

    def union(self, split: str = "train") -> tuple[jax.Array, jax.Array]:
        """Every task's examples of `split` in one (x, y) pair (task-major order)."""
        x, y = (self.train_x, self.train_y) if split == "train" else (self.test_x, self.test_y)
        return x.reshape(-1, *x.shape[2:]), y.reshape(-1, *y.shape[2:])


def stack_tasks(names: Sequence[str], train: Sequence, test: Sequence) -> TaskStream:
    """A `TaskStream` from per-task (x, y) training and test sets.

    Args:
        names: one name per task (distinct).
        train: one (x, y) pair (or `Dataset`) per task; every task the same number of examples
            and the same shapes and dtypes.
        test: the held-out (x, y) pair of each task, likewise of one size.

    Returns:
        The stacked `TaskStream`.

    Raises:
        ValueError: fewer than one task, counts that disagree, duplicate names, or tasks whose
            sizes, shapes or dtypes differ (the message names the task).
    """
    names = tuple(str(n) for n in names)
    if not names:
        raise ValueError("a task stream needs at least one task")
    if len(set(names)) != len(names):
        raise ValueError(f"task names must be distinct, got {names}")
    if not len(train) == len(test) == len(names):
        raise ValueError(f"one training and one test set per task: {len(names)} names, {len(train)} "
                         f"training sets, {len(test)} test sets")

    def stack(sets, which):
        first = None
        for name, (x, y) in zip(names, sets, strict=True):
            num_examples((x, y), f"task {name!r} {which} set")
            shape = (np.shape(x), np.shape(y), jnp.asarray(x).dtype, jnp.asarray(y).dtype)
            if first is None:
                first = (name, shape)
            elif shape != first[1]:
                raise ValueError(f"every task's {which} set needs the same size, shapes and dtypes: task "
                                 f"{name!r} has x {shape[0]} {shape[2]}, y {shape[1]} {shape[3]}; task "
                                 f"{first[0]!r} has x {first[1][0]} {first[1][2]}, y {first[1][1]} "
                                 f"{first[1][3]} (trim the sets to one size)")
        return jnp.stack([jnp.asarray(x) for x, _ in sets]), jnp.stack([jnp.asarray(y) for _, y in sets])

    train_x, train_y = stack(train, "training")
    test_x, test_y = stack(test, "test")
    return TaskStream(names, train_x, train_y, test_x, test_y)


def rotated(train, test, angles: Sequence[int], image_size: int) -> TaskStream:
    """Rotated-image tasks: task k shows every image rotated by `angles[k]` degrees (multiples of
    90, exact pixel permutations), labels unchanged.

    Args:
        train: the (x, y) training set, x [n, image_size * image_size] (flat square images) or
            [n, image_size, image_size, channels].
        test: the held-out (x, y) set, shaped like `train`.
        angles: one angle per task, multiples of 90 (0 is the original task).
        image_size: the side of the square images.

    Returns:
        The `TaskStream`, tasks named "rotated 90" and so on ("original" for 0).

    Raises:
        ValueError: an angle that is not a multiple of 90, or inputs that are not square images
            of `image_size`.
    """
    image_size = check_positive_int("image_size", image_size)
    for a in angles:
        if int(a) % 90:
            raise ValueError(f"angles must be multiples of 90 (exact rotations of the pixel grid), got {a}")

    def rotate(x, angle):
        x = jnp.asarray(x)
        flat = x.ndim == 2
        if flat and x.shape[1] != image_size * image_size:
            raise ValueError(f"flat images need {image_size}^2 = {image_size ** 2} pixels, got {x.shape[1]}")
        images = x.reshape(-1, image_size, image_size) if flat else x
        if images.shape[1:3] != (image_size, image_size):
            raise ValueError(f"images must be {image_size}x{image_size}, got shape {x.shape}")
        turned = jnp.rot90(images, k=(int(angle) // 90) % 4, axes=(1, 2))
        return turned.reshape(x.shape)

    names = tuple("original" if int(a) % 360 == 0 else f"rotated {int(a)}" for a in angles)
    return stack_tasks(names, [(rotate(train[0], a), train[1]) for a in angles],
                       [(rotate(test[0], a), test[1]) for a in angles])


def permuted(train, test, key: jax.Array, num_tasks: int) -> TaskStream:
    """Permuted-input tasks: task 0 is the original; task k > 0 applies one fixed random
    permutation of the input features (the same for its training and test sets).

    Args:
        train: the (x, y) training set, x [n, d] (flat features).
        test: the held-out (x, y) set, x [m, d].
        key: PRNG key drawing the permutations (task k uses `fold_in(key, k)`).
        num_tasks: the number of tasks (>= 1).

    Returns:
        The `TaskStream`, tasks named "original", "permuted 1", ...

    Raises:
        ValueError: `num_tasks` < 1 or inputs that are not flat.
    """
    num_tasks = check_positive_int("num_tasks", num_tasks)
    if jnp.ndim(train[0]) != 2 or jnp.ndim(test[0]) != 2:
        raise ValueError("permuted tasks need flat inputs [n, d]; reshape images to vectors first")
    d = int(jnp.shape(train[0])[1])
    perms = [jnp.arange(d)] + [jax.random.permutation(jax.random.fold_in(key, k), d) for k in range(1, num_tasks)]
    names = ("original",) + tuple(f"permuted {k}" for k in range(1, num_tasks))
    return stack_tasks(names, [(jnp.asarray(train[0])[:, p], train[1]) for p in perms],
                       [(jnp.asarray(test[0])[:, p], test[1]) for p in perms])
