"""Embedded datasets (scikit-learn's bundled digits, synthetic generators) and a user .npz loader.

A dataset is a `Dataset(x, y)` NamedTuple: a pytree, so `jax.tree.map(lambda a: a[idx], data)`
takes a subset and every algorithm can treat it as a batch. Loaders that return more than one
thing return NamedTuples too: `Split(train, test)`, `Regression(data, weights)`,
`TextData(data, vocab)`, `TextCorpus(train, validation, vocab)`.

Text comes from what ships with Python, so it needs no network and is the same for a given
Python version: `load_text` (a few module sources, one set of windows) and `load_corpus` (about
1.4 million characters of module sources and built-in docstrings, with a held-out split that
shares no character with the training windows); `encode` and `decode` map between strings and
token ids of a vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

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


class TextCorpus(NamedTuple):
    """Character-level language-modelling data with a held-out split (`load_corpus`).

    `train` and `validation` are `Dataset(x, y)`s of int32 token ids [n, seq_len], y being x
    shifted by one character; their windows come from disjoint regions of the text. `vocab` is
    the sorted string of every character of the corpus (`encode` / `decode` take it).
    """

    train: Dataset
    validation: Dataset
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


CORPUS_MODULES = (
    "abc", "argparse", "ast", "base64", "bisect", "calendar", "cmd", "colorsys", "configparser",
    "contextlib", "copy", "csv", "dataclasses", "difflib", "enum", "fractions", "functools", "glob",
    "heapq", "inspect", "ipaddress", "numbers", "operator", "optparse", "pprint", "queue", "random",
    "statistics", "string", "textwrap", "tokenize", "typing", "weakref",
)
"""The 33 pure-Python standard-library modules whose source text (code, comments and docstrings)
makes up most of `load_corpus`'s text, about 1.26 million characters: text-rich, importable on
every platform, free of side effects on import, and ASCII but for a handful of characters, so
the vocabulary stays at about 100 characters."""

CORPUS_DOCSTRING_MODULES = (
    "builtins", "math", "cmath", "itertools", "array", "binascii", "zlib", "unicodedata", "gc", "marshal",
)
"""Built-in (C) modules without Python source whose public functions', classes' and methods'
docstrings add English prose to the corpus (about 100,000 characters, 65,000 of them from
builtins)."""


def _import_module(name: str):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ValueError(f"unknown module {name!r}: it cannot be imported ({err})") from err


def _module_docstrings(name: str) -> str:
    """The docstrings of a module's own public routines and classes and of the classes' public
    methods, each under its dotted name, in sorted order."""
    import inspect

    module = _import_module(name)
    parts = []
    for attr, obj in sorted(vars(module).items()):
        if attr.startswith("_") or not (inspect.isroutine(obj) or inspect.isclass(obj)):
            continue
        if getattr(obj, "__module__", None) != name:  # re-exported from elsewhere
            continue
        members = [(f"{name}.{attr}", obj)]
        if inspect.isclass(obj):
            members += [(f"{name}.{attr}.{m}", v) for m, v in sorted(vars(obj).items())
                        if not m.startswith("_") and inspect.isroutine(v)]
        parts += [f"{label}\n{doc}\n" for label, value in members if (doc := inspect.getdoc(value))]
    if not parts:
        raise ValueError(f"module {name!r} has no public docstrings to take")
    return "\n".join(parts)


def corpus_documents(modules: Sequence[str] = CORPUS_MODULES,
                     docstring_modules: Sequence[str] = CORPUS_DOCSTRING_MODULES) -> tuple[str, ...]:
    """The documents of the standard-library text corpus: module sources, then docstrings.

    One document per module, in the order given: the full source text of each of `modules`, then
    for each of `docstring_modules` its public functions', classes' and methods' docstrings
    (`inspect.getdoc`), each under its dotted name. Nothing is fetched: the same Python version
    gives the same documents.

    Args:
        modules: importable modules with Python source (default `CORPUS_MODULES`, 33 modules).
        docstring_modules: modules whose docstrings are taken, typically built-in ones without
            source (default `CORPUS_DOCSTRING_MODULES`, 10 modules).

    Returns:
        A tuple of strings, one per module.

    Raises:
        ValueError: a module that cannot be imported, one of `modules` without Python source, one
            of `docstring_modules` without public docstrings, or no modules at all.
    """
    import inspect

    if isinstance(modules, str) or isinstance(docstring_modules, str):
        raise ValueError("modules and docstring_modules must be sequences of module names, not one string")
    if not modules and not docstring_modules:
        raise ValueError("the corpus needs at least one module (modules or docstring_modules)")
    documents = []
    for name in modules:
        module = _import_module(name)
        try:
            documents.append(inspect.getsource(module))
        except (OSError, TypeError) as err:
            raise ValueError(f"module {name!r} has no Python source ({err}); list built-in modules in "
                             "docstring_modules") from err
    documents += [_module_docstrings(name) for name in docstring_modules]
    return tuple(documents)


def _check_vocab(vocab: str) -> str:
    if not isinstance(vocab, str) or not vocab:
        raise ValueError(f"vocab must be a non-empty string of characters, got {vocab!r:.60}")
    if len(set(vocab)) != len(vocab):
        raise ValueError("vocab must not repeat a character")
    return vocab


def encode(text: str, vocab: str) -> jax.Array:
    """The token ids of `text`'s characters: each character's index in `vocab`.

    Args:
        text: the string to encode.
        vocab: the vocabulary, a string of distinct characters (`TextCorpus.vocab`).

    Returns:
        int32 ids [len(text)].

    Raises:
        ValueError: `text` holds characters outside `vocab` (the message lists them), or `vocab`
            is empty or repeats a character.
    """
    codes = _code_points(_check_vocab(vocab))
    order = np.argsort(codes)
    points = _code_points(text)
    where = np.minimum(np.searchsorted(codes[order], points), len(codes) - 1)
    unknown = codes[order][where] != points
    if unknown.any():
        missing = sorted(set(np.asarray(list(text))[unknown]))
        raise ValueError(f"text holds {len(missing)} character(s) outside the vocabulary: "
                         f"{''.join(missing)[:40]!r}")
    return jnp.asarray(order[where], jnp.int32)


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), np.uint32)


def decode(ids, vocab: str) -> str:
    """The string whose characters have token ids `ids` in `vocab` (the inverse of `encode`).

    Args:
        ids: integer token ids [length] (an array or a sequence of ints).
        vocab: the vocabulary, a string of distinct characters.

    Returns:
        The decoded string of `length` characters.

    Raises:
        ValueError: `ids` not a one-dimensional array of integers in [0, len(vocab)).
    """
    vocab = _check_vocab(vocab)
    ids = np.asarray(ids)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"ids must be one-dimensional integer token ids, got shape {ids.shape} and dtype {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= len(vocab)):
        raise ValueError(f"ids must lie in [0, len(vocab) = {len(vocab)}), got ids in [{ids.min()}, {ids.max()}]")
    return "".join(np.asarray(list(vocab))[ids]) if ids.size else ""


def _windows(ids: np.ndarray, seq_len: int, stride: int, region: str) -> Dataset:
    if ids.size < seq_len + 1:
        raise ValueError(f"the {region} text has {ids.size} characters, fewer than seq_len + 1 = {seq_len + 1}: "
                         "lower seq_len or use more text (a larger validation_fraction for the validation split)")
    windows = sliding_window_view(ids, seq_len + 1)[::stride]
    return Dataset(jnp.asarray(windows[:, :-1]), jnp.asarray(windows[:, 1:]))


def text_corpus(documents: Sequence[str], seq_len: int, stride: int | None = None,
                validation_fraction: float = 0.1) -> TextCorpus:
    """Fixed-length training and validation sequences from documents, split before windowing.

    Each document is cut in two contiguous regions: its first (1 - validation_fraction) of
    characters go to the training text, the rest to the validation text (every document is
    represented in both, so the two splits have the same mixture of sources). The training
    regions are concatenated and cut into windows of seq_len + 1 characters every `stride`
    characters, and so are the validation regions: no validation window shares a character
    position with a training window, which a split of overlapping windows after windowing would
    not guarantee. The vocabulary is every character of the documents, sorted.

    Args:
        documents: the texts (`corpus_documents()`), in order.
        seq_len: characters per example (>= 2).
        stride: characters between the starts of consecutive windows, in both splits (default
            `seq_len`: windows that do not overlap).
        validation_fraction: the fraction of each document held out, in (0, 1).

    Returns:
        A `TextCorpus(train, validation, vocab)`: int32 x [n, seq_len] and y = x shifted by one.

    Raises:
        ValueError: `seq_len` < 2, `stride` < 1, `validation_fraction` outside (0, 1), no
            documents, or a split with fewer than seq_len + 1 characters.
    """
    seq_len = check_positive_int("seq_len", seq_len, least=2)
    stride = seq_len if stride is None else check_positive_int("stride", stride)
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must lie in (0, 1), got {validation_fraction}")
    if isinstance(documents, str) or not documents or not all(isinstance(d, str) for d in documents):
        raise ValueError("documents must be a non-empty sequence of strings")
    cuts = [len(d) - round(validation_fraction * len(d)) for d in documents]
    train_text = "".join(d[:c] for d, c in zip(documents, cuts))
    validation_text = "".join(d[c:] for d, c in zip(documents, cuts))
    vocab = "".join(sorted(set(train_text) | set(validation_text)))
    return TextCorpus(_windows(np.asarray(encode(train_text, vocab)), seq_len, stride, "training"),
                      _windows(np.asarray(encode(validation_text, vocab)), seq_len, stride, "validation"),
                      vocab)


def load_corpus(seq_len: int = 128, stride: int | None = None, validation_fraction: float = 0.1,
                modules: Sequence[str] = CORPUS_MODULES,
                docstring_modules: Sequence[str] = CORPUS_DOCSTRING_MODULES) -> TextCorpus:
    """A character-level corpus of standard-library sources and docstrings, split without leaks.

    `text_corpus(corpus_documents(modules, docstring_modules), seq_len, stride,
    validation_fraction)`: at the defaults about 1.4 million characters, a vocabulary of about
    100 characters, and the last 10% of every document held out for validation. No network;
    the same Python version gives the same corpus.

    Args:
        seq_len: characters per example (>= 2).
        stride: characters between window starts (default `seq_len`, no overlap).
        validation_fraction: the fraction of each document held out, in (0, 1).
        modules: modules whose source text is taken (`CORPUS_MODULES`).
        docstring_modules: modules whose public docstrings are taken (`CORPUS_DOCSTRING_MODULES`).

    Returns:
        A `TextCorpus(train, validation, vocab)`.

    Raises:
        ValueError: a bad argument (see `text_corpus` and `corpus_documents`): `seq_len` < 2, an
            unknown module, `validation_fraction` outside (0, 1).
    """
    seq_len = check_positive_int("seq_len", seq_len, least=2)
    return text_corpus(corpus_documents(modules, docstring_modules), seq_len, stride, validation_fraction)
