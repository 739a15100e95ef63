"""LoGra influence (Choe et al. 2024): projected gradients, preconditioned per layer by their damped covariance.

Each covered layer's per-example gradient G_n is projected to P_in^T G_n P_out ([k_in, k_out],
`workbench.sketch.logra`: built from the layer's captured inputs and output gradients, no
per-example gradient of the whole model is formed), the layers' blocks side by side give
p_n = P^T g_n, and

    score(z, z_i) = sum_layers < (C_l + (damping_l + l2) I)^-1 p_l(z), p_l(z_i) >,
    C_l = sum_i p_l(z_i) p_l(z_i)^T / n,

C_l the projected gradients' (empirical Fisher) covariance of layer l over the training set.
This is LogIX's "raw" preconditioner: each module's projected-gradient covariance, damped and
inverted, applied to the test side of raw projected-gradient dot products. What was read: not
the paper's text but LogIX's code (its `precondition_raw`, and its default damping, 0.1 x the
mean eigenvalue of each module's covariance, which is ours when `damping=None`). With
`block_diagonal=False` the whole covariance (all layers together) is inverted instead.

When the projections are square and orthogonal (k_in = activation_dim, k_out = out_features;
identity matrices included) the scores are exactly the per-layer block-diagonal empirical-Fisher
influence sum_l <(F_l + damping_l + l2)^-1 G_l(z), G_l(z_i)>; random Gaussian projections give
that influence in the projected subspace. The objective's l2 is added to the damping in the
projected coordinates, as `kfac` adds it (exact for orthogonal projections). Parameters the
layers do not hold (LayerNorm scales, position embeddings) are left out, listed in
`est.info["left_out"]`. Sign convention as every estimator: score > 0 means the training
example helps the test prediction.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from workbench.core.numerics import num_examples
from workbench.core.per_example import per_example_grads
from workbench.curvature.capture import check_functional, layer_matrix
from workbench.influence.estimator import Estimator, _host_features, check_damping
from workbench.models import Functional
from workbench.sketch import logra as lg

HEURISTIC_RULE = "0.1 x the mean eigenvalue of each block's projected covariance (LogIX's damping=None)"


@functools.lru_cache(maxsize=64)
def _projected_featurizer(model: Functional, layers: tuple) -> Callable:
    """featurize(state, chunk) -> [c, dim]: each example's projected layer gradients, from one capture."""

    def featurize(state, chunk):
        return lg.project_captured(model, layers, state["inputs"], state["outputs"], state["params"], chunk)

    featurize.state_keys = ("params", "inputs", "outputs")
    return featurize


@functools.lru_cache(maxsize=64)
def _measure_featurizer(measure_fn: Callable, layers: tuple) -> Callable:
    """featurize(state, chunk) -> [c, dim]: the projected layer gradients of `measure_fn` (full per-example gradients)."""

    def featurize(state, chunk):
        grads = per_example_grads(measure_fn, state["params"], chunk)
        blocks = [jnp.einsum("ik,nio,ol->nkl", p_in, layer_matrix(layer, grads), p_out).reshape(-1, p_in.shape[1] * p_out.shape[1])
                  for layer, p_in, p_out in zip(layers, state["inputs"], state["outputs"])]
        return jnp.concatenate(blocks, axis=1)

    featurize.state_keys = ("params", "inputs", "outputs")
    return featurize


def _block_precondition(state, features):
    """Block diagonal: block b of the features through its damped inverse covariance state["inverses"][b]."""
    inverses = state["inverses"]
    num_blocks, size = inverses.shape[:2]
    blocks = features.reshape(features.shape[0], num_blocks, size).astype(inverses.dtype)
    return jnp.einsum("cbs,bst->cbt", blocks, inverses).reshape(features.shape[0], -1)


def _damped_inverses(covariance: np.ndarray, num_blocks: int, damping: float | None, l2: float):
    """[(C_b + (damping_b + l2) I)^-1 for each diagonal block b] and the dampings used."""
    size = covariance.shape[0] // num_blocks
    inverses, dampings = [], []
    for b in range(num_blocks):
        block = covariance[b * size : (b + 1) * size, b * size : (b + 1) * size]
        lam = 0.1 * np.trace(block) / size if damping is None else damping
        shift = lam + l2
        try:
            factor = np.linalg.cholesky(block + shift * np.eye(size))
        except np.linalg.LinAlgError:
            factor = None
        scale = np.sqrt(max(np.trace(block) / size, 1e-300))
        if factor is None or not np.all(np.diag(factor) > 1e-10 * scale):
            raise ValueError(f"block {b} of the projected covariance plus damping {shift:.3g} is singular: "
                             "use damping > 0")
        inv_factor = np.linalg.solve(factor, np.eye(size))
        inverses.append(inv_factor.T @ inv_factor)
        dampings.append(float(lam))
    return np.stack(inverses), dampings


