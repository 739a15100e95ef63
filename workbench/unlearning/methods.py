"""Unlearning methods: pure functions `(loss_fn, params, forget, retain, key, **options) -> Unlearned`
(SSD, which draws nothing at random, takes no key).

`loss_fn(params, batch)` is the training objective (a mean over the batch); `forget` and
`retain` are pytrees of arrays with a leading example axis (e.g. `Dataset(x, y)` halves built by
`split`). Methods that compare outputs (SCRUB, oracle and datamodel matching) also take
`predict_fn(params, x) -> logits`. Fine-tuning runs through `workbench.train.optimize_streams`
(one `workbench.train.step` per iteration inside one loop), compiled once per (loss_fn,
predict_fn, optimizer_name, static sizes); learning rates, weights and step counts are traced
arguments, so sweeps over them do not recompile.

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

from workbench.core.numerics import check_positive_int, num_examples
from workbench.train import NonFiniteLossError, batch_indices, optimize_streams, step
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
    check_positive_int("num_steps", num_steps)
    check_positive_int("batch_size", batch_size)


def _optimizer(name: str):
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer_name must be one of {sorted(OPTIMIZERS)}, got {name!r}")
    return OPTIMIZERS[name]


def _finish(method: str, result, hint: str):
    """`result` (any NamedTuple with `params` and `losses`) unless the objective or the params
    became NaN/inf, then NonFiniteLossError (skipped under tracing; `many` checks after its
    vmapped call)."""
    if is_traced(result):
        return result
    losses = np.asarray(result.losses)
    bad = np.argwhere(~np.isfinite(losses))
    if bad.size:
        where = tuple(bad[0])
        model = f" (model {where[0]})" if losses.ndim == 2 else ""
        raise NonFiniteLossError(f"{method}: the objective became {losses[where]} at step "
                                 f"{where[-1]}{model}; {hint}")
    for leaf in jax.tree.leaves(result.params):
        if not np.isfinite(np.asarray(leaf)).all():  # on the host: no compiled program per shape
            raise NonFiniteLossError(f"{method}: the unlearned params hold NaN or inf; {hint}")
    return result


def _dtype(params):
    return jnp.result_type(*jax.tree.leaves(params))


MIN_STEP_BUCKET = 128


def step_bucket(num_steps: int) -> int:
    """The static loop length compiled for `num_steps` steps.

    The next power of two, at least MIN_STEP_BUCKET. The step count itself is a traced argument
    of the fine-tuning programs, so every count up to the bucket shares one program (a sweep over
    step counts compiles once).

    Args:
      num_steps: the optimisation steps asked for, a positive int.

    Returns:
      The loop length (`max_steps` of `workbench.train.optimize_streams`), >= `num_steps`.
    """
    return max(MIN_STEP_BUCKET, 1 << max(0, int(num_steps) - 1).bit_length())


def _one(dtype):
    return jnp.ones((), dtype)


# ----------------------------------------------------------------------------- retraining (oracle)


@functools.partial(jax.jit, static_argnames=("loss_fn", "init_fn", "optimizer_name", "num_steps", "batch_size"))
def _retrain(loss_fn, init_fn, optimizer_name, num_steps, batch_size, retain, key, lr):
    k_init, k_data = jax.random.split(key)
    p0 = init_fn(k_init)
    objective = lambda p, b: loss_fn(p, b[0])
    params, losses = optimize_streams(objective, p0, (retain,), k_data, optimizer=OPTIMIZERS[optimizer_name](lr),
                                      num_steps=num_steps, batch_sizes=(batch_size,))
    return Unlearned(params, losses, _one(_dtype(params)))


def retrain(loss_fn: Callable, params: PyTree, forget: PyTree, retain: PyTree, key: jax.Array, *,
            init_fn: Callable[[jax.Array], PyTree], learning_rate: float, num_steps: int,
            batch_size: int = 128, optimizer_name: str = "adam") -> Unlearned:
    """The oracle: train from `init_fn(key)` on `retain` only.

    The gold standard every other method is judged against: a model that never saw the forget
    set. The same key gives the same oracle.

    Args:
      loss_fn: `loss_fn(params, batch) -> scalar`, the training objective (a batch mean).
      params: the trained model; gives nothing but the structure the result must have.
      forget: the examples to forget (only checked against `retain`).
      retain: the examples to keep, a pytree with a leading example axis.
      key: draws the initialisation (`init_fn`) and the minibatch order.
      init_fn: `init_fn(key) -> params`, the initialisation of a fresh model.
      learning_rate: the optimiser's step size, positive.
      num_steps: optimisation steps, a positive int.
      batch_size: retain examples per step.
      optimizer_name: "adam" or "sgd" (a name, so the learning rate stays a traced value).

    Returns:
      `Unlearned(params, losses [num_steps], selected=1)` of `retrain`.

    Raises:
      ValueError: on bad sets or arguments, or when `init_fn` builds another structure.
      NonFiniteLossError: when the training loss or the params become NaN/inf.
    """
    check_sets(forget, retain)
    _steps(num_steps, batch_size)
    _optimizer(optimizer_name)
    lr = jnp.asarray(_positive(learning_rate, "learning_rate"), _dtype(params))
    out = _retrain(loss_fn, init_fn, optimizer_name, int(num_steps), int(batch_size), retain, key, lr)
    if jax.tree.structure(out.params) != jax.tree.structure(params):
        raise ValueError("init_fn(key) must return params with the structure of `params`")
    return _finish("retrain", out, "lower learning_rate")


# ----------------------------------------------------------------------------- gradient ascent, NegGrad+


@functools.partial(jax.jit, static_argnames=("loss_fn", "optimizer_name", "length", "batch_size"))
def _neggrad(loss_fn, optimizer_name, length, batch_size, params, forget, retain, key, lr, retain_weight,
             num_steps):
    def objective(p, batches):
        f, r = batches
        return retain_weight * loss_fn(p, r) - (1 - retain_weight) * loss_fn(p, f)

    params, losses = optimize_streams(objective, params, (forget, retain), key,
                                      optimizer=OPTIMIZERS[optimizer_name](lr), num_steps=num_steps,
                                      batch_sizes=(batch_size, batch_size), max_steps=length)
    return Unlearned(params, losses, _one(_dtype(params)))


def gradient_ascent(loss_fn: Callable, params: PyTree, forget: PyTree, retain: PyTree, key: jax.Array, *,
                    learning_rate: float, num_steps: int, batch_size: int = 64,
                    optimizer_name: str = "sgd") -> Unlearned:
    """Ascend the training loss on the forget set: NegGrad+ with `retain_weight=0`.

    The simplest method, and the one whose result falls off a cliff as learning rate and steps
    grow. `retain` is only checked, never used.

    Args:
      loss_fn: `loss_fn(params, batch) -> scalar`, the training objective (a batch mean).
      params: the trained model's params.
      forget: the examples to forget, a pytree with a leading example axis.
      retain: the examples to keep (checked: non-empty, disjoint from `forget`).
      key: draws the minibatch order.
      learning_rate: the optimiser's step size, positive.
      num_steps: optimisation steps, a positive int (traced: every count shares one program).
      batch_size: forget examples per step.
      optimizer_name: "sgd" or "adam".

    Returns:
      `Unlearned(params, losses [num_steps], selected=1)`; `losses` is minus the forget loss.

    Raises:
      ValueError: on bad sets or arguments.
      NonFiniteLossError: when the ascent diverges (NaN/inf objective or params).
    """
    return _neggrad_plus("gradient_ascent", loss_fn, params, forget, retain, key, learning_rate, num_steps,
                         batch_size, 0.0, optimizer_name)


def neggrad_plus(loss_fn: Callable, params: PyTree, forget: PyTree, retain: PyTree, key: jax.Array, *,
                 learning_rate: float, num_steps: int, batch_size: int = 64, retain_weight: float = 0.9,
                 optimizer_name: str = "sgd") -> Unlearned:
    """NegGrad+ (Kurmanji et al. 2023): descend on the retain set while ascending on the forget set.

    Each step minimises `retain_weight * L(retain batch) - (1 - retain_weight) * L(forget batch)`
    on one minibatch of each set; `retain_weight=0` is plain gradient ascent.

    Args:
      loss_fn: `loss_fn(params, batch) -> scalar`, the training objective (a batch mean).
      params: the trained model's params.
      forget: the examples to forget, a pytree with a leading example axis.
      retain: the examples to keep, disjoint from `forget`.
      key: draws the minibatch orders of both sets.
      learning_rate: the optimiser's step size, positive.
      num_steps: optimisation steps, a positive int (traced: every count shares one program).
      batch_size: examples per step from each set.
      retain_weight: the weight w in [0, 1) of the retain loss (1 would ignore the forget set).
      optimizer_name: "sgd" or "adam".

    Returns:
      `Unlearned(params, losses [num_steps], selected=1)` of `neggrad_plus`.

    Raises:
      ValueError, NonFiniteLossError: bad sets or arguments; a NaN/inf objective or params.
    """
    return _neggrad_plus("neggrad_plus", loss_fn, params, forget, retain, key, learning_rate, num_steps, batch_size,
                         retain_weight, optimizer_name)


def _neggrad_plus(name, loss_fn, params, forget, retain, key, learning_rate, num_steps, batch_size, retain_weight,
                  optimizer_name) -> Unlearned:
    check_sets(forget, retain)
    _steps(num_steps, batch_size)
    _optimizer(optimizer_name)
    w = float(retain_weight)
    if not 0.0 <= w < 1.0:
        raise ValueError(f"retain_weight must lie in [0, 1) (1 would ignore the forget set), got {w}")
    dt = _dtype(params)
    out = _neggrad(loss_fn, optimizer_name, step_bucket(num_steps), int(batch_size), params, forget, retain, key,
                   jnp.asarray(_positive(learning_rate, "learning_rate"), dt), jnp.asarray(w, dt),
                   jnp.asarray(int(num_steps), jnp.int32))  # traced: one program for every count
    out = out._replace(losses=out.losses[: int(num_steps)])
    return _finish(name, out, "lower learning_rate or num_steps (ascent on an unbounded loss diverges)")


# ----------------------------------------------------------------------------- SCRUB


def _kl_logits(teacher, student):
    """Mean over examples of KL(softmax(teacher) || softmax(student))."""
    lt, ls = jax.nn.log_softmax(teacher), jax.nn.log_softmax(student)
    return jnp.mean(jnp.sum(jnp.exp(lt) * (lt - ls), axis=-1))


@functools.partial(jax.jit, static_argnames=("loss_fn", "predict_fn", "optimizer_name", "num_steps", "max_steps",
                                             "batch_size"))
def _scrub(loss_fn, predict_fn, optimizer_name, num_steps, max_steps, batch_size, params, forget, retain, key, lr,
           ce_weight):
    opt = OPTIMIZERS[optimizer_name](lr)
    teacher = params
    k_f, k_r = jax.random.split(key)
    n_f, n_r = num_examples(forget, "forget"), num_examples(retain, "retain")
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
          batch_size: int = 64, ce_weight: float = 1.0, optimizer_name: str = "sgd") -> Unlearned:
    """SCRUB (Kurmanji et al. 2023): the original model teaches a student to disagree on the forget set.

    Each step first takes a "max" step raising KL(teacher || student) on a forget batch (only in
    the first `max_steps` steps), then a "min" step lowering KL on a retain batch plus
    `ce_weight` times the training loss there. The loss reported per step is the sum of the two
    objectives. Two optimiser steps per iteration, so SCRUB keeps its own loop rather than
    `workbench.train.optimize_streams`.

    Args:
      loss_fn: `loss_fn(params, batch) -> scalar`, the training objective (a batch mean).
      params: the trained model's params: the teacher and the student's start.
      forget: the examples to forget, (x, y) pairs with a leading example axis.
      retain: the examples to keep, disjoint from `forget`.
      key: draws the minibatch orders of both sets.
      predict_fn: `predict_fn(params, x) -> logits` [n, C].
      learning_rate: the optimiser's step size, positive.
      num_steps: iterations (each a min step, and a max step among the first `max_steps`).
      max_steps: iterations that take a max step, in [0, num_steps]; None means num_steps // 2.
      batch_size: examples per step from each set.
      ce_weight: the weight of the training loss in the min step.
      optimizer_name: "sgd" or "adam".

    Returns:
      `Unlearned(params, losses [num_steps], selected=1)` of `scrub`.

    Raises:
      ValueError, NonFiniteLossError: bad sets or arguments; a NaN/inf objective or params.
    """
    check_sets(forget, retain)
    _steps(num_steps, batch_size)
    _optimizer(optimizer_name)
    max_steps = num_steps // 2 if max_steps is None else check_positive_int("max_steps", max_steps, least=0)
    if max_steps > num_steps:
        raise ValueError(f"max_steps must lie in [0, num_steps={num_steps}], got {max_steps}")
    dt = _dtype(params)
    out = _scrub(loss_fn, predict_fn, optimizer_name, int(num_steps), max_steps, int(batch_size), params, forget,
                 retain, key, jnp.asarray(_positive(learning_rate, "learning_rate"), dt),
                 jnp.asarray(float(ce_weight), dt))
    return _finish("scrub", out, "lower learning_rate or max_steps")
