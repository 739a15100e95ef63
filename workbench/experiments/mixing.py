"""Recipes of the objective-mixing paper: the char transformer, runs of static and learned
mixtures of language modelling and translation (settings of one kind in one vmapped program),
their table rows and probes, and what the panel runs. The languages, pairs and probe sets are
built in `workbench.experiments.mixing_languages`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from workbench import mixing
from workbench.core.numerics import check_positive_int
from workbench.experiments.mixing_languages import (
    TRAINED_FORMAT,
    UNSEEN_FORMAT,
    VOCAB,
    Corpus,
    induction_set,
    probe_set,
)
from workbench.models import TinyTransformer, functional


def model(seq_len: int, seed: int = 0, d_model: int = 64, num_layers: int = 2, num_heads: int = 4):
    """The char transformer (`models.TinyTransformer`) over `VOCAB` as a `Functional`.

    Args:
        seq_len: characters per sequence.
        seed: the seed of its `nnx.Rngs`.
        d_model, num_layers, num_heads: its width, blocks and heads (110k parameters at the
            defaults; 63k at d_model=48).

    Returns:
        The `Functional`.
    """
    return functional(TinyTransformer(len(VOCAB), seq_len, d_model=d_model, num_heads=num_heads,
                                      num_layers=num_layers, rngs=nnx.Rngs(seed)))


class Probes(NamedTuple):
    """In-context probes of a model: next-character accuracy on query targets.

    - `zero_shot`, `k_shot`: in the trained format, without and with demonstrations;
    - `unseen_zero_shot`, `unseen_k_shot`: the same in a format never trained on;
    - `induction`: accuracy on the repeated half of random strings minus on the first half.
    """

    zero_shot: float
    k_shot: float
    unseen_zero_shot: float
    unseen_k_shot: float
    induction: float


def probe(predict_fn, params, pairs, seq_len: int, shots: int = 2, seed: int = 0) -> Probes:
    """Score `params` on the in-context probes (see `Probes`).

    Args:
        predict_fn: the model's `predict_fn`.
        params: its params.
        pairs: held-out pairs (`Corpus.probe_pairs`).
        seq_len: the model's sequence length.
        shots: demonstrations in the k-shot probes.
        seed: the seed of the demonstrations and the random strings.

    Returns:
        The `Probes`, as Python floats.
    """
    sets = [probe_set(pairs, k, seq_len, fmt, seed) for fmt in (TRAINED_FORMAT, UNSEEN_FORMAT) for k in (0, shots)]
    x, y, first, second = (np.asarray(a) for a in induction_set(jax.random.key(seed), 64, seq_len))
    sets += [(x, y, second), (x, y, first)]
    rows = 4 * len(pairs) + 2 * len(x)  # every probe fits at most once per set: one shape per corpus
    xs, ys, ws = (np.concatenate([s[i] for s in sets]) for i in range(3))
    group = np.concatenate([np.full(len(s[0]), g) for g, s in enumerate(sets)])
    pad = rows - len(xs)
    xs, ys = (np.concatenate([a, np.zeros((pad, seq_len), a.dtype)]) for a in (xs, ys))
    ws = np.concatenate([ws, np.zeros((pad, seq_len), ws.dtype)])
    hits = np.asarray(_predicted(predict_fn)(params, jnp.asarray(xs)) == ys, np.float64)[:len(group)]
    w = ws[:len(group)].astype(np.float64)
    scored = np.bincount(group, (w * hits).sum(1)) / np.bincount(group, w.sum(1))
    return Probes(*(float(v) for v in scored[:4]), float(scored[4] - scored[5]))


@functools.lru_cache(maxsize=8)
def _predicted(predict_fn):
    """The arg-max next token, compiled once per model."""
    return jax.jit(lambda params, x: jnp.argmax(predict_fn(params, x), axis=-1))

class Setting(NamedTuple):
    """One way of mixing the objectives.

    - `kind`: "static", "exp3s" or "moving_average";
    - `ratio`: the translation share of a static mixture;
    - `reward`: `mixing.REWARDS` ("target": B's language-modelling loss; "self_prediction": the
      played task's; "training_batch": the batch just trained on, the control);
    - `importance_weighted`: Exp3.S divides rewards by their probability (False: the control);
    - `per_task`: rewards rescaled against each task's own recent rewards;
    - `seed_offset`: added to every seed (initialisation and draws): the same setting from other
      seeds, e.g. to measure seed-to-seed noise within one compiled program.
    """

    kind: str
    ratio: float = 0.0
    reward: str = "self_prediction"
    importance_weighted: bool = True
    per_task: bool = False
    seed_offset: int = 0


KINDS = ("static", "exp3s", "moving_average")


@functools.lru_cache(maxsize=8)
def _model_fn(seq_len: int, d_model: int, num_layers: int, num_heads: int):
    return model(seq_len, 0, d_model, num_layers, num_heads)


def initial_params(seeds: Sequence[int], seq_len: int, d_model: int = 64, num_layers: int = 2, num_heads: int = 4):
    """The model's initial params for each seed, stacked on a leading axis.

    Args:
        seeds: one model per seed.
        seq_len, d_model, num_layers, num_heads: the model (see `model`).

    Returns:
        The params pytree with a leading [len(seeds)] axis.
    """
    params = [model(seq_len, s, d_model, num_layers, num_heads).params for s in seeds]
    return jax.tree.map(lambda *a: jnp.stack(a), *params)


@functools.lru_cache(maxsize=32)
def _runner(kind: str, reward: str, importance_weighted: bool, per_task: bool, batch_size: int, eval_every: int,
            eta: float, decay: float, epsilon: float, window: int, model_config: tuple):
    fn = _model_fn(*model_config)
    loss = mixing.weighted_token_loss(fn.predict_fn)

    def one(params, arrays, eval_sets, target, key, ratio, lrs):
        objectives = mixing.ObjectiveTasks(*arrays, ("lm", "mt"))
        if kind == "static":
            bandit = mixing.static(jnp.stack([1.0 - ratio, ratio]))
        elif kind == "exp3s":
            bandit = mixing.exp3s(2, eta=eta, epsilon=epsilon, window=window, per_task=per_task,
                                  importance_weighted=importance_weighted)
        else:
            bandit = mixing.moving_average(2, decay=decay, epsilon=epsilon, window=window, per_task=per_task)
        return mixing.train_mixture(loss, params, objectives, key, bandit=bandit, lrs=lrs, batch_size=batch_size,
                                    eval_sets=eval_sets, eval_every=eval_every,
                                    reward="none" if kind == "static" else reward,
                                    target=target if reward == "target" and kind != "static" else None)

    return jax.jit(jax.vmap(one, in_axes=(0, None, None, None, 0, 0, None)))


def run(data: Corpus, settings: dict[str, Setting], seeds: Sequence[int], *, steps: int, batch_size: int = 32,
        peak_lr: float = 3e-3, eval_every: int | None = None, d_model: int = 64, num_layers: int = 2,
        num_heads: int = 4, eta: float = 0.02, decay: float = 0.05, epsilon: float = 0.05,
        window: int = 200) -> dict[str, mixing.MixtureResult]:
    """Train the char transformer under each setting and seed (Adam, warm-up + cosine to a tenth).

    Settings of the same kind run in one vmapped program (static ratios included).

    Args:
        data: the `Corpus`.
        settings: name -> `Setting`.
        seeds: model seeds (the batch and task draws use the same seeds).
        steps: optimizer steps.
        batch_size: sequences per step.
        peak_lr: Adam's peak learning rate.
        eval_every: steps between evaluations (default a tenth of the run).
        d_model, num_layers, num_heads: the transformer.
        eta, decay, epsilon, window: the bandits' options (`mixing.exp3s`, `mixing.moving_average`).

    Returns:
        name -> `mixing.MixtureResult` with a leading seed axis.
    """
    from workbench import schedules

    steps = check_positive_int("steps", steps, least=10)
    eval_every = eval_every or steps // 10
    seeds = list(seeds)
    for name, s in settings.items():
        if s.kind not in KINDS:
            raise ValueError(f"setting {name!r}: kind must be one of {KINDS}, got {s.kind!r}")
        if s.reward not in mixing.REWARDS:
            raise ValueError(f"setting {name!r}: reward must be one of {mixing.REWARDS}, got {s.reward!r}")
    seq_len = int(data.objectives.x.shape[-1])
    config = (seq_len, d_model, num_layers, num_heads)
    lrs = jnp.asarray(schedules.values(schedules.cosine(peak_lr, steps, max(steps // 10, 1), final=peak_lr / 10), steps),
                      jnp.float32)
    groups: dict[tuple, list[str]] = {}
    for name, s in settings.items():
        if s.kind == "static":  # the reward and its options are not used: one program for every static mix
            s = Setting("static")
        groups.setdefault((s.kind, s.reward, s.importance_weighted, s.per_task), []).append(name)
    out = {}
    for (kind, reward, iw, per_task), names in groups.items():
        fn = _runner(kind, reward, iw, per_task, batch_size, eval_every, eta, decay, epsilon, window, config)
        run_seeds = [s + settings[n].seed_offset for n in names for s in seeds]
        params = initial_params(run_seeds, *config)
        keys = jnp.stack([jax.random.key(s) for s in run_seeds])
        ratios = jnp.asarray([settings[n].ratio for n in names for _ in seeds], jnp.float32)
        result = fn(params, tuple(data.objectives[:3]), data.eval_sets, data.target, keys, ratios, lrs)
        for i, name in enumerate(names):
            out[name] = jax.tree.map(lambda a, i=i: a[i * len(seeds):(i + 1) * len(seeds)], result)
    return out


class Row(NamedTuple):
    """One setting's line of the schedule table (means over seeds).

    - `share`, `late_share`: the share of steps on translation, over the run and its last quarter;
    - `loss_a`, `loss_b`, `loss_mt`: the final held-out losses (language modelling on A and on B,
      translation on targets);
    - `probes`: the `Probes` (seed means);
    - `loss_b_seeds`: B's final loss per seed.
    """

    share: float
    late_share: float
    loss_a: float
    loss_b: float
    loss_mt: float
    probes: Probes
    loss_b_seeds: tuple[float, ...]


def summarise(result: mixing.MixtureResult, data: Corpus, shots: int = 2) -> Row:
    """The table row of one setting (`result` with a leading seed axis).

    Args:
        result: the setting's `mixing.MixtureResult`, seeds stacked.
        data: the `Corpus` it trained on (for the probe pairs).
        shots: demonstrations in the k-shot probes.

    Returns:
        The `Row`.

    Raises:
        ValueError: when a run's final held-out loss is not finite (a diverged run has no row).
    """
    final = np.asarray(result.eval_loss)[:, -1]
    if not np.all(np.isfinite(final)):
        raise ValueError("a run ended with non-finite held-out losses (diverged): lower the learning rate")
    seq_len = int(data.objectives.x.shape[-1])
    leaves = jax.tree.leaves(result.params)
    num_seeds = leaves[0].shape[0]
    fn = _model_fn(seq_len, *_config_of(result.params))
    per_seed = [probe(fn.predict_fn, jax.tree.map(lambda a, i=i: a[i], result.params), data.probe_pairs, seq_len, shots, i)
                for i in range(num_seeds)]
    probes = Probes(*np.mean(np.asarray(per_seed, np.float64), axis=0).tolist())
    return Row(float(np.mean(mixing.translation_share(result))),
               float(np.mean(mixing.translation_share(result, last_fraction=0.25))),
               *(float(v) for v in final.mean(0)), probes, tuple(float(v) for v in final[:, 1]))


def _config_of(params) -> tuple[int, int, int]:
    """(d_model, num_layers, num_heads) of stacked transformer params."""
    d_model = int(params["embed"]["embedding"].shape[-1])
    num_layers = len(params["blocks"])
    heads = int(params["blocks"][0]["attn"]["query"]["kernel"].shape[-2])
    return d_model, num_layers, heads


class Explored(NamedTuple):
    """What the panel shows: the setting's `name`, its `Row` and its `result`."""

    name: str
    row: Row
    result: mixing.MixtureResult


def explore(data: Corpus, seeds: Sequence[int], *, mixer: str, ratio: float, eta: float, steps: int,
            **options) -> Explored:
    """Train one setting over `seeds` (`run`) and summarise it: what the panel runs.

    Args:
        data: the `Corpus`.
        seeds: the seeds.
        mixer: "static", "exp3s" or "moving_average".
        ratio: the translation share of a static mixture, in [0, 1].
        eta: Exp3.S's step size.
        steps: optimizer steps.
        **options: passed to `run` (model sizes, batch size, peak learning rate, ...).

    Returns:
        `Explored(name, row, result)`.

    Raises:
        ValueError: an unknown mixer or a ratio outside [0, 1].
    """
    if mixer not in KINDS:
        raise ValueError(f"mixer must be one of {KINDS}, got {mixer!r}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"the translation share must lie in [0, 1], got {ratio}")
    name = f"static {ratio:.2f}" if mixer == "static" else (f"Exp3.S, eta {eta:.3g}" if mixer == "exp3s"
                                                            else "moving average")
    result = run(data, {name: Setting(mixer, ratio)}, seeds, steps=steps, eta=eta, **options)[name]
    return Explored(name, summarise(result, data), result)
