"""The host training loop: jit-compiled chunks of steps, checkpoints at chosen steps, callbacks,
evaluations and a progress bar.

Steps run inside `lax.scan` in chunks of `steps_per_chunk` (one compilation, whatever the step
count); the host only wakes at chunk ends and at event steps (checkpoints, callbacks,
evaluations) to record, save and update the progress bar. The chunk program is cached by the loss
function and what the optimizer computes (`core.fingerprint`).
"""


from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from workbench.core.fingerprint import fingerprint
from workbench.core.losses import as_loss
from workbench.core.numerics import check_key, check_positive_int, num_examples
from workbench.core.progress import bar
from workbench.core.tree import check_same_structure
from workbench.models import Functional
from workbench.train.steps import (
    NonFiniteLossError,
    _batch,
    _full_batch,
    _learning_rate,
    batch_indices,
    stateful_step,
    step,
)

PyTree = Any

NONFINITE_POLICIES = ("raise", "stop")


class TrainResult(NamedTuple):
    """Final params, a history of numpy arrays, params at the checkpoint steps, whether the
    loss became non-finite (only with `on_nonfinite="stop"`), and the model's final
    non-parameter state (a `models.Functional`'s BatchNorm statistics, {} for a model without
    any; None when training took a plain loss function)."""

    params: PyTree
    history: dict[str, np.ndarray]
    checkpoints: dict[int, PyTree]
    diverged: bool
    state: PyTree = None


def _validate(num_steps, batch_size, n, checkpoint_steps, callback, callback_every, eval_fn, eval_every, on_nonfinite):
    check_positive_int("num_steps", num_steps, least=0)
    if batch_size is not None:
        check_positive_int("batch_size", batch_size)
    bad = [s for s in checkpoint_steps if not 0 <= s <= num_steps]
    if bad:
        raise ValueError(f"checkpoint_steps must lie in [0, num_steps={num_steps}], got {bad}")
    if callback is not None and callback_every <= 0:
        raise ValueError("callback needs callback_every > 0 (call it every that many steps)")
    if eval_fn is not None and eval_every <= 0:
        raise ValueError("eval_fn needs eval_every > 0 (evaluate every that many steps)")
    if on_nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"on_nonfinite must be one of {NONFINITE_POLICIES}, got {on_nonfinite!r}")
    if n == 0:
        raise ValueError("the training data is empty")


_RUNNERS: collections.OrderedDict = collections.OrderedDict()  # the 64 most recent chunk programs


def _chunk_runner(loss_fn, optimizer, full_batch: bool, steps_per_chunk: int, has_lr: bool, stateful: bool):
    """The jitted chunk of `steps_per_chunk` steps, cached per (loss_fn, optimizer, configuration) so
    repeated `train` calls compile once: the optimizer is compared by what it computes (a fresh
    `optax.adam(1e-3)` equals the last one), the loss function by identity."""
    key = (loss_fn, fingerprint(optimizer), full_batch, steps_per_chunk, has_lr, stateful)
    if key not in _RUNNERS:
        _RUNNERS[key] = _make_chunk_runner(loss_fn, optimizer, full_batch, steps_per_chunk, has_lr, stateful)
        if len(_RUNNERS) > 64:
            _RUNNERS.popitem(last=False)
    _RUNNERS.move_to_end(key)
    return _RUNNERS[key]


def _make_chunk_runner(loss_fn, optimizer, full_batch: bool, steps_per_chunk: int, has_lr: bool, stateful: bool):
    @jax.jit
    def run_chunk(params, opt_state, model_state, start, stop, last, data, indices, noise_key):
        # data and indices are arguments, not closed-over constants, so they stay out of the HLO.
        def one_step(carry, xs):
            params, opt_state, model_state, ok = carry
            step_index, active = xs
            batch = _batch(data, indices, step_index, full_batch)
            if stateful:  # a model with state: train_loss_fn, a dropout key per step (by index)
                key = None if noise_key is None else jax.random.fold_in(noise_key, step_index)
                new_params, new_state, loss, new_model_state = stateful_step(
                    loss_fn, optimizer, params, opt_state, model_state, batch, key)
            else:
                new_params, new_state, loss = step(loss_fn, optimizer, params, opt_state, batch)
                new_model_state = model_state
            take = active & ok & jnp.isfinite(loss)  # freeze once the loss is non-finite
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(take, a, b), new, old)
            lr = _learning_rate(new_state) if has_lr else jnp.zeros(())  # the rate this update used
            ok = ok & (jnp.isfinite(loss) | ~active)
            carry = (keep(new_params, params), keep(new_state, opt_state), keep(new_model_state, model_state), ok)
            return carry, (loss, lr)

        step_ids = start + jnp.arange(steps_per_chunk)
        active = step_ids < stop
        safe_ids = jnp.minimum(step_ids, last)
        init = (params, opt_state, model_state, jnp.array(True))
        carry, (losses, lrs) = jax.lax.scan(one_step, init, (safe_ids, active))
        return carry[0], carry[1], carry[2], losses, lrs

    return run_chunk


