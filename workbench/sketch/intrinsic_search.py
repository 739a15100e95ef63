"""The paper's intrinsic-dimension search (Schioppa 2024, Sec. 4, Listing 9): one run that grows D.

Train theta(w) = theta0 + s Phi^T (m_d * w) over w in R^{D_max}, where Phi is one D_max x N sketch
and m_d keeps the first d coordinates (the nested subspaces of the sweep in
`workbench.sketch.intrinsic`: the last D_max - d coordinates of w are zero). Start at `d_start`;
every `check_every` (the paper's c) steps evaluate the metric; if it improved by less than
`min_improvement` (the paper's delta, 0.1 accuracy points = 0.001) since the previous check, double
d (the optimizer state is kept: the new coordinates start at w = 0 with empty moments). Stop when
the metric reaches `fraction` (90%) of the fully trained model's metric: that d is D*. Then a
separate run at D*/2 (as many steps as the search took) confirms that the threshold needs D*.

Normalisation of Phi^T: s = sqrt(D_max / N). Our sketches have E Phi^T Phi = I, so a row of Phi
has squared norm N / D_max on average and s makes every direction Phi^T e_j of the subspace unit
length: the map w -> theta is a near-isometry at every d, the same normalisation as the sweep
(which uses sqrt(d/n) Phi_d^T with Phi_d the d-row sketch: the same map). The paper trains
L(theta0 + Phi^T w) without this factor; with Adam that only rescales the step size by
sqrt(N / D_max), so we keep the isometric form and one learning rate for the sweep and the search.
Nested kinds: those whose first d rows (rescaled) are a d-row sketch of the same law: dense,
srht, affd, afjl (R_D keeps the first D coordinates), and qk with its D_max factors.
Training uses `workbench.train.step` (chunks of `check_every` steps in one compiled `lax.scan`,
the mask passed as data) and `workbench.train.optimize` (the full model and the confirmation run).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from workbench import train
from workbench.core import tree as tu
from workbench.sketch.base import make

NESTED_KINDS = ("dense", "srht", "affd", "afjl", "qk")


class SearchResult(NamedTuple):
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


def _mapped(flat0, unravel, sketch, scale):
    def theta(w, mask):
        return unravel(flat0 + scale * sketch.transpose(mask * w))
    return theta


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
) -> SearchResult:
    """The paper's doubling search for the intrinsic dimension (see the module docstring).

    `metric_fn(params, test_data) -> scalar` (higher is better, e.g. accuracy). `full_metric` is
    the fully trained model's metric; when None the full model is trained with the same optimizer
    for `full_steps` (default `max_steps`) steps. `d_max` defaults to the largest power of two
    <= the number of parameters.
    """
    flat0, unravel = tu.ravel(params)
    n = int(flat0.size)
    d_max = int(d_max or 1 << (n.bit_length() - 1))
    for name, v in (("d_start", d_start), ("check_every", check_every), ("max_steps", max_steps)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if not 1 <= d_start <= d_max <= n:
        raise ValueError(f"need 1 <= d_start <= d_max <= number of parameters ({n}), got d_start={d_start}, d_max={d_max}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    if kind not in NESTED_KINDS:
        raise ValueError(f"kind must be one of {NESTED_KINDS} (their row prefixes are sketches), got {kind!r}")
    optimizer = optimizer or optax.adam(3e-2)
    k_sketch, k_train, k_full, k_confirm = jax.random.split(key, 4)
    sketch = make(kind, k_sketch, n, d_max)
    theta = _mapped(flat0, unravel, sketch, jnp.sqrt(jnp.asarray(d_max / n, flat0.dtype)))
    n_train = int(jax.tree.leaves(train_data)[0].shape[0])
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
        return (jnp.arange(d_max) < d).astype(flat0.dtype)

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
    return SearchResult(d_star, steps, np.asarray(hist_steps), np.asarray(hist_dims), np.asarray(hist_metric),
                        float(full_metric), threshold, confirm_dim, confirm_metric, n)
