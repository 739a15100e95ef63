"""K-FAC and EK-FAC influence functions (Grosse et al. 2023, "Studying large language model
generalization with influence functions"; the kronfluence library).

The curvature is block diagonal over the covered layers (`workbench.curvature.kfac`), each block
Kronecker-factored (K-FAC) or Kronecker-factored with its eigenvalues refitted to the data
(EK-FAC), plus the objective's l2 and a damping:

    score(z, z_i) = sum_layers < G_l(z), (F_l + damping_l + l2)^-1 G_l(z_i) >,

G_l(z) the layer's per-example gradient matrix (rebuilt from its captured inputs and output
gradients: no per-example gradient of the whole model is formed). Parameters no covered layer
holds (LayerNorm scales, position embeddings) are left out of the score altogether, as in
Grosse et al.; `est.info["left_out"]` names them and says why. Sign convention as every
estimator: score > 0 means the training example helps the test prediction.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from workbench.core.per_example import per_example_grads
from workbench.curvature import kfac as kf
from workbench.influence.estimator import Estimator
from workbench.models import Functional

HEURISTIC_RULE = "0.1 x the mean eigenvalue of each layer (kronfluence's damping_factor=None)"


@functools.lru_cache(maxsize=64)
def _capture_featurizer(model: Functional, layers: tuple) -> Callable:
    """featurize(state, chunk) -> [c, d]: each example's covered-layer gradients of the data loss, from one capture."""

    def featurize(state, chunk):
        captured = kf.capture(model, state["params"], chunk, layers=layers)
        blocks = [kf.layer_gradients(layer, captured.inputs[layer.name], captured.output_grads[layer.name])
                  for layer in layers]
        return jnp.concatenate([b.reshape(b.shape[0], -1) for b in blocks], axis=1)

    featurize.state_keys = ("params",)
    return featurize


@functools.lru_cache(maxsize=64)
def _measure_featurizer(measure_fn: Callable, layers: tuple) -> Callable:
    """featurize(state, chunk) -> [c, d]: the covered layers' part of each example's gradient of `measure_fn`."""

    def featurize(state, chunk):
        grads = per_example_grads(measure_fn, state["params"], chunk)
        blocks = [kf.layer_matrix(layer, grads) for layer in layers]
        return jnp.concatenate([b.reshape(b.shape[0], -1) for b in blocks], axis=1)

    featurize.state_keys = ("params",)
    return featurize


@functools.lru_cache(maxsize=64)
def _preconditioner_fn(layers: tuple) -> Callable:
    """precondition(state, features [m, d]) -> [m, d]: each layer's slice through its damped inverse."""

    def precondition(state, features):
        pre = kf.Preconditioner(state["activation_vectors"], state["gradient_vectors"], state["inverse_values"], {})
        m, start, matrices = features.shape[0], 0, {}
        for layer in layers:
            size = layer.activation_dim * layer.out_features
            matrices[layer.name] = features[:, start : start + size].reshape(m, layer.activation_dim, layer.out_features)
            start += size
        out = kf.inverse_hvp(pre, matrices)
        return jnp.concatenate([out[layer.name].reshape(m, -1) for layer in layers], axis=1)

    return precondition


def _resolve_factors(factors, model: Functional, params, train_data, fisher, key, chunk_size, correct: bool):
    """Fitted `kfac.Factors`: fitted here, read from a path, or the ones given (checked against params and data)."""
    if factors is None:
        return kf.fit(model, params, train_data, fisher=fisher, key=key, chunk_size=chunk_size, correct=correct)
    if isinstance(factors, str | Path):
        factors = kf.load(factors, model, params, train_data)
    else:
        kf.check_factors(factors, model, params, train_data)
    if correct and any(f.corrected is None for f in factors.layers.values()):
        raise ValueError("ekfac needs factors fitted with the eigenvalue correction (kfac.fit(..., correct=True))")
    return factors


