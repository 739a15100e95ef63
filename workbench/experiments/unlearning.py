"""Recipes for the unlearning paper on digits: classifiers trained from many seeds in one vmapped
call, forget sets (a class, a random 5%, a class-skewed 5%), and every method judged against
retrained oracles (accuracies, KLoM, MIA, time). The gradient-ascent cliff, the SSD sweep, the
exploration panel's recipe and the headline numbers are `workbench.experiments.unlearning_sweeps`;
the diffusion model's class forgetting is `workbench.experiments.diffusion_unlearning`."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from workbench import train, unlearning
from workbench.core.numerics import num_examples
from workbench.data import Dataset, load_digits
from workbench.experiments.timing import best_time
from workbench.models import MLP, functional
from workbench.unlearning import metrics

FORGET_KINDS = ("class", "random", "skewed")


class Setup(NamedTuple):
    """Digits data, a model as pure functions, the init function and the training recipe."""

    train_data: Dataset
    test_data: Dataset
    loss_fn: Callable
    predict_fn: Callable
    init_fn: Callable
    learning_rate: float
    num_steps: int
    batch_size: int


_SETUPS: dict = {}


def digits_setup(hidden: int = 32, learning_rate: float = 1e-2, num_steps: int = 300, batch_size: int = 128,
                 l2: float = 1e-4, seed: int = 0) -> Setup:
    """A one-hidden-layer tanh MLP on the digits split of `seed`, as pure functions.

    Cached per configuration, so every call shares compiled code.

    Args:
      hidden: width of the hidden layer.
      learning_rate: Adam's step size for training originals and oracles.
      num_steps: training steps per model.
      batch_size: examples per training step.
      l2: the weight of the L2 regulariser in the loss.
      seed: the digits train/held-out split.

    Returns:
      `Setup(train_data, test_data, loss_fn, predict_fn, init_fn, learning_rate, num_steps,
      batch_size)`.
    """
    config = (hidden, learning_rate, num_steps, batch_size, l2, seed)
    if config not in _SETUPS:
        train_data, test_data = load_digits(seed=seed)
        f = functional(MLP(64, [hidden], 10, rngs=nnx.Rngs(0)), l2=l2)

        def init_fn(key):
            return nnx.to_pure_dict(nnx.state(MLP(64, [hidden], 10, rngs=nnx.Rngs(key)), nnx.Param))

        _SETUPS[config] = Setup(train_data, test_data, f.loss_fn, f.predict_fn, init_fn, learning_rate,
                                num_steps, batch_size)
    return _SETUPS[config]


def forget_indices(train_data: Dataset, kind: str, key: jax.Array, fraction: float = 0.05,
                   forget_class: int = 0, skew_classes: Sequence[int] = (3, 8), skew: float = 0.8) -> np.ndarray:
    """Indices of a forget set of one of three kinds.

    Args:
      train_data: the training set (its labels `y` are read).
      kind: "class" (every example of `forget_class`), "random" (a uniform random `fraction`) or
        "skewed" (a `fraction`, a share `skew` of it from `skew_classes`).
      key: draws the random kinds (its last key word seeds a NumPy generator).
      fraction: the forget set's share of the training set (random and skewed kinds).
      forget_class: the class forgotten by the "class" kind.
      skew_classes: the classes the skewed kind draws most of its examples from.
      skew: the share of the skewed forget set drawn from `skew_classes`.

    Returns:
      Sorted int indices into `train_data`.

    Raises:
      ValueError: for an unknown kind.
    """
    y = np.asarray(train_data.y)
    n = y.size
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel()[-1])
    if kind == "class":
        return np.flatnonzero(y == forget_class)
    m = max(1, int(round(fraction * n)))
    if kind == "random":
        return np.sort(rng.choice(n, m, replace=False))
    if kind == "skewed":
        inside = np.flatnonzero(np.isin(y, skew_classes))
        outside = np.flatnonzero(~np.isin(y, skew_classes))
        k = min(int(round(skew * m)), inside.size)
        return np.sort(np.concatenate([rng.choice(inside, k, replace=False), rng.choice(outside, m - k, replace=False)]))
    raise ValueError(f"kind must be one of {FORGET_KINDS}, got {kind!r}")


def _fit_many(loss_fn, init_fn, lr, num_steps, batch_size):
    optimizer = optax.adam(lr)

    @jax.jit
    def fit(keys, data, orders):
        # `train.optimize`'s loop with its minibatch order passed in: the program depends on the
        # (padded) data's shape only, not on how many examples the orders draw from
        def one(k, order):
            params = init_fn(jax.random.split(k)[0])

            def body(carry, rows):
                p, s, loss = train.step(loss_fn, optimizer, *carry, jax.tree.map(lambda a: a[rows], data))
                return (p, s), loss

            (params, _), losses = jax.lax.scan(body, (params, optimizer.init(params)), order)
            return params, losses

        return jax.vmap(one)(keys, orders)

    return fit


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _batch_orders(keys, num_examples, batch_size, num_steps):
    """Each model's minibatch order, as `train.optimize` draws it from the key it is given."""
    return jax.vmap(lambda k: train.batch_indices(jax.random.split(k)[1], num_examples, batch_size, num_steps))(keys)


