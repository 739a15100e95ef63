"""Optax training loop: jit-compiled chunks of steps, checkpoints at chosen steps, deterministic.

Steps run inside `lax.scan` in fixed-size chunks (one compilation, whatever the step count);
the host only wakes at chunk ends and at event steps (checkpoints, callbacks, evaluations) to
record, save and update the progress bar.
"""

from __future__ import annotations

import collections
import functools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from workbench.core.numerics import num_examples
from workbench.core.progress import bar
from workbench.core.tree import check_same_structure

PyTree = Any
NONFINITE_POLICIES = ("raise", "stop")


class TrainResult(NamedTuple):
    """Final params, a history of numpy arrays, params at the checkpoint steps, and whether the
    loss became non-finite (only with `on_nonfinite="stop"`)."""

    params: PyTree
    history: dict[str, np.ndarray]
    checkpoints: dict[int, PyTree]
    diverged: bool


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


def batch_indices(key: jax.Array, num_examples: int, batch_size: int, steps: int) -> jax.Array:
    """[steps, batch_size] example indices: a fresh permutation each epoch, last partial batch
    of each epoch dropped so every step sees `batch_size` distinct examples."""
    per_epoch = num_examples // batch_size
    epochs = math.ceil(steps / per_epoch)
    perms = jax.vmap(lambda k: jax.random.permutation(k, num_examples))(jax.random.split(key, epochs))
    return perms[:, : per_epoch * batch_size].reshape(-1, batch_size)[:steps]


def _validate(num_steps, batch_size, n, checkpoint_steps, callback, callback_every, eval_fn, eval_every, on_nonfinite):
    if not isinstance(num_steps, int | np.integer) or num_steps < 0:
        raise ValueError(f"num_steps must be a non-negative int, got {num_steps!r}")
    if batch_size is not None and not (isinstance(batch_size, int | np.integer) and 1 <= batch_size):
        raise ValueError(f"batch_size must be a positive int or None (full batch), got {batch_size!r}")
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


def _learning_rate(opt_state) -> jax.Array | None:
    """The current learning rate if the optimizer exposes it (optax.inject_hyperparams)."""
    for state in jax.tree.leaves(opt_state, is_leaf=lambda s: hasattr(s, "hyperparams")):
        if hasattr(state, "hyperparams") and "learning_rate" in state.hyperparams:
            return state.hyperparams["learning_rate"]
    return None


def step(loss_fn: Callable, optimizer: optax.GradientTransformation, params: PyTree, opt_state: PyTree, batch: Any):
    """One optax step: (new params, new optimizer state, the loss at `params` before the update).

    The one training step of the package: `train`, `optimize` and every recipe go through it.
    """
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def _full_batch(batch_size, n: int, key) -> bool:
    full = batch_size is None or batch_size >= n
    if not full and key is None:
        raise ValueError("minibatch training needs a key (it draws the batch order); key=None "
                         "is only for full-batch training")
    return full


def _batch(data, indices, step_index, full_batch: bool):
    return data if full_batch else jax.tree.map(lambda a: a[indices[step_index]], data)


def optimize(loss_fn: Callable[[PyTree, Any], jax.Array], params: PyTree, data: Any, key: jax.Array | None,
             *, optimizer: optax.GradientTransformation, num_steps: int,
             batch_size: int | None = None) -> tuple[PyTree, jax.Array]:
    """`num_steps` optax steps inside one `lax.scan`: (final params, losses [num_steps]).

    A pure function (no host work, no events): use it under `jit`/`vmap`, e.g. to train many
    seeds or subspaces at once. Minibatches come from `batch_indices(key, ...)`, as in `train`.
    """
    n = num_examples(data)
    full_batch = _full_batch(batch_size, n, key)
    indices = None if full_batch else batch_indices(key, n, batch_size, num_steps)

    def body(carry, i):
        p, s = carry
        p, s, loss = step(loss_fn, optimizer, p, s, _batch(data, indices, i, full_batch))
        return (p, s), loss

    (params, _), losses = jax.lax.scan(body, (params, optimizer.init(params)), jnp.arange(num_steps))
    return params, losses


