"""Intrinsic dimension (Li et al. 2018) through sketches: train only in a random d-dimensional subspace.

The reparameterisation: theta(w) = theta_0 + s Phi^T (m_d * w), w in R^{D_max}, where Phi is one
D_max x n sketch (E Phi^T Phi = I) and the mask m_d keeps the first d coordinates. For the
"nested" kinds (`NESTED_KINDS`) the first d rows of a D_max-row sketch, rescaled by
sqrt(D_max / d), are themselves a d-row sketch of the same kind, so every subspace dimension d
shares one sketch and one parameter vector w whose coordinates >= d stay at zero.

Normalisation s = sqrt(D_max / n): a row of Phi has squared norm n / D_max on average, so every
direction Phi^T e_j of the subspace has unit length and w -> theta is a near-isometry at every d
(the same map as sqrt(d / n) Phi_d^T with Phi_d the d-row sketch). The paper (Schioppa 2024)
trains L(theta_0 + Phi^T w) without this factor; with Adam that only rescales the step size by
sqrt(n / D_max), so we keep the isometric form and one learning rate for the sweep and the search.

Two ways to find d_int90, the smallest d whose metric reaches 90% of the full model's:
- `intrinsic_sweep`: every d of a grid trained at once (one `vmap` over masks inside one
  `lax.scan` training loop: one compilation for the whole sweep);
- `intrinsic_search`: the paper's doubling search (Sec. 4, Listing 9): one run starts at
  `d_start`; every `check_every` (the paper's c) steps it evaluates the metric and, if it improved
  by less than `min_improvement` (the paper's delta, 0.1 accuracy points = 0.001) since the
  previous check, doubles d (the optimizer state is kept: new coordinates start at w = 0 with
  empty moments). It stops when the metric reaches `fraction` of the fully trained model's: that
  d is D*. A separate run at D*/2 (as many steps as the search took) confirms that the threshold
  needs D*. Training uses `workbench.train.step` (chunks of `check_every` steps in one compiled
  `lax.scan`, the mask passed as data) and `workbench.train.optimize`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from workbench import train
from workbench.core import tree as tu
from workbench.core.numerics import check_positive_int, num_examples
from workbench.sketch.base import Sketch, make

# kinds whose first d rows (rescaled) are a d-row sketch of the same law: dense, srht, affd and
# afjl (R_D keeps the first D coordinates), and qk with its D_max factors
NESTED_KINDS = ("dense", "srht", "affd", "afjl", "qk")
SWEEP_KINDS = ("dense", "srht", "affd", "afjl")  # the sweep's kinds: the nested ones but qk


class IntrinsicSweepResult(NamedTuple):
    dims: np.ndarray  # the subspace dimensions d
    accuracy: np.ndarray  # test accuracy after training in each subspace
    train_loss: np.ndarray  # final full-batch training loss per d
    full_accuracy: float  # the same training in all n parameters
    threshold: float  # fraction * full_accuracy
    d_int90: int | None  # smallest d reaching the threshold (None when none does)
    num_params: int


class IntrinsicSearchResult(NamedTuple):
    d_star: int | None  # the d at which the metric first reached the threshold (None: never)
    steps: int  # optimisation steps the search took
    history_steps: np.ndarray  # step of each check
    history_dims: np.ndarray  # d trained during the chunk that ended at each check
    history_metric: np.ndarray  # metric at each check
    full_metric: float  # the fully trained model's metric
    threshold: float  # fraction * full_metric
    confirm_dim: int | None  # D*/2
    confirm_metric: float | None  # metric of the separate run at D*/2
    num_params: int


def subspace_map(params: Any, sketch: Sketch, scale: jax.Array) -> Callable:
    """The reparameterisation (w, mask) -> theta_0 + scale Phi^T (mask * w) as a params tree.

    Args:
        params: theta_0, the params pytree the subspace is anchored at (n scalars).
        sketch: Phi, a `Sketch` with dim_in = n and dim_out = D_max.
        scale: s, a scalar in the params' dtype (sqrt(D_max / n) for an isometric map).

    Returns:
        `theta(w, mask)`: w and mask [D_max] -> a params pytree shaped like `params`.
    """
    flat0, unravel = tu.ravel(params)

    def theta(w, mask):
        return unravel(flat0 + scale * sketch.transpose(mask * w))

    return theta


def prefix_mask(d: int | jax.Array, d_max: int, dtype) -> jax.Array:
    """m_d: ones on the first `d` of `d_max` coordinates, zeros after (d may be traced).

    Args:
        d: the subspace dimension (a Python int or a traced integer scalar).
        d_max: the length of the mask (the sketch's dim_out).
        dtype: the mask's floating dtype.

    Returns:
        A [d_max] array of 0/1 in `dtype`.
    """
    return (jnp.arange(d_max) < d).astype(dtype)


def _check_fraction(fraction: float) -> None:
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")


def _check_kind(kind: str, allowed: tuple[str, ...]) -> None:
    if kind not in allowed:
        raise ValueError(f"kind must be one of {allowed} (their row prefixes are sketches), got {kind!r}")


def intrinsic_sweep(
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
) -> IntrinsicSweepResult:
    """Test accuracy after training in random subspaces of each dimension in `dims`, all at once.

    theta(omega) = theta_0 + sqrt(d / n) Phi_d^T omega for each d (the first d rows of one
    sketch, see the module docstring), trained with `workbench.train.optimize` vmapped over d.
    The full model is trained with the same optimizer, number of steps and minibatches.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar` training loss.
        params: theta_0, the initial params pytree (n scalars).
        train_data: training set (a `Dataset` or pytree with a leading example axis).
        test_data: (x, y) test set; accuracy is argmax(predict_fn(params, x)) == y.
        key: PRNG key, split into the sketch's key and the minibatch key.
        dims: subspace dimensions d (sorted and deduplicated; each in 1..n).
        predict_fn: `predict_fn(params, x) -> logits [m, classes]`.
        num_steps: optimisation steps per subspace (and for the full model).
        optimizer: optax optimizer (None: Adam with learning rate 3e-2).
        batch_size: minibatch size (None: full batch).
        kind: sketch kind in `SWEEP_KINDS` (None: dense when n * max(dims) <= 2^24, else affd).
        fraction: the threshold as a fraction of the full model's accuracy (0.9 for d_int90).

    Returns:
        An `IntrinsicSweepResult` (accuracy and final training loss per d, the full model's
        accuracy, the threshold and d_int90).

    Raises:
        ValueError: `dims` empty, non-positive or above n; `fraction` outside (0, 1];
            `num_steps` not a positive int; `kind` not a sweep kind.
    """
    dims = np.asarray(sorted(set(int(d) for d in dims)))
    if dims.size == 0 or dims[0] < 1:
        raise ValueError(f"dims must be positive ints, got {dims.tolist()}")
    _check_fraction(fraction)
    check_positive_int("num_steps", num_steps)
    flat0, unravel = tu.ravel(params)
    n = int(flat0.size)
    d_max = int(dims[-1])
    if d_max > n:
        raise ValueError(f"dims must not exceed the number of parameters ({n}), got {d_max}")
    kind = kind or ("dense" if n * d_max <= 1 << 24 else "affd")
    _check_kind(kind, SWEEP_KINDS)
    optimizer = optimizer or optax.adam(3e-2)
    k_sketch, k_train = jax.random.split(key)
    theta = subspace_map(params, make(kind, k_sketch, n, d_max),
                         jnp.sqrt(jnp.asarray(d_max, flat0.dtype) / n))  # sqrt(d/n) * sqrt(d_max/d)
    fit = dict(optimizer=optimizer, num_steps=int(num_steps), batch_size=batch_size)

    def run_subspace(d):
        mask = prefix_mask(d, d_max, flat0.dtype)
        omega, _ = train.optimize(lambda w, b: loss_fn(theta(w, mask), b), jnp.zeros(d_max, flat0.dtype),
                                  train_data, k_train, **fit)
        p = theta(omega, mask)
        return _accuracy(predict_fn, p, test_data), loss_fn(p, train_data)

    with jax.numpy_dtype_promotion("standard"):  # optax's bias correction mixes int and float
        acc, final_loss = jax.jit(jax.vmap(run_subspace))(jnp.asarray(dims))
        w_full, _ = jax.jit(lambda: train.optimize(lambda w, b: loss_fn(unravel(w), b), flat0, train_data,
                                                   k_train, **fit))()
    full_acc = float(_accuracy(predict_fn, unravel(w_full), test_data))
    acc = np.asarray(acc)
    threshold = fraction * full_acc
    reached = np.flatnonzero(acc >= threshold)
    d_int = int(dims[reached[0]]) if reached.size else None
    return IntrinsicSweepResult(dims, acc, np.asarray(final_loss), full_acc, threshold, d_int, n)


def _accuracy(predict_fn, params, data):
    x, y = data
    predicted = jnp.argmax(predict_fn(params, x), axis=-1).astype(jnp.asarray(y).dtype)
    return jnp.mean((predicted == y).astype(jnp.float32))


def intrinsic_search(
    loss_fn: Callable,
    params: Any,
    train_data: Any,
    test_data: Any,
    key: jax.Array,
    *,
    metric_fn: Callable,
    d_start: int = 8,
    d_max: int | None = None,
    check_every: int = 50,
    min_improvement: float = 0.001,
    fraction: float = 0.9,
    max_steps: int = 5000,
    optimizer: optax.GradientTransformation | None = None,
    batch_size: int | None = None,
    kind: str = "affd",
    full_metric: float | None = None,
    full_steps: int | None = None,
) -> IntrinsicSearchResult:
    """The paper's doubling search for the intrinsic dimension (see the module docstring).

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar` training loss.
        params: theta_0, the initial params pytree (n scalars).
        train_data: training set (a `Dataset` or pytree with a leading example axis).
        test_data: what `metric_fn` evaluates on.
        key: PRNG key, split into the sketch, minibatch, full-model and confirmation keys.
        metric_fn: `metric_fn(params, test_data) -> scalar`, higher is better (e.g. accuracy).
        d_start: the first subspace dimension.
        d_max: the sketch's dim_out, the largest d (None: the largest power of two <= n).
        check_every: steps between checks (the paper's c).
        min_improvement: a smaller gain since the previous check doubles d (the paper's delta).
        fraction: the threshold as a fraction of the full model's metric.
        max_steps: the step budget of the search.
        optimizer: optax optimizer (None: Adam with learning rate 3e-2).
        batch_size: minibatch size (None: full batch).
        kind: sketch kind in `NESTED_KINDS` (default the paper's affd).
        full_metric: the fully trained model's metric (None: train the full model here).
        full_steps: steps for that full training (None: `max_steps`).

    Returns:
        An `IntrinsicSearchResult`: D* (None when the budget ran out), the history of checks,
        the threshold and the confirmation run at D*/2.

    Raises:
        ValueError: a size argument is not a positive int, d_start <= d_max <= n fails,
            `fraction` is outside (0, 1] or `kind` is not nested.
        FloatingPointError: the metric became NaN or infinite.
    """
    flat0, unravel = tu.ravel(params)
    n = int(flat0.size)
    d_max = int(d_max or 1 << (n.bit_length() - 1))
    for name, v in (("d_start", d_start), ("check_every", check_every), ("max_steps", max_steps)):
        check_positive_int(name, v)
    if not 1 <= d_start <= d_max <= n:
        raise ValueError(f"need 1 <= d_start <= d_max <= number of parameters ({n}), got d_start={d_start}, d_max={d_max}")
    _check_fraction(fraction)
    _check_kind(kind, NESTED_KINDS)
    optimizer = optimizer or optax.adam(3e-2)
    k_sketch, k_train, k_full, k_confirm = jax.random.split(key, 4)
    theta = subspace_map(params, make(kind, k_sketch, n, d_max), jnp.sqrt(jnp.asarray(d_max / n, flat0.dtype)))
    n_train = num_examples(train_data, "train_data")
    full_batch = batch_size is None or batch_size >= n_train

    def loss_w(w, batch):
        data, mask = batch
        return loss_fn(theta(w, mask), data)

    @jax.jit
    def run_chunk(w, opt_state, mask, indices, data, test):
        def body(carry, idx):
            w, s = carry
            batch = data if full_batch else jax.tree.map(lambda a: a[idx], data)
            w, s, loss = train.step(loss_w, optimizer, w, s, (batch, mask))
            return (w, s), loss
        (w, opt_state), _ = jax.lax.scan(body, (w, opt_state), indices)
        return w, opt_state, metric_fn(theta(w, mask), test)

    def mask_of(d):
        return prefix_mask(d, d_max, flat0.dtype)

    with jax.numpy_dtype_promotion("standard"):  # optax's bias correction mixes int and float
        if full_metric is None:
            fit = jax.jit(lambda p, data, k: train.optimize(loss_fn, p, data, k, optimizer=optimizer,
                                                            num_steps=int(full_steps or max_steps), batch_size=batch_size)[0])
            full_metric = float(metric_fn(fit(params, train_data, k_full), test_data))
        threshold = fraction * float(full_metric)
        w = jnp.zeros(d_max, flat0.dtype)
        opt_state = optimizer.init(w)
        indices = (jnp.zeros((max_steps, 1), jnp.int32) if full_batch
                   else train.batch_indices(k_train, n_train, batch_size, max_steps))
        d, steps, previous = int(d_start), 0, float(metric_fn(theta(w, mask_of(d_start)), test_data))
        hist_steps, hist_dims, hist_metric = [], [], []
        d_star = None
        while steps + check_every <= max_steps:
            w, opt_state, metric = run_chunk(w, opt_state, mask_of(d), indices[steps: steps + check_every], train_data, test_data)
            steps += check_every
            metric = float(metric)
            hist_steps.append(steps), hist_dims.append(d), hist_metric.append(metric)
            if not np.isfinite(metric):
                raise FloatingPointError(f"intrinsic_search: the metric became {metric} at step {steps} (d={d})")
            if metric >= threshold:
                d_star = d
                break
            if metric - previous < min_improvement and d < d_max:
                d = min(2 * d, d_max)
            previous = metric
        confirm_dim = confirm_metric = None
        if d_star is not None and d_star >= 2:
            confirm_dim = d_star // 2
            mask = mask_of(confirm_dim)
            fit_w = jax.jit(lambda w0, data, k: train.optimize(lambda w_, b: loss_fn(theta(w_, mask), b), w0, data, k,
                                                               optimizer=optimizer, num_steps=steps, batch_size=batch_size)[0])
            w_c = fit_w(jnp.zeros(d_max, flat0.dtype), train_data, k_confirm)
            confirm_metric = float(metric_fn(theta(w_c, mask), test_data))
    return IntrinsicSearchResult(d_star, steps, np.asarray(hist_steps), np.asarray(hist_dims), np.asarray(hist_metric),
                                 float(full_metric), threshold, confirm_dim, confirm_metric, n)
