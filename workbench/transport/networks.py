"""Flax NNX networks for transport, each split once into a `Model(params, apply_fn)`:

- `map_model`: an MLP T: R^d -> R^d, residual (x + f(x), starting at the identity) by default;
- `potential_model`: a scalar potential, an input-convex network (Amos et al. 2017: non-negative
  weights on the hidden path, convex non-decreasing activations, so x -> phi(x) is convex and
  grad phi is a monotone map) or a plain MLP;
- `velocity_model`: an MLP v(x, t) for flow matching.
The last layer starts at zero, so a residual map starts as the identity, a potential as 0 and a
velocity as 0. Networks of one architecture (sizes, dtype, kind) share one `apply_fn` object, so a
trainer compiled for one serves them all.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from workbench.core.numerics import check_positive_int

PyTree = Any


class Model(NamedTuple):
    """A network as a params pytree and a pure `apply_fn(params, *inputs)`."""

    params: PyTree
    apply_fn: Callable


class _MLP(nnx.Module):
    def __init__(self, din: int, dout: int, hidden: int, depth: int, *, rngs: nnx.Rngs, param_dtype):
        sizes = [din] + [hidden] * depth
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs, param_dtype=param_dtype)
                                for a, b in zip(sizes[:-1], sizes[1:])])
        self.out = nnx.Linear(sizes[-1], dout, rngs=rngs, param_dtype=param_dtype,
                              kernel_init=nnx.initializers.zeros)

    def __call__(self, h):
        for layer in self.layers:
            h = jax.nn.silu(layer(h))
        return self.out(h)


class _ICNN(nnx.Module):
    """phi(x) = w_L . z_L + |x|^2 * s / 2, z_{k+1} = softplus(W_k^+ z_k + A_k x + c_k), W^+ =
    softplus(raw) >= 0, w_L >= 0: convex in x."""

    def __init__(self, dim: int, hidden: int, depth: int, *, rngs: nnx.Rngs, param_dtype):
        self.inputs = nnx.List([nnx.Linear(dim, hidden, rngs=rngs, param_dtype=param_dtype) for _ in range(depth)])
        self.hidden = nnx.List([nnx.Linear(hidden, hidden, use_bias=False, rngs=rngs, param_dtype=param_dtype)
                                for _ in range(depth - 1)])
        self.out = nnx.Param(jnp.full((hidden,), -4.0, param_dtype))
        self.quadratic = nnx.Param(jnp.asarray(0.5413248546129181, param_dtype))  # softplus() = 1 at start

    def __call__(self, x):
        z = jax.nn.softplus(self.inputs[0](x))
        for layer, lin in zip(self.hidden, self.inputs[1:]):
            w = jax.nn.softplus(layer.kernel[...])
            z = jax.nn.softplus(z @ w / w.shape[0] + lin(x))
        value = z @ jax.nn.softplus(self.out[...])
        # the identity map's potential |x|^2 / 2 times a learnt positive scale
        return value + 0.5 * jax.nn.softplus(self.quadratic[...]) * jnp.sum(x * x, axis=-1)


def _split(module) -> tuple[PyTree, Callable]:
    graphdef, state = nnx.split(module, nnx.Param)
    params = nnx.to_pure_dict(state)

    def call(params, *inputs):
        s = jax.tree.map(lambda a: a, state)
        nnx.replace_by_pure_dict(s, params)
        return nnx.merge(graphdef, s)(*inputs)

    return params, call


# One apply function per architecture (module class, sizes, dtype, head), built from an abstract
# template (shapes only, `nnx.eval_shape`) whose values `call` replaces by the params it is
# given: networks of the same shapes share it, so a trainer compiled for one (its apply_fn a
# static argument) serves them all.


@functools.cache
def _mlp_apply(din: int, dout: int, hidden: int, depth: int, param_dtype, head: str) -> Callable:
    _, call = _split(nnx.eval_shape(lambda: _MLP(din, dout, hidden, depth, rngs=nnx.Rngs(0),
                                                      param_dtype=param_dtype)))
    if head == "residual":
        return lambda p, x: x + call(p, x)
    if head == "scalar":
        return lambda p, x: call(p, x)[:, 0]
    if head == "velocity":
        return lambda p, x, t: call(p, jnp.concatenate([x, t.astype(x.dtype)[:, None]], axis=1))
    return call


@functools.cache
def _icnn_apply(dim: int, hidden: int, depth: int, param_dtype) -> Callable:
    return _split(nnx.eval_shape(lambda: _ICNN(dim, hidden, depth, rngs=nnx.Rngs(0), param_dtype=param_dtype)))[1]


def _params(module) -> PyTree:
    return nnx.to_pure_dict(nnx.split(module, nnx.Param)[1])


def map_model(key: jax.Array, dim: int, hidden: int = 64, depth: int = 2, residual: bool = True,
              param_dtype=jnp.float32) -> Model:
    """An MLP map T: [n, dim] -> [n, dim], x + f(x) when `residual` (starting at the identity).

    Args:
        key: PRNG key initialising the weights.
        dim: the dimension of the points.
        hidden: the width of the hidden layers (SiLU).
        depth: the number of hidden layers.
        residual: T(x) = x + f(x) instead of f(x).
        param_dtype: the dtype of the params.

    Returns:
        `Model(params, apply_fn(params, x) -> [n, dim])`.
    """
    dim, hidden, depth = (check_positive_int(n, v) for n, v in (("dim", dim), ("hidden", hidden), ("depth", depth)))
    params = _params(_MLP(dim, dim, hidden, depth, rngs=nnx.Rngs(key), param_dtype=param_dtype))
    return Model(params, _mlp_apply(dim, dim, hidden, depth, param_dtype, "residual" if residual else "plain"))


def potential_model(key: jax.Array, dim: int, hidden: int = 64, depth: int = 2, kind: str = "icnn",
                    param_dtype=jnp.float32) -> Model:
    """A scalar potential [n, dim] -> [n]: an input-convex network ("icnn", starting near
    |x|^2 / 2, whose gradient is the identity) or a plain MLP ("mlp", starting at 0).

    Args:
        key: PRNG key initialising the weights.
        dim: the dimension of the points.
        hidden: the width of the hidden layers.
        depth: the number of hidden layers.
        kind: "icnn" or "mlp".
        param_dtype: the dtype of the params.

    Returns:
        `Model(params, apply_fn(params, x) -> [n])`.

    Raises:
        ValueError: an unknown `kind`.
    """
    dim, hidden, depth = (check_positive_int(n, v) for n, v in (("dim", dim), ("hidden", hidden), ("depth", depth)))
    rngs = nnx.Rngs(key)
    if kind == "icnn":
        params = _params(_ICNN(dim, hidden, depth, rngs=rngs, param_dtype=param_dtype))
        return Model(params, _icnn_apply(dim, hidden, depth, param_dtype))
    if kind == "mlp":
        params = _params(_MLP(dim, 1, hidden, depth, rngs=rngs, param_dtype=param_dtype))
        return Model(params, _mlp_apply(dim, 1, hidden, depth, param_dtype, "scalar"))
    raise ValueError(f"kind must be 'icnn' or 'mlp', got {kind!r}")


def potential_gradient(model: Model) -> Callable:
    """The map x -> grad phi(x) of a potential model, batched.

    Args:
        model: a `potential_model`.

    Returns:
        `grad_fn(params, x [n, dim]) -> [n, dim]`.
    """
    return lambda p, x: jax.grad(lambda xs: jnp.sum(model.apply_fn(p, xs)))(x)


def velocity_model(key: jax.Array, dim: int, hidden: int = 64, depth: int = 2, param_dtype=jnp.float32) -> Model:
    """An MLP velocity field v(x, t): ([n, dim], [n]) -> [n, dim], with t in [0, 1] fed as an
    extra input.

    Args:
        key: PRNG key initialising the weights.
        dim: the dimension of the points.
        hidden: the width of the hidden layers (SiLU).
        depth: the number of hidden layers.
        param_dtype: the dtype of the params.

    Returns:
        `Model(params, apply_fn(params, x, t) -> [n, dim])`.
    """
    dim, hidden, depth = (check_positive_int(n, v) for n, v in (("dim", dim), ("hidden", hidden), ("depth", depth)))
    params = _params(_MLP(dim + 1, dim, hidden, depth, rngs=nnx.Rngs(key), param_dtype=param_dtype))
    return Model(params, _mlp_apply(dim + 1, dim, hidden, depth, param_dtype, "velocity"))
