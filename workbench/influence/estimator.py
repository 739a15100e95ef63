"""The one interface every influence estimator shares, and the checks at its boundary.

Every estimator here scores a test point z against a training point z_i as a bilinear form

    score(z, z_i) = < P psi(z), psi(z_i) >

of a feature map psi (a per-example gradient, its projection on eigenvectors, a sketch of it,
or gradients at several checkpoints stacked) and a symmetric preconditioner P (an inverse
curvature, a diagonal, the identity). `Estimator` holds the two pieces and derives scores,
self-influence, proponents and opponents from them, chunking over the training set so that
scoring never needs all training features at once unless they fit in `cache_bytes`.

Sign convention (the same for every estimator): **score > 0 means that removing the training
example would increase the test loss**, i.e. the example helps the test prediction (a
proponent); score < 0 marks an opponent. For the exact influence function, removing z_i from
the training objective mean_j loss_fn(params, z_j) and retraining changes the test loss by
about score / (n_train - 1) (see `workbench.influence.validation.loo`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from workbench.core.numerics import (
    check_finite,
    check_nonnegative,
    check_positive_int,
    num_examples,
)
from workbench.core.per_example import flat_per_example_grads, map_chunks, per_example_losses

PyTree = Any


# ----------------------------------------------------------------------------- validation


def check_like_training(batch: PyTree, train_data: PyTree, name: str = "test_batch") -> int:
    """Check that `batch` looks like training examples; return its number of examples.

    It must have train_data's tree structure, per-example shapes and dtype kinds (integer labels
    stay integer), and finite values: a test batch that does not match would be scored silently
    wrong.

    Args:
        batch: pytree of arrays [m, ...], e.g. the test points.
        train_data: pytree of arrays [n, ...], the training set it must resemble.
        name: what `batch` is called in error messages.

    Returns:
        m, the number of examples in `batch`.

    Raises:
        ValueError: naming the leaf whose structure, shape or dtype kind differs, or the first
            leaf holding NaN or inf.
    """
    t_leaves, t_def = jax.tree.flatten(train_data)
    try:
        b_leaves = t_def.flatten_up_to(batch)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"{name} must have the structure of the training data ({t_def}); got "
            f"{jax.tree.structure(batch)}"
        ) from err
    for i, (t, b) in enumerate(zip(t_leaves, b_leaves)):
        if np.ndim(b) == 0 or np.shape(b)[1:] != np.shape(t)[1:]:
            raise ValueError(
                f"{name} leaf {i}: expected per-example shape {np.shape(t)[1:]} like the training "
                f"data (shape [n, *{np.shape(t)[1:]}]), got shape {np.shape(b)}"
            )
        tk, bk = jnp.result_type(t), jnp.result_type(b)
        if jnp.issubdtype(tk, jnp.integer) != jnp.issubdtype(bk, jnp.integer):
            raise ValueError(f"{name} leaf {i}: dtype {bk} where the training data has {tk}")
    n = num_examples(batch, name)
    check_finite(batch, name)
    return n


def check_loss_finite(loss_fn: Callable, params: PyTree, data: PyTree, chunk_size: int = 1024) -> None:
    """Raise FloatingPointError naming the first training examples whose loss is NaN or inf.

    Run before forming a curvature operator, so that a NaN loss is reported as such and not as
    indefinite curvature or a solver that did not converge.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, a mean over the batch.
        params: pytree, where the loss is evaluated.
        data: pytree of arrays [n, ...], the training set.
        chunk_size: examples whose losses are computed together.

    Raises:
        FloatingPointError: listing up to five examples whose loss is not finite.
    """
    losses = _losses(loss_fn, params, data, check_positive_int("chunk_size", chunk_size))
    bad = np.flatnonzero(~np.isfinite(np.asarray(losses)))
    if bad.size:
        raise FloatingPointError(
            f"the training loss is NaN or infinite at params on examples {bad[:5].tolist()}"
            f"{' ...' if bad.size > 5 else ''}: the curvature and every influence score would be "
            "meaningless; check the params, the data and the loss")


@functools.partial(jax.jit, static_argnums=(0, 3))
def _losses(loss_fn, params, data, chunk_size):
    return map_chunks(lambda chunk: per_example_losses(loss_fn, params, chunk), data, chunk_size)


def check_damping(damping: float) -> float:
    """`damping` as a float if it is finite and >= 0.

    Args:
        damping: multiple of the identity added to a curvature.

    Returns:
        The damping as a Python float.

    Raises:
        ValueError: if it is negative, NaN or infinite.
    """
    return check_nonnegative("damping", damping)


# ----------------------------------------------------------------------------- the estimator


class Ranked(NamedTuple):
    """Top-k training examples per test point: indices [n_test, k] and their scores [n_test, k]."""

    indices: jax.Array
    scores: jax.Array


class Estimator:
    """Scores, self-influence, proponents and opponents from a feature map and a preconditioner.

    Built by `workbench.influence.make`; not usually constructed by hand.

    - `featurize(state, chunk) -> [c, d]` maps a batch of examples to their features psi;
    - `precondition(state, features [m, d]) -> [m, d]` applies the symmetric P;
    - `state` is a pytree of arrays (params, an inverse, eigenvectors...). The two functions
      should be stable objects (module-level or cached per loss_fn) so that estimators on the
      same model share compiled code;
    - `featurize_test` (default `featurize`) maps test examples, e.g. through another measure;
    - `train_reader(lo, hi) -> [hi - lo, d]`, when given, reads precomputed training features
      (e.g. TRAK's sketch stores) instead of featurizing the training set; rows are read
      `read_rows` at a time when they do not fit in `cache_bytes`;
    - `info` says what was used (damping, curvature kind, k, ...) so a result can be reported.
    """

    def __init__(
        self,
        name: str,
        train_data: PyTree,
        featurize: Callable,
        precondition: Callable,
        state: PyTree,
        *,
        featurize_test: Callable | None = None,
        chunk_size: int = 256,
        cache_bytes: float = 2**30,
        train_reader: Callable[[int, int], Any] | None = None,
        read_rows: int = 4096,
        info: dict | None = None,
    ):
        self.name = name
        self.train_data = train_data
        self.num_train = num_examples(train_data, "train_data")
        self.chunk_size = check_positive_int("chunk_size", chunk_size)
        self.info = dict(info or {})
        self.state = state
        self._featurize = featurize
        self._featurize_test = featurize_test or featurize
        self._precondition = precondition
        self._cache_bytes = cache_bytes
        self._train_reader = train_reader
        self._read_rows = check_positive_int("read_rows", read_rows)
        self._train_features = None
        self._self_influence = None
        # what a NaN (or an inf) in a result means for this estimator, e.g. CG met negative
        # curvature (NaN) or did not converge (inf): {"nan" | "inf": (error type, message)}
        self.nonfinite_reasons: dict[str, tuple[type[Exception], str]] = {}

    # -- features
    def train_features(self) -> jax.Array:
        """psi of every training example, [n_train, d] (computed once, then cached)."""
        if self._train_features is None:
            if self._train_reader is not None:
                feats = jnp.concatenate([rows for _, rows in self._read_chunks()])
            else:
                feats, _ = _host_features(self._featurize, self.state, self.train_data, self.chunk_size)
            self._check(feats, "training features")
            self._train_features = feats
        return self._train_features

    def _read_chunks(self):
        """(first row, features [c, d]) over the training set from `train_reader`."""
        for lo in range(0, self.num_train, self._read_rows):
            hi = min(lo + self._read_rows, self.num_train)
            rows = jnp.asarray(np.asarray(self._train_reader(lo, hi)))
            self._check(rows, "training features")
            yield lo, rows

    def test_features(self, test_batch: PyTree) -> jax.Array:
        """P psi of each test example, [n_test, d]."""
        check_like_training(test_batch, self.train_data)
        raw, raw_finite = _host_features(self._featurize_test, self.state, test_batch, self.chunk_size)
        bad = np.flatnonzero(~np.asarray(raw_finite))
        if bad.size:
            raise FloatingPointError(
                f"influence estimator {self.name!r}: the gradients of test examples {bad[:5].tolist()}"
                f"{' ...' if bad.size > 5 else ''} are NaN or infinite; check the loss (or measure) and "
                "the params at those test points")
        feats = _precondition_rows(self._precondition, self.state, raw, self.chunk_size)
        self._check(feats, "preconditioned test features")
        return feats

    def _cached(self, dim: int, dtype) -> bool:
        return self.num_train * dim * jnp.dtype(dtype).itemsize <= self._cache_bytes

    # -- scores
    def scores(self, test_batch: PyTree) -> jax.Array:
        """Influence of every training example on each test example, [n_test, n_train]."""
        phi = self.test_features(test_batch)
        if self._train_features is not None or self._cached(phi.shape[1], phi.dtype):
            out = _products(phi, self.train_features())
        elif self._train_reader is not None:  # stream the stored features; never hold them all
            out = jnp.concatenate([phi @ rows.astype(phi.dtype).T for _, rows in self._read_chunks()], axis=1)
        else:  # stream the training set in chunks; never hold all its features
            state = _read_by(self._featurize, self.state)
            out = _streamed_scores(self._featurize, state, self.train_data, phi, self.chunk_size)
        self._check(out, "scores")
        return out

    def self_influence(self) -> jax.Array:
        """score(z_i, z_i) for every training example, [n_train]: <P psi_i, psi_i>."""
        if self._self_influence is None:
            if self._train_reader is not None and self._train_features is None:
                out = jnp.concatenate([_self_scores(self._precondition, self.state, rows, self.chunk_size)
                                       for _, rows in self._read_chunks()])
            else:
                out = _self_scores(self._precondition, self.state, self.train_features(), self.chunk_size)
            self._check(out, "self-influence")
            self._self_influence = out
        return self._self_influence

    def proponents(self, test_batch: PyTree, k: int = 10) -> Ranked:
        """The k training examples with the largest (most helpful) scores per test example."""
        return _top(self.scores(test_batch), k, self.num_train)

    def opponents(self, test_batch: PyTree, k: int = 10) -> Ranked:
        """The k training examples with the most negative (most harmful) scores per test example."""
        ranked = _top(-self.scores(test_batch), k, self.num_train)
        return Ranked(ranked.indices, -ranked.scores)

    def _check(self, x: jax.Array, what: str) -> None:
        x = np.asarray(x)  # on the host: no program to compile per result shape
        if not np.all(np.isfinite(x)):
            for kind, present in (("nan", np.any(np.isnan(x))), ("inf", np.any(np.isinf(x)))):
                if bool(present) and kind in self.nonfinite_reasons:
                    error, message = self.nonfinite_reasons[kind]
                    raise error(f"influence estimator {self.name!r}: {message}")
            raise FloatingPointError(
                f"influence estimator {self.name!r}: {what} contain NaN or infinite values "
                f"(settings {self.info}); check the params, the data and the damping"
            )

    def __repr__(self) -> str:
        return f"Estimator({self.name!r}, num_train={self.num_train}, info={self.info})"


@functools.partial(jax.jit, static_argnums=(0,))
def _featurize_chunk(featurize, state, chunk):
    raw = featurize(state, chunk)
    return raw, jnp.all(jnp.isfinite(raw), axis=1)


def _host_chunks(data, chunk_size):
    """(rows, chunk) over `data` in chunks of exactly `chunk_size` rows (the last one padded by
    repeating its final row), sliced on the host so that no slice is compiled."""
    leaves, treedef = jax.tree.flatten(data)
    leaves = [np.asarray(a) for a in leaves]
    n = leaves[0].shape[0]
    for lo in range(0, n, chunk_size):
        rows = min(chunk_size, n - lo)
        parts = [a[lo : lo + rows] for a in leaves]
        if rows < chunk_size:
            parts = [np.concatenate([p, np.repeat(p[-1:], chunk_size - rows, axis=0)]) for p in parts]
        yield rows, treedef.unflatten(parts)


def _read_by(featurize, state):
    """The part of `state` that `featurize` reads (its `state_keys`, when it declares them): so
    estimators sharing a featurizer (exact, cg, lissa, grad_dot on one model) share its program
    although their states differ."""
    keys = getattr(featurize, "state_keys", None)
    return state if keys is None else {k: state[k] for k in keys}


def _host_features(featurize, state, data, chunk_size):
    """(psi [n, d], psi finite [n]): one compiled program per (featurize, chunk shape) serves
    the training set and every test batch, whatever their sizes."""
    state = _read_by(featurize, state)
    feats, finite = [], []
    for rows, chunk in _host_chunks(data, chunk_size):
        f, ok = _featurize_chunk(featurize, state, chunk)
        feats.append(np.asarray(f)[:rows])
        finite.append(np.asarray(ok)[:rows])
    return jnp.asarray(np.concatenate(feats)), np.concatenate(finite)


@functools.partial(jax.jit, static_argnums=(0,))
def _precondition_chunk(precondition, state, features):
    return precondition(state, features)


def _precondition_rows(precondition, state, features, chunk_size):
    """P psi, `chunk_size` rows at a time (fewer rows are never padded up: a preconditioner can
    cost far more per row than the features, e.g. CG or LiSSA solves)."""
    size = min(chunk_size, features.shape[0])
    out = [np.asarray(_precondition_chunk(precondition, state, chunk))[:rows]
           for rows, chunk in _host_chunks(features, size)]
    return jnp.asarray(np.concatenate(out))


@jax.jit
def _products(phi, train_features):
    """[n_test, n_train] scores from preconditioned test and training features."""
    return phi @ train_features.T.astype(phi.dtype)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _self_scores(precondition, state, feats, chunk_size):
    return map_chunks(lambda f: jnp.sum(precondition(state, f) * f, axis=1), feats, chunk_size)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _streamed_scores(featurize, state, train_data, phi, chunk_size):
    return map_chunks(lambda chunk: featurize(state, chunk) @ phi.T, train_data, chunk_size).T


def identity_precondition(state, features):
    """P = I: the features unchanged (the curvature-free estimators).

    Args:
        state: the estimator's state (unused).
        features: array [m, d] of features.

    Returns:
        `features`, [m, d].
    """
    return features


def matrix_precondition(state, features):
    """P = a dense symmetric inverse: features @ state["inverse"].

    Args:
        state: dict holding "inverse", a symmetric [d, d] matrix such as (H + damping I)^{-1}.
        features: array [m, d] of features.

    Returns:
        Array [m, d], the preconditioned features.
    """
    return features @ state["inverse"]


@functools.lru_cache(maxsize=128)
def grad_featurizer(loss_fn: Callable, normalize: bool = False) -> Callable:
    """The featurizer psi(z) = per-example gradient of `loss_fn` at state["params"], flat.

    Cached per loss_fn so every estimator on one model shares the compiled gradient code (it
    declares `state_keys = ("params",)` so only the params enter its compiled program).

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, applied to one example at a time.
        normalize: divide each gradient by its norm (+1e-12): the features of `grad_cos`.

    Returns:
        `featurize(state, chunk) -> [c, p]`, the flat gradients of the c examples of `chunk`.
    """

    def featurize(state, chunk):
        g = flat_per_example_grads(loss_fn, state["params"], chunk)
        if normalize:
            g = g / (jnp.linalg.norm(g, axis=1, keepdims=True) + 1e-12)
        return g

    featurize.state_keys = ("params",)
    return featurize


def _top(values: jax.Array, k: int, n: int) -> Ranked:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= int(k) <= n:
        raise ValueError(f"k must lie in [1, n_train={n}], got {k}")
    vals, idx = jax.lax.top_k(values, int(k))
    return Ranked(idx, vals)