class _Same:
    """Equality by identity for a value the fingerprint cannot read; holding the value keeps
    its id from being reused while a cache entry refers to it."""

    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return isinstance(other, _Same) and other.value is self.value

    def __hash__(self):
        return id(self.value)


def _fingerprint(value, seen=()):
    """A hashable key equal for two optimizers built by the same calls with the same numbers
    (e.g. `optax.adam(1e-3)` in a notebook cell run twice): functions by code, defaults and
    closure contents, containers by their items, scalars and small arrays by value. Anything
    else, and any cycle, is keyed by identity (a new object compiles anew, as before)."""
    if value is None or isinstance(value, bool | int | float | complex | str | bytes):
        return (type(value), value)
    if id(value) in seen:
        return _Same(value)
    seen = (*seen, id(value))
    if isinstance(value, tuple | list):
        return (type(value), tuple(_fingerprint(v, seen) for v in value))
    if isinstance(value, dict):
        return (dict, tuple((k, _fingerprint(v, seen)) for k, v in sorted(value.items(), key=lambda kv: repr(kv[0]))))
    if isinstance(value, np.ndarray | jax.Array | np.generic) and np.size(value) <= 64:
        array = np.asarray(value)
        return (np.ndarray, array.dtype.str, array.shape, array.tobytes())
    if isinstance(value, functools.partial):
        return (functools.partial, _fingerprint(value.func, seen), _fingerprint(value.args, seen),
                _fingerprint(value.keywords, seen))
    code = getattr(value, "__code__", None)
    if code is not None and not hasattr(value, "__self__"):
        cells = tuple(_contents(c) for c in (value.__closure__ or ()))
        return (code, _fingerprint(value.__defaults__, seen), _fingerprint(value.__kwdefaults__, seen),
                _fingerprint(cells, seen))
    return _Same(value)


def _contents(cell):
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell (a closure variable not assigned yet): compare by identity
        return _Same(cell)


_RUNNERS: collections.OrderedDict = collections.OrderedDict()  # the 64 most recent chunk programs


def _chunk_runner(loss_fn, optimizer, full_batch: bool, chunk_size: int, has_lr: bool):
    """The jitted chunk of `chunk_size` steps, cached per (loss_fn, optimizer, configuration) so
    repeated `train` calls compile once: the optimizer is compared by what it computes (a fresh
    `optax.adam(1e-3)` equals the last one), the loss function by identity."""
    key = (loss_fn, _fingerprint(optimizer), full_batch, chunk_size, has_lr)
    if key not in _RUNNERS:
        _RUNNERS[key] = _make_chunk_runner(loss_fn, optimizer, full_batch, chunk_size, has_lr)
        if len(_RUNNERS) > 64:
            _RUNNERS.popitem(last=False)
    _RUNNERS.move_to_end(key)
    return _RUNNERS[key]


def _make_chunk_runner(loss_fn, optimizer, full_batch: bool, chunk_size: int, has_lr: bool):
    @jax.jit
    def run_chunk(params, opt_state, start, stop, last, data, indices):
        # data and indices are arguments, not closed-over constants, so they stay out of the HLO.
        def one_step(carry, xs):
            params, opt_state, ok = carry
            step_index, active = xs
            new_params, new_state, loss = step(
                loss_fn, optimizer, params, opt_state, _batch(data, indices, step_index, full_batch)
            )
            take = active & ok & jnp.isfinite(loss)  # freeze once the loss is non-finite
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(take, a, b), new, old)
            lr = _learning_rate(new_state) if has_lr else jnp.zeros(())  # the rate this update used
            ok = ok & (jnp.isfinite(loss) | ~active)
            return (keep(new_params, params), keep(new_state, opt_state), ok), (loss, lr)

        step_ids = start + jnp.arange(chunk_size)
        active = step_ids < stop
        safe_ids = jnp.minimum(step_ids, last)
        carry, (losses, lrs) = jax.lax.scan(one_step, (params, opt_state, jnp.array(True)), (safe_ids, active))
        return carry[0], carry[1], losses, lrs

    return run_chunk