def train(
    loss_fn: Callable[[PyTree, Any], jax.Array] | Functional,
    params: PyTree,
    data: Any,
    key: jax.Array | None,
    *,
    optimizer: optax.GradientTransformation,
    num_steps: int,
    batch_size: int | None = None,
    checkpoint_steps: Sequence[int] = (),
    checkpoint_dir: str | Path | None = None,
    callback: Callable[[int, PyTree], dict | None] | None = None,
    callback_every: int = 0,
    eval_fn: Callable[[PyTree], dict] | None = None,
    eval_every: int = 0,
    on_nonfinite: str = "raise",
    progress: bool = True,
    steps_per_chunk: int = 100,
) -> TrainResult:
    """Minimise `loss_fn(params, batch)` over `data` with `optimizer` for `num_steps` steps.

    The history holds "step" and "loss" (the minibatch loss before each update), "lr" when the
    optimizer exposes a learning rate (optax.inject_hyperparams), and the callback/eval values.
    Steps run in jitted `lax.scan` chunks compiled once per (loss_fn, optimizer,
    steps_per_chunk): the optimizer is compared by what it computes, so a fresh
    `optax.adam(1e-3)` reuses the last program.

    A `models.Functional` may stand for `loss_fn`. A model without non-parameter state trains
    on its `loss_fn`. A model with state (BatchNorm, Dropout) trains on its `train_loss_fn`:
    each step runs the model in training mode (batch statistics, dropout on), the running
    statistics are updated inside the compiled step and returned as `TrainResult.state` (use
    `fn.with_state(result.state)` to analyse the trained model), and step i's dropout masks
    come from `fold_in(fold_in(key, 1), i)`, so they do not depend on `steps_per_chunk`. With
    such a model `callback(step, params, state)` and `eval_fn(params, state)` also receive the
    state (evaluate with `fn.with_state(state)`).

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, the mean loss of a batch, or a
            `models.Functional`.
        params: the initial parameters (pytree).
        data: the training data, a pytree of arrays with a leading example axis.
        key: draws the minibatch order (and a Functional's dropout masks); None only for
            full-batch training of a model without dropout.
        optimizer: the optax `GradientTransformation`.
        num_steps: the number of optimisation steps (0 runs only the step-0 events).
        batch_size: examples per step, sampled without replacement within each epoch from `key`;
            None (or >= the data size) trains full-batch.
        checkpoint_steps: steps after which params are kept in `checkpoints` (0 = initial params)
            and, with `checkpoint_dir`, written as `step_XXXXXXXX.msgpack` (flax serialization).
        checkpoint_dir: folder for the checkpoint files; None keeps them in memory only.
        callback: `callback(step, params) -> dict | None`, called at step 0, every
            `callback_every` steps and at the last step; returned values are stacked into the
            history under their keys, with their steps in `history["callback_step"]` (e.g.
            sharpness every k steps).
        callback_every: steps between callback calls (> 0 when `callback` is given).
        eval_fn: `eval_fn(params) -> dict`, at step 0, every `eval_every` steps and at the end;
            its steps go to `history["eval_step"]`.
        eval_every: steps between evaluations (> 0 when `eval_fn` is given).
        on_nonfinite: "raise" raises NonFiniteLossError at the first NaN/inf loss; "stop" ends
            training there and returns `diverged=True` with the history up to that step.
        progress: show a tqdm progress bar.
        steps_per_chunk: optimisation steps compiled into one program (the host wakes at least
            this often); the numbers do not depend on it.

    Returns:
        A `TrainResult(params, history, checkpoints, diverged)`.

    Raises:
        NonFiniteLossError: the loss became NaN or inf and `on_nonfinite="raise"`.
        ValueError: a bad argument (named in the message) or empty data.
        TypeError: `loss_fn` is neither callable nor a `models.Functional`.
    """
    key = None if key is None else check_key(key)
    model_state, noise_key, stateful = None, None, False
    if isinstance(loss_fn, Functional):
        fn = loss_fn
        stateful = bool(jax.tree.leaves(fn.state)) or fn.needs_key
        loss_fn = fn.train_loss_fn if stateful else fn.loss_fn
        model_state = fn.state  # returned as it is by a model without state
        if stateful:
            if fn.needs_key:
                if key is None:
                    raise ValueError(f"training draws dropout masks ({', '.join(fn.split.dropout)}) "
                                     "from key: pass a PRNG key, also for full-batch training")
                noise_key = jax.random.fold_in(key, 1)
    else:
        loss_fn = as_loss(loss_fn, role="objective", caller="train.train")
    steps = num_steps
    steps_per_chunk = check_positive_int("steps_per_chunk", steps_per_chunk)
    checkpoint_steps = sorted({int(s) for s in checkpoint_steps})
    n = num_examples(data)
    _validate(steps, batch_size, n, checkpoint_steps, callback, callback_every, eval_fn, eval_every, on_nonfinite)
    full_batch = _full_batch(batch_size, n, key)
    indices = None if full_batch else batch_indices(key, n, batch_size, steps)
    opt_state = optimizer.init(params)
    has_lr = _learning_rate(opt_state) is not None
    run_chunk = _chunk_runner(loss_fn, optimizer, full_batch, steps_per_chunk, has_lr, stateful)
    extra = (lambda: (model_state,)) if stateful else (lambda: ())  # what events also receive
    last = max(steps - 1, 0)

    events = set(checkpoint_steps) | {steps}
    if callback is not None:
        events |= set(range(0, steps + 1, callback_every))
    if eval_fn is not None:
        events |= set(range(0, steps + 1, eval_every))
    events = sorted(events)

    losses, lrs, checkpoints = [], [], {}
    cb_steps, cb_values, ev_steps, ev_values = [], [], [], []
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    diverged = False

    def handle_events(step):
        if step in checkpoint_steps:
            checkpoints[step] = params
            if folder is not None:
                save_checkpoint(folder / f"step_{step:08d}.msgpack", params)
        if callback is not None and (step % callback_every == 0 or step == steps):
            cb_steps.append(step)
            cb_values.append(dict(callback(step, params, *extra()) or {}))
        if eval_fn is not None and (step % eval_every == 0 or step == steps):
            ev_steps.append(step)
            ev_values.append(dict(eval_fn(params, *extra())))

    done = 0
    handle_events(0)
    with bar(total=steps, disable=not progress, desc="train", unit="steps") as pbar:
        for target in events:
            while done < target:
                stop = min(done + steps_per_chunk, target)
                params, opt_state, model_state, chunk_losses, chunk_lrs = run_chunk(
                    params, opt_state, model_state, done, stop, last, data, indices, noise_key
                )
                chunk_losses = np.asarray(chunk_losses[: stop - done])
                bad = np.flatnonzero(~np.isfinite(chunk_losses))
                if bad.size:
                    first = done + int(bad[0])
                    if on_nonfinite == "raise":
                        raise NonFiniteLossError(
                            f"loss became {chunk_losses[bad[0]]} at step {first}; lower the learning "
                            "rate or pass on_nonfinite='stop' to keep the history up to divergence"
                        )
                    losses.append(chunk_losses[: bad[0] + 1])
                    lrs.append(np.asarray(chunk_lrs[: bad[0] + 1]))
                    diverged, done = True, first
                    pbar.update(int(bad[0]) + 1)
                    break
                losses.append(chunk_losses)
                lrs.append(np.asarray(chunk_lrs[: stop - done]))
                pbar.update(stop - done)
                pbar.set_postfix(loss=f"{chunk_losses[-1]:.4g}")
                done = stop
            if diverged:
                break
            if target > 0:
                handle_events(target)

    history: dict[str, np.ndarray] = {}
    loss_arr = np.concatenate(losses) if losses else np.zeros(0)
    history["step"] = np.arange(loss_arr.shape[0])
    history["loss"] = loss_arr
    if has_lr:
        history["lr"] = np.concatenate(lrs) if lrs else np.zeros(0)
    _stack_into(history, "callback_step", cb_steps, cb_values)
    _stack_into(history, "eval_step", ev_steps, ev_values)
    return TrainResult(params, history, checkpoints, diverged, model_state)


