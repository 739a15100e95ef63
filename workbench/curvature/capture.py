"""Each layer's inputs and the gradients of the loss with respect to its outputs, per example.

K-FAC (and its descendants: EK-FAC, LoGra) never forms per-example parameter gradients: a
linear layer y = x W + b has the per-example gradient

    G_n = sum_t a_{n,t} g_{n,t}^T,    a = [x, 1] (the bias as an extra input),  g = dloss_n / dy,

summed over the positions t of a sequence, so its inputs `a` and output gradients `g` carry all
of it. `capture` records both for every supported layer of a `models.Functional` in one forward
and one backward pass. While the model is traced, the layer classes' `__call__` is wrapped (a
context manager, undone on exit): each covered layer records its input and adds a zero
"perturbation" array to its output; the gradient of the summed per-example losses with respect
to the perturbations is each example's output gradient (examples do not mix in inference mode).

Supported layers, named by their NNX path ("blocks/0/up"):
- `nnx.Linear`: kernel [d_in, d_out] and bias [d_out] (a = [x, 1]);
- `nnx.LinearGeneral` contracting its trailing axes (the query/key/value/out projections of
  `nnx.MultiHeadAttention`): its in- and out-feature axes are flattened, kernel
  [*in, *out] -> [prod in, prod out];
- `nnx.Embed` (lookups, not `attend`): the input is the one-hot of the token, so a is a unit
  vector and E[a a^T] is diagonal (token frequencies).
A layer called several times (shared weights) contributes each call's positions. Every other
parameter (LayerNorm scales, a bare `nnx.Param` such as position embeddings, an unsupported
layer) is listed by `coverage` with the reason it is left out; nothing is dropped silently.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from workbench.curvature.fisher_labels import check_fisher, example_keys, loss_cotangents
from workbench.models import Functional

PyTree = Any
_NORMS = ("LayerNorm", "RMSNorm", "BatchNorm", "GroupNorm")


class Layer(NamedTuple):
    """A layer K-FAC covers: where it is and which params it holds.

    `weight` and `bias` are key paths into the params dict. The layer's per-example gradient is
    a matrix [activation_dim, out_features]: rows for the inputs (for an embedding, the
    vocabulary), then a row for the bias.
    """

    name: str  # its NNX path, "blocks/0/up"
    kind: str  # "linear" (nnx.Linear, nnx.LinearGeneral) or "embed"
    weight: tuple  # key path of the kernel (embedding table) in the params dict
    bias: tuple | None  # key path of the bias, or None
    in_features: int  # inputs contracted (prod of the in-feature axes; the vocabulary size)
    out_features: int  # outputs (prod of the out-feature axes)
    weight_shape: tuple  # the kernel's (table's) own shape

    @property
    def activation_dim(self) -> int:
        """Rows of the layer's gradient matrix: the inputs, plus one for the bias."""
        return self.in_features + (self.bias is not None)


class Coverage(NamedTuple):
    """The layers K-FAC covers and every parameter it leaves out, with the reason."""

    layers: tuple[Layer, ...]
    left_out: tuple[tuple[str, str], ...]  # (param path "norm/scale", why it is not covered)

    @property
    def names(self) -> tuple[str, ...]:
        """The covered layers' paths."""
        return tuple(layer.name for layer in self.layers)


class Captured(NamedTuple):
    """What `capture` records for each covered layer (keyed by its path), per example.

    `inputs[name]` is [n, P, activation_dim] (a trailing 1 for the bias), or the int tokens
    [n, P] of an embedding; `output_grads[name]` is [n, P, out_features], the gradient of
    example n's loss with respect to the layer's output at each of its P positions (1 for a
    classifier's dense layer, the sequence length in a transformer).
    """

    inputs: dict[str, jax.Array]
    output_grads: dict[str, jax.Array]
    outputs: jax.Array  # the model's outputs [n, ...]
    losses: jax.Array  # [n] per-example losses at the labels used


def _path_name(path) -> str:
    return "/".join(str(p) for p in path)


