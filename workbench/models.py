"""Small Flax NNX models and the adapter to pure functions of a params pytree.

`functional(model)` splits a Module once (`nnx.split`) into a graph definition and a params
pytree (a plain nested dict), and returns pure `loss_fn(params, batch)`,
`per_example_loss_fn(params, batch)`, `predict_fn(params, inputs)` and the loss on outputs
used by Gauss-Newton products. Algorithms downstream never see a Module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from workbench.core.numerics import check_nonnegative

PyTree = Any
_ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu, "gelu": jax.nn.gelu, "silu": jax.nn.silu}


def _activation(name: str) -> Callable:
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {name!r}")
    return _ACTIVATIONS[name]


class LogisticRegression(nnx.Module):
    """Multinomial logistic regression: one linear layer producing class logits."""

    def __init__(self, in_features: int, num_classes: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.linear = nnx.Linear(
            in_features, num_classes, rngs=rngs, param_dtype=param_dtype,
            kernel_init=nnx.initializers.zeros,
        )

    def __call__(self, x):
        return self.linear(x.reshape(x.shape[0], -1))


class MLP(nnx.Module):
    """Fully connected network: in -> hidden... -> out, with the chosen activation in between."""

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        *,
        activation: str = "tanh",
        rngs: nnx.Rngs,
        param_dtype=jnp.float32,
    ):
        sizes = [in_features, *hidden, out_features]
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs, param_dtype=param_dtype) for a, b in zip(sizes[:-1], sizes[1:])]
        )
        self.activation = activation
        _activation(activation)

    def __call__(self, x):
        act = _activation(self.activation)
        x = x.reshape(x.shape[0], -1)
        for layer in self.layers[:-1]:
            x = act(layer(x))
        return self.layers[-1](x)


class CNN(nnx.Module):
    """Small convnet for 8x8 (or larger) images: two 3x3 conv + average-pool blocks, then a linear head."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        channels: Sequence[int] = (8, 16),
        image_size: int = 8,
        *,
        rngs: nnx.Rngs,
        param_dtype=jnp.float32,
    ):
        chans = [in_channels, *channels]
        self.convs = nnx.List(
            [nnx.Conv(a, b, (3, 3), rngs=rngs, param_dtype=param_dtype) for a, b in zip(chans[:-1], chans[1:])]
        )
        side = image_size
        for _ in channels:
            side = max(side // 2, 1)
        self.head = nnx.Linear(side * side * chans[-1], num_classes, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, x):
        for conv in self.convs:
            x = jax.nn.relu(conv(x))
            if x.shape[1] >= 2:  # 2x2 average pool (flax's avg_pool promotes to float64 under x64)
                b, h, w, c = x.shape
                x = x[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c).mean((2, 4))
        return self.head(x.reshape(x.shape[0], -1))


class _Block(nnx.Module):
    def __init__(self, d_model: int, num_heads: int, *, rngs: nnx.Rngs, param_dtype):
        self.norm1 = nnx.LayerNorm(d_model, rngs=rngs, param_dtype=param_dtype)
        self.attn = nnx.MultiHeadAttention(
            num_heads=num_heads, in_features=d_model, decode=False, rngs=rngs, param_dtype=param_dtype
        )
        self.norm2 = nnx.LayerNorm(d_model, rngs=rngs, param_dtype=param_dtype)
        self.up = nnx.Linear(d_model, 4 * d_model, rngs=rngs, param_dtype=param_dtype)
        self.down = nnx.Linear(4 * d_model, d_model, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, x, mask):
        x = x + self.attn(self.norm1(x), mask=mask)
        return x + self.down(jax.nn.gelu(self.up(self.norm2(x))))


class TinyTransformer(nnx.Module):
    """Causal character-level language model: token + position embeddings, pre-norm blocks, logits.

    Input: int tokens [batch, seq_len]; output: logits [batch, seq_len, vocab_size].
    """

    def __init__(
        self,
        vocab_size: int,
        seq_len: int,
        d_model: int = 32,
        num_heads: int = 2,
        num_layers: int = 1,
        *,
        rngs: nnx.Rngs,
        param_dtype=jnp.float32,
    ):
        self.embed = nnx.Embed(vocab_size, d_model, rngs=rngs, param_dtype=param_dtype)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (seq_len, d_model), param_dtype))
        self.blocks = nnx.List(
            [_Block(d_model, num_heads, rngs=rngs, param_dtype=param_dtype) for _ in range(num_layers)]
        )
        self.norm = nnx.LayerNorm(d_model, rngs=rngs, param_dtype=param_dtype)
        self.head = nnx.Linear(d_model, vocab_size, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, tokens):
        t = tokens.shape[1]
        x = self.embed(tokens) + self.pos[...][:t]
        mask = nnx.make_causal_mask(tokens)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.norm(x))


