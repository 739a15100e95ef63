"""Every method by name, and one method applied to a stack of models in one vmapped call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from workbench.unlearning.matching import (
    datamodel_matching,
    datamodel_targets,
    match_outputs,
    oracle_matching,
)
from workbench.unlearning.methods import (
    Unlearned,
    _finish,
    check_sets,
    gradient_ascent,
    neggrad_plus,
    retrain,
    scrub,
    ssd,
)

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


def many(method: str | Callable, loss_fn: Callable, params: PyTree, forget: PyTree, retain: PyTree,
         keys: jax.Array, **options) -> Unlearned:
    """Apply one method to a stack of models (`params` leaves carry a leading model axis, `keys`
    one key per model) in one vmapped call; options with a leading model axis go in
    `per_model={"oracle_params": stacked}`. Datamodel matching computes its influence targets
    model by model (the estimators are host objects), then matches all models in one vmapped call.
    Raises NonFiniteLossError when any model's objective or params became NaN/inf."""
    fn = METHODS[method] if isinstance(method, str) else method
    name = method if isinstance(method, str) else getattr(method, "__name__", "method")
    if isinstance(method, str) and method not in METHODS:
        raise ValueError(f"unknown unlearning method {method!r}; choose one of {sorted(METHODS)}")
    check_sets(forget, retain)
    per_model = options.pop("per_model", {})
    m = int(np.shape(keys)[0])
    sizes = {int(np.shape(a)[0]) for a in jax.tree.leaves((params, per_model))}
    if sizes != {m}:
        raise ValueError(f"params and per_model options need a leading axis of {m} models (one per key), got {sizes}")
    if fn is datamodel_matching:
        for required in ("predict_fn", "learning_rate", "num_steps"):
            if required not in options:
                raise TypeError(f"datamodel_matching needs the option {required}=")
        take = lambda i: jax.tree.map(lambda a: a[i], params)
        match_keys = []
        xs, ts = [], []
        for i in range(m):
            k_t, k_m = jax.random.split(keys[i])
            t = datamodel_targets(loss_fn, take(i), forget, retain, k_t, predict_fn=options["predict_fn"],
                                  estimator=options.get("estimator", "arnoldi"),
                                  retain_sample=options.get("retain_sample", 256),
                                  estimator_options=options.get("estimator_options"),
                                  scale=options.get("scale", 1.0))
            xs.append(t.x), ts.append(t.targets), match_keys.append(k_m)
        opts = {k: options[k] for k in ("learning_rate", "num_steps", "batch_size", "optimizer") if k in options}
        call = jax.vmap(lambda p, x, t, k: match_outputs(options["predict_fn"], p, x, t, k, **opts))
        out = call(params, jnp.stack(xs), jnp.stack(ts), jnp.stack(match_keys))
    else:
        call = jax.vmap(lambda p, k, extra: fn(loss_fn, p, forget, retain, k, **options, **extra))
        out = call(params, keys, per_model)
    out = jax.block_until_ready(out)
    if name == "ssd" and float(jnp.min(out.selected)) == 0.0:
        raise ValueError(f"ssd: alpha={options.get('alpha', 10.0)} selected no weight in at least one model; lower alpha")
    return _finish(name, out, "lower the learning rate or the number of steps")