def _kind(node) -> tuple[str | None, str]:
    """("linear" | "embed" | None, why not) for one NNX module."""
    if isinstance(node, nnx.Embed):
        return "embed", ""
    if isinstance(node, nnx.LinearGeneral):
        if node.batch_axis:
            return None, "LinearGeneral with batch axes (a kernel per batch index): not a K-FAC layer"
        if node.dot_general is not None or node.dot_general_cls is not None:
            return None, "LinearGeneral with its own dot_general: not covered"
        return "linear", ""
    if isinstance(node, nnx.Linear):
        if node.dot_general is not jax.lax.dot_general:
            return None, "Linear with its own dot_general: not covered"
        return "linear", ""
    return None, ""


def _describe(node, path, params: dict) -> Layer | None:
    kind, _ = _kind(node)
    prefix = tuple(path)
    if kind == "embed":
        table = _lookup(params, prefix + ("embedding",))
        if table is None:
            return None
        return Layer(_path_name(path), "embed", prefix + ("embedding",), None, int(table.shape[0]),
                     int(table.shape[1]), tuple(table.shape))
    kernel = _lookup(params, prefix + ("kernel",))
    if kernel is None:
        return None
    bias = prefix + ("bias",) if _lookup(params, prefix + ("bias",)) is not None else None
    if isinstance(node, nnx.LinearGeneral):
        num_in = len(node.in_features)
        d_in, d_out = math.prod(kernel.shape[:num_in]), math.prod(kernel.shape[num_in:])
    else:
        d_in, d_out = kernel.shape
    return Layer(_path_name(path), "linear", prefix + ("kernel",), bias, int(d_in), int(d_out), tuple(kernel.shape))


def _lookup(params: dict, keys: tuple):
    node = params
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            return None
        node = node[k]
    return node


def check_functional(functional, caller: str) -> None:
    """Refuse anything but a `models.Functional` made by `models.functional`, or one whose examples mix.

    Args:
        functional: what was passed as the model.
        caller: the public function asking, named in errors.

    Raises:
        TypeError: not a `Functional` with a split (a plain loss function has no layers).
        ValueError: a batch-dependent layer (BatchNorm with batch statistics) outside inference mode.
    """
    if not isinstance(functional, Functional) or functional.split is None:
        raise TypeError(
            f"{caller} needs the model as a workbench.models.Functional made by models.functional(nnx_model, "
            f"loss=...): it reads the model's layers; got {type(functional).__name__}. A plain loss_fn(params, "
            "batch) has no layers to factor")
    if functional.mode != "inference" and functional.split.batch_dependent:
        raise ValueError(
            f"{caller}: {', '.join(functional.split.batch_dependent)} normalises with the batch's statistics in "
            f"mode={functional.mode!r}, so one example's gradient depends on the others; use "
            "models.functional(model, mode='inference')")


def coverage(functional: Functional) -> Coverage:
    """The layers K-FAC covers in `functional`'s model, and every parameter it leaves out.

    Args:
        functional: the model, a `models.Functional` made by `models.functional`.

    Returns:
        `Coverage(layers, left_out)`: the supported layers, sorted by path, and
        (param path, reason) for each parameter no covered layer holds.

    Raises:
        TypeError: `functional` is not a `models.Functional` made by `models.functional`.
    """
    check_functional(functional, "kfac.coverage")
    module = functional.module()
    params = functional.params
    layers, owners, reasons = [], {}, {}
    for path, node in nnx.iter_graph(module):
        if not isinstance(node, nnx.Module):
            continue
        owners[tuple(path)] = type(node).__name__
        kind, why = _kind(node)
        if why:
            reasons[tuple(path)] = why
        layer = _describe(node, path, params) if kind else None
        if layer is not None:
            layers.append(layer)
    held = {layer.weight for layer in layers} | {layer.bias for layer in layers if layer.bias is not None}
    left_out = []
    for key_path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = tuple(getattr(k, "key", getattr(k, "idx", k)) for k in key_path)
        if keys in held:
            continue
        owner = max((p for p in owners if keys[: len(p)] == p), key=len, default=())
        kind = owners.get(owner, "the model")
        if owner in reasons:
            why = reasons[owner]
        elif kind in _NORMS:
            why = f"{kind}: a per-feature scale or shift, not a matrix product (no K-FAC factors)"
        else:
            why = (f"held by {kind} at {_path_name(owner) or '(root)'}: not a layer K-FAC covers "
                   "(nnx.Linear, nnx.LinearGeneral, nnx.Embed)")
        left_out.append((_path_name(keys), why))
    return Coverage(tuple(sorted(layers, key=lambda layer: layer.name)), tuple(left_out))


