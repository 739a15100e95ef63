"""K-FAC and EK-FAC: Kronecker-factored curvature per layer (Martens & Grosse 2015; George et al.
2018; as Grosse et al. 2023 use it for influence functions, and the kronfluence library does).

For a covered layer (`workbench.curvature.capture`) with inputs a (a 1 appended for the bias)
and output gradients g, the layer's block of the Fisher, E_n[vec(G_n) vec(G_n)^T] with
G_n = sum_t a_{n,t} g_{n,t}^T, is approximated by

    A (x) S,   A = E_n[(1/P) sum_t a a^T],   S = E_n[sum_t g g^T]

(P positions per example; with P = 1, plain E[a a^T] and E[g g^T]). kronfluence divides both
factors by the token count; putting the 1/P on A alone keeps A (x) S at the scale of the
per-example Fisher when positions are independent, and changes nothing else: the eigenbases
are the same, the EK-FAC eigenvalues below do not depend on it, and the default damping is
relative. With A = Q_A diag(a) Q_A^T and S = Q_S diag(s) Q_S^T, K-FAC's eigenvalues in the basis
Q_A (x) Q_S are a_i s_j. EK-FAC keeps that basis and refits the eigenvalues to the data:

    Lambda_ij = E_n[(Q_A^T G_n Q_S)_ij^2],

the diagonal of the layer's true Fisher block in the Kronecker eigenbasis (the best diagonal
there). The damped inverse applied to a layer's gradient matrix V is

    Q_A ((Q_A^T V Q_S) / (Lambda + damping + l2)) Q_S^T,

with `damping=None` kronfluence's heuristic 0.1 x mean(Lambda) per layer, and l2 the
regulariser's curvature (a `models.Functional`'s objective is data loss + 0.5 l2 |theta|^2).

Which labels the gradients g are taken at (`fisher`):
- "true" (the default, as kronfluence): labels sampled from the model's predictive distribution,
  one per example (needs `key`): the Fisher, equal in expectation to the Gauss-Newton matrix for
  cross-entropy and squared error;
- "empirical": the data labels (the empirical Fisher);
- "ggn": the exact expectation over labels: each example contributes the columns of a square
  root of its output Hessian, so the factors average the Gauss-Newton matrix itself (costs one
  backward pass per output coordinate: small outputs and references).

Factors are accumulated over the data in chunks (a jitted step per chunk: memory holds one
chunk's layer inputs and output gradients, and for the eigenvalue correction one chunk's
per-example gradients of one layer in the eigenbasis). `Factors.save(path)` writes them with
what made them (params, data, loss, Fisher, key); `load` refuses factors made otherwise.

Typical use, for a model `fn = models.functional(nnx_model)` (`influence.make("ekfac", fn, ...)`
does all of it):

    factors = kfac.fit(fn, params, train, key=jax.random.key(0), path="factors.npz")
    pre = kfac.preconditioner(factors, "ekfac", damping=None, l2=fn.l2)
    captured = kfac.capture(fn, params, batch)  # per-layer inputs and output gradients
    grads = {layer.name: kfac.layer_gradients(layer, captured.inputs[layer.name],
                                              captured.output_grads[layer.name])
             for layer in factors.coverage.layers}
    preconditioned = kfac.inverse_hvp(pre, grads)  # per layer, [n, d_a, d_out]
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from workbench.core.numerics import (
    check_finite,
    check_floating,
    check_key,
    check_nonnegative,
    check_positive_int,
    num_examples,
)
from workbench.curvature.capture import (
    Captured,
    Coverage,
    Layer,
    capture,
    check_functional,
    coverage,
    layer_gradients,
    layer_matrix,
    layer_params,
    trace,
)
from workbench.curvature.factor_store import (
    Factors,
    LayerFactors,
    check_factors,
    differences,
    load,
    metadata,
    reuse,
    save,
)
from workbench.curvature.fisher_labels import (
    FISHERS,
    check_fisher,
    example_keys,
    loss_cotangents,
    sample_targets,
)
from workbench.models import Functional

PyTree = Any
KINDS = ("kfac", "ekfac")
HEURISTIC_DAMPING_SCALE = 0.1  # kronfluence's damping=None: 0.1 x the mean eigenvalue of each layer


def _chunks(data, chunk_size: int):
    """(indices [c], weights [c], chunk) over `data`, every chunk `chunk_size` rows (the last padded
    by repeating its final row with weight 0), sliced on the host so one program serves all."""
    leaves, treedef = jax.tree.flatten(data)
    leaves = [np.asarray(a) for a in leaves]
    n = leaves[0].shape[0]
    for lo in range(0, n, chunk_size):
        idx = np.minimum(np.arange(lo, lo + chunk_size), n - 1)
        weights = (np.arange(lo, lo + chunk_size) < n).astype(np.float64)
        yield idx, weights, treedef.unflatten([a[idx] for a in leaves])


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _chunk_gradients(functional, layers, fisher, num_samples, params, chunk, indices, key):
    """The chunk's layer inputs and output gradients [K, c, P, d_out]: the one program that runs the model.

    K = 1 for "empirical", the number of sampled labels for "true", the output size for "ggn". Both
    passes of a fit share this program; their sums compile apart, small and model-free.
    """
    x, y = chunk
    outputs, inputs, pullback = trace(functional, layers, params, x)
    if fisher == "true":
        keys = example_keys(key, indices)

        def sampled(s):  # label s of example i draws from fold_in(fold_in(key, i), s)
            return loss_cotangents(functional, outputs, y, fisher, jax.vmap(jax.random.fold_in, (0, None))(keys, s))[0][0]

        cotangents = jax.vmap(sampled)(jnp.arange(num_samples))
    else:
        cotangents = loss_cotangents(functional, outputs, y, fisher)[0]
    return inputs, jax.vmap(pullback)(cotangents)


@functools.partial(jax.jit, static_argnums=0)
def _covariance_sums(layers, totals, inputs, grads, weights, sample_weight):
    """totals + this chunk's sums of (1/P) sum_t a a^T and sample_weight sum_k sum_t g g^T per layer."""
    sums = {}
    for layer in layers:
        a, g = inputs[layer.name], grads[layer.name]
        per_position = weights / a.shape[1]
        if layer.kind == "embed":  # one-hot inputs: A is diagonal, the frequency of each token
            activation = jnp.zeros(layer.in_features, g.dtype).at[a].add(
                jnp.broadcast_to(per_position[:, None], a.shape))
        else:
            activation = jnp.einsum("c,cpi,cpj->ij", per_position, a, a)
        sums[layer.name] = (activation, jnp.einsum("c,kcpi,kcpj->ij", weights * sample_weight, g, g))
    return jax.tree.map(jnp.add, totals, sums)


