"""LoGra: per-example gradients projected layer by layer through Kronecker-structured maps.

LoGra (Choe et al. 2024, "What is your data worth to GPT? LLM-scale data valuation with
influence functions") never forms a per-example gradient. A linear layer's per-example gradient
is G_n = sum_t a_{n,t} g_{n,t}^T ([activation_dim, out_features]: inputs with a trailing 1 for
the bias, times output gradients, summed over the positions t of a sequence; see
`workbench.curvature.capture`), so with P_in [activation_dim, k_in] and P_out [out_features, k_out]

    P_in^T G_n P_out = sum_t (P_in^T a_{n,t}) (P_out^T g_{n,t})^T       [k_in, k_out]

costs two small projections per position and one [k_in, k_out] outer product, from one forward
and one backward pass (`capture`). In vector form this is (P_out kron P_in)^T vec(G_n): a sketch
of the layer's gradient by a Kronecker-product matrix. For an embedding the input is the one-hot
of the token, so P_in^T a is the token's row of P_in.

What was read: not the paper, but its authors' reference code (LogIX's LoRA modules). There
a layer gets a down projection [k, d_in], a zero-initialised [k, k] middle matrix and an up
projection [d_out, k]; the gradient of the middle matrix is the projected gradient, which is
P_in^T G_n P_out as above. LogIX draws the projections Kaiming-uniform ("random") or from the
top eigenvectors of the K-FAC factors ("pca"). Ours: i.i.d. Gaussian entries N(0, 1/k_in) and
N(0, 1/k_out), so E[P_in P_in^T] = I and E[(P_out kron P_in)(P_out kron P_in)^T] = I and inner
products of projected gradients are unbiased estimates of the (covered) gradients' inner
products; the PCA initialisation is not implemented here. Layer i of
`capture.coverage(functional).layers` (sorted by path) draws its pair from
`jax.random.split(jax.random.fold_in(key, i))`. A projected gradient row concatenates, in that
layer order, each layer's [k_in, k_out] block raveled row-major (index i * k_out + j is input
direction i, output direction j). Parameters `coverage` leaves out (norm scales, bare params
such as position embeddings) are not projected; `LograProjection.left_out` lists them.

Scores against a store (`logra_scores`) are <P g_test, P g_i>, or with LoGra's damped
inverse of the projected gradients' covariance, <(C + damping I)^{-1} P g_test, P g_i> with
C = sum_i P g_i (P g_i)^T / n over the stored rows: the whole covariance, or its per-layer
diagonal blocks (`block_diagonal=True`). The influence estimator built on these pieces, with the
roles, batched test queries and option checks every estimator shares, is
`influence.make("logra", functional, params, train_data, key=..., k_in=..., k_out=...)`
(`workbench.influence.logra_influence`).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from workbench.core.fingerprint import array_fingerprint, loss_probe, params_fingerprint
from workbench.core.losses import as_loss
from workbench.core.numerics import check_finite, check_positive_int, num_examples
from workbench.curvature.capture import Layer, _capture, check_functional, coverage
from workbench.sketch.provenance import FORMAT_VERSION, check_resumable
from workbench.sketch.query import StoreScores, _check_complete, _check_test_data, _stream
from workbench.sketch.store import (
    GradientStore,
    _check_against,
    _check_chunk_finite,
    _commit,
    _committed,
    _create_or_open,
    open_store,
)

KIND = "logra"  # the `kind` a LoGra store records (no `sketch.make` kind: `sketch_from_store` refuses it)


class LograProjection(NamedTuple):
    """Per-layer projection pairs, for the layers `capture.coverage` reports, sorted by path.

    `inputs[i]` is P_in [layers[i].activation_dim, k_in] (the vocabulary's rows for an embedding),
    `outputs[i]` is P_out [layers[i].out_features, k_out]; `key` is the key they were drawn from;
    `left_out` is (param path, why) for each parameter not projected.
    """

    layers: tuple[Layer, ...]
    inputs: tuple[jax.Array, ...]
    outputs: tuple[jax.Array, ...]
    key: jax.Array
    k_in: int
    k_out: int
    left_out: tuple[tuple[str, str], ...]

    @property
    def dim(self) -> int:
        """Length of a projected gradient: k_in * k_out per layer."""
        return len(self.layers) * self.k_in * self.k_out

    @property
    def covered_params(self) -> int:
        """Scalars of the projected layers' gradients (the dimension being projected)."""
        return sum(layer.activation_dim * layer.out_features for layer in self.layers)


def logra_projection(functional, key: jax.Array, k_in: int, k_out: int, *, dtype=None) -> LograProjection:
    """Draw LoGra's Gaussian projection pair for every layer `capture.coverage` covers.

    Args:
        functional: the model, a `models.Functional` made by `models.functional`.
        key: `jax.random` key; layer i (in path order) draws from `split(fold_in(key, i))`.
        k_in: projected input dimension per layer (a positive int; may exceed a layer's inputs).
        k_out: projected output dimension per layer (a positive int).
        dtype: the matrices' dtype; None = the params' dtype.

    Returns:
        The `LograProjection`; a projected gradient has `dim` = num_layers * k_in * k_out entries.

    Raises:
        TypeError: `functional` is not a `models.Functional` (a plain loss has no layers).
        ValueError: `k_in` or `k_out` is not a positive int, or the model has no covered layer.
    """
    check_functional(functional, "logra_projection")
    k_in, k_out = check_positive_int("k_in", k_in), check_positive_int("k_out", k_out)
    cover = coverage(functional)
    if not cover.layers:
        raise ValueError("logra_projection: the model has no supported layer (nnx.Linear, LinearGeneral, Embed)")
    dtype = jnp.result_type(*jax.tree.leaves(functional.params)) if dtype is None else dtype
    inputs, outputs = [], []
    for i, layer in enumerate(cover.layers):
        key_in, key_out = jax.random.split(jax.random.fold_in(key, i))
        # the scale in the matrices' dtype: a NumPy float64 scalar would promote float32 (refused when strict)
        inputs.append(jax.random.normal(key_in, (layer.activation_dim, k_in), dtype) * np.asarray(k_in ** -0.5, dtype))
        outputs.append(jax.random.normal(key_out, (layer.out_features, k_out), dtype) * np.asarray(k_out ** -0.5, dtype))
    return LograProjection(cover.layers, tuple(inputs), tuple(outputs), key, k_in, k_out, cover.left_out)


def project_captured(functional, layers, inputs, outputs, params, batch) -> jax.Array:
    """[n, dim] projected gradients of a batch from one capture, traceable (no compile of its own).

    The body of `logra_project` for callers that compile it into their own program (the
    `influence.make("logra")` featurizer). No checks: the caller has checked the projection.

    Args:
        functional: the model, a `models.Functional`.
        layers: the projection's `layers` (a tuple, static under jit).
        inputs: the projection's P_in matrices, one per layer.
        outputs: the projection's P_out matrices, one per layer.
        params: the params pytree.
        batch: an (x, y) pair with a leading example axis [n, ...].

    Returns:
        [n, dim]: each layer's [k_in, k_out] block raveled row-major, in `layers` order.
    """
    captured = _capture(functional, layers, "empirical", params, batch, None)
    blocks = []
    for layer, p_in, p_out in zip(layers, inputs, outputs):
        a = captured.inputs[layer.name]
        g = captured.output_grads[layer.name]
        a_proj = p_in[a] if layer.kind == "embed" else a @ p_in  # one-hot input: its token's row
        blocks.append(jnp.einsum("npi,npo->nio", a_proj, g @ p_out).reshape(g.shape[0], -1))
    return jnp.concatenate(blocks, axis=1)


# one compiled program per (model, layers); the [n, P, d] captures never leave it
_project_chunk = jax.jit(project_captured, static_argnums=(0, 1))


def _check_projection(projection, functional, caller: str) -> None:
    if not isinstance(projection, LograProjection):
        raise TypeError(f"{caller}: projection must be a LograProjection (logra_projection), got "
                        f"{type(projection).__name__}")
    check_functional(functional, caller)
    if projection.layers != coverage(functional).layers:
        raise ValueError(f"{caller}: the projection was drawn for layers {[x.name for x in projection.layers]} "
                         "of another model; draw it with logra_projection(functional, ...)")


def _chunks(projection, functional, params, data, chunk_size, todo, path=None):
    """Yield (chunk, lo, hi, rows [hi - lo, dim]) for each chunk index in `todo`, each checked finite."""
    n = num_examples(data)
    for c in todo:
        lo, hi = c * chunk_size, min(n, (c + 1) * chunk_size)
        idx = np.minimum(np.arange(lo, lo + chunk_size), n - 1)  # pad the last chunk: one compile
        batch = jax.tree.map(lambda a, idx=idx: a[idx], data)
        rows = np.asarray(_project_chunk(functional, projection.layers, projection.inputs, projection.outputs,
                                         params, batch))[: hi - lo]
        _check_chunk_finite(rows, c, lo, path)
        yield c, lo, hi, rows


def logra_project(projection: LograProjection, functional, params, batch, chunk_size: int | None = None) -> jax.Array:
    """Every example's LoGra-projected gradient, P_in^T G_n P_out per layer, concatenated.

    One forward and one backward pass per chunk (`capture` at the data labels); no per-example
    gradient is formed. The last chunk is padded with copies of the last example (one compile).

    Args:
        projection: the `LograProjection` (from `logra_projection` on this model).
        functional: the model, a `models.Functional` (inference mode).
        params: the params pytree.
        batch: an (x, y) pair (or `Dataset`) with a leading example axis [n, ...].
        chunk_size: examples per pass; None = all at once.

    Returns:
        [n, projection.dim]: layer blocks in `projection.layers` order, each [k_in, k_out] raveled
        row-major, in the dtype of the params.

    Raises:
        TypeError: `functional` is not a `models.Functional`, or `projection` not a `LograProjection`.
        ValueError: the projection was drawn for another model, or `chunk_size` is not a positive int.
        FloatingPointError: an example's projected gradient is NaN or inf (named).
    """
    _check_projection(projection, functional, "logra_project")
    n = num_examples(batch)
    chunk_size = n if chunk_size is None else check_positive_int("chunk_size", chunk_size)
    rows = [r for *_, r in _chunks(projection, functional, params, batch, chunk_size, range(-(-n // chunk_size)))]
    return jnp.asarray(np.concatenate(rows, axis=0))


def _metadata(projection: LograProjection, functional, params, data, chunk_rows: int) -> dict:
    """What a LoGra store records: the store's format-3 fields with the projection in the sketch's place."""
    n = num_examples(data)
    dtype = jnp.result_type(*jax.tree.leaves(params))
    return {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "seed": np.asarray(jax.random.key_data(projection.key)).tolist(),
        "sketch_state_hash": array_fingerprint((projection.inputs, projection.outputs)),
        "dim_in": projection.covered_params,
        "dim_out": projection.dim,
        "options": {"k_in": projection.k_in, "k_out": projection.k_out,
                    "layers": [layer.name for layer in projection.layers]},
        "dtype": str(np.dtype(dtype)),
        "params_structure": params_fingerprint(params),
        "params_values": array_fingerprint(params),
        "loss_probe": loss_probe(as_loss(functional, role="data", caller="logra_store"), params, data),
        "n_data": n,
        "data_hash": array_fingerprint(data),
        "chunk_rows": int(chunk_rows),
        "num_chunks": -(-n // int(chunk_rows)),
    }


def logra_store(projection: LograProjection, functional, params, data, path: str | Path,
                chunk_size: int | None = None) -> GradientStore:
    """LoGra-projected training gradients streamed to a resumable gradient store (`sketch.store`).

    The store's layout, atomic creation, per-chunk commits and finiteness checks are those of
    `write_gradient_store`; the projection (kind "logra", its key, a hash of its matrices, k_in,
    k_out and the layer paths) takes the sketch's place in the metadata. Reopening the store with
    another projection key or sizes, other params, another loss or other data is refused, naming
    what differs; a repeated call is a no-op and an interrupted one resumes.

    Args:
        projection: the `LograProjection`.
        functional: the model, a `models.Functional`.
        params: the params pytree (finite).
        data: the training data, a `Dataset` or (x, y) with a leading example axis [n, ...].
        path: the store's directory.
        chunk_size: rows per chunk (one forward/backward each); None = the existing store's, or 64.

    Returns:
        The reopened read-only `GradientStore` ([n, projection.dim] rows).

    Raises:
        TypeError: `functional` is not a `models.Functional`, or `projection` not a `LograProjection`.
        ValueError: non-finite params, a malformed size, or a store made with another configuration.
        FloatingPointError: a chunk's projected gradients are NaN or inf (not written).
    """
    _check_projection(projection, functional, "logra_store")
    path = Path(path)
    try:
        check_finite(params, "params")
    except ValueError as error:
        raise ValueError(f"logra_store {path}: {error}; nothing was written") from None
    explicit = chunk_size is not None
    if chunk_size is None:
        stored = open_store(path).metadata if (path / "zarr.json").exists() else {}
        chunk_size = stored.get("chunk_rows") or min(64, num_examples(data))
    meta = _metadata(projection, functional, params, data, check_positive_int("chunk_size", chunk_size))
    gstore = _create_or_open(path, meta, explicit)
    rows = gstore.metadata["chunk_rows"]
    done = _committed(gstore.path)
    todo = [c for c in range(gstore.metadata["num_chunks"]) if c not in done]
    for c, lo, hi, values in _chunks(projection, functional, params, data, rows, todo, gstore.path):
        gstore.sketches[lo:hi] = values
        _commit(gstore.path, c)
    return open_store(gstore.path)


def check_logra_store(projection: LograProjection, functional, params, data, path: str | Path) -> GradientStore:
    """Open a LoGra store read-only after checking that (projection, params, loss, data) made it.

    Args:
        projection: the `LograProjection` the store should hold.
        functional: the model, a `models.Functional`.
        params: the params pytree.
        data: the training data.
        path: the store's directory.

    Returns:
        The read-only `GradientStore`.

    Raises:
        FileNotFoundError: no store at `path`.
        ValueError: the store was made with another configuration (each difference named).
    """
    _check_projection(projection, functional, "check_logra_store")
    stored = open_store(path).metadata
    check_resumable(stored, path)
    _check_against(Path(path), stored, _metadata(projection, functional, params, data, stored["chunk_rows"]), False)
    return open_store(path)


def _block_mask(projection: LograProjection) -> np.ndarray:
    size = projection.k_in * projection.k_out
    owner = np.arange(projection.dim) // size
    return owner[:, None] == owner[None, :]


def logra_covariance(store: GradientStore) -> np.ndarray:
    """C = sum_i p_i p_i^T / n over a store's rows p_i, read one chunk at a time.

    Args:
        store: an opened, complete `GradientStore`.

    Returns:
        [dim, dim] in the store's dtype.
    """
    n, rows, dim = store.metadata["n_data"], store.metadata["chunk_rows"], store.metadata["dim_out"]
    cov = np.zeros((dim, dim), np.dtype(store.metadata["dtype"]))
    for lo in range(0, n, rows):
        block = np.asarray(store.sketches[lo : lo + rows])
        cov += block.T @ block
    return cov / n


def logra_scores(
    store: GradientStore | str | Path,
    projection: LograProjection,
    functional,
    params,
    data,
    test_data,
    *,
    damping: float | None = None,
    block_diagonal: bool = False,
    top_k: int | None = None,
    keep_scores: bool = True,
) -> StoreScores:
    """Score projected test gradients against a LoGra store's rows, streaming it from disk.

    scores[t, i] = <P g_test_t, P g_i>, or with `damping`, <(C + damping I)^{-1} P g_test_t, P g_i>,
    C the projected gradients' covariance over the stored rows (`logra_covariance`; its per-layer
    diagonal blocks only with `block_diagonal=True`). The test gradients are projected by the very
    code that wrote the store, after the store is checked against this configuration.

    Args:
        store: the store's path, or an opened `GradientStore`.
        projection: the `LograProjection` the store was written with.
        functional: the model, a `models.Functional`.
        params: the params the store was written at.
        data: the training data the store was written from.
        test_data: the test examples (the data's per-example shapes).
        damping: None: plain dot products; a positive float: LoGra's damped inverse covariance.
        block_diagonal: keep only the covariance's per-layer blocks (ignored without damping).
        top_k: proponents and opponents to return per test example; None: none.
        keep_scores: return the full [n_test, n_train] matrix (False needs `top_k`).

    Returns:
        `StoreScores`; `test_sketches` holds the (preconditioned, when damped) projected test gradients.

    Raises:
        ValueError: an incomplete store, one made with another configuration, a `damping` that is
            not positive, malformed test data or sizes (as `sketch.score_store`).
    """
    if damping is not None and not (np.isfinite(damping) and damping > 0):
        raise ValueError(f"damping must be a positive float (or None for plain dot products), got {damping!r}")
    store = store if isinstance(store, GradientStore) else open_store(store)
    if not keep_scores and top_k is None:
        raise ValueError("keep_scores=False needs top_k: otherwise there is nothing to return")
    if top_k is not None and not 1 <= check_positive_int("top_k", top_k) <= store.metadata["n_data"]:
        raise ValueError(f"top_k must be at most the store's {store.metadata['n_data']} examples, got {top_k}")
    check_resumable(store.metadata, store.path)
    _check_complete(store)
    _check_test_data(test_data, data)
    check_logra_store(projection, functional, params, data, store.path)
    rows = store.metadata["chunk_rows"]
    test = np.asarray(logra_project(projection, functional, params, test_data, rows))
    if damping is not None:
        cov = logra_covariance(store)
        if block_diagonal:
            cov = np.where(_block_mask(projection), cov, 0.0)
        test = np.linalg.solve(cov + damping * np.eye(cov.shape[0], dtype=cov.dtype), test.T).T
    test = jnp.asarray(test.astype(np.dtype(store.metadata["dtype"])))
    return _stream(store, test, rows, top_k, keep_scores, False, False)