def train(
    loss_fn: Callable[[PyTree, Any], jax.Array],
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
    chunk_size: int = 100,
) -> TrainResult:
    """Minimise `loss_fn(params, batch)` over `data` with `optimizer` for `num_steps` steps.

    Args:
      key: draws the minibatch order; None only for full-batch training.
      batch_size: examples per step, sampled without replacement within each epoch from `key`;
        None (or >= the data size) trains full-batch.
      checkpoint_steps: steps after which params are kept in `checkpoints` (0 = initial params)
        and, with `checkpoint_dir`, written as `step_XXXXXXXX.msgpack` (flax serialization).
      callback: `callback(step, params) -> dict | None`, called at step 0, every `callback_every`
        steps and at the last step; returned values are stacked into the history under their
        keys, with their steps in `history["callback_step"]` (e.g. sharpness every k steps).
      eval_fn: `eval_fn(params) -> dict`, at step 0, every `eval_every` steps and at the end.
      on_nonfinite: "raise" raises NonFiniteLossError at the first NaN/inf loss; "stop" ends
        training there and returns `diverged=True` with the history up to that step.

    The history holds "step" and "loss" (the minibatch loss before each update), "lr" when the
    optimizer exposes a learning rate (optax.inject_hyperparams), and the callback/eval values.
    Steps run in jitted `lax.scan` chunks compiled once per (loss_fn, optimizer, chunk_size).
    """
    steps = num_steps
    checkpoint_steps = sorted({int(s) for s in checkpoint_steps})
    n = num_examples(data)
    _validate(steps, batch_size, n, checkpoint_steps, callback, callback_every, eval_fn, eval_every, on_nonfinite)
    full_batch = _full_batch(batch_size, n, key)
    indices = None if full_batch else batch_indices(key, n, batch_size, steps)
    opt_state = optimizer.init(params)
    has_lr = _learning_rate(opt_state) is not None
    run_chunk = _chunk_runner(loss_fn, optimizer, full_batch, int(chunk_size), has_lr)
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
            cb_values.append(dict(callback(step, params) or {}))
        if eval_fn is not None and (step % eval_every == 0 or step == steps):
            ev_steps.append(step)
            ev_values.append(dict(eval_fn(params)))

    done = 0
    handle_events(0)
    with bar(total=steps, disable=not progress, desc="train", unit="steps") as pbar:
        for target in events:
            while done < target:
                stop = min(done + chunk_size, target)
                params, opt_state, chunk_losses, chunk_lrs = run_chunk(
                    params, opt_state, done, stop, last, data, indices
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
    return TrainResult(params, history, checkpoints, diverged)


def _stack_into(history: dict, step_key: str, steps: list[int], values: list[dict]) -> None:
    if not steps:
        return
    history[step_key] = np.asarray(steps)
    for name in values[0]:
        if name in history:
            raise ValueError(f"callback/eval key {name!r} collides with a history key")
        history[name] = np.asarray([np.asarray(v[name]) for v in values])


def save_checkpoint(path: str | Path, params: PyTree) -> Path:
    """Write params with flax serialization (msgpack), atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(serialization.to_bytes(jax.device_get(params)))
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path, like: PyTree) -> PyTree:
    """Read params saved by `save_checkpoint`; `like` gives the structure (e.g. the initial params)."""
    try:
        restored = serialization.from_bytes(like, Path(path).read_bytes())
    except ValueError as err:
        raise ValueError(f"checkpoint {path} does not match the expected params: {err}") from err
    check_same_structure(like, restored, "the expected params", f"checkpoint {path}")
    return jax.tree.map(jnp.asarray, restored)


def optimize_streams(objective: Callable[[PyTree, tuple], jax.Array], params: PyTree, streams: Sequence[Any],
                     key: jax.Array, *, optimizer: optax.GradientTransformation, num_steps: int | jax.Array,
                     batch_sizes: Sequence[int], max_steps: int | None = None,
                     step_keys: bool = False) -> tuple[PyTree, jax.Array]:
    """`num_steps` optax steps of an objective that reads one minibatch from each of several data
    streams: (final params, losses [max_steps]).

    Step i calls `step(objective, optimizer, params, state, batches)` with `batches[j]` the i-th
    minibatch of `streams[j]` (`batch_indices` of its own key, so without replacement within
    each pass over that stream) and, with `step_keys`, a fresh key appended as the last element
    (`(*batches, key_i)`: for objectives that draw noise, e.g. a denoising loss). Unlearning
    needs this rather than `optimize`: its objectives mix a forget and a retain batch, and its
    step count is a traced value, so a sweep over step counts compiles once.

    A pure function for use under `jit`/`vmap`. With a static `max_steps` >= `num_steps`,
    `num_steps` may be traced: the loop runs exactly `num_steps` steps (a while loop, no wasted
    steps) and `losses` has `max_steps` entries, the first `num_steps` filled and the rest 0.
    The minibatches and step keys are drawn for `max_steps` steps; their first `num_steps` rows
    are the ones `num_steps` alone would draw (a split key does not depend on how many are drawn),
    so the numbers do not depend on `max_steps`.

    Args:
      objective: `objective(params, batches) -> scalar`, batches a tuple of one minibatch per
        stream (plus the step key with `step_keys`).
      params: the initial params pytree.
      streams: the data sets, each a pytree of arrays with a leading example axis.
      key: draws each stream's minibatch order (split once per stream, plus one for step keys).
      optimizer: the optax transformation; its state starts at `optimizer.init(params)`.
      num_steps: optimisation steps, a positive int, or a traced int32 scalar with `max_steps`.
      batch_sizes: examples per minibatch of each stream (one per stream; a size >= the stream's
        length takes the whole stream every step).
      max_steps: the static loop length compiled; None means `num_steps` (then a Python int).
      step_keys: append a per-step key to the batches.

    Returns:
      `(params, losses)`: the params after `num_steps` steps and the objective before each step
      ([max_steps], in the params' dtype).

    Raises:
      ValueError: when the streams and batch sizes differ in number, or a size is not a positive
        int.
    """
    from workbench.core.numerics import check_positive_int

    if len(streams) != len(batch_sizes):
        raise ValueError(f"one batch size per stream: got {len(streams)} streams and {len(batch_sizes)} sizes")
    for size in batch_sizes:
        check_positive_int("batch_sizes", size)
    length = check_positive_int("num_steps" if max_steps is None else "max_steps",
                                num_steps if max_steps is None else max_steps)
    keys = jax.random.split(key, len(streams) + (1 if step_keys else 0))
    indices = []
    for k, data, size in zip(keys, streams, batch_sizes):
        n = num_examples(data, "each stream")
        indices.append(batch_indices(k, n, min(int(size), n), length))
    step_key = jax.random.split(keys[-1], length) if step_keys else None

    def body(i, carry):
        p, s, losses = carry
        batches = tuple(jax.tree.map(lambda a, ix=ix: a[ix[i]], d) for d, ix in zip(streams, indices))
        if step_keys:
            batches = (*batches, step_key[i])
        p, s, loss = step(objective, optimizer, p, s, batches)
        return p, s, losses.at[i].set(loss.astype(losses.dtype))

    dtype = jnp.result_type(*jax.tree.leaves(params))
    init = (params, optimizer.init(params), jnp.zeros((length,), dtype))
    params, _, losses = jax.lax.fori_loop(0, num_steps, body, init)
    return params, losses
