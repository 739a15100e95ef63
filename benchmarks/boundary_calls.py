"""The public calls a review fed bad or edge-case inputs, rerun: what each returns or raises now.

Every call here once returned a plausible value, raised an obscure error, or misattributed its
cause. The script runs each in this process and writes `benchmarks/results/boundary_calls.md`
(and `.json`): the call, the outcome ("raises" with the exception and its message, or "returns"
with the value) and whether that is the intended outcome. Nothing is timed.

    python benchmarks/boundary_calls.py [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

jax.config.update("jax_enable_x64", True)

from workbench import curvature, data, influence, models, sketch, spectrum, train, unlearning  # noqa: E402
from workbench.core import statistics  # noqa: E402
from workbench.influence import validation  # noqa: E402


def _problem():
    ds = data.make_classification(jax.random.key(1), 30, 4, 3, dtype=jnp.float64)
    fn = models.functional(models.LogisticRegression(4, 3, rngs=nnx.Rngs(0), param_dtype=jnp.float64), l2=1e-2)
    return ds, fn


def _quadratic(c):
    return lambda p, batch: 0.5 * c * jnp.sum(p["w"] ** 2) + 0.0 * jnp.sum(batch)


def calls(tmp: Path):
    """(name, thunk, intended) for every reviewed call; intended is 'raises' or 'returns'."""
    key = jax.random.key(0)
    ds, fn = _problem()
    p = fn.params
    loss = fn.loss_fn
    s = sketch.make("dense", jax.random.key(3), sum(a.size for a in jax.tree.leaves(p)), 8)
    store = tmp / "store.zarr"
    sketch.write_gradient_store(loss, p, ds, s, store)
    shifted = jax.tree.map(lambda a: a + 0.5, p)
    other = train.optimize(fn.loss_fn, p, ds, None, optimizer=optax.sgd(0.5), num_steps=3).params  # a later checkpoint
    nan_params = jax.tree.map(lambda a: a.at[(0,) * a.ndim].set(jnp.nan), p)
    quad, w14, batch = _quadratic(0.01), {"w": jnp.ones(14)}, jnp.ones((3, 2))
    return [
        ("store reopened at params + 0.5", lambda: sketch.write_gradient_store(loss, shifted, ds, s, store), "raises"),
        ("store reopened with 3 * loss", lambda: sketch.write_gradient_store(
            lambda q, b: 3 * loss(q, b), p, ds, s, store), "raises"),
        ("store checked against a later checkpoint of the model", lambda: sketch.check_store(
            loss, other, ds, s, store), "raises"),
        ("store written at NaN params", lambda: sketch.write_gradient_store(loss, nan_params, ds, s, tmp / "nan.zarr"),
         "raises"),
        ("sketch.per_example_gradients at NaN params", lambda: sketch.per_example_gradients(loss, nan_params, ds, s),
         "raises"),
        ("sketch.sketch_gradient at NaN params", lambda: sketch.sketch_gradient(loss, nan_params, ds, s), "raises"),
        ("sketch.make('dense', key, np.int64(100), 10)", lambda: sketch.make("dense", key, np.int64(100), 10).dim_in,
         "returns"),
        ("top_eigenpairs(from_matrix(2 I), key(0), 3, which='smallest')", lambda: spectrum.top_eigenpairs(
            curvature.from_matrix(2 * jnp.eye(6)), key, 3, which="smallest").values, "returns"),
        ("top_eigenpairs not converged (max_restarts=0, tol=1e-14)", lambda: spectrum.top_eigenpairs(
            curvature.from_matrix(jnp.diag(jnp.linspace(1.0, 2.0, 60))), key, 3, num_iters=8, max_restarts=0,
            tol=1e-14).values, "raises"),
        ("sharpness of 0.01 I, k=3, key(0)", lambda: spectrum.sharpness(quad, w14, batch, key, k=3), "returns"),
        ("sharpness(k=20) on 14 parameters", lambda: spectrum.sharpness(quad, w14, batch, key, k=20), "raises"),
        ("sharpness_callback(k=20)(0, 14 parameters)", lambda: spectrum.sharpness_callback(quad, batch, key, k=20)(
            0, w14), "raises"),
        ("sharpness(num_iters=0)", lambda: spectrum.sharpness(quad, w14, batch, key, num_iters=0), "raises"),
        ("lissa with scale below the top eigenvalue", lambda: influence.make(
            "lissa", fn, p, ds, scale=1e-4, num_iters=200).scores(ds.take(np.arange(2))), "raises"),
        ("lissa num_iters=0", lambda: influence.make("lissa", fn, p, ds, scale=10.0, num_iters=0), "raises"),
        ("statistics.correlations of a constant prediction", lambda: statistics.correlations(
            np.ones(5), np.arange(5.0)), "raises"),
        ("curvature.operator(..., 'ggn', l2=-1)", lambda: curvature.operator(fn, p, ds, "ggn", l2=-1.0), "raises"),
        ("data.make_classification(key, 0, 3)", lambda: data.make_classification(key, 0, 3), "raises"),
        ("train.train(steps_per_chunk=0)", lambda: train.train(fn.loss_fn, p, ds, key, optimizer=optax.sgd(0.1),
                                                             num_steps=4, steps_per_chunk=0), "raises"),
        ("curvature.dense_hessian(chunk_size=0)", lambda: curvature.dense_hessian(fn.loss_fn, p, ds, chunk_size=0),
         "raises"),
        ("train.optimize(batch_size=0)", lambda: train.optimize(fn.loss_fn, p, ds, key, optimizer=optax.sgd(0.1),
                                                              num_steps=4, batch_size=0), "raises"),
        ("unlearning.many('foo', ...)", lambda: unlearning.many("foo", fn.loss_fn, p, ds, ds, key), "raises"),
        ("influence.make('cg', ..., dampin=0.1)", lambda: influence.make("cg", fn, p, ds, dampin=0.1), "raises"),
        ("validation.retrain_weighted(damping=-1)", lambda: validation.retrain_weighted(
            fn.loss_fn, p, ds, jnp.ones((1, 30)), damping=-1.0), "raises"),
        ("statistics.auc with a NaN score", lambda: statistics.auc([0.1, np.nan, 0.3], [True, False, False]),
         "raises"),
        ("statistics.correlations of a variance that underflows", lambda: statistics.correlations(
            [0.0, 1.7e-105, 3e-105], [3.0, 2.0, 1.0]).pearson, "returns"),
        ("data.make_classification(key, 5, np.int64(3)) under strict promotion", lambda: _strict(
            lambda: data.make_classification(key, 5, np.int64(3)).x.shape), "returns"),
        ("sharpness(num_iters=np.int64(6)) under strict promotion", lambda: _strict(
            lambda: spectrum.sharpness(quad, w14, batch, key, num_iters=np.int64(6))), "returns"),
        ("train.optimize(num_steps=0, batch_size=5)", lambda: train.optimize(
            fn.loss_fn, p, ds, key, optimizer=optax.sgd(0.1), num_steps=0, batch_size=5).losses.shape, "returns"),
        ("models.functional(model, l2=-1)", lambda: models.functional(
            models.LogisticRegression(4, 3, rngs=nnx.Rngs(0)), l2=-1.0), "raises"),
    ]


def _strict(thunk):
    with jax.numpy_dtype_promotion("strict"):
        return thunk()


def run_calls(tmp: Path) -> list[dict]:
    """Run every call; one row per call with its outcome."""
    rows = []
    for name, thunk, intended in calls(tmp):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                value = thunk()
            except Exception as err:  # noqa: BLE001 - the outcome is what we record
                outcome, text = "raises", f"{type(err).__name__}: {err}"
            else:
                outcome, text = "returns", np.array2string(np.asarray(value), precision=6) if not isinstance(
                    value, int | float | tuple) else repr(value)
        text = text.replace(str(tmp), "TMP")  # the temporary folder, not a path of this machine
        rows.append({"call": name, "outcome": outcome, "detail": " ".join(text.split())[:400],
                     "intended": intended, "ok": outcome == intended})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = run_calls(Path(tmp))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "boundary_calls.json").write_text(json.dumps(rows, indent=1))
    lines = ["# Reviewed boundary calls: what each returns or raises now", "",
             f"{sum(r['ok'] for r in rows)} of {len(rows)} calls have the intended outcome "
             "(`python benchmarks/boundary_calls.py`).", "",
             "| call | outcome | intended | detail |", "|---|---|---|---|"]
    lines += [f"| {r['call']} | {r['outcome']} | {'yes' if r['ok'] else '**no**'} | "
              f"{r['detail'].replace('|', '/')} |" for r in rows]
    (out / "boundary_calls.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