# ----------------------------------------------------------------------------- recording a forward pass


class _Recorder:
    """Collects each covered layer's inputs (one entry per call) and adds its perturbation."""

    def __init__(self, names: dict[int, str], perturbations: dict | None):
        self.names = names
        self.perturbations = perturbations
        self.inputs: dict[str, list] = defaultdict(list)
        self.outputs: dict[str, list] = defaultdict(list)

    def __call__(self, layer, inputs, outputs):
        name = self.names.get(id(layer))
        if name is None:
            return outputs
        if isinstance(layer, nnx.LinearGeneral):
            axes = tuple(a % inputs.ndim for a in layer.axis)
            trailing = tuple(range(inputs.ndim - len(axes), inputs.ndim))
            if axes != trailing:
                raise ValueError(f"kfac: the LinearGeneral {name!r} contracts axes {layer.axis} of a {inputs.ndim}-d "
                                 "input, not its trailing axes; K-FAC covers only trailing contractions")
        call = len(self.inputs[name])
        self.inputs[name].append(inputs)
        if self.perturbations is not None:
            outputs = outputs + self.perturbations[name][call].astype(outputs.dtype)
        self.outputs[name].append(outputs)
        return outputs


_ACTIVE = threading.local()
_WRAPPED = (nnx.Linear, nnx.LinearGeneral, nnx.Embed)


def _recording_call(original: Callable) -> Callable:
    @functools.wraps(original)
    def call(self, inputs, *args, **kwargs):
        outputs = original(self, inputs, *args, **kwargs)
        recorder = getattr(_ACTIVE, "recorder", None)
        return outputs if recorder is None else recorder(self, inputs, outputs)

    return call


def _refusing_attend(original: Callable) -> Callable:
    @functools.wraps(original)
    def attend(self, query, *args, **kwargs):
        recorder = getattr(_ACTIVE, "recorder", None)
        name = None if recorder is None else recorder.names.get(id(self))
        if name is not None:  # tied output weights: a part of the table's gradient no capture sees
            raise ValueError(f"kfac: the embedding {name!r} is also used by Embed.attend (output weights tied to "
                             "the input embedding), a use K-FAC's capture does not cover; pass layers without it")
        return original(self, query, *args, **kwargs)

    return attend


@contextlib.contextmanager
def _recording(recorder: _Recorder):
    """Wrap the supported layer classes' `__call__` (and refuse `Embed.attend` on a recorded table)
    while `recorder` is active, then restore them."""
    if getattr(_ACTIVE, "recorder", None) is not None:
        raise RuntimeError("kfac: a layer capture is already running in this thread (captures do not nest)")
    originals = {cls: cls.__dict__["__call__"] for cls in _WRAPPED}
    attend = nnx.Embed.__dict__["attend"]
    try:
        for cls, original in originals.items():
            cls.__call__ = _recording_call(original)
        nnx.Embed.attend = _refusing_attend(attend)
        _ACTIVE.recorder = recorder
        yield recorder
    finally:
        _ACTIVE.recorder = None
        nnx.Embed.attend = attend
        for cls, original in originals.items():
            cls.__call__ = original


def _forward(functional: Functional, names: frozenset, params, x, perturbations):
    """The model's outputs on `x`, and the recorder holding the covered layers' inputs."""
    module = functional.module(params)
    ids = {id(node): _path_name(path) for path, node in nnx.iter_graph(module)
           if isinstance(node, _WRAPPED) and _path_name(path) in names}
    recorder = _Recorder(ids, perturbations)
    with _recording(recorder):
        outputs = module(x)
    return outputs, recorder


