"""Linear self-attention (no softmax) over in-context regression tokens, in Flax NNX, and the
weights that make it run gradient descent.

Layer l updates every token e_j = (x_j, y_j) with the context tokens i = 1..N (the query does not
attend to itself):

    e_j <- e_j + P W_V sum_i e_i (W_K e_i . W_Q e_j)        [then, optionally, a ReLU MLP]

Only the products W_K^T W_Q ("kq") and P W_V ("pv") matter; `effective_weights` returns them.
The construction of von Oswald et al. (W_K = W_Q = [[I,0],[0,0]], W_V = [[0,0],[w0,-1]],
P = eta/N I) turns the query's last entry into minus the prediction of one GD step from w0 on
L(w) = 1/(2N) sum_i (w.x_i - y_i)^2; K such layers run K steps. GD++ adds -gamma I to W_V's
input block, which also moves every x_j to (I - gamma X^T X / N) x_j (a curvature correction).

The model is split at the boundary: `init_params` returns a plain nested dict, and `forward`,
`predict` and `layer_predictions` are pure functions of it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from workbench.core.numerics import check_positive_int

PyTree = dict


class LSALayer(nnx.Module):
    def __init__(self, size: int, *, mlp: bool, mlp_width: int, init_scale: float, rngs: nnx.Rngs, param_dtype):
        init = lambda shape: init_scale * jax.random.normal(rngs.params(), shape, param_dtype)
        self.query = nnx.Param(init((size, size)))
        self.key = nnx.Param(init((size, size)))
        self.value = nnx.Param(init((size, size)))
        self.projection = nnx.Param(init((size, size)))
        if mlp:
            self.mlp_in = nnx.Param(init((mlp_width, size)))
            self.mlp_in_bias = nnx.Param(jnp.zeros((mlp_width,), param_dtype))
            self.mlp_out = nnx.Param(init((size, mlp_width)))


class LinearSelfAttention(nnx.Module):
    """`num_layers` linear self-attention layers on tokens of size dim + 1, each optionally
    followed by a residual ReLU MLP of width `mlp_width` (default 4 (dim + 1)). Weights start as
    N(0, init_scale^2) entries (small, as in the paper's training)."""

    def __init__(self, dim: int, *, num_layers: int = 1, mlp: bool = False, mlp_width: int | None = None,
                 init_scale: float = 0.002, rngs: nnx.Rngs, param_dtype=jnp.float32):
        size = check_positive_int("dim", dim) + 1
        num_layers = check_positive_int("num_layers", num_layers)
        width = 4 * size if mlp_width is None else mlp_width
        self.layers = nnx.List([LSALayer(size, mlp=mlp, mlp_width=width, init_scale=init_scale, rngs=rngs,
                                         param_dtype=param_dtype) for _ in range(num_layers)])

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return forward(nnx.to_pure_dict(nnx.state(self, nnx.Param)), tokens).tokens


def init_params(key: jax.Array, dim: int, *, num_layers: int = 1, mlp: bool = False, mlp_width: int | None = None,
                init_scale: float = 0.002, dtype=jnp.float32) -> PyTree:
    """Initial parameters of `LinearSelfAttention` as a plain nested dict (drawn from `key`).

    Args:
        key: the PRNG key the weights are drawn from.
        dim: the input dimension d (tokens have size d + 1).
        num_layers: the number of layers L.
        mlp: whether each layer ends with a residual ReLU MLP.
        mlp_width: the MLP's hidden width (default None: 4 (d + 1)).
        init_scale: the standard deviation of the initial weights.
        dtype: the parameter dtype (default float32).

    Returns:
        {"layers": {l: {"query", "key", "value", "projection"[, "mlp_in", "mlp_in_bias",
        "mlp_out"]}}}, each weight [d + 1, d + 1] (MLP weights [width, d + 1] / [d + 1, width]).
    """
    model = LinearSelfAttention(dim, num_layers=num_layers, mlp=mlp, mlp_width=mlp_width, init_scale=init_scale,
                                rngs=nnx.Rngs(params=key), param_dtype=dtype)
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _layers(params: PyTree) -> list[dict]:
    layers = params["layers"]
    return [layers[i] for i in sorted(layers)] if isinstance(layers, dict) else list(layers)


def num_layers(params: PyTree) -> int:
    """The number of layers of LSA parameters.

    Args:
        params: LSA parameters (`init_params`, `gd_weights`, ...).

    Returns:
        The number of layers L.
    """
    return len(_layers(params))


def token_size(params: PyTree) -> int:
    """The token size d + 1 the parameters read.

    Args:
        params: LSA parameters.

    Returns:
        The token size d + 1.
    """
    return int(_layers(params)[0]["query"].shape[0])


def has_mlp(params: PyTree) -> bool:
    """Whether any layer of the parameters has an MLP.

    Args:
        params: LSA parameters.

    Returns:
        True when some layer carries "mlp_in" weights.
    """
    return any("mlp_in" in layer for layer in _layers(params))


def check_tokens(params: PyTree, tokens: jax.Array, context_length: int | None = None) -> None:
    """Raise a ValueError when `tokens` ([B, N + 1, d + 1]) do not fit the model's dimension, or
    (when given) the context length the model was built or trained for.

    Args:
        params: LSA parameters.
        tokens: the token sequences [B, N + 1, d + 1].
        context_length: the context length N the model expects (default None: any N >= 1).

    Raises:
        ValueError: naming the mismatch.
    """
    size = token_size(params)
    if tokens.ndim != 3:
        raise ValueError(f"tokens must have shape [tasks, context_length + 1, dim + 1], got {tokens.shape}")
    if tokens.shape[-1] != size:
        raise ValueError(f"tokens have size {tokens.shape[-1]} (dim {tokens.shape[-1] - 1}) but the model was "
                         f"built for dim {size - 1} (token size {size})")
    if tokens.shape[1] < 2:
        raise ValueError(f"tokens need at least one context token and the query, got length {tokens.shape[1]}")
    if context_length is not None and tokens.shape[1] != context_length + 1:
        raise ValueError(f"tokens hold {tokens.shape[1] - 1} context pairs but the model was built for "
                         f"context_length={context_length}")


def _layer(layer: dict, e: jax.Array) -> jax.Array:
    ctx = e[:, :-1]
    k = ctx @ layer["key"].T
    v = ctx @ layer["value"].T
    q = e @ layer["query"].T
    scores = jnp.einsum("bjd,bid->bji", q, k)
    e = e + jnp.einsum("bji,bid->bjd", scores, v) @ layer["projection"].T
    if "mlp_in" in layer:
        h = jax.nn.relu(e @ layer["mlp_in"].T + layer["mlp_in_bias"])
        e = e + h @ layer["mlp_out"].T
    return e


class Forward(NamedTuple):
    """A forward pass: the tokens after the last layer and the read-out after each layer."""

    tokens: jax.Array  # [B, N + 1, d + 1]
    predictions: jax.Array  # [L, B]


@jax.jit
def forward(params: PyTree, tokens: jax.Array) -> Forward:
    """(final tokens [B, N + 1, d + 1], predictions after each layer [L, B]); a prediction is minus
    the query token's last entry.

    Args:
        params: LSA parameters.
        tokens: the token sequences [B, N + 1, d + 1] (`tasks.tokens`).

    Returns:
        `Forward(tokens, predictions)`: the tokens after the last layer [B, N + 1, d + 1] and
        the read-outs after each layer [L, B].

    Raises:
        ValueError: when the tokens' size does not match the model.
    """
    check_tokens(params, tokens)
    e, preds = tokens, []
    for layer in _layers(params):
        e = _layer(layer, e)
        preds.append(-e[:, -1, -1])
    return Forward(e, jnp.stack(preds))


def predict(params: PyTree, tokens: jax.Array) -> jax.Array:
    """The model's predictions at the queries, [B].

    Args:
        params: LSA parameters.
        tokens: the token sequences [B, N + 1, d + 1].

    Returns:
        Minus the query token's last entry after the last layer, [B].
    """
    return forward(params, tokens).predictions[-1]


def layer_predictions(params: PyTree, tokens: jax.Array) -> jax.Array:
    """The read-out (minus the query's last entry) after each layer, [L, B].

    Args:
        params: LSA parameters.
        tokens: the token sequences [B, N + 1, d + 1].

    Returns:
        The read-outs [L, B].
    """
    return forward(params, tokens).predictions


class EffectiveWeights(NamedTuple):
    """Per-layer products that determine a linear self-attention layer: kq = W_K^T W_Q and
    pv = P W_V, each [L, d + 1, d + 1]."""

    kq: jax.Array
    pv: jax.Array


def effective_weights(params: PyTree) -> EffectiveWeights:
    """The products that determine each attention layer: kq = W_K^T W_Q and pv = P W_V.

    Args:
        params: LSA parameters (MLP weights, if any, are ignored).

    Returns:
        `EffectiveWeights(kq, pv)`, each [L, d + 1, d + 1].
    """
    layers = _layers(params)
    return EffectiveWeights(jnp.stack([lay["key"].T @ lay["query"] for lay in layers]),
                            jnp.stack([lay["projection"] @ lay["value"] for lay in layers]))


def from_effective(weights: EffectiveWeights) -> PyTree:
    """Attention-only parameters realising the given products (W_K = P = I, W_Q = kq, W_V = pv).

    Args:
        weights: `EffectiveWeights` [L, d + 1, d + 1] each.

    Returns:
        LSA parameters with those products.
    """
    eye = jnp.eye(weights.kq.shape[-1], dtype=weights.kq.dtype)
    return {"layers": {i: {"query": kq, "key": eye, "value": pv, "projection": eye}
                       for i, (kq, pv) in enumerate(zip(weights.kq, weights.pv))}}


def canonical_scale(weights: EffectiveWeights) -> EffectiveWeights:
    """Remove the kq -> c kq, pv -> pv / c symmetry: scale each layer so the mean diagonal of kq's
    input block is 1 (the construction's normalisation). Layers whose block is ~0 are left as they are.

    Args:
        weights: `EffectiveWeights` [L, d + 1, d + 1] each.

    Returns:
        The rescaled `EffectiveWeights` (the same model).
    """
    d = weights.kq.shape[-1] - 1
    c = jnp.trace(weights.kq[:, :d, :d], axis1=-2, axis2=-1) / d
    c = jnp.where(jnp.abs(c) > 1e-12, c, 1.0)
    return EffectiveWeights(weights.kq / c[:, None, None], weights.pv * c[:, None, None])


def _check_eta(name, values, count):
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, count)
    if arr.size != count or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be one finite number or {count} of them, got {values!r}")
    return arr


