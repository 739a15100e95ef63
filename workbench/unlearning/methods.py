"""Unlearning methods: pure functions `(loss_fn, params, forget, retain, key, **options) -> Unlearned`.

`loss_fn(params, batch)` is the training objective (a mean over the batch); `forget` and
`retain` are pytrees of arrays with a leading example axis (e.g. `Dataset(x, y)` halves built by
`split`). Methods that compare outputs (SCRUB, oracle and datamodel matching) also take
`predict_fn(params, x) -> logits`. Fine-tuning runs through `workbench.train.step` inside one
`lax.scan`, compiled once per (loss_fn, predict_fn, optimizer, static sizes); learning rates and
weights are traced arguments, so sweeps over them do not recompile.

At the public boundary: an empty forget or retain set, a retain set that shares examples with the
forget set, an SSD threshold that can select no weight, and a NaN/inf objective or result each
raise a clear error; nothing returns the model silently unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from workbench.train import NonFiniteLossError, batch_indices, step
from workbench.unlearning.sets import check_sets, is_traced

PyTree = Any
OPTIMIZERS = {"sgd": optax.sgd, "adam": optax.adam}


class Unlearned(NamedTuple):
    """An unlearned model: `params`, the objective at each step (`losses`, [num_steps]; empty for
    SSD), and `selected`, the fraction of parameters the method was allowed to change (1.0 for
    fine-tuning methods, the dampened fraction for SSD)."""

    params: PyTree
    losses: jax.Array
    selected: jax.Array


def _positive(value, name: str) -> float:
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return value


def _steps(num_steps, batch_size):
    if not isinstance(num_steps, int | np.integer) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    if not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def _optimizer(name: str):
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {name!r}")
    return OPTIMIZERS[name]


def _finish(method: str, result: Unlearned, hint: str) -> Unlearned:
    """Raise when the objective or the params became NaN/inf (skipped under tracing; `many`
    checks after its vmapped call)."""
    if is_traced(result):
        return result
    losses = np.asarray(result.losses)
    bad = np.argwhere(~np.isfinite(losses))
    if bad.size:
        where = tuple(bad[0])
        model = f" (model {where[0]})" if losses.ndim == 2 else ""
        raise NonFiniteLossError(f"{method}: the unlearning objective became {losses[where]} at step "
                                 f"{where[-1]}{model}; {hint}")
    for leaf in jax.tree.leaves(result.params):
        if not np.isfinite(np.asarray(leaf)).all():  # on the host: no compiled program per shape
            raise NonFiniteLossError(f"{method}: the unlearned params hold NaN or inf; {hint}")
    return result


def _dtype(params):
    return jnp.result_type(*jax.tree.leaves(params))


# ----------------------------------------------------------------------------- the shared scan


MIN_STEP_BUCKET = 128


def step_bucket(num_steps: int) -> int:
    """The static loop length compiled for `num_steps` steps: the next power of two, at least
    MIN_STEP_BUCKET. The step count itself is a traced argument, so every count up to the bucket
    shares one program (a sweep over step counts compiles once)."""
    return max(MIN_STEP_BUCKET, 1 << max(0, int(num_steps) - 1).bit_length())


def _scan(objective, optimizer, params, sets, key, num_steps, batch_sizes, length: int | None = None):
    """`num_steps` optax steps of `objective(params, batches)`, where batches[i] is a minibatch of
    sets[i] (without replacement within each pass over that set); (params, losses).

    `num_steps` may be traced when the static `length` >= it is given: the loop then runs exactly
    `num_steps` steps (a while loop, no wasted steps) and `losses` has `length` entries, the first
    `num_steps` of them filled. The minibatch indices are drawn for `length` steps; their first
    `num_steps` rows are the ones `num_steps` alone would draw (`batch_indices` splits its key per
    epoch, and split keys do not depend on how many are drawn), so the numbers do not depend on
    `length`."""
    length = int(num_steps) if length is None else int(length)
    keys = jax.random.split(key, len(sets))
    indices = []
    for k, data, b in zip(keys, sets, batch_sizes):
        n = jax.tree.leaves(data)[0].shape[0]
        indices.append(batch_indices(k, n, min(b, n), length))

    def body(i, carry):
        p, s, losses = carry
        batches = tuple(jax.tree.map(lambda a, ix=ix: a[ix[i]], d) for d, ix in zip(sets, indices))
        p, s, loss = step(objective, optimizer, p, s, batches)
        return p, s, losses.at[i].set(loss.astype(losses.dtype))

    init = (params, optimizer.init(params), jnp.zeros((length,), _dtype(params)))
    params, _, losses = jax.lax.fori_loop(0, num_steps, body, init)
    return params, losses


def _one(dtype):
    return jnp.ones((), dtype)


# ----------------------------------------------------------------------------- retraining (oracle)


@functools.partial(jax.jit, static_argnames=("loss_fn", "init_fn", "optimizer", "num_steps", "batch_size"))
def _retrain(loss_fn, init_fn, optimizer, num_steps, batch_size, retain, key, lr):
    k_init, k_data = jax.random.split(key)
    p0 = init_fn(k_init)
    opt = OPTIMIZERS[optimizer](lr)
    objective = lambda p, b: loss_fn(p, b[0])
    params, losses = _scan(objective, opt, p0, (retain,), k_data, num_steps, (batch_size,))
    return Unlearned(params, losses, _one(_dtype(params)))


def retrain(loss_fn: Callable, params: PyTree, forget: PyTree, retain: PyTree, key: jax.Array, *,
            init_fn: Callable[[jax.Array], PyTree], learning_rate: float, num_steps: int,
            batch_size: int = 128, optimizer: str = "adam") -> Unlearned:
    """The oracle: train from `init_fn(key)` on `retain` only (`params` gives nothing but the
    structure the result must have). The same key gives the same oracle."""
    check_sets(forget, retain)
    _steps(num_steps, batch_size)
    _optimizer(optimizer)
    lr = jnp.asarray(_positive(learning_rate, "learning_rate"), _dtype(params))
    out = _retrain(loss_fn, init_fn, optimizer, int(num_steps), int(batch_size), retain, key, lr)
    if jax.tree.structure(out.params) != jax.tree.structure(params):
        raise ValueError("init_fn(key) must return params with the structure of `params`")
    return _finish("retrain", out, "lower learning_rate")


# ----------------------------------------------------------------------------- gradient ascent, NegGrad+


@functools.partial(jax.jit, static_argnames=("loss_fn", "optimizer", "length", "batch_size"))
def _neggrad(loss_fn, optimizer, length, batch_size, params, forget, retain, key, lr, retain_weight, num_steps):
    opt = OPTIMIZERS[optimizer](lr)

    def objective(p, batches):
        f, r = batches
        return retain_weight * loss_fn(p, r) - (1 - retain_weight) * loss_fn(p, f)

    params, losses = _scan(objective, opt, params, (forget, retain), key, num_steps, (batch_size, batch_size), length)
    return Unlearned(params, losses, _one(_dtype(params)))


def gradient_ascent(loss_fn: Callable, params: PyTree, forget: PyTree, retain: PyTree, key: jax.Array, *,
                    learning_rate: float, num_steps: int, batch_size: int = 64,
                    optimizer: str = "sgd") -> Unlearned:
    """Ascend the training loss on the forget set (`retain` is only checked, never used): the
    simplest method, and the one whose result falls off a cliff as learning rate and steps grow."""
    return neggrad_plus(loss_fn, params, forget, retain, key, learning_rate=learning_rate, num_steps=num_steps,
                        batch_size=batch_size, optimizer=optimizer, retain_weight=0.0, _name="gradient_ascent")


def neggrad_plus(loss_fn: Callable, params: PyTree, forget: PyTree, retain: PyTree, key: jax.Array, *,
                 learning_rate: float, num_steps: int, batch_size: int = 64, retain_weight: float = 0.9,
                 optimizer: str = "sgd", _name: str = "neggrad_plus") -> Unlearned:
    """NegGrad+ (Kurmanji et al. 2023): minimise `retain_weight * L(retain batch) - (1 -
    retain_weight) * L(forget batch)`; `retain_weight=0` is plain gradient ascent."""
    check_sets(forget, retain)
    _steps(num_steps, batch_size)
    _optimizer(optimizer)
    w = float(retain_weight)
    if not 0.0 <= w < 1.0:
        raise ValueError(f"retain_weight must lie in [0, 1) (1 would ignore the forget set), got {w}")
    dt = _dtype(params)
    out = _neggrad(loss_fn, optimizer, step_bucket(num_steps), int(batch_size), params, forget, retain, key,
                   jnp.asarray(_positive(learning_rate, "learning_rate"), dt), jnp.asarray(w, dt),
                   jnp.asarray(int(num_steps), jnp.int32))  # traced: one program for every count
    out = out._replace(losses=out.losses[: int(num_steps)])
    return _finish(_name, out, "lower learning_rate or num_steps (ascent on an unbounded loss diverges)")


# ----------------------------------------------------------------------------- SCRUB


def _kl_logits(teacher, student):
    """Mean over examples of KL(softmax(teacher) || softmax(student))."""
    lt, ls = jax.nn.log_softmax(teacher), jax.nn.log_softmax(student)
    return jnp.mean(jnp.sum(jnp.exp(lt) * (lt - ls), axis=-1))


@functools.partial(jax.jit, static_argnames=("loss_fn", "predict_fn", "optimizer", "num_steps", "max_steps",
                                             "batch_size"))
def _scrub(loss_fn, predict_fn, optimizer, num_steps, max_steps, batch_size, params, forget, retain, key, lr,
           ce_weight):
    opt = OPTIMIZERS[optimizer](lr)
    teacher = params
    k_f, k_r = jax.random.split(key)
    n_f = jax.tree.leaves(forget)[0].shape[0]
    n_r = jax.tree.leaves(retain)[0].shape[0]
    idx_f = batch_indices(k_f, n_f, min(batch_size, n_f), num_steps)
    idx_r = batch_indices(k_r, n_r, min(batch_size, n_r), num_steps)

    def max_loss(p, b):  # push the student away from the teacher on the forget set
        x, _ = b
        return -_kl_logits(jax.lax.stop_gradient(predict_fn(teacher, x)), predict_fn(p, x))

    def min_loss(p, b):  # stay with the teacher on the retain set, and keep fitting its labels
        x, _ = b
        return _kl_logits(jax.lax.stop_gradient(predict_fn(teacher, x)), predict_fn(p, x)) + ce_weight * loss_fn(p, b)

    def body(carry, i):
        p, s = carry
        bf = jax.tree.map(lambda a: a[idx_f[i]], forget)
        br = jax.tree.map(lambda a: a[idx_r[i]], retain)
        p_max, s_max, l_max = step(max_loss, opt, p, s, bf)
        use_max = i < max_steps
        p = jax.tree.map(lambda a, b: jnp.where(use_max, a, b), p_max, p)
        s = jax.tree.map(lambda a, b: jnp.where(use_max, a, b), s_max, s)
        p, s, l_min = step(min_loss, opt, p, s, br)
        return (p, s), l_min + jnp.where(use_max, l_max, 0)

    (params, _), losses = jax.lax.scan(body, (params, opt.init(params)), jnp.arange(num_steps))
    return Unlearned(params, losses, _one(_dtype(params)))


def scrub(loss_fn: Callable, params: PyTree, forget: PyTree, retain: PyTree, key: jax.Array, *,
          predict_fn: Callable, learning_rate: float, num_steps: int, max_steps: int | None = None,
          batch_size: int = 64, ce_weight: float = 1.0, optimizer: str = "sgd") -> Unlearned:
    """SCRUB (Kurmanji et al. 2023): the original model is a teacher; each step first takes a
    "max" step raising KL(teacher || student) on a forget batch (only in the first `max_steps`
    steps, default half), then a "min" step lowering KL on a retain batch plus `ce_weight` times
    the training loss there. The loss reported per step is the sum of the two objectives."""
    check_sets(forget, retain)
    _steps(num_steps, batch_size)
    _optimizer(optimizer)
    max_steps = num_steps // 2 if max_steps is None else int(max_steps)
    if not 0 <= max_steps <= num_steps:
        raise ValueError(f"max_steps must lie in [0, num_steps={num_steps}], got {max_steps}")
    dt = _dtype(params)
    out = _scrub(loss_fn, predict_fn, optimizer, int(num_steps), max_steps, int(batch_size), params, forget,
                 retain, key, jnp.asarray(_positive(learning_rate, "learning_rate"), dt),
                 jnp.asarray(float(ce_weight), dt))
    return _finish("scrub", out, "lower learning_rate or max_steps")


# ----------------------------------------------------------------------------- SSD


@functools.partial(jax.jit, static_argnames=("loss_fn", "chunk_size"))
def fisher_diagonal(loss_fn: Callable, params: PyTree, data: PyTree, chunk_size: int = 256) -> PyTree:
    """Empirical Fisher diagonal: the mean over examples of the squared per-example gradient of
    `loss_fn` (on a batch of one), accumulated chunk by chunk (padding rows carry weight 0)."""
    n = jax.tree.leaves(data)[0].shape[0]
    c = max(1, min(chunk_size, n))
    chunks = -(-n // c)
    pad = chunks * c - n
    padded = jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[:1], pad, 0)]).reshape(chunks, c, *a.shape[1:]),
                          data)
    weights = (jnp.arange(chunks * c) < n).astype(_dtype(params)).reshape(chunks, c)
    grad_one = jax.grad(lambda p, z: loss_fn(p, jax.tree.map(lambda a: a[None], z)))

    def body(total, xs):
        chunk, w = xs
        g = jax.vmap(grad_one, in_axes=(None, 0))(params, chunk)
        return jax.tree.map(lambda t, gi: t + jnp.einsum("n,n...->...", w, gi * gi), total, g), None

    total, _ = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, params), (padded, weights))
    return jax.tree.map(lambda t: t / n, total)


@functools.partial(jax.jit, static_argnames=("loss_fn", "chunk_size"))
def _ssd(loss_fn, chunk_size, params, forget, retain, alpha, lam):
    n_f = jax.tree.leaves(forget)[0].shape[0]
    n_r = jax.tree.leaves(retain)[0].shape[0]
    f_forget = fisher_diagonal(loss_fn, params, forget, chunk_size)
    f_retain = fisher_diagonal(loss_fn, params, retain, chunk_size)
    f_full = jax.tree.map(lambda a, b: (n_f * a + n_r * b) / (n_f + n_r), f_forget, f_retain)
    sel = jax.tree.map(lambda ff, fd: ff > alpha * fd, f_forget, f_full)
    beta = jax.tree.map(lambda ff, fd: jnp.minimum(lam * fd / jnp.where(ff > 0, ff, 1), 1), f_forget, f_full)
    new = jax.tree.map(lambda p, s, b: jnp.where(s, p * b, p), params, sel, beta)
    count = sum(jnp.sum(s) for s in jax.tree.leaves(sel))
    total = sum(s.size for s in jax.tree.leaves(sel))
    return Unlearned(new, jnp.zeros((0,), _dtype(params)), (count / total).astype(_dtype(params)))


def ssd(loss_fn: Callable, params: PyTree, forget: PyTree, retain: PyTree, key: jax.Array, *,
        alpha: float = 10.0, lam: float = 1.0, chunk_size: int = 256) -> Unlearned:
    """Selective Synaptic Dampening (Foster et al. 2024): with diagonal Fishers F_D on the full
    data (forget + retain) and F_f on the forget set, every weight with F_f > alpha F_D is
    multiplied by min(lam F_D / F_f, 1); the rest are untouched. No training; `key` is unused.

    Since F_D = (|D_f| F_f + |D_r| F_r) / |D| >= (|D_f| / |D|) F_f, the ratio F_f / F_D never
    exceeds |D| / |D_f|: `alpha >= |D| / |D_f|` can select nothing and raises ValueError, as does
    any alpha that happens to select no weight (the model would be returned unchanged).
    """
    n_f, n_r = check_sets(forget, retain)
    alpha, lam = _positive(alpha, "alpha"), _positive(lam, "lam")
    bound = (n_f + n_r) / n_f
    if alpha >= bound:
        raise ValueError(f"alpha={alpha} can select no weight: F_forget / F_full <= |D|/|D_f| = {bound:.4g} "
                         f"always (F_full averages F_forget with weight |D_f|/|D|); choose alpha < {bound:.4g}")
    dt = _dtype(params)
    out = _ssd(loss_fn, int(chunk_size), params, forget, retain, jnp.asarray(alpha, dt), jnp.asarray(lam, dt))
    if not is_traced(out) and float(out.selected) == 0.0:
        raise ValueError(f"alpha={alpha} selected no weight (no parameter has F_forget > alpha * F_full); "
                         "the model would be unchanged: lower alpha")
    return _finish("ssd", out, "the Fisher diagonals are not finite; check params and data")
