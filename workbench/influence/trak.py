"""TRAK (Park et al. 2023): influence in a random projection of the gradient space, ensembled.

For each model m of the ensemble (e.g. independently trained copies, or checkpoints):
per-example gradients are sketched to D dimensions by `workbench.sketch.per_example_gradients`
(optionally into a resumable zarr store, so the training set is never held as n x p
gradients), F_m [n, D]. The Gauss-Newton matrix on the sketched features,
G_m = F_m^T F_m / n + damping I, replaces the Hessian, and

    score(z, z_i) = mean_m  phi_m(z)^T G_m^{-1} F_m[i],      phi_m(z) = Phi_m grad loss_m(z).

The training features are read from the stores in row chunks for G, the scores and the
self-influence, so memory holds D x D and one chunk, never the whole store.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from workbench import sketch as sk
from workbench.core import tree as tu
from workbench.core.numerics import check_finite, check_positive_int, num_examples
from workbench.core.per_example import sketched_per_example_grads
from workbench.influence.estimator import Estimator, _host_features


def _stack(trees):
    """Leafwise stack of pytrees on the host (a first call compiles no stack per leaf shape)."""
    def stack(*leaves):
        if jnp.issubdtype(jnp.result_type(leaves[0]), jax.dtypes.prng_key):
            return jnp.stack(leaves)
        return jnp.asarray(np.stack([np.asarray(a) for a in leaves]))

    return jax.tree.map(stack, *trees)


@functools.lru_cache(maxsize=64)
def _ensemble_featurizer(loss_fn: Callable) -> Callable:
    """featurize(state, chunk) -> [c, M * D]: each example's sketched gradient under every model
    of the ensemble, side by side."""

    def featurize(state, chunk):
        per_model = jax.vmap(lambda p, s: sketched_per_example_grads(loss_fn, p, chunk, s))(
            state["models"], state["sketches"])  # [M, c, D]
        return jnp.moveaxis(per_model, 0, 1).reshape(per_model.shape[1], -1)

    return featurize


def _ensemble_precondition(state, features):
    """Block diagonal: G_m^{-1} on model m's block, averaged over the M models."""
    inverses = state["inverses"]
    num_models, dim = inverses.shape[:2]
    blocks = features.reshape(features.shape[0], num_models, dim).astype(inverses.dtype)
    return jnp.einsum("cmd,mde->cme", blocks, inverses).reshape(features.shape[0], -1) / num_models


def _check_features_finite(features: np.ndarray, dim: int, which: str, hint: str = "") -> None:
    """Refuse in-memory features holding NaN or inf, naming the model and the training examples."""
    bad_rows, bad_cols = np.nonzero(~np.isfinite(features))
    if bad_rows.size:
        examples = sorted(set(bad_rows.tolist()))
        shown = ", ".join(map(str, examples[:8])) + (f", ... ({len(examples)} in all)" if len(examples) > 8 else "")
        raise FloatingPointError(
            f"trak: the sketched gradients of {which} under model {int(bad_cols[0]) // dim} are NaN or inf "
            f"at training examples [{shown}] (the models are finite: check {which} and these examples' data){hint}")


def _check_stored_rows(rows: np.ndarray, lo: int, path: str, model: int) -> None:
    """Refuse stored rows holding NaN or inf: a store commits only finite chunks, so this one was damaged."""
    finite = np.all(np.isfinite(rows), axis=1)
    if not np.all(finite):
        raise ValueError(
            f"the store {path} of model {model} holds NaN or inf from row {lo + int(np.flatnonzero(~finite)[0])} "
            f"although it is marked complete (a store commits only finite chunks): it was changed or damaged "
            f"after it was written. Delete {path} and run again to recompute it")