def gd_weights(dim: int, context_length: int, eta: float, *, num_layers: int = 1, w0=None,
               dtype=jnp.float32) -> PyTree:
    """The construction: W_K = W_Q = [[I,0],[0,0]], W_V = [[0,0],[w0,-1]], P = (eta/N) I in every
    layer, so that K layers on `tokens(tasks, w0)` predict like K GD steps of size eta from w0.

    Args:
        dim: the input dimension d.
        context_length: the context length N (P carries 1/N).
        eta: the GD step size, one number or one per layer.
        num_layers: the number of layers K (= GD steps).
        w0: the GD start point [d] (default None: zero).
        dtype: the parameter dtype (default float32).

    Returns:
        LSA parameters (attention only).

    Raises:
        ValueError: if `eta` or `w0` does not fit.
    """
    etas = _check_eta("eta", eta, num_layers)
    size = dim + 1
    kq = jnp.zeros((size, size), dtype).at[:dim, :dim].set(jnp.eye(dim, dtype=dtype))
    if w0 is not None and np.shape(w0) not in ((dim,), (1, dim)):
        raise ValueError(f"w0 must have shape ({dim},) to match dim={dim}, got {np.shape(w0)}")
    w0 = jnp.zeros((dim,), dtype) if w0 is None else jnp.asarray(w0, dtype).reshape(dim)
    value = jnp.zeros((size, size), dtype).at[dim, :dim].set(w0).at[dim, dim].set(-1.0)
    return {"layers": {i: {"query": kq, "key": kq, "value": value,
                           "projection": jnp.asarray(e / context_length, dtype) * jnp.eye(size, dtype=dtype)}
                       for i, e in enumerate(etas)}}


