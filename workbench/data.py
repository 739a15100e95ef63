"""Embedded datasets (scikit-learn's bundled digits, synthetic generators) and a user .npz loader.

A dataset is a `Dataset(x, y)` NamedTuple: a pytree, so `jax.tree.map(lambda a: a[idx], data)`
takes a subset and every algorithm can treat it as a batch. Loaders that return more than one
thing return NamedTuples too: `Split(train, test)`, `Regression(data, weights)`,
`TextData(data, vocab)`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from workbench.core.numerics import check_positive_int, num_examples  # noqa: F401 (re-exported: data.num_examples)


class Dataset(NamedTuple):
    """Inputs `x` [n, ...] and targets `y` [n, ...] (int class labels or float regression targets)."""

    x: jax.Array
    y: jax.Array

    def __len__(self) -> int:  # number of examples
        return int(self.x.shape[0])

    def with_targets(self, y) -> Dataset:
        """The same inputs with other targets (NamedTuple's `_replace` cannot be used: it checks
        `len()`, which here counts examples)."""
        return Dataset(self.x, y)

    def take(self, idx) -> Dataset:
        """The examples at `idx` (an index array, slice or boolean mask)."""
        return Dataset(self.x[idx], self.y[idx])


class Split(NamedTuple):
    """A train/test split of one dataset."""

    train: Dataset
    test: Dataset


class Regression(NamedTuple):
    """A synthetic linear-regression problem: the data and the true weights [dim] behind it."""

    data: Dataset
    weights: jax.Array


class TextData(NamedTuple):
    """Character-level language-modelling data and its vocabulary (the sorted characters)."""

    data: Dataset
    vocab: str


def load_digits(
    test_fraction: float = 0.25,
    seed: int = 0,
    image_shape: bool = False,
    dtype=jnp.float32,
) -> Split:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes), pixels scaled to [0, 1].

    The split is a stratified, seeded permutation, so the same `seed` always gives the same sets.

    Args:
        test_fraction: the fraction of each class held out for testing, in (0, 1).
        seed: seed of the NumPy generator drawing the split (a dataset choice, not a JAX key).
        image_shape: True returns x as [n, 8, 8, 1] (for the CNN) instead of [n, 64].
        dtype: the dtype of x (labels are int32).

    Returns:
        A `Split(train, test)` of `Dataset`s (1347 and 450 examples at the default fraction).

    Raises:
        ValueError: `test_fraction` outside (0, 1).
    """
    from sklearn.datasets import load_digits as _sk_digits

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    raw = _sk_digits()
    x = raw.data.astype(np.float64) / 16.0
    y = raw.target.astype(np.int32)
    rng = np.random.default_rng(seed)
    test_idx, train_idx = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(test_fraction * len(idx)))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    train_idx = rng.permutation(np.concatenate(train_idx))
    test_idx = rng.permutation(np.concatenate(test_idx))
    if image_shape:
        x = x.reshape(-1, 8, 8, 1)

    def make(idx):
        return Dataset(jnp.asarray(x[idx], dtype=dtype), jnp.asarray(y[idx]))

    return Split(make(train_idx), make(test_idx))


def make_regression(
    key: jax.Array, n: int, dim: int, noise: float = 0.1, dtype=jnp.float32
) -> Regression:
    """A linear-regression problem y = x @ w + noise * eps, x ~ N(0, I), w ~ N(0, I / dim).

    Args:
        key: PRNG key drawing x, w and the noise (independent streams by `jax.random.split`).
        n: the number of examples.
        dim: the input dimension.
        noise: the standard deviation of the Gaussian noise on y.
        dtype: the floating dtype of x, y and w.

    Returns:
        A `Regression(data, weights)`: `Dataset(x [n, dim], y [n])` and the true w [dim].
    """
    check_positive_int("n", n)
    check_positive_int("dim", dim)
    kx, kw, ke = jax.random.split(key, 3)
    x = jax.random.normal(kx, (n, dim), dtype)
    w = jax.random.normal(kw, (dim,), dtype) / jnp.sqrt(dim)
    y = x @ w + noise * jax.random.normal(ke, (n,), dtype)
    return Regression(Dataset(x, y), w)


def make_classification(
    key: jax.Array,
    n: int,
    dim: int,
    num_classes: int = 2,
    separation: float = 2.0,
    dtype=jnp.float32,
) -> Dataset:
    """Gaussian blobs: class means drawn N(0, 4 separation^2 / dim I), unit-variance noise.

    Args:
        key: PRNG key drawing the means, the labels and the noise.
        n: the number of examples.
        dim: the input dimension.
        num_classes: the number of classes (>= 2); labels are uniform over them.
        separation: the scale of the class means (larger: easier to separate).
        dtype: the floating dtype of x (labels are int32).

    Returns:
        A `Dataset(x [n, dim], y [n])`.

    Raises:
        ValueError: `n` or `dim` not a positive int, or `num_classes` < 2.
    """
    n, dim = check_positive_int("n", n), check_positive_int("dim", dim)
    num_classes = check_positive_int("num_classes", num_classes, least=2)
    km, ky, kx = jax.random.split(key, 3)
    means = separation * jax.random.normal(km, (num_classes, dim), dtype) / jnp.sqrt(dim) * 2
    y = jax.random.randint(ky, (n,), 0, num_classes).astype(jnp.int32)
    x = means[y] + jax.random.normal(kx, (n, dim), dtype)
    return Dataset(x, y)


