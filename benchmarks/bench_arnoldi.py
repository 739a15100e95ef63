"""Arnoldi influence against the exact inverse: how small can k and the Krylov depth be, and where
does the time go? Checks the target "Arnoldi within 0.02 LDS of exact at 10x less time".

1. digits logistic regression (650 parameters, L2 0.01): exact vs arnoldi over k and Krylov depth;
   each arnoldi time is split into the eigenpairs (`spectrum.top_eigenpairs`) and the JVP
   projections of the training and test examples.
2. a bigger logistic regression where the exact inverse is genuinely expensive: digits through
   `RF` random Fourier features (cos(x W + b), W ~ N(0, 1/64 * 4)), 10 (RF + 1) parameters;
   exact (dense Hessian + eigh) vs arnoldi at a few k. LDS against real retraining
   (`workbench.influence.validation.lds_ground_truth`, Newton to convergence).

Times are warm (a first call compiles; its time is reported apart).

    PYTHONPATH=. python benchmarks/bench_arnoldi.py [--quick]

Writes benchmarks/results/arnoldi.json and .md (_quick suffix with --quick).
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
from flax import nnx

from workbench import curvature, data, influence, models
from workbench.core import statistics
from workbench.influence import validation as ev

jax.config.update("jax_enable_x64", True)
RESULTS = Path(__file__).parent / "results"
L2 = 0.01


def clock(fn):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - start


def exact_row(f, params, train_set, test_set, truth):
    run = lambda: influence.make("exact", f.loss_fn, params, train_set).scores(test_set)
    _, first = clock(run)
    scores, warm = clock(run)
    hess, t_hess = clock(lambda: curvature.dense_hessian(f.loss_fn, params, train_set))
    _, t_chol = clock(lambda: jnp.linalg.cholesky(hess))
    row = {"estimator": "exact", "k": None, "depth": None, "first_s": first, "warm_s": warm,
           "hessian_s": t_hess, "cholesky_s": t_chol, "lds": ev.lds(scores, truth).mean, "lds_vs_exact": 0.0,
           "corr_vs_exact": 1.0}
    return row, np.asarray(scores)


def arnoldi_row(f, params, train_set, test_set, truth, exact_scores, exact_warm, k, depth, tail):
    build = lambda: influence.make("arnoldi", f.loss_fn, params, train_set, k=k, num_iters=depth, tail=tail, key=jax.random.key(0))
    _, first = clock(lambda: build().scores(test_set))
    est, t_build = clock(build)  # build = curvature operator + top_eigenpairs
    feats, t_train = clock(est.train_features)
    scores, t_score = clock(lambda: est.scores(test_set))  # test JVPs + one matrix product
    warm = t_build + t_train + t_score
    lds = ev.lds(np.asarray(scores), truth).mean
    row = {"estimator": f"arnoldi (tail {tail})", "k": k, "depth": depth, "first_s": first, "warm_s": warm, "eig_s": t_build,
           "train_jvp_s": t_train, "test_s": t_score, "lds": lds,
           "corr_vs_exact": float(np.nanmean(statistics.pearson_rows(np.asarray(scores), exact_scores))),
           "exact_over_arnoldi_time": exact_warm / warm, "converged": est.info["converged"]}
    del feats
    return row


def table(rows):
    cols = ["problem", "num_params", "estimator", "k", "depth", "lds", "lds_vs_exact", "corr_vs_exact", "warm_s",
            "exact_over_arnoldi_time", "first_s", "eig_s", "train_jvp_s", "test_s", "hessian_s", "cholesky_s",
            "converged"]
    fmt = lambda v: "" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return "\n".join(lines + ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows])


def random_features(dataset, key, num_features):
    kw, kb = jax.random.split(key)
    w = jax.random.normal(kw, (dataset.x.shape[1], num_features), jnp.float64) * (2.0 / 8.0)
    b = jax.random.uniform(kb, (num_features,), jnp.float64, 0.0, 2 * jnp.pi)
    return data.Dataset(jnp.cos(dataset.x @ w + b) * jnp.sqrt(2.0 / num_features) * 8.0, dataset.y)


def study(name, train_set, test_set, grid, num_subsets, key):
    dim = train_set.x.shape[1]
    f = models.functional(models.LogisticRegression(dim, 10, rngs=nnx.Rngs(0), param_dtype=jnp.float64), l2=L2)
    (params, gnorm), t_fit = clock(lambda: ev.fit(f.loss_fn, f.params, train_set))
    truth, t_truth = clock(lambda: ev.lds_ground_truth(f.loss_fn, params, train_set, key, test_set,
                                                       num_subsets=num_subsets))
    num_params = (dim + 1) * 10
    print(f"{name}: {num_params} params, fit {t_fit:.1f}s (grad norm {gnorm:.1e}), LDS truth {t_truth:.1f}s", flush=True)
    row, exact_scores = exact_row(f, params, train_set, test_set, truth)
    rows = [row]
    print(row, flush=True)
    for k, depth, tail in grid:
        r = arnoldi_row(f, params, train_set, test_set, truth, exact_scores, row["warm_s"], k, min(depth, num_params), tail)
        r["lds_vs_exact"] = r["lds"] - row["lds"]
        rows.append(r)
        print(r, flush=True)
    for r in rows:
        r.update(problem=name, num_params=num_params)
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer test points and subsets, a smaller grid")
    args = parser.parse_args()
    n_test, num_subsets = (20, 10) if args.quick else (50, 30)
    num_features = 200 if args.quick else 500
    train_full, test_full = data.load_digits(dtype=jnp.float64)
    test_set = test_full.take(np.arange(n_test))
    key = jax.random.key(0)
    # (k, Krylov depth, tail): the pure top-k estimator of the paper, then the default flat tail
    digits_grid = ([(k, d, "none") for k in (20, 50, 100, 200) for d in (k + 10, 2 * k + 20)] + [(200, 650, "none"), (400, 650, "none")]
                   + [(k, 2 * k + 20, "flat") for k in (10, 20, 50, 100)])
    big_grid = ([(k, 2 * k + 20, "none") for k in (50, 100, 200, 400)] + [(100, 400, "none")]
                + [(k, 2 * k + 20, "flat") for k in (10, 20, 50, 75, 100)])
    if args.quick:
        digits_grid, big_grid = [(20, 60, "none"), (50, 120, "none"), (20, 60, "flat")], [(50, 120, "none"), (50, 120, "flat")]
    rows = study("digits", train_full, test_set, digits_grid, num_subsets, key)
    rf_key = jax.random.key(7)
    rows += study(f"digits_rf{num_features}", random_features(train_full, rf_key, num_features),
                  random_features(test_set, rf_key, num_features), big_grid, num_subsets, key)
    meta = {"platform": platform.platform(), "jax": jax.__version__, "n_test": n_test, "num_subsets": num_subsets,
            "num_features": num_features, "quick": args.quick}
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    (RESULTS / f"arnoldi{suffix}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    md = ["# Arnoldi influence vs exact on logistic regression", "",
          f"{len(train_full)} training / {n_test} test points, LDS over {num_subsets} half-data models retrained to "
          "convergence. warm_s = eig_s (curvature operator + top-k eigenpairs, for exact: dense Hessian + Cholesky) + "
          "train_jvp_s (tail none: projecting every training example on the k eigenvectors by JVPs; tail flat: "
          "every training gradient) + test_s (test JVPs and "
          "the score product). `depth` is the Arnoldi (Krylov) depth; `hessian_s` / `cholesky_s`: exact's two steps.",
          "", table(rows), "",
          f"Platform: {meta['platform']}, jax {meta['jax']}."]
    (RESULTS / f"arnoldi{suffix}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
