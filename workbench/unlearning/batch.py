"""Every method by name, one model or a stack of models in one vmapped call."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from workbench.core.losses import as_loss
from workbench.unlearning.matching import (
    datamodel_matching,
    datamodel_targets,
    match_outputs,
    oracle_matching,
)
from workbench.unlearning.methods import (
    Unlearned,
    _finish,
    gradient_ascent,
    neggrad_plus,
    retrain,
    scrub,
)
from workbench.unlearning.sets import check_sets
from workbench.unlearning.ssd import ssd

PyTree = Any


METHODS: dict[str, Callable[..., Unlearned]] = {
    "retrain": retrain,
    "gradient_ascent": gradient_ascent,
    "neggrad_plus": neggrad_plus,
    "scrub": scrub,
    "ssd": ssd,
    "oracle_matching": oracle_matching,
    "datamodel_matching": datamodel_matching,
}


def _method(method: str | Callable) -> tuple[Callable, str]:
    """The method function and its name; a ValueError listing the names for an unknown one."""
    if isinstance(method, str):
        if method not in METHODS:
            raise ValueError(f"unknown unlearning method {method!r}; choose one of {sorted(METHODS)}")
        return METHODS[method], method
    return method, getattr(method, "__name__", "method")


def takes_key(method: str | Callable) -> bool:
    """Whether an unlearning method draws random numbers, i.e. takes a `key` (SSD does not).

    Args:
      method: a name in `METHODS` or a method function.

    Returns:
      True when the method's signature has a `key` parameter.

    Raises:
      ValueError: for an unknown method name (the message lists the valid ones).
    """
    return "key" in inspect.signature(_method(method)[0]).parameters


def unlearn(method: str | Callable, loss_fn: Callable, params: PyTree, forget: PyTree, retain: PyTree,
            key: jax.Array | None = None, **options) -> Unlearned:
    """Apply one method, by name, to one model: `key` goes only to methods that take one.

    Args:
      method: a name in `METHODS` or a method function.
      loss_fn: `loss_fn(params, batch) -> scalar`, the training objective (a batch mean), or a
        `models.Functional` (its objective).
      params: the trained model's params.
      forget: the examples to forget, a pytree with a leading example axis.
      retain: the examples to keep, disjoint from `forget`.
      key: the method's randomness; required by every method but SSD, ignored by SSD.
      **options: the method's keyword options (learning_rate, num_steps, alpha, ...).

    Returns:
      The method's `Unlearned`.

    Raises:
      ValueError: for an unknown method name, or a method that needs a key when none is given
        (and every error of the method itself).
    """
    fn, name = _method(method)
    loss_fn = as_loss(loss_fn, role="objective", caller=f"unlearning.unlearn({name!r})")
    if not takes_key(fn):
        return fn(loss_fn, params, forget, retain, **options)
    if key is None:
        raise ValueError(f"{name} draws random numbers: pass a key")
    return fn(loss_fn, params, forget, retain, key, **options)


def many(method: str | Callable, loss_fn: Callable, params: PyTree, forget: PyTree, retain: PyTree,
         keys: jax.Array | None = None, **options) -> Unlearned:
    """Apply one method to a stack of models in one vmapped call.

    Datamodel matching computes its influence targets model by model (the estimators are host
    objects), then matches all models in one vmapped call. Keys go only to methods that take one
    (`takes_key`).

    Args:
      method: a name in `METHODS` or a method function.
      loss_fn: `loss_fn(params, batch) -> scalar`, the training objective (a batch mean), or a
        `models.Functional` (its objective).
      params: the stacked params: every leaf carries a leading model axis [m, ...].
      forget: the examples to forget (shared by all models).
      retain: the examples to keep, disjoint from `forget`.
      keys: one key per model [m]; required by every method but SSD, ignored by SSD.
      **options: the method's keyword options; options with a leading model axis go in
        `per_model={"oracle_params": stacked}`.

    Returns:
      `Unlearned` whose fields carry the leading model axis.

    Raises:
      ValueError: for an unknown method name, a missing key, params/per_model/keys that disagree
        on the number of models, or an SSD alpha that selects no weight in some model.
      TypeError: when datamodel matching misses a required option.
      NonFiniteLossError: when any model's objective or params became NaN/inf.
    """
    fn, name = _method(method)
    loss_fn = as_loss(loss_fn, role="objective", caller=f"unlearning.many({name!r})")
    uses_key = takes_key(fn)
    if uses_key and keys is None:
        raise ValueError(f"{name} draws random numbers: pass one key per model")
    check_sets(forget, retain)
    per_model = dict(options.pop("per_model", {}))
    m = int(np.shape(keys)[0]) if uses_key else int(np.shape(jax.tree.leaves(params)[0])[0])
    sizes = {int(np.shape(a)[0]) for a in jax.tree.leaves((params, per_model))}
    if sizes != {m}:
        raise ValueError(f"params and per_model options need a leading axis of {m} models (one per key), got {sizes}")
    if fn is datamodel_matching:
        out = _many_datamodel_matching(loss_fn, params, forget, retain, keys, m, options)
    elif uses_key:
        call = jax.vmap(lambda p, k, extra: fn(loss_fn, p, forget, retain, k, **options, **extra))
        out = call(params, keys, per_model)
    else:
        call = jax.vmap(lambda p, extra: fn(loss_fn, p, forget, retain, **options, **extra))
        out = call(params, per_model)
    out = jax.block_until_ready(out)
    if name == "ssd" and float(jnp.min(out.selected)) == 0.0:
        raise ValueError(f"ssd: alpha={options.get('alpha', 10.0)} selected no weight in at least one model; lower alpha")
    return _finish(name, out, "lower the learning rate or the number of steps")


def _many_datamodel_matching(loss_fn, params, forget, retain, keys, m, options) -> Unlearned:
    for required in ("predict_fn", "learning_rate", "num_steps"):
        if required not in options:
            raise TypeError(f"datamodel_matching needs the option {required}=")
    take = lambda i: jax.tree.map(lambda a: a[i], params)
    match_keys, xs, ts = [], [], []
    for i in range(m):
        k_t, k_m = jax.random.split(keys[i])
        t = datamodel_targets(loss_fn, take(i), forget, retain, k_t, predict_fn=options["predict_fn"],
                              estimator=options.get("estimator", "arnoldi"),
                              retain_sample=options.get("retain_sample", 256),
                              estimator_options=options.get("estimator_options"),
                              scale=options.get("scale", 1.0))
        xs.append(t.x), ts.append(t.targets), match_keys.append(k_m)
    opts = {k: options[k] for k in ("learning_rate", "num_steps", "batch_size", "optimizer_name") if k in options}
    call = jax.vmap(lambda p, x, t, k: match_outputs(options["predict_fn"], p, x, t, k, **opts))
    return call(params, jnp.stack(xs), jnp.stack(ts), jnp.stack(match_keys))
