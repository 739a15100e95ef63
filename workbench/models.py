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
from workbench.core.tree import check_same_structure

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


class TransformerBlock(nnx.Module):
    """A pre-LayerNorm transformer block: x + attention(norm(x)), then x + MLP(norm(x)).

    The MLP is Linear(d_model -> mlp_ratio * d_model), GELU, Linear back. `TinyTransformer` and
    `workbench.gpt.GPT` stack these blocks; the initialisers default to Flax's own.

    Args:
        d_model: the width of the residual stream (a multiple of `num_heads`).
        num_heads: attention heads (each of width d_model / num_heads).
        mlp_ratio: the MLP's hidden width as a multiple of `d_model`.
        rngs: the Flax NNX random streams drawing the initial params.
        param_dtype: the dtype of the params.
        kernel_init: the initialiser of the query, key, value and MLP-input kernels (None: Flax's
            default).
        residual_init: the initialiser of the two kernels writing into the residual stream
            (attention output, MLP output; None: as `kernel_init`).
    """

    def __init__(self, d_model: int, num_heads: int, mlp_ratio: int = 4, *, rngs: nnx.Rngs, param_dtype=jnp.float32,
                 kernel_init: Callable | None = None, residual_init: Callable | None = None):
        residual_init = residual_init or kernel_init
        inner = {} if kernel_init is None else {"kernel_init": kernel_init}  # absent: Flax's defaults
        outer = {} if residual_init is None else {"kernel_init": residual_init}
        self.norm1 = nnx.LayerNorm(d_model, rngs=rngs, param_dtype=param_dtype)
        self.attn = nnx.MultiHeadAttention(
            num_heads=num_heads, in_features=d_model, decode=False, rngs=rngs, param_dtype=param_dtype,
            **inner, **({} if residual_init is None else {"out_kernel_init": residual_init}),
        )
        self.norm2 = nnx.LayerNorm(d_model, rngs=rngs, param_dtype=param_dtype)
        self.up = nnx.Linear(d_model, mlp_ratio * d_model, rngs=rngs, param_dtype=param_dtype, **inner)
        self.down = nnx.Linear(mlp_ratio * d_model, d_model, rngs=rngs, param_dtype=param_dtype, **outer)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """The block applied to a residual stream.

        Args:
            x: the residual stream [batch, seq_len, d_model].
            mask: the attention mask [batch, 1, seq_len, seq_len] (True where a position may
                attend; `nnx.make_causal_mask`).

        Returns:
            The updated residual stream, shaped as `x`.
        """
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
            [TransformerBlock(d_model, num_heads, rngs=rngs, param_dtype=param_dtype) for _ in range(num_layers)]
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

    A model with non-parameter state (BatchNorm's running statistics, Dropout's RNG streams)
    carries it here: `state` is a pure dict of the non-RNG state (e.g. the batch statistics),
    `train_loss_fn(params, state, batch, key) -> (loss, new_state)` runs the model in training
    mode (batch statistics, dropout drawn from `key`), and the four functions above run it in
    `mode` ("inference": running statistics, no dropout; see `functional`). `stateful_layers`
    names the layers that hold state ("path: Type"). `with_state(state)` is the same model with
    other state, e.g. the running statistics `train.train` returns.
    """

    params: PyTree
    loss_fn: Callable[[PyTree, Any], jax.Array]
    per_example_loss_fn: Callable[[PyTree, Any], jax.Array]
    predict_fn: Callable[[PyTree, jax.Array], jax.Array]
    output_loss_fn: Callable[[jax.Array, jax.Array], jax.Array]
    l2: float
    state: PyTree = None
    train_loss_fn: Callable | None = None
    mode: str = "inference"
    stateful_layers: tuple[str, ...] = ()
    needs_key: bool = False
    split: Any = None

    # One model, one identity: compiled-program caches and jit's static arguments key on it
    # (the fields hold dicts and functions, which a tuple hash cannot take).
    __hash__ = object.__hash__

    def __eq__(self, other):
        return self is other

    def __repr__(self) -> str:
        leaves = jax.tree.leaves(self.params)
        size = sum(int(getattr(a, "size", 1)) for a in leaves)
        loss = getattr(self.output_loss_fn, "__name__", "?")
        held = f", state in {list(self.stateful_layers)}" if self.stateful_layers else ""
        return f"Functional({size} params in {len(leaves)} arrays, loss={loss}, l2={self.l2}, mode={self.mode!r}{held})"

    def module(self, params: PyTree | None = None) -> nnx.Module:
        """The Flax NNX model, rebuilt with `params` in this Functional's `mode`.

        For analyses that need the layers themselves (K-FAC's per-layer factors,
        `workbench.curvature.kfac`): `self.module(params)(x)` computes `predict_fn(params, x)`,
        so a trace through it is a trace of the model. Each call builds a fresh Module; changing
        it changes nothing here.

        Args:
            params: the params pytree (a pure dict like `self.params`); None means `self.params`.

        Returns:
            The NNX Module holding `params` and this Functional's non-parameter state.

        Raises:
            ValueError: the Functional was not made by `models.functional` (no split to rebuild).
        """
        if self.split is None:
            raise ValueError("module() needs a Functional made by models.functional (it rebuilds the NNX model)")
        graphdef = self.split.inference if self.mode == "inference" else self.split.batch_statistics
        return _merge(graphdef, self.split, self.params if params is None else params, self.state)

    def with_state(self, state: PyTree) -> Functional:
        """The same model and params with other non-parameter state (e.g. trained statistics).

        Args:
            state: a pure dict shaped like `self.state` (`train.train(...).state`).

        Returns:
            A `Functional` whose functions evaluate the model with `state`.

        Raises:
            ValueError: `state` does not match this model's state.
        """
        if self.split is None:
            raise ValueError("with_state needs a Functional made by models.functional")
        if state is None:
            raise ValueError("with_state got None: pass the state train.train returned for this Functional "
                             "(result.state)")
        check_same_structure(self.state, state, "the model's state", "the state given")
        return _build(self.split, self.params, self.output_loss_fn, self.l2, self.mode, state)


MODES = ("inference", "batch_statistics")


class _Split(NamedTuple):
    inference: Any  # graph definitions per mode (training flags are static attributes)
    batch_statistics: Any
    training: Any
    param_template: Any
    rng_template: Any
    state_template: Any
    stateful_layers: tuple
    batch_dependent: tuple  # layers whose output mixes examples outside inference mode
    dropout: tuple


_BATCH_DEPENDENT = ("BatchNorm",)  # also a user's own layer of that name


def _describe_state(model: nnx.Module) -> tuple[tuple, tuple, tuple]:
    """("path: Type", ...) of the layers holding non-parameter state, of those whose output
    depends on the batch (batch normalisation) and of those that draw random numbers (Dropout,
    attention with dropout: any layer holding an RNG stream)."""
    stateful, batch_dependent, random = [], [], []
    for path, node in nnx.iter_graph(model):
        if not isinstance(node, nnx.Module) or isinstance(node, (nnx.Rngs, nnx.RngStream)):
            continue
        name = "/".join(map(str, path)) or "(root)"
        label = f"{name}: {type(node).__name__}"
        attributes = vars(node).values()
        draws = isinstance(node, nnx.Dropout) or any(isinstance(v, (nnx.Rngs, nnx.RngStream)) for v in attributes)
        holds = any(isinstance(v, nnx.Variable) and not isinstance(v, nnx.Param) for v in attributes)
        if isinstance(node, nnx.BatchNorm) or type(node).__name__ in _BATCH_DEPENDENT:
            batch_dependent.append(label)
        if draws:
            random.append(label)
        if holds or draws:
            stateful.append(label)
    return tuple(stateful), tuple(batch_dependent), tuple(random)


def _graphdef(model: nnx.Module, **flags):
    copy = nnx.clone(model)
    copy.set_attributes(**flags, raise_if_not_found=False)
    return nnx.split(copy, nnx.Param, nnx.RngState, ...)[0]


def _merge(graphdef, split: _Split, params, state, key=None):
    param_state = jax.tree.map(lambda a: a, split.param_template)
    nnx.replace_by_pure_dict(param_state, params)
    other = jax.tree.map(lambda a: a, split.state_template)
    nnx.replace_by_pure_dict(other, state)
    rngs = jax.tree.map(lambda a: a, split.rng_template)
    if key is not None:  # every RNG stream restarts from this step's key
        leaves, treedef = jax.tree.flatten(nnx.to_pure_dict(rngs))
        fresh = [jax.random.fold_in(key, i) if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)
                 else jnp.zeros_like(a) for i, a in enumerate(leaves)]
        nnx.replace_by_pure_dict(rngs, jax.tree.unflatten(treedef, fresh))
    return nnx.merge(graphdef, param_state, rngs, other)


def _state_of(model: nnx.Module) -> PyTree:
    return nnx.to_pure_dict(nnx.split(model, nnx.Param, nnx.RngState, ...)[3])


def _build(split: _Split, params, output_loss_fn, l2: float, mode: str, state) -> Functional:
    graphdef = split.inference if mode == "inference" else split.batch_statistics

    def predict_fn(params, inputs):
        return _merge(graphdef, split, params, state)(inputs)

    def data_loss(params, batch):
        x, y = batch
        return output_loss_fn(predict_fn(params, x), y)

    if mode == "inference" or not split.batch_dependent:
        per_example_loss_fn = data_loss
    else:
        def per_example_loss_fn(params, batch):
            raise ValueError(
                f"per-example losses are not defined for this model in mode={mode!r}: "
                f"{', '.join(split.batch_dependent)} normalises with the batch's statistics, so one "
                "example's loss depends on the others; use models.functional(model, mode='inference') "
                "(running statistics) for per-example gradients, influence and sketches")

    def objective(params, losses):  # the batch mean + 0.5 * l2 * ||params||^2
        value = jnp.mean(losses)
        return value + 0.5 * l2 * optax.tree.vdot(params, params) if l2 else value

    def loss_fn(params, batch):
        return objective(params, data_loss(params, batch))

    def train_loss_fn(params, state, batch, key):
        model = _merge(split.training, split, params, state, key)
        x, y = batch
        return objective(params, output_loss_fn(model(x), y)), _state_of(model)

    return Functional(params, loss_fn, per_example_loss_fn, predict_fn, output_loss_fn, l2, state,
                      train_loss_fn, mode, split.stateful_layers, bool(jax.tree.leaves(split.rng_template)), split)


def functional(model: nnx.Module, loss: str = "cross_entropy", l2: float = 0.0, *,
               mode: str = "inference") -> Functional:
    """Split `model` once into a params pytree and pure functions of it (see `Functional`).

    The model's non-parameter state is carried, not dropped: batch statistics go to
    `Functional.state`, and `train_loss_fn` runs the model in training mode (batch statistics
    updated, dropout masks drawn from a key: `workbench.train.train` does both inside its
    compiled step and returns the new state). The analysis functions (`loss_fn`,
    `per_example_loss_fn`, `predict_fn`) run the model in `mode`:
    - "inference" (the default, as PyHessian's `model.eval()`): BatchNorm normalises with its
      running statistics and Dropout is off, so the loss is a deterministic function of the
      params and each example's loss depends on that example alone: curvature, influence,
      sketches and spectra are well defined;
    - "batch_statistics": BatchNorm normalises with each batch's statistics (its training-time
      behaviour) and Dropout stays off; curvature of the batch-mean loss is defined, but
      per-example losses are not, and `per_example_loss_fn` refuses, naming the layer.
    The model's own flags (`deterministic`, `use_running_average`) are overridden by `mode`;
    the model object itself is not modified.

    Args:
        model: a Flax NNX Module mapping inputs [n, ...] to outputs [n, ...].
        loss: the per-example loss on outputs, "cross_entropy" (integer labels) or "mse"
            (0.5 squared error).
        l2: the L2 coefficient: `loss_fn` adds 0.5 * l2 * ||params||^2 (>= 0).
        mode: "inference" or "batch_statistics" (see above).

    Returns:
        The `Functional(params, loss_fn, per_example_loss_fn, predict_fn, output_loss_fn, l2,
        state, train_loss_fn, mode, stateful_layers, needs_key, split)`.

    Raises:
        TypeError: `model` is not a Flax NNX Module.
        ValueError: an unknown `loss` or `mode`, or a negative `l2`.
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"models.functional takes a Flax NNX Module, got {type(model).__name__}")
    if loss not in OUTPUT_LOSSES:
        raise ValueError(f"loss must be one of {sorted(OUTPUT_LOSSES)}, got {loss!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    l2 = check_nonnegative("l2", l2)
    _, param_state, rng_state, other = nnx.split(model, nnx.Param, nnx.RngState, ...)
    stateful, batch_dependent, random = _describe_state(model)
    split = _Split(
        inference=_graphdef(model, deterministic=True, use_running_average=True),
        batch_statistics=_graphdef(model, deterministic=True, use_running_average=False),
        training=_graphdef(model, deterministic=False, use_running_average=False),
        param_template=param_state, rng_template=rng_state, state_template=other,
        stateful_layers=stateful, batch_dependent=batch_dependent, dropout=random,
    )
    return _build(split, nnx.to_pure_dict(param_state), OUTPUT_LOSSES[loss], l2, mode, nnx.to_pure_dict(other))


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