def _flatten_calls(layer: Layer, calls: list, n: int, dtype, what: str) -> jax.Array:
    """One layer's per-call arrays as [n, P, features] (inputs: a 1 appended for the bias; tokens [n, P])."""
    parts = []
    for a in calls:
        if a.ndim < 1 or a.shape[0] != n:
            raise ValueError(f"kfac: the {what} of layer {layer.name!r} have shape {a.shape}, not a leading example "
                             f"axis of {n}: K-FAC needs each layer applied to the examples separately")
        if layer.kind == "embed" and what == "inputs":
            parts.append(a.reshape(n, -1))
            continue
        features = layer.in_features if what == "inputs" else layer.out_features
        a = a.reshape(n, -1, features).astype(dtype)
        if what == "inputs" and layer.bias is not None:
            a = jnp.concatenate([a, jnp.ones(a.shape[:-1] + (1,), dtype)], axis=-1)
        parts.append(a)
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)


def trace(functional: Functional, layers: tuple[Layer, ...], params, x):
    """Forward pass recording `layers`' inputs, and the pullback to their output gradients.

    The building block of `capture` (and of K-FAC's exact-GGN fits): any cotangent of the
    model's outputs, e.g. the gradient of each example's loss or a column of the square root of
    its output Hessian, pulls back to every covered layer's output gradient [n, P, out_features].

    Args:
        functional: the model (`models.Functional`).
        layers: the layers to record (`coverage(functional).layers` or a subset).
        params: the params pytree.
        x: the model inputs [n, ...].

    Returns:
        (outputs [n, ...], inputs {name: [n, P, activation_dim] or int tokens [n, P]},
        pullback(cotangent shaped like outputs) -> {name: [n, P, out_features]}).

    Raises:
        ValueError: a layer is applied to something without the examples' leading axis, or
            a covered layer was never called by the model's forward pass.
    """
    names = frozenset(layer.name for layer in layers)
    n = jax.tree.leaves(x)[0].shape[0]
    dtype = jnp.result_type(*jax.tree.leaves(params))
    shapes = {}

    def outputs_only(params, x):
        out, recorder = _forward(functional, names, params, x, None)
        return out, dict(recorder.outputs)

    _, out_shapes = jax.eval_shape(outputs_only, params, x)
    missing = sorted(names - set(out_shapes))
    if missing:
        raise ValueError(f"kfac: the covered layer(s) {missing} were not called by the model's forward pass "
                         "(through nnx.Linear / LinearGeneral / Embed __call__); pass layers without them")
    for name, calls in out_shapes.items():
        shapes[name] = [jnp.zeros(s.shape, s.dtype) for s in calls]

    def perturbed(perturbations):
        out, recorder = _forward(functional, names, params, x, perturbations)
        return out, dict(recorder.inputs)

    outputs, vjp, raw_inputs = jax.vjp(perturbed, shapes, has_aux=True)
    by_name = {layer.name: layer for layer in layers}
    inputs = {name: _flatten_calls(by_name[name], raw_inputs[name], n, dtype, "inputs") for name in sorted(names)}

    def pullback(cotangent):
        grads = vjp(cotangent.astype(outputs.dtype))[0]
        return {name: _flatten_calls(by_name[name], grads[name], n, dtype, "output gradients") for name in sorted(names)}

    return outputs, inputs, pullback