def gdpp_weights(dim: int, context_length: int, etas, gammas, *, dtype=jnp.float32) -> PyTree:
    """The K-layer GD++ construction (K = len(etas)): layer k moves y_j by one GD step of size
    etas[k] and every input to (I - gammas[k] X^T X / N) x_j. W_K = W_Q = [[I,0],[0,0]],
    W_V = [[-I,0],[0,-1]], P = diag(gammas[k] I, etas[k]) / N.

    Args:
        dim: the input dimension d.
        context_length: the context length N.
        etas: the GD step of each layer [K].
        gammas: the input-transform strength of each layer, one number or [K].
        dtype: the parameter dtype (default float32).

    Returns:
        LSA parameters (attention only).

    Raises:
        ValueError: if `etas` or `gammas` is not finite or has the wrong length.
    """
    etas = np.asarray(etas, dtype=np.float64).reshape(-1)
    gammas = _check_eta("gammas", gammas, etas.size)
    etas = _check_eta("etas", etas, etas.size)
    size = dim + 1
    kq = jnp.zeros((size, size), dtype).at[:dim, :dim].set(jnp.eye(dim, dtype=dtype))
    value = -jnp.eye(size, dtype=dtype)
    layers = {}
    for i, (e, g) in enumerate(zip(etas, gammas)):
        p = jnp.diag(jnp.concatenate([jnp.full((dim,), g / context_length, dtype),
                                      jnp.full((1,), e / context_length, dtype)]))
        layers[i] = {"query": kq, "key": kq, "value": value, "projection": p}
    return {"layers": layers}