_FITS: dict = {}
MIN_STACK = 16  # model stacks are padded to a power of two >= this (one compile for 1, 4 or 16 models)


def train_models(setup: Setup, data, keys: jax.Array):
    """Train one model per key on `data` in one vmapped call (`train.optimize` under vmap).

    Model i starts from `setup.init_fn(split(keys[i])[0])` and takes Adam steps on minibatches
    drawn by `split(keys[i])[1]`, exactly as `train.optimize` would. Two paddings let every call
    of the paper share one compiled program: the stack is padded to a power of two >= MIN_STACK
    models (repeating the first key), and `data` (the training set or a retain set of it) is
    padded with zero rows to the training set's size. The minibatch orders are drawn outside the
    program from the true number of examples, so the padding rows are never read and the padding
    models are dropped (vmapped rows are independent): the numbers are those of an unpadded call.

    Args:
      setup: the digits setup (loss, initialisation and training recipe).
      data: the training examples (x, y).
      keys: one key per model [m]; each sets the initialisation and the batch order.

    Returns:
      The stacked params: every leaf has a leading axis of m models.

    Raises:
      NonFiniteLossError: when any model's training loss became NaN/inf.
    """
    config = (setup.loss_fn, setup.init_fn, setup.learning_rate, setup.num_steps, setup.batch_size)
    if config not in _FITS:
        _FITS[config] = _fit_many(*config)
    m = int(keys.shape[0])
    size = max(MIN_STACK, 1 << max(0, m - 1).bit_length())
    raw = np.asarray(jax.random.key_data(keys))
    padded_keys = jax.random.wrap_key_data(np.concatenate([raw, np.repeat(raw[:1], size - m, axis=0)]))
    n = num_examples(data)
    rows = max(n, num_examples(setup.train_data))
    padded_data = jax.tree.map(lambda a: jnp.concatenate([a, jnp.zeros((rows - n, *a.shape[1:]), a.dtype)]), data)
    # (a batch_size >= n trains full-batch in `train.optimize`; here it takes every example in a
    # shuffled order: the same mean loss up to rounding)
    orders = _batch_orders(padded_keys, n, min(setup.batch_size, n), setup.num_steps)
    params, losses = _FITS[config](padded_keys, padded_data, orders)
    if not np.isfinite(np.asarray(losses)[:m]).all():
        raise train.NonFiniteLossError("training a model stack produced a NaN/inf loss; lower the learning rate")
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a)[:m]), params)


def default_options(setup: Setup, kind: str = "random") -> dict[str, dict]:
    """Settings of each method for the digits MLP (chosen once on seed 0).

    SSD: the paper's alpha=10, lambda=1 for small forget sets; for a whole class (|D|/|D_f| ~ 10,
    so alpha=10 selects nothing) alpha=5, lambda=0.1, the setting the class sweep found.

    Args:
      setup: the digits setup (its `predict_fn` goes to the methods that compare outputs).
      kind: the forget set kind the settings are for ("class" changes SSD's).

    Returns:
      Keyword options per method name (every method of `unlearning.METHODS` but "retrain").
    """
    p = setup.predict_fn
    ssd = dict(alpha=5.0, lam=0.1) if kind == "class" else dict(alpha=10.0, lam=1.0)
    return {
        "gradient_ascent": dict(learning_rate=0.05, num_steps=40, batch_size=32),
        "neggrad_plus": dict(learning_rate=0.1, num_steps=100, batch_size=64, retain_weight=0.9),
        "scrub": dict(predict_fn=p, learning_rate=0.1, num_steps=100, max_steps=30, batch_size=64),
        "ssd": ssd,
        "oracle_matching": dict(predict_fn=p, learning_rate=3e-3, num_steps=150, retain_sample=256),
        "datamodel_matching": dict(predict_fn=p, learning_rate=3e-3, num_steps=150, retain_sample=256,
                                   estimator="arnoldi", estimator_options=dict(k=30, damping=1e-3)),
    }