def rotated_gradients(layer: Layer, inputs, output_grads, activation_vectors, gradient_vectors):
    """Per-example gradients in the Kronecker eigenbasis, Q_A^T G_n Q_S, from captured inputs and output gradients.

    G_n = sum_t a_t g_t^T is never formed in the original basis: the inputs are rotated by Q_A
    and the output gradients by Q_S first.

    Args:
        layer: the `Layer`.
        inputs: its captured inputs [c, P, d_a] (int tokens [c, P] for an embedding).
        output_grads: [..., c, P, d_out] (leading axes, e.g. the GGN's output coordinates, kept).
        activation_vectors: Q_A [d_a, d_a], or None (the identity: an embedding).
        gradient_vectors: Q_S [d_out, d_out].

    Returns:
        [..., c, d_a, d_out].
    """
    rotated_g = output_grads @ gradient_vectors
    if layer.kind == "embed":
        onehot = jax.nn.one_hot(inputs, layer.in_features, dtype=rotated_g.dtype)
        rotated_a = onehot if activation_vectors is None else onehot @ activation_vectors
    else:
        rotated_a = inputs @ activation_vectors
    return jnp.einsum("cpi,...cpo->...cio", rotated_a, rotated_g)


@functools.partial(jax.jit, static_argnums=0)
def _correction_sums(layers, bases, totals, inputs, grads, weights, sample_weight):
    """totals + this chunk's sums of sample_weight sum_k (Q_A^T G_nk Q_S)^2 per layer."""
    sums = {}
    for layer in layers:
        activation_vectors, gradient_vectors = bases[layer.name]
        rotated = rotated_gradients(layer, inputs[layer.name], grads[layer.name], activation_vectors,
                                    gradient_vectors)
        sums[layer.name] = jnp.einsum("c,kcio->io", weights * sample_weight, rotated**2)
    return jax.tree.map(jnp.add, totals, sums)