def _stack_into(history: dict, step_key: str, steps: list[int], values: list[dict]) -> None:
    if not steps:
        return
    history[step_key] = np.asarray(steps)
    for name in values[0]:
        if name in history:
            raise ValueError(f"callback/eval key {name!r} collides with a history key")
        history[name] = np.asarray([np.asarray(v[name]) for v in values])


def save_checkpoint(path: str | Path, params: PyTree) -> Path:
    """Write params with flax serialization (msgpack), atomically (temporary file, then rename).

    Args:
        path: the file to write (its folder is created).
        params: the parameters (pytree of arrays).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(serialization.to_bytes(jax.device_get(params)))
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path, like: PyTree) -> PyTree:
    """Read params saved by `save_checkpoint`.

    Args:
        path: the file `save_checkpoint` wrote.
        like: a pytree with the expected structure (e.g. the initial params).

    Returns:
        The params, as a pytree of jax arrays shaped like `like`.

    Raises:
        ValueError: the file does not hold params of `like`'s structure.
    """
    try:
        restored = serialization.from_bytes(like, Path(path).read_bytes())
    except ValueError as err:
        raise ValueError(f"checkpoint {path} does not match the expected params: {err}") from err
    check_same_structure(like, restored, "the expected params", f"checkpoint {path}")
    return jax.tree.map(jnp.asarray, restored)