def logra(
    loss_fn: Callable,
    params,
    train_data,
    *,
    model: Functional | None = None,
    key: jax.Array | None = None,
    k_in: int = 8,
    k_out: int = 8,
    projection: lg.LograProjection | None = None,
    damping: float | None = None,
    block_diagonal: bool = True,
    store: str | Path | None = None,
    measure_fn: Callable | None = None,
    read_rows: int = 4096,
    **options,
) -> Estimator:
    """LoGra influence: projected gradients and their damped per-layer covariance (module docstring).

    Built through `influence.make("logra", functional, params, train_data, key=..., k_in=, k_out=)`:
    the model's `Functional` supplies the layers, the per-example data loss whose gradients are
    projected and (unless `measure_fn`) the test measure. The projections are
    `sketch.logra.logra_projection(functional, key, k_in, k_out)` unless `projection` is given.

    Args:
        loss_fn: the data loss `make` resolved from the Functional (the projected gradients come
            from the model's own per-example loss, captured layer by layer).
        params: pytree, the trained model.
        train_data: an (x, y) pair or `Dataset` [n, ...], the training set.
        model: the `models.Functional` (`make` passes it when loss_fn is one).
        key: `jax.random` key drawing the projections (required unless `projection` is given).
        k_in: projected input dimension per layer.
        k_out: projected output dimension per layer.
        projection: a `LograProjection` drawn for this model (then `key`, `k_in`, `k_out` are
            not used), e.g. one that wrote a store before.
        damping: added to every block's covariance (>= 0); None means 0.1 x the mean eigenvalue
            of each block (LogIX's default). The objective's l2 is added on top.
        block_diagonal: invert each layer's block of the covariance (LogIX); False inverts the
            whole covariance, all layers together.
        store: a directory for the projected training gradients (`sketch.logra.logra_store`:
            resumed if present, refused if made by another projection, params, loss or data);
            None keeps them in memory.
        measure_fn: the test measure `(params, batch) -> scalar`; None means the data loss. Its
            projected gradients come from full per-example gradients (`jax.grad`).
        read_rows: rows of stored training features read at a time.
        **options: passed to `Estimator` (`chunk_size`, also the projection's chunk, and `cache_bytes`).

    Returns:
        The `Estimator` "logra"; `info` holds k_in, k_out, the damping (per layer name when
        damping=None picks it per block), the layers, the parameters left out and the store.

    Raises:
        ValueError: no Functional, no `key` and no `projection`, a projection drawn for another
            model, a bad k_in, k_out or damping, a singular damped covariance (damping 0), or a
            store made by another configuration.
        FloatingPointError: a training example's projected gradient is NaN or inf.
    """
    caller = "influence.make('logra')"
    if model is None:
        raise ValueError(
            f"{caller} reads the model's layers: pass the model's workbench.models.Functional as loss_fn "
            "(influence.make('logra', models.functional(nnx_model, loss=...), params, train_data, key=...)), not a "
            "plain loss function")
    check_functional(model, caller)
    if damping is not None:
        damping = check_damping(damping)
    if projection is None:
        if key is None:
            raise ValueError(f"{caller} needs key= (a jax.random key drawing the projections) or projection=")
        projection = lg.logra_projection(model, key, k_in, k_out, dtype=jnp.result_type(*jax.tree.leaves(params)))
    else:
        lg._check_projection(projection, model, caller)
    chunk = int(options.get("chunk_size", 256))
    read_rows = int(read_rows)
    state = {"params": params, "inputs": projection.inputs, "outputs": projection.outputs}
    n = num_examples(train_data, "train_data")
    if store is None:
        feats, finite = _host_features(_projected_featurizer(model, projection.layers), state, train_data, chunk)
        bad = np.flatnonzero(~np.asarray(finite))
        if bad.size:
            raise FloatingPointError(f"{caller}: the projected gradients of training examples {bad[:5].tolist()} "
                                     "are NaN or infinite; check the loss and the params at those examples")
        feats = np.asarray(feats)
        covariance = feats.astype(np.float64).T @ feats.astype(np.float64) / n
        read = lambda lo, hi: feats[lo:hi]  # noqa: E731
    else:
        written = lg.logra_store(projection, model, params, train_data, store, min(chunk, n))
        covariance = np.zeros((projection.dim, projection.dim))
        for lo in range(0, n, read_rows):
            rows = np.asarray(written.sketches[lo : lo + read_rows], dtype=np.float64)
            covariance += rows.T @ rows
        covariance /= n
        read = lambda lo, hi: np.asarray(written.sketches[lo:hi])  # noqa: E731
    num_blocks = len(projection.layers) if block_diagonal else 1
    inverses, dampings = _damped_inverses(covariance, num_blocks, damping, model.l2)
    dtype = jnp.result_type(*jax.tree.leaves(params))
    state["inverses"] = jnp.asarray(inverses.astype(dtype))
    layers = projection.layers
    info = {
        "k_in": projection.k_in,
        "k_out": projection.k_out,
        "dim": projection.dim,
        "block_diagonal": bool(block_diagonal),
        "damping": (dampings[0] if damping is not None or not block_diagonal
                    else {layer.name: d for layer, d in zip(projection.layers, dampings)}),
        "damping_rule": "given" if damping is not None else HEURISTIC_RULE,
        "l2": model.l2,
        "layers": [layer.name for layer in layers],
        "left_out": list(projection.left_out),
        "covered_params": projection.covered_params,
        "store": None if store is None else str(store),
    }
    return Estimator("logra", train_data, _projected_featurizer(model, layers), _block_precondition, state,
                     featurize_test=_measure_featurizer(measure_fn, layers) if measure_fn else None,
                     train_reader=read, read_rows=read_rows, info=info, **options)