def margin_output(predict_fn: Callable) -> Callable:
    """TRAK's output function for classifiers: the mean margin logit_y - logsumexp_{c != y} logit_c.

    Use as `trak(..., output_fn=margin_output(predict_fn))`: its gradients build the Gauss-Newton
    matrix (better than the loss's, which over-weights well-fit examples). A sequence model
    (logits [n, t, vocab], targets [n, t], a char GPT) gets the margin of every target token,
    averaged over the tokens as its cross-entropy is.

    Args:
        predict_fn: `predict_fn(params, x) -> logits [n, ..., num_classes]`, classes last.

    Returns:
        `output(params, (x, y)) -> scalar`, the margin averaged over the batch (and positions).
    """

    def output(params, batch):
        x, y = batch
        logits = predict_fn(params, x)
        correct = jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
        others = jnp.where(jax.nn.one_hot(y, logits.shape[-1], dtype=bool), -jnp.inf, logits)
        return jnp.mean(correct - jax.nn.logsumexp(others, axis=-1))

    return output


@functools.lru_cache(maxsize=64)
def margin_from_loss(loss_fn: Callable) -> Callable:
    """TRAK's margin log(p / (1 - p)) read off a cross-entropy loss, no `predict_fn` needed.

    For the softmax cross-entropy l = -log p_y of one example, log(p_y / (1 - p_y)) =
    -l - log(1 - exp(-l)), the same value as `margin_output(predict_fn)` (Park et al. 2023,
    eq. 13). Exact only when `loss_fn` on one example is that cross-entropy (no regulariser, no
    label smoothing); for any other loss pass `output_fn` explicitly. Cached per `loss_fn`, so one
    loss compiles one featurizer.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, the per-example cross-entropy (a mean over the
            batch).

    Returns:
        `output(params, batch) -> scalar`: the margin of a batch of one example.
    """

    def output(params, batch):
        loss = loss_fn(params, batch)
        defined = jnp.where(loss > 0, 1.0, jnp.nan).astype(loss.dtype)  # no p < 1: NaN value and gradient, refused
        return defined * (-loss - jnp.log(-jnp.expm1(-loss)))

    return output


OUTPUT_FNS = ("margin", "loss")  # the named output functions of `trak`


