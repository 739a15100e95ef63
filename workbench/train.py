"""Optax training loop: jit-compiled chunks of steps, checkpoints at chosen steps, deterministic.

- `step(loss_fn, optimizer, params, opt_state, batch)`: the one optax step of the package.
- `optimize(...)`: `num_steps` steps in one `lax.scan`, a pure function (under `jit`/`vmap`).
- `train(...)`: the host loop with checkpoints, callbacks, evaluations and a progress bar.
  Steps run inside `lax.scan` in chunks of `steps_per_chunk` (one compilation, whatever the
  step count); the host only wakes at chunk ends and at event steps (checkpoints, callbacks,
  evaluations) to record, save and update the progress bar.
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

from workbench.core.numerics import check_positive_int, num_examples
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


class StepResult(NamedTuple):
    """One optax step: the updated params and optimizer state, and the loss at the params
    before the update."""

    params: PyTree
    opt_state: PyTree
    loss: jax.Array


class OptimizeResult(NamedTuple):
    """The params after `num_steps` optax steps and the loss before each step [num_steps]."""

    params: PyTree
    losses: jax.Array


def batch_indices(key: jax.Array, num_examples: int, batch_size: int, num_steps: int) -> jax.Array:
    """Example indices of every minibatch of a run: a fresh permutation each epoch.

    The last partial batch of each epoch is dropped, so every step sees `batch_size` distinct
    examples and every epoch's batches are disjoint. Epoch e draws its permutation from
    `jax.random.split(key, epochs)[e]`, so a longer run extends a shorter one's batches.

    Args:
        key: PRNG key drawing the permutations.
        num_examples: the number of examples N to draw from (indices lie in [0, N)).
        batch_size: examples per step, at most `num_examples`.
        num_steps: how many steps (rows) to return.

    Returns:
        int32 array [num_steps, batch_size] of example indices.
    """
    per_epoch = num_examples // batch_size
    epochs = math.ceil(num_steps / per_epoch)
    perms = jax.vmap(lambda k: jax.random.permutation(k, num_examples))(jax.random.split(key, epochs))
    return perms[:, : per_epoch * batch_size].reshape(-1, batch_size)[:num_steps]


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


def _learning_rate(opt_state) -> jax.Array | None:
    """The current learning rate if the optimizer exposes it (optax.inject_hyperparams)."""
    for state in jax.tree.leaves(opt_state, is_leaf=lambda s: hasattr(s, "hyperparams")):
        if hasattr(state, "hyperparams") and "learning_rate" in state.hyperparams:
            return state.hyperparams["learning_rate"]
    return None


def step(loss_fn: Callable, optimizer: optax.GradientTransformation, params: PyTree, opt_state: PyTree,
         batch: Any) -> StepResult:
    """One optax step: the gradient of `loss_fn` at `params` on `batch`, transformed and applied.

    The one training step of the package: `train`, `optimize` and every recipe go through it.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, the mean loss of a batch.
        optimizer: the optax `GradientTransformation` making the update.
        params: the current parameters (pytree).
        opt_state: the optimizer's state for `params` (`optimizer.init(params)` at the start).
        batch: the batch the gradient is taken on (any pytree `loss_fn` accepts).

    Returns:
        A `StepResult(params, opt_state, loss)`: the updated params and state, and the loss at
        `params` before the update.
    """
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return StepResult(optax.apply_updates(params, updates), opt_state, loss)


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
             batch_size: int | None = None) -> OptimizeResult:
    """`num_steps` optax steps inside one `lax.scan`, from `optimizer.init(params)`.

    A pure function (no host work, no events): use it under `jit`/`vmap`, e.g. to train many
    seeds or subspaces at once. Minibatches come from `batch_indices(key, ...)`, as in `train`.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, the mean loss of a batch.
        params: the initial parameters (pytree).
        data: the training data, a pytree of arrays with a leading example axis.
        key: PRNG key drawing the minibatch order; None only for full-batch training.
        optimizer: the optax `GradientTransformation`.
        num_steps: the number of steps.
        batch_size: examples per step; None (or >= the data size) trains full-batch.

    Returns:
        An `OptimizeResult(params, losses)`: the final params and the loss before each step
        [num_steps].

    Raises:
        ValueError: minibatch training without a key, or empty data.
    """
    n = num_examples(data)
    full_batch = _full_batch(batch_size, n, key)
    indices = None if full_batch else batch_indices(key, n, batch_size, num_steps)

    def body(carry, i):
        p, s = carry
        p, s, loss = step(loss_fn, optimizer, p, s, _batch(data, indices, i, full_batch))
        return (p, s), loss

    (params, _), losses = jax.lax.scan(body, (params, optimizer.init(params)), jnp.arange(num_steps))
    return OptimizeResult(params, losses)


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


def _chunk_runner(loss_fn, optimizer, full_batch: bool, steps_per_chunk: int, has_lr: bool):
    """The jitted chunk of `steps_per_chunk` steps, cached per (loss_fn, optimizer, configuration) so
    repeated `train` calls compile once: the optimizer is compared by what it computes (a fresh
    `optax.adam(1e-3)` equals the last one), the loss function by identity."""
    key = (loss_fn, _fingerprint(optimizer), full_batch, steps_per_chunk, has_lr)
    if key not in _RUNNERS:
        _RUNNERS[key] = _make_chunk_runner(loss_fn, optimizer, full_batch, steps_per_chunk, has_lr)
        if len(_RUNNERS) > 64:
            _RUNNERS.popitem(last=False)
    _RUNNERS.move_to_end(key)
    return _RUNNERS[key]


def _make_chunk_runner(loss_fn, optimizer, full_batch: bool, steps_per_chunk: int, has_lr: bool):
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

        step_ids = start + jnp.arange(steps_per_chunk)
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
    steps_per_chunk: int = 100,
) -> TrainResult:
    """Minimise `loss_fn(params, batch)` over `data` with `optimizer` for `num_steps` steps.

    The history holds "step" and "loss" (the minibatch loss before each update), "lr" when the
    optimizer exposes a learning rate (optax.inject_hyperparams), and the callback/eval values.
    Steps run in jitted `lax.scan` chunks compiled once per (loss_fn, optimizer,
    steps_per_chunk): the optimizer is compared by what it computes, so a fresh
    `optax.adam(1e-3)` reuses the last program.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, the mean loss of a batch.
        params: the initial parameters (pytree).
        data: the training data, a pytree of arrays with a leading example axis.
        key: draws the minibatch order; None only for full-batch training.
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
    """
    steps = num_steps
    steps_per_chunk = check_positive_int("steps_per_chunk", steps_per_chunk)
    checkpoint_steps = sorted({int(s) for s in checkpoint_steps})
    n = num_examples(data)
    _validate(steps, batch_size, n, checkpoint_steps, callback, callback_every, eval_fn, eval_every, on_nonfinite)
    full_batch = _full_batch(batch_size, n, key)
    indices = None if full_batch else batch_indices(key, n, batch_size, steps)
    opt_state = optimizer.init(params)
    has_lr = _learning_rate(opt_state) is not None
    run_chunk = _chunk_runner(loss_fn, optimizer, full_batch, steps_per_chunk, has_lr)
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
                stop = min(done + steps_per_chunk, target)
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