class MethodRow(NamedTuple):
    """One method judged on one forget set (means over the seeds; time for one model)."""

    method: str
    forget_accuracy: float
    retain_accuracy: float
    test_accuracy: float
    klom_forget_p95: float
    klom_retain_p95: float
    klom_test_p95: float
    mia_auc: float
    seconds: float


class Benchmark(NamedTuple):
    """Rows per method, the forget set size, the number of models per side, and the datamodel
    scale fitted on another forget set (None without datamodel matching)."""

    rows: list[MethodRow]
    forget_size: int
    num_models: int
    datamodel_scale: float | None


def calibrate_scale(setup: Setup, models, key: jax.Array, fraction: float = 0.05, num_pairs: int = 2,
                    options: dict | None = None) -> float:
    """Fit the datamodel scale on retrainings with another random forget set (never the one being
    unlearned): least squares of the actual mean margin change at that set's points (the mean
    over the stack `models` against as many models retrained without the points, from the same
    seeds) on the influence-predicted change averaged over the first `num_pairs` models.

    Averaging matters: one retraining of a non-convex network differs from its original by
    minibatch-order noise as large as the effect being predicted (single pairs can even
    anti-correlate with the prediction).

    Args:
      setup: the digits setup.
      models: the stacked original models (from `train_models` in `benchmark`, whose keys are
        reused for the retrainings).
      key: draws the calibration forget set and the estimator's key.
      fraction: the calibration forget set's share of the training set.
      num_pairs: models whose influence predictions are averaged.
      options: datamodel matching's options; None means `default_options(setup)`'s.

    Returns:
      The fitted scale, positive.

    Raises:
      ValueError: when the predicted changes do not correlate positively with retraining.
    """
    opts = dict(options or default_options(setup)["datamodel_matching"])
    num_models = num_examples(models, "models")
    k_set, k_t = jax.random.split(key)
    s = unlearning.split(setup.train_data, forget_indices(setup.train_data, "random", k_set, fraction))
    oracles = train_models(setup, s.retain, _MODEL_KEYS[(num_models, id(models))])
    y = s.forget.y
    actual = np.mean(metrics.stacked_margins(setup.predict_fn, oracles, s.forget)
                     - metrics.stacked_margins(setup.predict_fn, models, s.forget), axis=0)
    predicted = []
    for i in range(min(num_pairs, num_models)):
        model = jax.tree.map(lambda a: a[i], models)  # noqa: B023 (called inside the loop)
        t = unlearning.datamodel_targets(setup.loss_fn, model, s.forget, s.retain, k_t, predict_fn=setup.predict_fn,
                                estimator=opts.get("estimator", "arnoldi"), retain_sample=0,
                                estimator_options=opts.get("estimator_options"))
        base = metrics.margins(setup.predict_fn(model, t.x), y)
        predicted.append(np.asarray(metrics.margins(t.targets, y) - base, np.float64))
    pred = np.mean(predicted, axis=0)
    num, den = float(pred @ actual), float(pred @ pred)
    if not den > 0 or not num > 0:
        raise ValueError("calibrate_scale: the influence-predicted changes do not correlate with retraining "
                         f"(correlation {np.corrcoef(pred, actual)[0, 1]:.2f}); try more pairs or another estimator")
    return num / den


_MODEL_KEYS: dict = {}


