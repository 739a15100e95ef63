"""Intrinsic dimension (Li et al. 2018): train only in a random d-dimensional subspace.

theta(omega) = theta_0 + sqrt(d / n) Phi_d^T omega, omega in R^d, with Phi_d a d x n sketch
(E Phi^T Phi = I, so Phi_d Phi_d^T ~ (n/d) I and the map omega -> theta is close to an
isometry). d_int90 is the smallest d whose test accuracy reaches 90% of the full model's.

All d of a sweep are trained at once: for the "nested" kinds (dense, srht, ffd, affd) the first d
rows of a D_max-row sketch, rescaled by sqrt(D_max / d), are themselves a d-row sketch of the
same kind, so omega lives in R^{D_max} with coordinates >= d held at zero, and the sweep is one
`vmap` over masks inside one `lax.scan` training loop (one compilation for the whole sweep).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from workbench.core import tree as tu
from workbench.core.numerics import check_positive_int
from workbench.sketch.base import make
from workbench.train import optimize

NESTED_KINDS = ("dense", "srht", "affd", "afjl")  # a prefix of rows of one is one of the same kind


class IntrinsicResult(NamedTuple):
    dims: np.ndarray  # the subspace dimensions d
    accuracy: np.ndarray  # test accuracy after training in each subspace
    train_loss: np.ndarray  # final full-batch training loss per d
    full_accuracy: float  # the same training in all n parameters
    threshold: float  # fraction * full_accuracy
    d_int90: int | None  # smallest d reaching the threshold (None when none does)
    num_params: int


def intrinsic_dimension(
    loss_fn: Callable,
    params: Any,
    train_data: Any,
    test_data: Any,
    key: jax.Array,
    dims: Sequence[int],
    *,
    predict_fn: Callable,
    num_steps: int = 500,
    optimizer: optax.GradientTransformation | None = None,
    batch_size: int | None = None,
    kind: str | None = None,
    fraction: float = 0.9,
) -> IntrinsicResult:
    """Test accuracy after training in random subspaces of each dimension in `dims`.

    The full model is trained with the same optimizer (default Adam, lr 3e-2), number of steps
    and minibatches (`workbench.train.optimize`). `kind` defaults to a dense Gaussian sketch when
    n * max(dims) <= 2^24 and to `affd` otherwise; it must be one of `NESTED_KINDS`.
    """
    dims = np.asarray(sorted(set(int(d) for d in dims)))
    if dims.size == 0 or dims[0] < 1:
        raise ValueError(f"dims must be positive ints, got {dims.tolist()}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    check_positive_int("num_steps", num_steps)
    flat0, unravel = tu.ravel(params)
    n = int(flat0.size)
    d_max = int(dims[-1])
    if d_max > n:
        raise ValueError(f"dims must not exceed the number of parameters ({n}), got {d_max}")
    kind = kind or ("dense" if n * d_max <= 1 << 24 else "affd")
    if kind not in NESTED_KINDS:
        raise ValueError(f"kind must be one of {NESTED_KINDS} (their row prefixes are sketches), got {kind!r}")
    optimizer = optimizer or optax.adam(3e-2)
    k_sketch, k_train = jax.random.split(key)
    sketch = make(kind, k_sketch, n, d_max)
    fit = dict(optimizer=optimizer, num_steps=int(num_steps), batch_size=batch_size)

    def run_subspace(d):
        mask = (jnp.arange(d_max) < d).astype(flat0.dtype)
        scale = jnp.sqrt(jnp.asarray(d_max, flat0.dtype) / n)  # sqrt(d/n) * sqrt(d_max/d)

        def theta(omega):
            return unravel(flat0 + scale * sketch.transpose(mask * omega))

        omega, _ = optimize(lambda w, b: loss_fn(theta(w), b), jnp.zeros(d_max, flat0.dtype),
                            train_data, k_train, **fit)
        p = theta(omega)
        return _accuracy(predict_fn, p, test_data), loss_fn(p, train_data)

    with jax.numpy_dtype_promotion("standard"):  # optax's bias correction mixes int and float
        acc, final_loss = jax.jit(jax.vmap(run_subspace))(jnp.asarray(dims))
        w_full, _ = jax.jit(lambda: optimize(lambda w, b: loss_fn(unravel(w), b), flat0, train_data, k_train, **fit))()
    full_acc = float(_accuracy(predict_fn, unravel(w_full), test_data))
    acc = np.asarray(acc)
    threshold = fraction * full_acc
    reached = np.flatnonzero(acc >= threshold)
    d_int = int(dims[reached[0]]) if reached.size else None
    return IntrinsicResult(dims, acc, np.asarray(final_loss), full_acc, threshold, d_int, n)


def _accuracy(predict_fn, params, data):
    x, y = data
    predicted = jnp.argmax(predict_fn(params, x), axis=-1).astype(jnp.asarray(y).dtype)
    return jnp.mean((predicted == y).astype(jnp.float32))