# ----------------------------------------------------------------------------- losses on outputs


def cross_entropy(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy with integer labels; averaged over any sequence axes.

    Args:
        outputs: logits [n, ..., num_classes].
        targets: integer labels [n, ...] (the logits' shape without the class axis).

    Returns:
        [n] losses, each the mean over the example's positions (one position for a classifier).
    """
    losses = optax.softmax_cross_entropy_with_integer_labels(outputs, targets)
    return losses.reshape(losses.shape[0], -1).mean(axis=1)


def squared_error(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example 0.5 * ||output - target||^2.

    Args:
        outputs: predictions [n, ...]; a trailing axis of size 1 is dropped when `targets` has
            one axis fewer (a scalar-output regressor against [n] targets).
        targets: regression targets [n, ...].

    Returns:
        [n] losses, half the squared error summed over each example's entries.
    """
    if outputs.ndim == targets.ndim + 1 and outputs.shape[-1] == 1:
        outputs = outputs[..., 0]
    diff = (outputs - targets).reshape(outputs.shape[0], -1)
    return 0.5 * jnp.sum(diff**2, axis=1)


OUTPUT_LOSSES = {"cross_entropy": cross_entropy, "mse": squared_error}


class Functional(NamedTuple):
    """A model as pure functions of a params pytree (a nested dict of arrays).

    - `loss_fn(params, batch)`: mean per-example loss + 0.5 * l2 * ||params||^2 (what training
      and curvature use);
    - `per_example_loss_fn(params, batch)` -> [n], without the L2 term;
    - `predict_fn(params, inputs)` -> outputs (logits for classifiers);
    - `output_loss_fn(outputs, targets)` -> [n], the loss on outputs (for Gauss-Newton products).
    `batch` is a `workbench.data.Dataset(x, y)` or any (x, y) pair.
    """

    params: PyTree
    loss_fn: Callable[[PyTree, Any], jax.Array]
    per_example_loss_fn: Callable[[PyTree, Any], jax.Array]
    predict_fn: Callable[[PyTree, jax.Array], jax.Array]
    output_loss_fn: Callable[[jax.Array, jax.Array], jax.Array]
    l2: float


def functional(model: nnx.Module, loss: str = "cross_entropy", l2: float = 0.0) -> Functional:
    """Split `model` once into a params pytree and pure functions of it (see `Functional`).

    The model's non-parameter state (batch statistics, RNG streams) is captured at the split and
    merged back, unchanged, in every `predict_fn` call: analyses run the model as it was.

    Args:
        model: a Flax NNX Module mapping inputs [n, ...] to outputs [n, ...].
        loss: the per-example loss on outputs, "cross_entropy" (integer labels) or "mse"
            (0.5 squared error).
        l2: the L2 coefficient: `loss_fn` adds 0.5 * l2 * ||params||^2 (>= 0).

    Returns:
        The `Functional(params, loss_fn, per_example_loss_fn, predict_fn, output_loss_fn, l2)`.

    Raises:
        ValueError: an unknown `loss` or a negative `l2`.
    """
    if loss not in OUTPUT_LOSSES:
        raise ValueError(f"loss must be one of {sorted(OUTPUT_LOSSES)}, got {loss!r}")
    l2 = check_nonnegative("l2", l2)
    graphdef, param_state, rest = nnx.split(model, nnx.Param, ...)
    params = nnx.to_pure_dict(param_state)
    output_loss_fn = OUTPUT_LOSSES[loss]

    def predict_fn(params, inputs):
        state = jax.tree.map(lambda a: a, param_state)
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(graphdef, state, rest)(inputs)

    def per_example_loss_fn(params, batch):
        x, y = batch
        return output_loss_fn(predict_fn(params, x), y)

    def loss_fn(params, batch):
        value = jnp.mean(per_example_loss_fn(params, batch))
        if l2:
            value = value + 0.5 * l2 * optax.tree.vdot(params, params)
        return value

    return Functional(params, loss_fn, per_example_loss_fn, predict_fn, output_loss_fn, l2)


def accuracy(predict_fn: Callable, params: PyTree, data) -> float:
    """Fraction of examples whose arg-max output equals the integer label.

    Args:
        predict_fn: `predict_fn(params, x) -> logits [n, num_classes]`.
        params: the model's params.
        data: an (x, y) pair or `Dataset` with integer labels y [n].

    Returns:
        The accuracy in [0, 1], as a Python float.
    """
    x, y = data
    logits = predict_fn(params, x)
    predicted = jnp.argmax(logits, axis=-1)
    return float(jnp.mean(predicted == y.astype(predicted.dtype)))