def load_npz(path: str | Path, x_key: str = "x", y_key: str = "y", dtype=jnp.float32) -> Dataset:
    """Load a user's dataset from an .npz file holding arrays `x_key` [n, ...] and `y_key` [n, ...].

    Integer targets are kept as int32 class labels; floating targets are cast to `dtype`.

    Args:
        path: the .npz file.
        x_key: the name of the input array in the file.
        y_key: the name of the target array in the file.
        dtype: the dtype of x (and of floating targets).

    Returns:
        The `Dataset(x, y)`.

    Raises:
        FileNotFoundError: no such file.
        KeyError: the file lacks `x_key` or `y_key` (the message lists what it holds).
        ValueError: missing example axes, different example counts, no examples, non-numeric
            or non-finite inputs.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such .npz file: {path}")
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in (x_key, y_key) if k not in f.files]
        if missing:
            raise KeyError(
                f"{path} lacks array(s) {missing}; it holds {sorted(f.files)}. "
                f"Pass x_key=/y_key= to name the input and target arrays."
            )
        x, y = f[x_key], f[y_key]
    if x.ndim == 0 or y.ndim == 0:
        raise ValueError(f"{path}: '{x_key}' and '{y_key}' need a leading example axis")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{path}: '{x_key}' has {x.shape[0]} examples but '{y_key}' has {y.shape[0]}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{path}: the dataset is empty")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{path}: '{x_key}' must be numeric, got dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{path}: '{x_key}' contains NaN or infinite values")
    y_arr = jnp.asarray(y, jnp.int32) if np.issubdtype(y.dtype, np.integer) else jnp.asarray(y, dtype)
    return Dataset(jnp.asarray(x, dtype), y_arr)


def save_npz(path: str | Path, data: Dataset) -> None:
    """Write `data` as an .npz file with arrays "x" and "y" (what `load_npz` reads by default).

    Args:
        path: the file to write.
        data: the dataset.
    """
    np.savez(Path(path), x=np.asarray(data.x), y=np.asarray(data.y))


def batches(data: Dataset, batch_size: int) -> Iterator[Dataset]:
    """Consecutive batches in order; the last one may be shorter.

    Args:
        data: the dataset.
        batch_size: examples per batch.

    Yields:
        `Dataset`s of `batch_size` consecutive examples (the last one possibly fewer).
    """
    n = num_examples(data)
    check_positive_int("batch_size", batch_size)
    for start in range(0, n, batch_size):
        yield data.take(slice(start, start + batch_size))


def load_text(seq_len: int = 32, stride: int | None = None,
              modules: Sequence[str] = ("textwrap", "string", "difflib")) -> TextData:
    """Character-level language-modelling data from text that ships with Python (module sources).

    No network, deterministic for a given Python version.

    Args:
        seq_len: characters per example (>= 2).
        stride: characters between the starts of consecutive examples (default `seq_len`: no
            overlap).
        modules: the standard-library modules whose source text is used, concatenated.

    Returns:
        A `TextData(data, vocab)`: `Dataset(x, y)` with x int32 tokens [n, seq_len] and y the
        same shifted by one character; `vocab` the sorted string of characters.

    Raises:
        ValueError: `seq_len` < 2.
    """
    import importlib
    import inspect

    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    stride = stride or seq_len
    texts = []
    for name in modules:
        texts.append(inspect.getsource(importlib.import_module(name)))
    text = "\n".join(texts)
    vocab = "".join(sorted(set(text)))
    lookup = {c: i for i, c in enumerate(vocab)}
    ids = np.array([lookup[c] for c in text], dtype=np.int32)
    starts = np.arange(0, len(ids) - seq_len - 1, stride)
    x = np.stack([ids[s : s + seq_len] for s in starts])
    y = np.stack([ids[s + 1 : s + seq_len + 1] for s in starts])
    return TextData(Dataset(jnp.asarray(x), jnp.asarray(y)), vocab)


def unigram_entropy(tokens: jax.Array) -> float:
    """The entropy, in nats, of the tokens' empirical frequencies: the lowest mean cross-entropy
    any predictor that ignores its context can reach on these tokens (it predicts those
    frequencies), so a language model's loss below it measures what the context taught it.

    Args:
        tokens: integer token ids, any shape (a `TextData`'s targets `data.y`).

    Returns:
        -sum_c f_c log f_c over the frequencies f_c of the ids that occur.

    Raises:
        ValueError: no tokens, or ids that are not non-negative integers.
    """
    ids = np.asarray(tokens).ravel()
    if ids.size == 0 or not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0:
        raise ValueError(f"tokens must be a non-empty array of non-negative integer ids, got dtype {ids.dtype} "
                         f"and {ids.size} entries")
    freq = np.bincount(ids) / ids.size
    freq = freq[freq > 0]
    return float(-(freq * np.log(freq)).sum())


def shuffle_tokens(data: Dataset, key: jax.Array) -> Dataset:
    """Language-modelling data with every target drawn apart from its context: the context tokens
    `x` and the targets `y` are each permuted over all positions, independently, so each kind keeps
    its frequencies and no context says anything about its target. A model's mean loss on it is
    at least about `unigram_entropy(data.y)`: the negative control of a claim that a model uses
    its context.

    Args:
        data: a `Dataset(x, y)` of token ids of equal shapes (`load_text`).
        key: a PRNG key for the two permutations.

    Returns:
        A `Dataset` of the same shapes and dtypes.

    Raises:
        ValueError: x and y of different shapes.
    """
    x, y = jnp.asarray(data.x), jnp.asarray(data.y)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape (tokens and next tokens), got {x.shape} and {y.shape}")
    key_x, key_y = jax.random.split(key)
    return Dataset(jax.random.permutation(key_x, x.ravel()).reshape(x.shape),
                   jax.random.permutation(key_y, y.ravel()).reshape(y.shape))