def benchmark(kind: str = "random", num_models: int = 16, methods: Sequence[str] | None = None, seed: int = 0,
              options: dict | None = None, setup: Setup | None = None, fraction: float = 0.05,
              forget_class: int = 0, klom_estimator: str = "gaussian", calibrate: bool = True,
              progress: Callable | None = None) -> Benchmark:
    """Train `num_models` originals on all data and as many oracles on the retain set (one
    vmapped call each), unlearn every original by each method (one vmapped call per method), and
    judge them: accuracies, KLoM percentiles against the oracles, MIA AUC, and the time per model
    (one more, warm vmapped call divided by the number of models; for datamodel matching one
    model's influence targets plus its share of the vmapped matching). "retrain" is a second,
    independent set of oracles: its KLoM is the floor an exact method reaches with this many
    models. With `calibrate`, datamodel matching's scale is fitted on another forget set first.

    Args:
      kind: the forget set, "class", "random" or "skewed" (see `forget_indices`).
      num_models: models per side (originals, oracles, unlearned).
      methods: the rows, among "original", "retrain" and the methods of the options; None means
        all of them.
      seed: the digits split, forget set, models and keys.
      options: per-method options overriding `default_options(setup, kind)`.
      setup: the digits setup; None means `digits_setup(seed=seed)`.
      fraction: the forget set's share of the training set (random and skewed kinds).
      forget_class: the class forgotten by the "class" kind.
      klom_estimator: "gaussian" or "histogram" (see `metrics.klom_values`).
      calibrate: fit datamodel matching's scale on another random forget set first.
      progress: called with a short message before each stage; None for silence.

    Returns:
      `Benchmark(rows, forget_size, num_models, datamodel_scale)`.
    """
    setup = setup or digits_setup(seed=seed)
    key = jax.random.key(seed)
    k_set, k_models, k_oracles, k_unlearn, k_retrain, k_cal = jax.random.split(key, 6)
    s = unlearning.split(setup.train_data, forget_indices(setup.train_data, kind, k_set, fraction, forget_class))
    forget, retain, test = s.forget, s.retain, setup.test_data
    model_keys = jax.random.split(k_models, num_models)
    originals = train_models(setup, setup.train_data, model_keys)
    _MODEL_KEYS[(num_models, id(originals))] = model_keys
    oracles = train_models(setup, retain, jax.random.split(k_oracles, num_models))
    opts = {k: dict(v) for k, v in {**default_options(setup, kind), **(options or {})}.items()}
    methods = list(methods or ["original", "retrain", *opts])
    scale = None
    if calibrate and "datamodel_matching" in methods:
        if progress is not None:
            progress("calibrating the datamodel scale")
        scale = calibrate_scale(setup, originals, k_cal, fraction, options=opts["datamodel_matching"])
        opts["datamodel_matching"]["scale"] = scale
    ukeys = jax.random.split(k_unlearn, num_models)
    rows = []
    for name in methods:
        if progress is not None:
            progress(name)
        if name == "original":
            params, secs = originals, 0.0
        elif name == "retrain":
            rkeys = jax.random.split(k_retrain, num_models)
            params = train_models(setup, retain, rkeys)
            secs = best_time(lambda: train_models(setup, retain, rkeys), repeats=1)[1] / num_models  # noqa: B023 (called inside the loop)
        else:
            o = opts[name]
            per_model = {"oracle_params": oracles} if name == "oracle_matching" else {}
            run = lambda: unlearning.many(name, setup.loss_fn, originals, forget, retain, ukeys, per_model=per_model, **o)  # noqa: B023 (called inside the loop)
            params = run().params
            if name == "datamodel_matching":
                first = jax.tree.map(lambda a: a[0], originals)
                _, t_targets = best_time(lambda: unlearning.datamodel_targets(
                    setup.loss_fn, first, forget, retain, ukeys[0], predict_fn=setup.predict_fn,  # noqa: B023 (called inside the loop)
                    estimator=o.get("estimator", "arnoldi"), retain_sample=o.get("retain_sample", 256),  # noqa: B023 (called inside the loop)
                    estimator_options=o.get("estimator_options"), scale=o.get("scale", 1.0)).targets, repeats=1, warmup=True)  # noqa: B023 (called inside the loop)
                secs = t_targets  # the matching is timed with oracle matching (the same fine-tuning)
            else:
                secs = best_time(run, repeats=1)[1] / num_models
        kl = metrics.klom(setup.predict_fn, params, oracles, forget, retain, test, estimator=klom_estimator)
        sc = metrics.stacked_scores(setup.predict_fn, params, forget, retain, test)
        mia = float(np.mean(metrics.stacked_mia(setup.predict_fn, params, forget, test)))
        rows.append(MethodRow(name, float(np.mean(sc.forget_accuracy)), float(np.mean(sc.retain_accuracy)),
                              float(np.mean(sc.test_accuracy)), kl.forget_p95, kl.retain_p95, kl.test_p95, mia,
                              float(secs)))
    if "datamodel_matching" in methods and "oracle_matching" in methods:
        om = next(r for r in rows if r.method == "oracle_matching")
        rows = [r._replace(seconds=r.seconds + om.seconds) if r.method == "datamodel_matching" else r for r in rows]
    return Benchmark(rows, int(s.forget_indices.size), num_models, scale)