def capture(functional: Functional, params, batch, *, fisher: str = "empirical", key=None,
            layers: tuple[Layer, ...] | None = None) -> Captured:
    """Every covered layer's inputs and the gradients of each example's loss at its outputs.

    One forward and one backward pass over the batch; no per-example parameter gradient is
    formed. The per-example gradient of a layer's weights is rebuilt by `layer_gradients`:
    G_n = sum_t a_{n,t} g_{n,t}^T. Works under `jax.jit` (the functional and layers static).

    Args:
        functional: the model, a `models.Functional` (inference mode, or a model without
            batch-dependent layers).
        params: the params pytree.
        batch: an (x, y) pair (or `Dataset`) with a leading example axis [n, ...].
        fisher: whose labels the loss is taken at: "empirical" (the data labels `y`) or "true"
            (labels sampled from the model's predictive distribution, one per example from
            `key`).
        key: `jax.random` key for fisher="true"; example i draws from `fold_in(key, i)`.
        layers: the layers to record; None means `coverage(functional).layers`.

    Returns:
        `Captured(inputs, output_grads, outputs, losses)`, keyed by layer path.

    Raises:
        TypeError: `functional` is not a `models.Functional`.
        ValueError: an unknown `fisher` ("ggn" is a fit option, not a capture), "true" without a
            key, or a model with no supported layer.
    """
    check_functional(functional, "kfac.capture")
    if fisher == "ggn":
        raise ValueError("kfac.capture: fisher='ggn' has one output gradient per output coordinate, not per "
                         "example; use kfac.trace with kfac.loss_cotangents, or kfac.fit(fisher='ggn')")
    check_fisher(fisher, key, functional, "kfac.capture")
    layers = coverage(functional).layers if layers is None else tuple(layers)
    if not layers:
        raise ValueError("kfac.capture: the model has no supported layer (nnx.Linear, nnx.LinearGeneral, nnx.Embed)")
    return _capture(functional, layers, fisher, params, batch, key)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _capture(functional, layers, fisher, params, batch, key):
    # one compiled program per (model, layers, fisher): an eager trace dispatches every op alone (seconds)
    x, y = batch
    outputs, inputs, pullback = trace(functional, layers, params, x)
    keys = example_keys(key, jnp.arange(outputs.shape[0])) if fisher == "true" else None
    cotangents, losses = loss_cotangents(functional, outputs, y, fisher, keys)
    return Captured(inputs, pullback(cotangents[0]), outputs, losses)


def layer_gradients(layer: Layer, inputs: jax.Array, output_grads: jax.Array) -> jax.Array:
    """Per-example gradient matrices of one layer from its captured inputs and output gradients.

    G_n = sum_t a_{n,t} g_{n,t}^T: rows are the inputs (the vocabulary for an embedding, whose
    input is the one-hot of each token), then the bias.

    Args:
        layer: the `Layer`.
        inputs: its captured inputs [n, P, activation_dim] (int tokens [n, P] for an embedding).
        output_grads: its output gradients [n, P, out_features].

    Returns:
        [n, activation_dim, out_features].
    """
    if layer.kind == "embed":
        onehot = jax.nn.one_hot(inputs, layer.in_features, dtype=output_grads.dtype)
        return jnp.einsum("npv,npo->nvo", onehot, output_grads)
    return jnp.einsum("npi,npo->nio", inputs, output_grads)


def layer_matrix(layer: Layer, tree) -> jax.Array:
    """A params-shaped pytree's (e.g. a gradient's) part for `layer`, as its gradient matrix.

    Args:
        layer: the `Layer`.
        tree: a pytree shaped like the params (leading axes allowed: [..., *param shape]).

    Returns:
        [..., activation_dim, out_features]: the kernel's rows, then the bias as the last row.
    """
    weight = _lookup(tree, layer.weight)
    lead = weight.shape[: weight.ndim - len(layer.weight_shape)]
    rows = [weight.reshape(*lead, layer.in_features, layer.out_features)]
    if layer.bias is not None:
        rows.append(_lookup(tree, layer.bias).reshape(*lead, 1, layer.out_features))
    return rows[0] if len(rows) == 1 else jnp.concatenate(rows, axis=-2)


def layer_params(layer: Layer, matrix: jax.Array, like) -> dict:
    """A gradient matrix back as {key path: array shaped like that param} (the inverse of `layer_matrix`).

    Args:
        layer: the `Layer`.
        matrix: [activation_dim, out_features].
        like: the params pytree (for the shapes).

    Returns:
        {weight key path: kernel-shaped array, bias key path: bias-shaped array (if any)}.
    """
    out = {layer.weight: matrix[: layer.in_features].reshape(layer.weight_shape)}
    if layer.bias is not None:
        out[layer.bias] = matrix[layer.in_features].reshape(_lookup(like, layer.bias).shape)
    return out