def trak(
    loss_fn: Callable,
    params,
    train_data,
    *,
    models: Sequence | None = None,
    dim: int = 2048,
    sketch_kind: str = "countsketch",
    key: jax.Array | None = None,
    damping: float | None = None,
    stores: Sequence[str | Path] | None = None,
    measure_fn: Callable | None = None,
    output_fn: Callable | str = "margin",
    batch_size: int | None = None,
    read_rows: int = 4096,
    **options,
) -> Estimator:
    """TRAK over the ensemble `models` (default: just `params`); see the module docstring.

    `dim` is the sketch dimension D (capped at the number of parameters), `sketch_kind` any of
    `workbench.sketch.KINDS`, each model's sketch seeded by fold_in(key, m). `stores`: one path
    per model for the sketched training gradients (resumed if present; a store made for other
    params, even of the same architecture, another loss, sketch or dataset is refused by
    `workbench.sketch.write_gradient_store`, naming what differs). `damping` is added to
    X^T X / n; None picks 0.1 x its mean eigenvalue (the heuristic of kronfluence; reported in
    `info["damping"]`). A model trained with L2 regularisation l2 is well served by damping=l2.

    `output_fn` is the model output whose gradients X build the Gauss-Newton matrix. The default,
    "margin", is Park et al.'s choice for classification, f = log(p / (1 - p)) of the true class
    (the TRAK library's `image_classification` / `text_classification` model output), read off
    the per-example cross-entropy by `margin_from_loss`: it assumes `loss_fn` on one example is the
    softmax cross-entropy, as `influence.make` gives it from a classifier's `Functional`.
    For any other model (regression, a loss with a regulariser or label smoothing) pass the output
    explicitly: a callable `output_fn(params, batch)` (`margin_output(predict_fn)` from the logits,
    or the prediction itself for a scalar regression, whose Gram is then the Gauss-Newton matrix of
    the squared error), or "loss" for the loss's own gradients (an empirical Fisher, which
    down-weights the well-fit examples by (1 - p)^2). A non-positive loss under "margin" gives
    non-finite features, refused naming output_fn. Scores always pair loss gradients on both sides
    (TRAK's Q = 1 - p on the training side), so the sign convention is the common one.
    The other TRAK library defaults: a projection of D = 2048 (`dim`) and no ridge
    (`lambda_reg=0`); a ridge is needed here when D reaches the rank of F, hence the relative
    default below.

    The result is the common `Estimator`: features psi(z) are the M sketched gradients side by
    side and P is block diagonal, G_m^{-1} / M on block m, so <P psi(z), psi(z_i)> is the
    ensemble mean above. Training features are read from the stores (or memory) `read_rows` at
    a time when they exceed `cache_bytes`.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, the per-example data loss.
        params: pytree, the model (its structure is every ensemble member's).
        train_data: pytree of arrays [n, ...], the training set.
        models: list of params pytrees, the ensemble; None means `[params]`.
        dim: sketch dimension D (capped at the number of parameters).
        sketch_kind: a kind of `workbench.sketch.KINDS`.
        key: `jax.random` key of the sketches (required); model m uses fold_in(key, m).
        damping: added to F^T F / n (>= 0); None means 0.1 x its mean eigenvalue.
        stores: one zarr path per model for the sketched training gradients, or None (memory).
        measure_fn: the test measure; None means `loss_fn`.
        output_fn: the output whose gradients build the Gauss-Newton matrix: "margin" (default,
            classifiers trained with cross-entropy), "loss", or a callable `(params, batch) -> scalar`.
        batch_size: examples per batch when writing the stores; None means the store's default.
        read_rows: rows of stored features read at a time.
        **options: passed to `Estimator` (`chunk_size`, `cache_bytes`).

    Returns:
        The `Estimator` "trak" (`info` holds D, the sketch kind, the dampings and the stores).

    Raises:
        ValueError: if `key` is missing, `models` is empty, mismatched or not finite, `stores` has
            the wrong length or a store was made by another configuration (model values, loss,
            sketch, data) or was damaged, `damping` is negative, `output_fn` is an unknown name,
            or F^T F / n + damping I is singular.
        FloatingPointError: a training example's sketched gradient is NaN or inf (the loss or
            `output_fn` is not finite there).
    """

    margin_hint = ""
    if isinstance(output_fn, str):
        if output_fn not in OUTPUT_FNS:
            raise ValueError(f"output_fn must be one of {OUTPUT_FNS} or a callable (params, batch) -> scalar, "
                             f"got {output_fn!r}")
        margin_hint = (". output_fn='margin' reads log(p / (1 - p)) off a positive cross-entropy loss: for another "
                       "loss pass output_fn='loss' or a callable") if output_fn == "margin" else ""
        output_fn = margin_from_loss(loss_fn) if output_fn == "margin" else None
    elif not callable(output_fn):
        raise ValueError(f"output_fn must be one of {OUTPUT_FNS} or a callable (params, batch) -> scalar, "
                         f"got {output_fn!r}")
    models = list(models) if models is not None else [params]
    if not models:
        raise ValueError("models must hold at least one params pytree")
    for m, p in enumerate(models):
        tu.check_same_structure(params, p, "params", f"models[{m}]")
        check_finite(p, f"models[{m}]")
    if stores is not None and len(stores) != len(models):
        raise ValueError(f"stores must give one path per model: {len(stores)} paths for {len(models)} models")
    n = num_examples(train_data, "train_data")
    flat = jax.ShapeDtypeStruct((sum(int(np.size(a)) for a in jax.tree.leaves(params)),),
                                jnp.result_type(*jax.tree.leaves(params)))  # size and dtype only
    dim = min(check_positive_int("dim", dim), int(flat.size))
    read_rows = check_positive_int("read_rows", read_rows)
    if batch_size is not None:
        batch_size = check_positive_int("batch_size", batch_size)
    if key is None:
        raise ValueError("trak needs key= (a jax.random key; model m's sketch uses fold_in(key, m))")
    sketches = [sk.make(sketch_kind, jax.random.fold_in(key, m), int(flat.size), dim)
                for m in range(len(models))]
    # the state the estimator will hold (inverses still zero): the in-memory training features
    # go through the same compiled chunk program as the test features later
    state = {"models": _stack(models), "sketches": _stack(sketches),
             "inverses": jnp.asarray(np.zeros((len(models), dim, dim), flat.dtype))}
    chunk = int(options.get("chunk_size", 256))
    if stores is None:
        in_memory = {f: np.asarray(_host_features(_ensemble_featurizer(f), state, train_data, chunk)[0])
                     for f in {loss_fn, output_fn} - {None}}
        for f, feats in sorted(in_memory.items(), key=lambda item: item[0] is not loss_fn):  # the loss's first
            is_output = f is output_fn and f is not loss_fn
            _check_features_finite(feats, dim, "output_fn" if is_output else "loss_fn", margin_hint if is_output else "")
    features, inverses, dampings = [], [], []
    for m, (p, s) in enumerate(zip(models, sketches, strict=True)):
        if stores is None:
            feats = in_memory[loss_fn][:, m * dim : (m + 1) * dim]
        else:
            store = sk.write_gradient_store(loss_fn, p, train_data, s, stores[m], batch_size)
            if store.metadata.get("n_data") != n or store.metadata.get("dim_out") != dim:
                raise ValueError(f"stores[{m}] at {store.path} holds {store.metadata.get('n_data')} x "
                                 f"{store.metadata.get('dim_out')} sketches; expected {n} x {dim}")
            feats = store.sketches
        gram_feats = feats
        if output_fn is not None:
            if stores is None:
                gram_feats = in_memory[output_fn][:, m * dim : (m + 1) * dim]
            else:
                gram_feats = sk.write_gradient_store(output_fn, p, train_data, s, f"{stores[m]}.output",
                                                      batch_size).sketches
        gram = np.zeros((dim, dim))
        for lo in range(0, n, read_rows):
            rows = np.asarray(gram_feats[lo : lo + read_rows], dtype=np.float64)
            if stores is not None:
                _check_stored_rows(rows, lo, f"{stores[m]}.output" if output_fn is not None else str(stores[m]), m)
            gram += rows.T @ rows
        gram /= n
        lam = 0.1 * np.trace(gram) / dim if damping is None else float(damping)
        if not np.isfinite(lam) or lam < 0:
            raise ValueError(f"damping must be a finite number >= 0, got {damping}")
        try:  # Cholesky: several times cheaper than eigh, and it fails exactly when we must refuse
            factor = np.linalg.cholesky(gram + lam * np.eye(dim))
        except np.linalg.LinAlgError:
            factor = None
        if factor is None or not np.all(np.diag(factor) > 1e-10 * np.sqrt(max(np.trace(gram) / dim, 1e-300))):
            raise ValueError(f"F^T F / n + damping I is singular for model {m}: use damping > 0")
        inv_factor = np.linalg.solve(factor, np.eye(dim))  # L^{-1}; (L L^T)^{-1} = L^{-T} L^{-1}
        inverses.append((inv_factor.T @ inv_factor).astype(flat.dtype))
        features.append(feats)
        dampings.append(lam)
    info = {"dim": dim, "sketch_kind": sketch_kind, "num_models": len(models),
            "damping": dampings[0] if len(dampings) == 1 else dampings,
            "stores": [str(p) for p in stores] if stores is not None else None}
    def read(lo, hi):
        blocks = [np.asarray(f[lo:hi]) for f in features]
        if stores is not None:  # the loss stores are read here first when output_fn built the Gram
            for m, block in enumerate(blocks):
                _check_stored_rows(block, lo, str(stores[m]), m)
        return np.concatenate(blocks, axis=1)

    state["inverses"] = _stack(inverses)
    featurizer = _ensemble_featurizer
    return Estimator(
        "trak", train_data, featurizer(loss_fn), _ensemble_precondition, state,
        featurize_test=featurizer(measure_fn) if measure_fn else None, train_reader=read,
        read_rows=read_rows, info=info, **options,
    )
