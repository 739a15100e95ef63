"""Influence estimators on digits: LOO and LDS correlation, mislabel AUC, and time, side by side.

Logistic regression (L2 0.01, float64, the whole digits training split) and a 64-16-10 tanh MLP
on a subset. Ground truths by real retraining (`workbench.influence.validation`). Each estimator
is built and scored twice: the first call includes compilation, the second reuses it (warm).

    PYTHONPATH=. python benchmarks/bench_influence.py [--quick]

Writes benchmarks/results/influence.json and influence.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from workbench import data, influence, models, train
from workbench.core import statistics
from workbench.influence import validation as ev

jax.config.update("jax_enable_x64", True)
RESULTS = Path(__file__).parent / "results"


def timed(build, test):
    """(scores, first-call seconds, warm seconds): build + score, twice."""
    times, scores = [], None
    for _ in range(2):
        start = time.perf_counter()
        est = build()
        scores = np.asarray(jax.block_until_ready(est.scores(test)))
        times.append(time.perf_counter() - start)
    return est, scores, times[0], times[1]


def builders(loss_fn, params, train_set, checkpoints, lr, damping, extra=None):
    out = {
        "exact": lambda: influence.make("exact", loss_fn, params, train_set, damping=damping),
        "cg": lambda: influence.make("cg", loss_fn, params, train_set, damping=damping),
        "lissa": lambda: influence.make("lissa", loss_fn, params, train_set, damping=damping, num_iters=1000, key=jax.random.key(0)),
        "arnoldi_k50": lambda: influence.make("arnoldi", loss_fn, params, train_set, damping=damping, k=50, key=jax.random.key(0)),
        "arnoldi_k200": lambda: influence.make("arnoldi", loss_fn, params, train_set, damping=damping, k=200, key=jax.random.key(0)),
        "grad_dot": lambda: influence.make("grad_dot", loss_fn, params, train_set),
        "grad_cos": lambda: influence.make("grad_cos", loss_fn, params, train_set),
        "tracin": lambda: influence.make("tracin", loss_fn, params, train_set, checkpoints=checkpoints, learning_rates=lr),
    }
    out.update(extra or {})
    return {k: v for k, v in out.items() if k.split("_k")[0] in influence.ESTIMATORS}


def run_model(name, loss_fn, params, train_set, test_set, bld, loo_truth, lds_truth, self_influence_for=()):
    rows, exact_scores = [], None
    for est_name, build in bld.items():
        est, s, first, warm = timed(build, test_set)
        if est_name == "exact":
            exact_scores = s
        row = {"model": name, "estimator": est_name, "first_s": first, "warm_s": warm}
        if loo_truth is not None:
            c = ev.loo_correlation(s, loo_truth)
            row.update(loo_pearson=c.pearson, loo_spearman=c.spearman)
        row["lds"] = ev.lds(s, lds_truth).mean
        if exact_scores is not None:
            row["vs_exact"] = float(np.nanmean(statistics.pearson_rows(s, exact_scores)))
        rows.append(row)
        print(row, flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    args = parser.parse_args()
    n_test, num_removed, num_subsets = (30, 60, 16) if args.quick else (100, 200, 50)
    train_full, test_full = data.load_digits(dtype=jnp.float64)
    test_set = test_full.take(np.arange(n_test))
    key = jax.random.key(0)
    rows, aucs = [], []

    # ---------------------------------------------------------------- logistic regression
    lr_train = train_full if not args.quick else train_full.take(np.arange(500))
    f = models.functional(models.LogisticRegression(64, 10, rngs=nnx.Rngs(0), param_dtype=jnp.float64), l2=0.01)
    t0 = time.perf_counter()
    params, gnorm = ev.fit(f.loss_fn, f.params, lr_train)
    t_fit = time.perf_counter() - t0
    removed = np.linspace(0, len(lr_train) - 1, num_removed).astype(int)
    t0 = time.perf_counter()
    loo = ev.loo(f.loss_fn, params, lr_train, test_set, removed)
    t_loo = time.perf_counter() - t0
    t0 = time.perf_counter()
    lds_truth = ev.lds_ground_truth(f.loss_fn, params, lr_train, key, test_set, num_subsets=num_subsets)
    t_lds = time.perf_counter() - t0
    print(f"logistic: fit {t_fit:.1f}s (grad norm {gnorm:.1e}), LOO {t_loo:.1f}s, LDS truth {t_lds:.1f}s")
    sgd = train.train(f.loss_fn, f.params, lr_train, key, optimizer=optax.sgd(1.0), num_steps=200, checkpoint_steps=list(range(0, 200, 20)), progress=False)
    extra = {}
    if "trak" in influence.ESTIMATORS:
        margin = influence.margin_output(f.predict_fn)
        for d in (256, 1024):
            extra[f"trak_D{d}"] = (lambda d=d: influence.make("trak", f.loss_fn, params, lr_train, dim=d,
                                                              output_fn=margin, damping=0.01, key=jax.random.key(0)))
    bld = builders(f.loss_fn, params, lr_train, sgd.checkpoints, 1.0, 0.0, extra)
    bld = {k: v for k, v in bld.items()}
    rows += run_model("logistic", f.loss_fn, params, lr_train, test_set, bld, loo, lds_truth)

    # mislabel detection on logistic regression (self-influence AUC)
    noisy, flipped = ev.flip_labels(lr_train, jax.random.key(1), 0.1, 10)
    noisy_params, _ = ev.fit(f.loss_fn, f.params, noisy)
    sgd_noisy = train.train(f.loss_fn, f.params, noisy, key, optimizer=optax.sgd(1.0), num_steps=200, checkpoint_steps=list(range(0, 200, 20)), progress=False)
    nb = builders(f.loss_fn, noisy_params, noisy, sgd_noisy.checkpoints, 1.0, 0.0)
    for skip in ("cg", "lissa", "grad_cos"):  # n_train solves each / constant self-influence
        nb.pop(skip, None)
    aucs = ev.mislabel_aucs(nb, flipped)
    for a in aucs:
        print("mislabel", a, flush=True)

    # ---------------------------------------------------------------- MLP
    mlp_train = train_full.take(np.arange(300 if args.quick else 600))
    g = models.functional(models.MLP(64, [16], 10, rngs=nnx.Rngs(0), param_dtype=jnp.float64), l2=0.01)
    steps, lr = 300, 0.01
    run = train.train(g.loss_fn, g.params, mlp_train, key, optimizer=optax.adam(lr), num_steps=steps, checkpoint_steps=list(range(0, steps, steps // 10)), progress=False)
    mlp_truth = ev.lds_ground_truth(g.loss_fn, g.params, mlp_train, key, test_set, num_subsets=num_subsets,
                                    method="optax", optimizer=optax.adam(lr), num_steps=steps)
    damping = influence.damping_above_min_eigenvalue(g.loss_fn, run.params, mlp_train, margin=0.01).damping
    mb = builders(g.loss_fn, run.params, mlp_train, run.checkpoints, lr, damping)
    rows += run_model("mlp", g.loss_fn, run.params, mlp_train, test_set, mb, None, mlp_truth)

    meta = {"platform": platform.platform(), "jax": jax.__version__, "devices": str(jax.devices()),
            "n_test": n_test, "num_removed": num_removed, "num_subsets": num_subsets,
            "logistic_n_train": len(lr_train), "mlp_n_train": len(mlp_train), "mlp_damping": damping,
            "ground_truth_seconds": {"fit": t_fit, "loo": t_loo, "lds": t_lds}, "quick": args.quick}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"meta": meta, "rows": rows, "mislabel": aucs}
    suffix = "_quick" if args.quick else ""
    (RESULTS / f"influence{suffix}.json").write_text(json.dumps(out, indent=2) + "\n")
    exact_warm = {r["model"]: r["warm_s"] for r in rows if r["estimator"] == "exact"}
    for r in rows:
        r["warm_vs_exact"] = r["warm_s"] / exact_warm[r["model"]]
    md = ["# Influence estimators on digits", "",
          f"Logistic regression: {len(lr_train)} training / {n_test} test points, LOO over {num_removed} "
          f"removals, LDS over {num_subsets} half-data models (retrained to convergence). MLP 64-16-10 "
          f"(Adam, {steps} full-batch steps per model, damping {damping:.3g}): {len(mlp_train)} training points, "
          "LDS only. Times: build + score all test points; first call includes compilation.", "",
          ev.markdown_table(rows), "", "## Mislabel detection (logistic regression, 10% flipped)", "",
          ev.markdown_table(aucs), "", f"Platform: {meta['platform']}, jax {meta['jax']}."]
    (RESULTS / f"influence{suffix}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