def _layerwise(kind: str, loss_fn, params, train_data, *, model, damping, fisher, key, factors, measure_fn,
               options) -> Estimator:
    caller = f"influence.make({kind!r})"
    if model is None:
        raise ValueError(
            f"{caller} reads the model's layers: pass the model's workbench.models.Functional as loss_fn "
            f"(influence.make({kind!r}, models.functional(nnx_model, loss=...), params, train_data)), not a plain "
            "loss function")
    kf.check_functional(model, caller)
    chunk_size = options.get("chunk_size", 256)
    fitted = _resolve_factors(factors, model, params, train_data, fisher, key, chunk_size, kind == "ekfac")
    pre = kf.preconditioner(fitted, kind, damping, model.l2)
    layers = fitted.coverage.layers
    state = {"params": params, "activation_vectors": pre.activation_vectors,
             "gradient_vectors": pre.gradient_vectors, "inverse_values": pre.inverse_values}
    left_out = list(fitted.coverage.left_out)
    info = {
        "kind": kind,
        "fisher": fitted.fisher,
        "damping": float(damping) if damping is not None else dict(pre.damping),
        "damping_rule": "given" if damping is not None else HEURISTIC_RULE,
        "l2": model.l2,
        "layers": [layer.name for layer in layers],
        "left_out": left_out,
        "covered_params": int(sum(layer.activation_dim * layer.out_features for layer in layers)),
        "left_out_params": int(sum(np.size(_leaf(params, name)) for name, _ in left_out)),
    }
    return Estimator(kind, train_data, _capture_featurizer(model, layers), _preconditioner_fn(layers), state,
                     featurize_test=_measure_featurizer(measure_fn, layers) if measure_fn else None, info=info,
                     **options)


def _leaf(params, name: str):
    node = params
    for part in name.split("/"):
        node = node[int(part)] if isinstance(node, dict) and part not in node and part.isdigit() else node[part]
    return node


def kfac(
    loss_fn: Callable,
    params,
    train_data,
    *,
    model: Functional | None = None,
    damping: float | None = None,
    fisher: str = "true",
    key: jax.Array | None = None,
    factors=None,
    measure_fn: Callable | None = None,
    **options,
) -> Estimator:
    """Influence with each covered layer's K-FAC block A (x) S (damped, plus l2) as the curvature.

    Built through `influence.make("kfac", functional, params, train_data, ...)`: the model's
    `Functional` supplies the layers, the per-example data loss whose gradients are attributed
    and (unless `measure_fn`) the test measure.

    Args:
        loss_fn: the data loss `make` resolved from the Functional (the gradients come from the
            model's own per-example loss).
        params: pytree, the trained model.
        train_data: an (x, y) pair or `Dataset` [n, ...], the training set the factors average.
        model: the `models.Functional` (`make` passes it when loss_fn is one).
        damping: added to every layer's eigenvalues; None (the default) means 0.1 x the mean
            eigenvalue per layer, as kronfluence's damping_factor=None.
        fisher: the labels of the factors' gradients: "true" (sampled, needs `key`),
            "empirical" or "ggn" (see `workbench.curvature.kfac`).
        key: `jax.random` key for fisher="true".
        factors: pre-fitted `kfac.Factors` or the path of saved ones (checked against these
            params and data); None fits them here.
        measure_fn: the test measure `(params, batch) -> scalar`; None means the data loss.
        **options: passed to `Estimator` (`chunk_size`, also the fit's chunk, and `cache_bytes`).

    Returns:
        The `Estimator` "kfac"; `info` holds the damping per layer, the layers covered and the
        parameters left out.

    Raises:
        ValueError: no Functional, an unknown fisher, "true" without key, a model without a
            supported layer, or factors fitted from other params or data.
    """
    return _layerwise("kfac", loss_fn, params, train_data, model=model, damping=damping, fisher=fisher, key=key,
                      factors=factors, measure_fn=measure_fn, options=options)


def ekfac(
    loss_fn: Callable,
    params,
    train_data,
    *,
    model: Functional | None = None,
    damping: float | None = None,
    fisher: str = "true",
    key: jax.Array | None = None,
    factors=None,
    measure_fn: Callable | None = None,
    **options,
) -> Estimator:
    """Influence with each covered layer's EK-FAC block (K-FAC's eigenbasis, eigenvalues refitted) as the curvature.

    As `kfac`, with Lambda_ij = E_n[(Q_A^T G_n Q_S)_ij^2] in place of K-FAC's a_i s_j: the
    estimator of Grosse et al. 2023 and kronfluence's default.

    Args:
        loss_fn: the data loss `make` resolved from the Functional.
        params: pytree, the trained model.
        train_data: an (x, y) pair or `Dataset` [n, ...].
        model: the `models.Functional` (`make` passes it when loss_fn is one).
        damping: added to every layer's eigenvalues; None means 0.1 x the mean eigenvalue per layer.
        fisher: "true" (sampled labels, needs `key`), "empirical" or "ggn".
        key: `jax.random` key for fisher="true".
        factors: pre-fitted `kfac.Factors` (with the correction) or the path of saved ones.
        measure_fn: the test measure; None means the data loss.
        **options: passed to `Estimator` (`chunk_size`, `cache_bytes`).

    Returns:
        The `Estimator` "ekfac" (`info` as for `kfac`).

    Raises:
        ValueError: as `kfac`, or factors fitted without the correction.
    """
    return _layerwise("ekfac", loss_fn, params, train_data, model=model, damping=damping, fisher=fisher, key=key,
                      factors=factors, measure_fn=measure_fn, options=options)