def _accumulate(gradients, add, totals, data, chunk_size: int, dtype, progress: bool, desc: str):
    """The dataset mean of the sums `add(totals, inputs, grads, weights)` adds to `totals`, chunk by chunk
    (the running totals stay inside the compiled sums: no program per array shape outside them)."""
    from workbench.core.progress import bar

    n = num_examples(data)
    for indices, weights, chunk in bar(_chunks(data, chunk_size), total=-(-n // chunk_size), desc=desc,
                                       disable=not progress):
        inputs, grads = gradients(chunk, indices)
        totals = add(totals, inputs, grads, weights.astype(dtype))
    return jax.tree.map(lambda s: np.asarray(s) / n, totals)  # on the host: tiny, and compiles nothing


@functools.partial(jax.jit, static_argnums=0)
def _eigendecompose(layers, factors):
    """eigh of every layer's A (not an embedding's: diagonal) and S, in one compiled program."""
    out = {}
    for layer in layers:
        activation, gradient = factors[layer.name]
        a_eigen = (activation, None) if layer.kind == "embed" else jnp.linalg.eigh(activation)
        out[layer.name] = (*a_eigen, *jnp.linalg.eigh(gradient))
    return out


def _check_factors_finite(named: dict, what: str) -> None:
    for name, value in named.items():
        if not all(np.all(np.isfinite(a)) for a in jax.tree.leaves(value)):
            raise FloatingPointError(
                f"kfac.fit: the {what} of layer {name!r} hold NaN or inf (the params and data are finite: the loss "
                "or its gradient is not finite at some example); nothing was written")


def fit(functional: Functional, params, data, *, fisher: str = "true", key=None, num_samples: int = 1,
        chunk_size: int = 256, correct: bool = True, path: str | Path | None = None,
        progress: bool = False) -> Factors:
    """Fit K-FAC factors (and EK-FAC's eigenvalue correction) for every covered layer.

    Two passes over `data` in chunks of `chunk_size`: the factors A and S, then (`correct`) the
    EK-FAC eigenvalues Lambda in the eigenbases of A and S (see the module docstring). With
    `path`, factors already stored there are loaded instead when they were fitted from the same
    params, data, loss, Fisher and key, and refused (naming what differs) otherwise; new factors
    are written there only after a successful fit.

    Args:
        functional: the model, a `models.Functional` made by `models.functional`.
        params: the params pytree (finite, floating).
        data: an (x, y) pair or `Dataset` with a leading example axis [n, ...].
        fisher: "true" (sampled labels, needs `key`), "empirical" (data labels) or "ggn" (the
            exact expectation over labels).
        key: `jax.random` key of the sampled labels (fisher="true"); example i's s-th label
            draws from `fold_in(fold_in(key, i), s)`, whatever the chunking.
        num_samples: labels sampled per example for fisher="true" (kronfluence samples one;
            more average out the sampling noise of the factors and eigenvalues).
        chunk_size: examples per jitted chunk (memory: one chunk's layer inputs and gradients).
        correct: also fit EK-FAC's eigenvalues (a second pass); False gives K-FAC alone.
        path: a .npz file to reuse or write (None: neither).
        progress: show progress bars over the chunks.

    Returns:
        The `Factors` (`coverage`, `layers`: name -> `LayerFactors`, `fisher`, `num_examples`,
        `metadata`).

    Raises:
        TypeError: `functional` is not a `models.Functional`, or `key` is not a PRNG key.
        ValueError: an unknown `fisher`, "true" without `key`, no supported layer, NaN in params
            or data, a bad `chunk_size`, or factors at `path` fitted otherwise.
        FloatingPointError: a factor came out non-finite (nothing is written).
    """
    check_functional(functional, "kfac.fit")
    check_fisher(fisher, key, functional, "kfac.fit")
    if fisher == "true":
        check_key(key)
    key = key if fisher == "true" else None
    num_samples = check_positive_int("num_samples", num_samples) if fisher == "true" else 1
    chunk_size = check_positive_int("chunk_size", chunk_size)
    check_floating(params)
    check_finite(params, "params")
    n = num_examples(data)
    check_finite(data, "data")
    covered = coverage(functional)
    if not covered.layers:
        raise ValueError("kfac.fit: the model has no supported layer (nnx.Linear, nnx.LinearGeneral, nnx.Embed); "
                         f"every parameter is left out: {[name for name, _ in covered.left_out]}")
    record = metadata(functional, params, data, covered, fisher, key, correct, num_samples)
    if path is not None and Path(path).exists():
        return reuse(Path(path), record, functional)
    layers = covered.layers
    chunk_size = min(chunk_size, n)
    dtype = np.dtype(jnp.result_type(*jax.tree.leaves(params)))

    sample_weight = np.asarray(1.0 / num_samples, dtype)  # sampled labels average; the GGN's columns sum

    def gradients(chunk, indices):
        return _chunk_gradients(functional, layers, fisher, num_samples, params, chunk, indices, key)

    def covariance(totals, inputs, grads, weights):
        return _covariance_sums(layers, totals, inputs, grads, weights, sample_weight)

    zeros = {layer.name: (np.zeros((layer.in_features,) if layer.kind == "embed" else (layer.activation_dim,) * 2,
                                   dtype), np.zeros((layer.out_features,) * 2, dtype)) for layer in layers}
    sums = _accumulate(gradients, covariance, zeros, data, chunk_size, dtype, progress, "K-FAC factors")
    _check_factors_finite(sums, "Kronecker factors")
    eigen = _eigendecompose(layers, sums)  # an embedding's A is diagonal: its eigenbasis is the identity
    fitted = {layer.name: LayerFactors(*jax.device_put(sums[layer.name]), *eigen[layer.name], None)
              for layer in layers}
    if correct:
        bases = {name: (f.activation_vectors, f.gradient_vectors) for name, f in fitted.items()}

        def correction(totals, inputs, grads, weights):
            return _correction_sums(layers, bases, totals, inputs, grads, weights, sample_weight)

        zeros = {layer.name: np.zeros((layer.activation_dim, layer.out_features), dtype) for layer in layers}
        lambdas = _accumulate(gradients, correction, zeros, data, chunk_size, dtype, progress, "EK-FAC eigenvalues")
        _check_factors_finite(lambdas, "EK-FAC eigenvalues")
        fitted = {name: f._replace(corrected=jax.device_put(lambdas[name])) for name, f in fitted.items()}
    factors = Factors(covered, fitted, fisher, n, record)
    if path is not None:
        factors.save(path)
    return factors


# ----------------------------------------------------------------------------- damping and the inverse


class Preconditioner(NamedTuple):
    """The damped inverse of each layer's K-FAC or EK-FAC block, in its Kronecker eigenbasis.

    `inverse_hvp` applies it: V -> Q_A ((Q_A^T V Q_S) * inverse_values) Q_S^T per layer.
    """

    activation_vectors: dict  # name -> Q_A [d_a, d_a] or None (the identity)
    gradient_vectors: dict  # name -> Q_S [d_out, d_out]
    inverse_values: dict  # name -> 1 / (Lambda + damping + l2) [d_a, d_out]
    damping: dict  # name -> the damping used for that layer (a float)


def eigenvalues(layer_factors: LayerFactors, kind: str = "ekfac") -> jax.Array:
    """A layer's curvature eigenvalues in its Kronecker eigenbasis Q_A (x) Q_S.

    Args:
        layer_factors: the layer's `LayerFactors`.
        kind: "ekfac" (the corrected Lambda) or "kfac" (a_i s_j, the products of the factors'
            eigenvalues).

    Returns:
        [d_a, d_out].

    Raises:
        ValueError: an unknown kind, or "ekfac" on factors fitted with correct=False.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "kfac":
        return jnp.outer(layer_factors.activation_values, layer_factors.gradient_values)
    if layer_factors.corrected is None:
        raise ValueError("kind='ekfac' needs the eigenvalue correction: fit with correct=True (the default)")
    return layer_factors.corrected


def _host_eigenvalues(layer_factors: LayerFactors, kind: str) -> np.ndarray:
    if kind == "kfac":
        return np.outer(np.asarray(layer_factors.activation_values), np.asarray(layer_factors.gradient_values))
    return np.asarray(eigenvalues(layer_factors, kind))


def preconditioner(factors: Factors, kind: str = "ekfac", damping: float | None = None,
                   l2: float = 0.0) -> Preconditioner:
    """The damped inverse of every covered layer's block: (Lambda + damping + l2)^-1 in its eigenbasis.

    Args:
        factors: fitted `Factors`.
        kind: "ekfac" or "kfac" (see `eigenvalues`).
        damping: added to each layer's eigenvalues; None means kronfluence's heuristic,
            0.1 x the mean of that layer's eigenvalues.
        l2: the regulariser's curvature, added too (a `Functional`'s `l2`).

    Returns:
        The `Preconditioner`; its `damping` says which damping each layer got.

    Raises:
        ValueError: an unknown kind, a negative or non-finite damping or l2, or eigenvalues
            plus damping that are not positive (raise the damping).
    """
    if damping is not None:
        damping = check_nonnegative("damping", damping)
    l2 = check_nonnegative("l2", l2)
    vectors_a, vectors_s, inverse, used = {}, {}, {}, {}
    for name, layer_factors in factors.layers.items():
        values = np.asarray(_host_eigenvalues(layer_factors, kind))  # on the host: no program per layer shape
        layer_damping = HEURISTIC_DAMPING_SCALE * float(np.mean(values)) if damping is None else damping
        shifted = values + (layer_damping + l2)
        floor = float(np.finfo(values.dtype).tiny)
        if not float(np.min(shifted)) > floor:
            raise ValueError(
                f"kfac: layer {name!r} has eigenvalue + damping + l2 = {float(jnp.min(shifted)):.3g} <= 0 "
                f"(damping {layer_damping:.3g}); raise the damping")
        vectors_a[name] = layer_factors.activation_vectors
        vectors_s[name] = layer_factors.gradient_vectors
        inverse[name] = jax.device_put(1.0 / shifted)  # a transfer: jnp.asarray would compile per shape
        used[name] = layer_damping
    return Preconditioner(vectors_a, vectors_s, inverse, used)


def inverse_hvp(pre: Preconditioner, matrices: dict) -> dict:
    """Apply each layer's damped inverse to its gradient matrices: Q_A ((Q_A^T V Q_S) / (Lambda + damping)) Q_S^T.

    Args:
        pre: the `Preconditioner`.
        matrices: layer name -> [..., d_a, d_out] (e.g. per-example gradients from
            `capture.layer_gradients`); leading axes are batched.

    Returns:
        The same names and shapes, preconditioned.
    """
    out = {}
    for name, v in matrices.items():
        q_a, q_s = pre.activation_vectors[name], pre.gradient_vectors[name]
        rotated = v @ q_s if q_a is None else jnp.swapaxes(q_a, -1, -2) @ v @ q_s
        scaled = rotated * pre.inverse_values[name]
        out[name] = scaled @ q_s.T if q_a is None else q_a @ scaled @ q_s.T
    return out


__all__ = [
    "FISHERS", "KINDS", "Captured", "Coverage", "Factors", "Layer", "LayerFactors", "Preconditioner", "capture",
    "check_factors", "coverage", "differences", "eigenvalues", "example_keys", "fit", "inverse_hvp", "layer_gradients",
    "layer_matrix", "layer_params", "load", "loss_cotangents", "preconditioner", "rotated_gradients",
    "sample_targets", "save", "trace",
]
