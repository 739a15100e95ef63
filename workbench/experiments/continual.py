"""The continual-learning paper's recipes: digits streams, a table of settings trained over seeds
in one vmapped call per kind, the summary against joint training, curvature along a run and the
linear path between the weights at a switch and at the end."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from workbench import continual
from workbench.core.numerics import check_positive_int
from workbench.data import load_digits
from workbench.models import MLP, TinyTransformer, functional

TASK_KINDS = ("rotated", "permuted")


def digits_stream(kind: str = "rotated", num_tasks: int = 2, split_seed: int = 0) -> continual.TaskStream:
    """Digits tasks: "rotated" (0, 90, 180, 270 degrees, in that order) or "permuted" pixels.

    Args:
        kind: "rotated" (at most 4 tasks) or "permuted".
        num_tasks: the number of tasks.
        split_seed: the seed of the digits train/test split (and of the permutations).

    Returns:
        The `TaskStream` (1344 training and 448 test examples per task).

    Raises:
        ValueError: an unknown kind, or more than 4 rotated tasks.
    """
    if kind not in TASK_KINDS:
        raise ValueError(f"kind must be one of {TASK_KINDS}, got {kind!r}")
    num_tasks = check_positive_int("num_tasks", num_tasks)
    split = load_digits(seed=split_seed)
    train = (split.train.x[:1344], split.train.y[:1344])
    test = (split.test.x[:448], split.test.y[:448])
    if kind == "rotated":
        if num_tasks > 4:
            raise ValueError(f"rotated digits give at most 4 distinct tasks (0, 90, 180, 270), got {num_tasks}")
        return continual.rotated(train, test, [0, 90, 180, 270][:num_tasks], 8)
    return continual.permuted(train, test, jax.random.key(split_seed), num_tasks)


def _prose_and_code(modules: Sequence[str]) -> tuple[str, str]:
    import importlib

    prose, code = [], []
    for name in modules:
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module):
            doc = inspect.getdoc(obj) if callable(obj) and getattr(obj, "__module__", None) == name else None
            if doc:
                prose.append(doc)
        for line in inspect.getsource(module).splitlines():
            stripped = line.strip()
            if stripped and not stripped.startswith(("#", '"', "'")):
                code.append(line)
    return "\n\n".join(prose), "\n".join(code)


def text_stream(seq_len: int = 32, num_examples: int = 512, num_test: int = 128,
                modules: Sequence[str] = ("textwrap", "difflib", "argparse", "calendar")) -> tuple[continual.TaskStream, str]:
    """A character-level domain shift from text shipped with Python: task "prose" is the
    docstrings of `modules`, task "code" their source lines (comments and docstring lines
    dropped), one shared vocabulary.

    Args:
        seq_len: characters per example (targets are the inputs shifted by one).
        num_examples: training sequences per task (consecutive, without overlap).
        num_test: held-out sequences per task (taken after the training ones).
        modules: standard-library modules to read.

    Returns:
        (the `TaskStream`, the vocabulary string).

    Raises:
        ValueError: when the modules hold too little text for the sizes asked.
    """
    seq_len = check_positive_int("seq_len", seq_len, least=2)
    texts = _prose_and_code(modules)
    vocab = "".join(sorted(set(texts[0]) | set(texts[1])))
    lookup = {c: i for i, c in enumerate(vocab)}
    need = (num_examples + num_test) * seq_len + 1
    train, test = [], []
    for name, text in zip(("prose", "code"), texts, strict=True):
        if len(text) < need:
            raise ValueError(f"the {name} of {list(modules)} has {len(text)} characters; {need} are needed "
                             "(fewer examples, shorter sequences or more modules)")
        ids = np.array([lookup[c] for c in text[:need]], np.int32)
        x = ids[:-1].reshape(-1, seq_len)
        y = ids[1:].reshape(-1, seq_len)
        train.append((jnp.asarray(x[:num_examples]), jnp.asarray(y[:num_examples])))
        test.append((jnp.asarray(x[num_examples:]), jnp.asarray(y[num_examples:])))
    return continual.stack_tasks(("prose", "code"), train, test), vocab


def tiny_text_model(vocab_size: int, seq_len: int, seed: int = 0, d_model: int = 32):
    """A one-block `TinyTransformer` as a `Functional` for `text_stream`.

    Args:
        vocab_size: the number of characters.
        seq_len: characters per example.
        seed: the seed of its `nnx.Rngs`.
        d_model: the width.

    Returns:
        The `Functional`.
    """
    return functional(TinyTransformer(vocab_size, seq_len, d_model=d_model, rngs=nnx.Rngs(seed)))


class Setting(NamedTuple):
    """One way of learning the stream: a `continual.task_schedule` kind, a replay fraction and
    recency, or joint training; `peak_scale` multiplies the common peak learning rate."""

    schedule: str = "rewarm"
    replay_fraction: float = 0.0
    recency: str = "uniform"
    recency_exponent: float = 1.0
    joint: bool = False
    peak_scale: float = 1.0


def mlp_params(seeds: Sequence[int], hidden_size: int, in_features: int = 64, num_classes: int = 10):
    """A tanh MLP in -> hidden -> classes, initialised once per seed.

    Args:
        seeds: the seeds of the initialisations (`nnx.Rngs(seed)`).
        hidden_size: the hidden width.
        in_features: the input width (64 for digits).
        num_classes: the number of classes.

    Returns:
        (the `Functional`, its params for each seed stacked on a leading axis).
    """
    fns = [functional(MLP(in_features, [hidden_size], num_classes, rngs=nnx.Rngs(int(s)))) for s in seeds]
    return fns[0], jax.tree.map(lambda *a: jnp.stack(a), *[f.params for f in fns])


def compare(fn, params, stream: continual.TaskStream, settings: dict[str, Setting], seeds: Sequence[int], *,
            peak_lr: float, steps_per_task: int, batch_size: int, eval_every: int = 1,
            snapshot_steps: Sequence[int] = (), warmup_fraction: float = 0.1) -> dict[str, continual.StreamResult]:
    """Every setting trained on `stream` for every seed (each seed its own init and batches).

    Settings run in one vmapped call over settings and seeds per kind (sequential or joint), so
    the table compiles at most twice.

    Args:
        fn: the model's `Functional`.
        params: its params per seed, stacked on a leading axis [len(seeds), ...].
        stream: the `TaskStream`.
        settings: the settings by name.
        seeds: the seeds (the key of seed s is `jax.random.key(s)`).
        peak_lr: the peak learning rate of every schedule (times `Setting.peak_scale`).
        steps_per_task: steps per task.
        batch_size: examples per step.
        eval_every: steps between evaluations.
        snapshot_steps: steps whose params are kept.
        warmup_fraction: the share of each task spent re-warming.

    Returns:
        Each setting's `StreamResult`, every array with a leading seed axis.
    """
    keys = jnp.stack([jax.random.key(int(s)) for s in seeds])
    groups: dict[bool, list[str]] = {}
    for name, s in settings.items():
        continual.replay.check_recency(s.recency)
        groups.setdefault(s.joint, []).append(name)
    out = {}
    for joint, names in groups.items():
        lrs = jnp.stack([jnp.asarray(continual.task_schedule(
            settings[n].schedule, peak_lr * settings[n].peak_scale, steps_per_task, stream.num_tasks,
            warmup_fraction=warmup_fraction), jnp.float32) for n in names])
        fractions = jnp.asarray([settings[n].replay_fraction for n in names], jnp.float32)
        exponents = jnp.asarray([settings[n].recency_exponent for n in names], jnp.float32)
        recencies = jnp.asarray([continual.RECENCIES.index(settings[n].recency) for n in names], jnp.int32)

        def one(lr, fraction, exponent, recency, p, key, joint=joint):
            return continual.train_stream(fn, p, stream, key, lrs=lr, steps_per_task=steps_per_task,
                                          batch_size=batch_size, replay_fraction=fraction, recency=recency,
                                          recency_exponent=exponent, joint=joint, eval_every=eval_every,
                                          snapshot_steps=tuple(snapshot_steps))

        over_seeds = jax.vmap(one, in_axes=(None, None, None, None, 0, 0))
        results = jax.jit(jax.vmap(over_seeds, in_axes=(0, 0, 0, 0, None, None)))(lrs, fractions, exponents,
                                                                                  recencies, params, keys)
        for i, n in enumerate(names):
            out[n] = jax.tree.map(lambda a, i=i: a[i], results)
    return out


class Row(NamedTuple):
    """One setting's summary, means over seeds (and over old tasks): final accuracy on the old
    tasks and the last task, the gap and recovery at each switch (averaged), De Lange's minimum
    and worst-case accuracy, and the same gap as an evaluation only at task ends sees it."""

    old_final: float
    new_final: float
    gap: float
    recovery: float
    minimum_accuracy: float
    worst_case_accuracy: float
    task_end_gap: float
    task_end_recovery: float


def summarise(result: continual.StreamResult, steps_per_task: int) -> Row:
    """One setting's summary.

    Args:
        result: its `StreamResult`, every array with a leading seed axis (from `compare`).
        steps_per_task: steps of each task.

    Returns:
        The `Row`, means over seeds.
    """
    rows = []
    for i in range(result.accuracy.shape[0]):
        acc, steps = np.asarray(result.accuracy[i]), np.asarray(result.eval_steps[i])
        gaps = continual.switch_gaps(acc, steps, steps_per_task)
        ends = continual.switch_gaps(*continual.at_task_ends(acc, steps, steps_per_task), steps_per_task)
        rows.append((acc[-1, :-1].mean(), acc[-1, -1], np.mean([g.gap for g in gaps]),
                     np.mean([g.recovery for g in gaps]),
                     continual.average_minimum_accuracy(acc, steps, steps_per_task),
                     continual.worst_case_accuracy(acc, steps, steps_per_task),
                     np.mean([g.gap for g in ends]), np.mean([g.recovery for g in ends])))
    return Row(*[float(v) for v in np.mean(np.array(rows), axis=0)])


def joint_margin(row: Row, joint: Row, tolerance: float) -> float:
    """How far within `tolerance` of joint training a setting ends.

    Args:
        row: the setting's `Row`.
        joint: joint training's `Row`.
        tolerance: the accuracy shortfall allowed.

    Returns:
        `tolerance` minus the larger shortfall against joint training (on the old tasks or on the
        last task): positive when the setting ends within `tolerance` of joint training on both.
    """
    return float(tolerance - max(joint.old_final - row.old_final, joint.new_final - row.new_final))


class CurvatureAlongRun(NamedTuple):
    """Top Hessian eigenvalue of the current task's training loss at each snapshot, the learning
    rate there, and their product (2 is gradient descent's stability threshold)."""

    steps: np.ndarray
    top_eigenvalue: np.ndarray
    lr: np.ndarray
    lr_times_top: np.ndarray


def curvature_along_run(fn, result: continual.StreamResult, stream: continual.TaskStream, lrs, key: jax.Array,
                        *, steps_per_task: int, num_examples: int = 512) -> CurvatureAlongRun:
    """`spectrum.sharpness` of the training loss of the task being learned, at each snapshot.

    Args:
        fn: the model's `Functional`.
        result: one run's `StreamResult` (no seed axis) with snapshots.
        stream: the `TaskStream` it was trained on.
        lrs: the run's per-step learning rates.
        key: PRNG key of the Lanczos start vectors (folded with each step).
        steps_per_task: steps of each task.
        num_examples: training examples of the current task the curvature averages over.

    Returns:
        The `CurvatureAlongRun`. The params after step s are scored on the task the next step
        learns (s // steps_per_task; the final params on the last task), with the learning rate
        of that next step.
    """
    from workbench import spectrum

    steps = np.asarray(result.snapshot_steps)
    lrs = np.asarray(lrs)
    tops = []
    for i, s in enumerate(steps):
        task = min(int(s) // steps_per_task, stream.num_tasks - 1)
        x, y = stream.task(task)
        p = jax.tree.map(lambda a, i=i: a[i], result.snapshots)
        tops.append(float(spectrum.sharpness(fn.loss_fn, p, (x[:num_examples], y[:num_examples]),
                                             jax.random.fold_in(key, int(s)))[0]))
    lr_at = lrs[np.minimum(steps, len(lrs) - 1)]
    tops = np.array(tops)
    return CurvatureAlongRun(steps, tops, lr_at, lr_at * tops)


class PathComparison(NamedTuple):
    """The old task's test loss along SGD's own path after a switch (`sgd_steps`, `sgd_loss`) and
    along the straight line from the switch to the end (`alphas`, `linear_loss`); the excess of
    each path's highest loss over the higher of its two ends (a barrier)."""

    sgd_steps: np.ndarray
    sgd_loss: np.ndarray
    alphas: np.ndarray
    linear_loss: np.ndarray
    sgd_barrier: float
    linear_barrier: float


def linear_path_vs_sgd(fn, result: continual.StreamResult, stream: continual.TaskStream, *, steps_per_task: int,
                       old_task: int = 0, num_points: int = 21) -> PathComparison:
    """Compare the straight line with SGD's path for task `old_task` across the switch that ends it.

    Args:
        fn: the model's `Functional`.
        result: one run's `StreamResult` (no seed axis) whose snapshots include the switch and
            the next task's end.
        stream: the `TaskStream` it was trained on.
        steps_per_task: steps of each task.
        old_task: the task whose test loss is followed.
        num_points: points on the straight line.

    Returns:
        The `PathComparison`.

    Raises:
        ValueError: the run kept no params at the switch or at the next task's end.
    """
    switch, end = (old_task + 1) * steps_per_task, (old_task + 2) * steps_per_task
    steps = np.asarray(result.snapshot_steps).tolist()
    missing = [s for s in (switch, end) if s not in steps]
    if missing:
        raise ValueError(f"the run kept no params at steps {missing}: pass them in snapshot_steps")
    start_p = jax.tree.map(lambda a: a[steps.index(switch)], result.snapshots)
    end_p = jax.tree.map(lambda a: a[steps.index(end)], result.snapshots)
    test = stream.task(old_task, "test")
    alphas, linear = continual.linear_path(lambda p, d: jnp.mean(fn.per_example_loss_fn(p, d)), start_p, end_p,
                                           test, num_points)
    eval_steps = np.asarray(result.eval_steps)
    keep = (eval_steps >= switch) & (eval_steps <= end)
    sgd = np.asarray(result.loss)[keep, old_task]

    def barrier(curve):
        return float(np.max(curve) - max(curve[0], curve[-1]))

    return PathComparison(eval_steps[keep], sgd, alphas, linear, barrier(sgd), barrier(linear))


def stack_seed(result, i: int):
    """One seed of a result.

    Args:
        result: a pytree (e.g. a `StreamResult`) with a leading seed axis.
        i: the index of the seed.

    Returns:
        The same pytree without the seed axis.
    """
    return jax.tree.map(lambda a: a[i], result)



class Explored(NamedTuple):
    """One setting explored: its name, `Row`, `StreamResult` (seed axis) and learning rates."""

    name: str
    row: Row
    result: continual.StreamResult
    lrs: np.ndarray


def explore(fn, params, stream: continual.TaskStream, seeds: Sequence[int], *, peak_lr: float, replay_fraction: float,
            schedule: str, steps_per_task: int, batch_size: int) -> Explored:
    """Train one setting over `seeds` (`compare`) and summarise it: what the panel runs.

    Args:
        fn: the model's `Functional`.
        params: its params per seed (leading axis).
        stream: the `TaskStream`.
        seeds: the seeds.
        peak_lr: the peak learning rate.
        replay_fraction: the replayed share of each batch.
        schedule: a `continual.task_schedule` kind.
        steps_per_task: steps of each task.
        batch_size: examples per step.

    Returns:
        `Explored(name, row, result, lrs)`.
    """
    name = f"{schedule}, replay {replay_fraction:.0%}, peak {peak_lr:.3g}"
    result = compare(fn, params, stream, {name: Setting(schedule, replay_fraction)}, seeds, peak_lr=peak_lr,
                     steps_per_task=steps_per_task, batch_size=batch_size)[name]
    lrs = continual.task_schedule(schedule, peak_lr, steps_per_task, stream.num_tasks)
    return Explored(name, summarise(result, steps_per_task), result, lrs)
