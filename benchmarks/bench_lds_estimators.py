"""LDS of the influence estimators against real retraining on the digits MLP, over seeds.

The MLP of `notebooks/influence_evaluation.py` (its recipe, `workbench.experiments.influence`):
a 64-`hidden`-10 tanh MLP with l2 0.01 on the first `n_train` digits training examples (float64),
`mlp_steps` full-batch Adam steps from its initialisation. The ground truth is
`validation.lds_ground_truth`: M models trained the same way (same initialisation, same Adam
budget, `method="optax"`) on random halves of the training set; the measure is the test loss.
Per seed (the digits split, the initialisation, the subsets and the estimators' keys), each
estimator is built at the full-data model and scores the test points; reported per estimator:

- LDS (`validation.lds`), mean and std over seeds;
- build and score wall time (first call, compile included), and the retraining cost;
- the fitted scale: the least-squares slope of the actual change of the test loss (subset model
  vs the others) on the change the scores predict, per test point centred and pooled. For
  training on subset S (|S| of n examples, the objective a mean over S plus l2), the first-order
  prediction from scores s_i (> 0: removing i raises the loss) is
  delta_t(S) = mean_i s_i - mean_{i in S} s_i. A slope of 1 means the scores have the size of
  retraining's effect; > 1 means influence underpredicts it. Only the inverse-curvature
  estimators (exact, cg, arnoldi, kfac, ekfac) are in these units; grad_dot's and trak's (the
  margin, a sketched Gauss-Newton) slopes are in their own.

Estimators: exact, cg, arnoldi, trak and grad_dot from `experiments.influence.estimator_builders`
(the notebook's budgets; exact, cg and arnoldi at the damping just above -lambda_min + 0.01);
kfac and ekfac with kronfluence's defaults (true Fisher, one sampled label, damping None: 0.1 x
the mean eigenvalue per layer), ekfac with 16 sampled labels, with the exact expectation over
labels ("ggn"), and ekfac "ggn" at exact's damping (the factorisation alone, damping matched).
logra (`influence.make("logra")`: Gaussian Kronecker projections k_in = k_out = 8 per layer, each
layer's projected covariance damped by LogIX's default, 0.1 x its mean eigenvalue, plus l2).
Baselines: random scores and datamodels fitted to the M - 1 other retrainings.

Two profiles, the notebook's: "full" (1347 training examples, 200 test points, hidden 32) and
"small" (its quick profile: 240, 30, hidden 16); M = 100 retrainings (the full profile's) in both.
Times are first call (compile included) and warm (a second build + score), on one CPU thread.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_lds_estimators.py [--quick] [--seeds 0 1 2 3 4]

Writes benchmarks/results/lds_estimators.json and .md (and .png, the first profile's), _quick
suffix with --quick.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from workbench import influence, models  # noqa: E402
from workbench.core.statistics import spearman_rows  # noqa: E402
from workbench.curvature import kfac  # noqa: E402
from workbench.experiments.influence import (  # noqa: E402
    digits_subsets,
    estimator_builders,
    train_for_attribution,
)
from workbench.experiments.influence_evaluation import datamodel_lds, random_lds  # noqa: E402
from workbench.influence import validation  # noqa: E402

RESULTS = Path(__file__).parent / "results"
# notebooks/influence_evaluation.py's two profiles (M is --num-subsets: 100, the full profile's, for both)
PROFILES = {"full": dict(n_train=1347, n_test=200, hidden=32), "small": dict(n_train=240, n_test=30, hidden=16)}
# the notebook's budgets (notebooks/influence_evaluation.py parameters)
BUDGETS = dict(cg_num_iters=100, lissa_num_iters=150, arnoldi_k=50, trak_dim=256, trak_damping=0.01)
FROM_BUILDERS = ("exact", "cg", "arnoldi", "trak", "grad_dot")
IN_LOSS_UNITS = ("exact", "cg", "arnoldi", "kfac", "ekfac", "ekfac_true16", "ekfac_ggn", "ekfac_ggn_exact_damping")


def fitted_scale(scores: np.ndarray, truth) -> tuple[float, float]:
    """Least-squares slope (and Pearson r) of the actual on the predicted test-loss change,
    each centred per test point (so the full-data reference and any constant drop out)."""
    masks = truth.masks.astype(np.float64)  # [M, n]
    predicted = scores.mean(1)[:, None] - scores @ masks.T / masks.sum(1)[None]  # [n_test, M]
    actual = truth.outputs.T  # [n_test, M]
    p = predicted - predicted.mean(1, keepdims=True)
    a = actual - actual.mean(1, keepdims=True)
    slope = float(np.sum(p * a) / np.sum(p * p))
    r = float(np.sum(p * a) / np.sqrt(np.sum(p * p) * np.sum(a * a)))
    return slope, r


def run(seed: int, args) -> dict:
    train_set, test_set = digits_subsets(args.n_train, args.n_test, seed)
    key_lds, key_random = jax.random.split(jax.random.key(seed), 3)[::2]
    fn = models.functional(models.MLP(64, [args.hidden], 10, rngs=nnx.Rngs(seed), param_dtype=jnp.float64),
                           l2=args.l2)
    start = time.perf_counter()
    trained = train_for_attribution(fn, train_set, jax.random.key(seed), optimizer_name="adam",
                                    learning_rate=args.lr, num_steps=args.steps, damping_margin=0.01)
    prep_s = time.perf_counter() - start  # one training run + the dense Hessian's eigendecomposition (exact's damping)
    accuracy = models.accuracy(fn.predict_fn, trained.params, test_set)

    start = time.perf_counter()
    truth = validation.lds_ground_truth(fn.loss_fn, fn.params, train_set, key_lds, test_set,
                                        num_subsets=args.num_subsets, fraction=0.5, method="optax",
                                        optimizer=optax.adam(args.lr), num_steps=args.steps)
    retrain_s = time.perf_counter() - start
    start = time.perf_counter()  # again, warm (same subsets): the retraining cost without compile
    validation.lds_ground_truth(fn.loss_fn, fn.params, train_set, key_lds, test_set, num_subsets=args.num_subsets,
                                fraction=0.5, method="optax", optimizer=optax.adam(args.lr), num_steps=args.steps)
    retrain_warm_s = time.perf_counter() - start

    key_est = jax.random.key(seed)
    builders = estimator_builders(fn, trained, train_set, key_est, **BUDGETS)
    builders = {k: builders[k] for k in FROM_BUILDERS}
    kkey = jax.random.fold_in(key_est, 7)
    builders["kfac"] = lambda: influence.make("kfac", fn, trained.params, train_set, key=kkey)
    builders["ekfac"] = lambda: influence.make("ekfac", fn, trained.params, train_set, key=kkey)
    builders["ekfac_true16"] = lambda: influence.make(
        "ekfac", fn, trained.params, train_set,
        factors=kfac.fit(fn, trained.params, train_set, fisher="true", key=kkey, num_samples=16))
    builders["ekfac_ggn"] = lambda: influence.make("ekfac", fn, trained.params, train_set, fisher="ggn")
    builders["ekfac_ggn_exact_damping"] = lambda: influence.make("ekfac", fn, trained.params, train_set,
                                                                 fisher="ggn", damping=trained.damping)
    # LoGra: Gaussian projections k_in = k_out = 8 per layer (64 of each layer's (d_in + 1) d_out gradient
    # entries), each layer's projected covariance damped by LogIX's default (0.1 x its mean eigenvalue) + l2
    builders["logra"] = lambda: influence.make("logra", fn, trained.params, train_set, key=jax.random.fold_in(key_est, 11),
                                               k_in=8, k_out=8)
    if args.skip:
        builders = {k: v for k, v in builders.items() if k not in args.skip}

    rows, all_scores = {}, {}
    for name, build in builders.items():
        start = time.perf_counter()
        est = build()
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        scores = np.asarray(jax.block_until_ready(est.scores(test_set)), dtype=np.float64)
        score_s = time.perf_counter() - start
        all_scores[name] = scores
        start = time.perf_counter()  # again, warm: compile excluded (a randomised estimator redraws the same key)
        np.asarray(jax.block_until_ready(build().scores(test_set)))
        warm_s = time.perf_counter() - start
        result = validation.lds(scores, truth)
        slope, r = fitted_scale(scores, truth)
        damping = est.info.get("damping") if hasattr(est, "info") else None
        if isinstance(damping, dict):
            damping = float(np.mean(list(damping.values())))
        rows[name] = dict(lds=result.mean, lds_std_test=float(np.nanstd(result.per_test)), build_s=build_s,
                          score_s=score_s, warm_s=warm_s, slope=slope, pearson=r,
                          damping=None if damping is None else float(damping))
        print(f"seed {seed} {name:26s} LDS {result.mean:.3f} slope {slope:8.3g} r {r:.3f} "
              f"build {build_s:.2f}s score {score_s:.2f}s warm {warm_s:.2f}s", flush=True)
    exact = all_scores.get("exact")
    if exact is not None:
        for name, scores in all_scores.items():
            rows[name]["vs_exact_spearman"] = float(np.nanmean(
                spearman_rows(scores, exact)))
    rows["random"] = dict(lds=random_lds(truth, key_random))
    start = time.perf_counter()
    rows["datamodels"] = dict(lds=datamodel_lds(truth).mean, build_s=time.perf_counter() - start)
    print(f"seed {seed} random LDS {rows['random']['lds']:.3f} datamodels LDS {rows['datamodels']['lds']:.3f} "
          f"retrain {retrain_s:.1f}s ({args.num_subsets} models)", flush=True)
    return dict(seed=seed, rows=rows, prep_s=prep_s, retrain_s=retrain_s, retrain_warm_s=retrain_warm_s, num_models=args.num_subsets,
                test_accuracy=float(accuracy), damping_exact=float(trained.damping),
                lambda_min=float(trained.lambda_min), retrain_grad_norm_max=float(np.max(truth.grad_norm)))


def summarise(runs: list[dict]) -> dict:
    names = list(runs[0]["rows"])
    out = {}
    for name in names:
        fields = runs[0]["rows"][name].keys()
        out[name] = {}
        for f in fields:
            vals = [r["rows"][name].get(f) for r in runs]
            if all(isinstance(v, float) for v in vals):
                out[name][f] = (float(np.mean(vals)), float(np.std(vals)), [float(v) for v in vals])
    return out


def section(runs: list[dict], args, wall_s: float) -> tuple[dict, str]:
    """The json dict and markdown of one profile's runs."""
    summary = summarise(runs)
    n_params = 64 * args.hidden + args.hidden + args.hidden * 10 + 10
    seeds = [r["seed"] for r in runs]
    retrain = [r["retrain_s"] for r in runs]
    retrain_warm = [r["retrain_warm_s"] for r in runs]
    out = {"n_train": args.n_train, "n_test": args.n_test, "hidden": args.hidden, "n_params": n_params,
           "l2": args.l2, "steps": args.steps, "lr": args.lr, "num_subsets": args.num_subsets, "fraction": 0.5,
           "budgets": BUDGETS, "seeds": seeds, "runs": runs, "summary": summary, "wall_s": wall_s,
           "machine": f"{platform.processor() or platform.machine()}, OMP_NUM_THREADS=1, 1 XLA CPU device "
                      "(shared 2-core host; times are rough)",
           "jax": jax.__version__, "profile": args.profile}

    def pm(name, f, fmt="{:.3f}"):
        v = summary[name].get(f)
        return "—" if v is None else (fmt.format(v[0]) + " ± " + fmt.format(v[1]))

    lines = [
        f"## Profile `{args.profile}`: digits MLP (64-{args.hidden}-10, {n_params} params, "
        f"l2 {args.l2})", "",
        f"{args.n_train} training examples, {args.n_test} test points; ground truth "
        f"`validation.lds_ground_truth`: {args.num_subsets} models retrained from the same init on random halves "
        f"({args.steps} full-batch Adam steps, lr {args.lr}, as `notebooks/influence_evaluation.py`); measure: test "
        f"loss. Seeds {seeds} (digits split, init, subsets, estimator keys). Mean ± std over seeds "
        f"(population std). Times: first call, compile included, on {out['machine']}.", "",
        f"Retraining cost per seed: {args.num_subsets} models in {np.mean(retrain):.1f} ± {np.std(retrain):.1f} s "
        f"first call, {np.mean(retrain_warm):.1f} ± {np.std(retrain_warm):.1f} s warm "
        f"({np.mean(retrain_warm) / args.num_subsets:.3f} s/model, vmapped). Training + dense Hessian eigh "
        f"(exact's damping, also given to exact as its Hessian): {np.mean([r['prep_s'] for r in runs]):.1f} s. "
        f"MLP test accuracy {np.mean([r['test_accuracy'] for r in runs]):.3f}; exact damping "
        f"{np.mean([r['damping_exact'] for r in runs]):.3g} (lambda_min "
        f"{np.mean([r['lambda_min'] for r in runs]):.3g}).", "",
        "| estimator | LDS | per-seed LDS | build s | score s | warm build+score s | fitted scale (slope actual/predicted) "
        "| Pearson r (pred, actual) | Spearman vs exact | damping |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for name in summary:
        s = summary[name]
        per_seed = ", ".join(f"{v:.3f}" for v in s["lds"][2])
        units = "" if name in IN_LOSS_UNITS or "slope" not in s else " (own units)"
        slope = "—" if "slope" not in s else (f"{s['slope'][0]:.3g} ± {s['slope'][1]:.2g}" + units)
        damping = "—" if "damping" not in s else f"{s['damping'][0]:.3g}"
        lines.append(f"| {name} | {pm(name, 'lds')} | {per_seed} | {pm(name, 'build_s', '{:.2f}')} | "
                     f"{pm(name, 'score_s', '{:.2f}')} | {pm(name, 'warm_s', '{:.2f}')} | {slope} | {pm(name, 'pearson')} | "
                     f"{pm(name, 'vs_exact_spearman')} | {damping} |")
    lines += ["", "Rows: `random` = standard-normal scores (control, ~0); `datamodels` = ridge regression on the "
              f"other {args.num_subsets - 1} retrained models, each subset predicted out of sample "
              "(`experiments.influence_evaluation.datamodel_lds`). kfac/ekfac damping None = 0.1 x mean eigenvalue "
              "per layer (mean over layers shown). Fitted scale: slope of actual on predicted test-loss change, "
              "per test point centred, pooled; > 1 = influence underpredicts retraining. "
              f"Wall time of this profile {wall_s:.0f} s."]
    return out, "\n".join(lines) + "\n"


def write(sections: list[tuple[list[dict], argparse.Namespace, float]], suffix: str, command: str) -> str:
    RESULTS.mkdir(parents=True, exist_ok=True)
    parts = [section(runs, args, wall_s) for runs, args, wall_s in sections]
    (RESULTS / f"lds_estimators{suffix}.json").write_text(
        json.dumps({"command": command, "profiles": [d for d, _ in parts]}, indent=1) + "\n")
    text = ("# LDS of influence estimators against real retraining, digits MLP\n\n"
            f"`{command}`\n\n" + "\n".join(t for _, t in parts))
    (RESULTS / f"lds_estimators{suffix}.md").write_text(text)
    runs, args, _ = sections[0]
    summary = parts[0][0]["summary"]
    seeds = [r["seed"] for r in runs]
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        names = [n for n in summary]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for i, n in enumerate(names):
            vals = summary[n]["lds"][2]
            axes[0].scatter([i] * len(vals), vals, s=12, color="gray")
            axes[0].bar(i, summary[n]["lds"][0], alpha=0.5)
        axes[0].set_xticks(range(len(names)), names, rotation=60, ha="right")
        axes[0].set_ylabel("LDS (test loss)")
        axes[0].set_title(f"{args.profile}: LDS vs {args.num_subsets} retrainings, seeds {seeds}", fontsize=9)
        sl = [n for n in names if n in IN_LOSS_UNITS and "slope" in summary[n]]
        axes[1].bar(range(len(sl)), [summary[n]["slope"][0] for n in sl],
                    yerr=[summary[n]["slope"][1] for n in sl], alpha=0.6)
        axes[1].axhline(1.0, color="k", lw=0.8)
        axes[1].set_xticks(range(len(sl)), sl, rotation=60, ha="right")
        axes[1].set_ylabel("slope actual / predicted")
        axes[1].set_title("fitted scale (1 = influence has retraining's size)")
        fig.tight_layout()
        fig.savefig(RESULTS / f"lds_estimators{suffix}.png", dpi=90)
    except Exception as e:  # the figure is optional
        print("figure skipped:", e)
    return text


def main() -> None:
    global RESULTS
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="profile small, M=12 subsets, one seed (a smoke run)")
    parser.add_argument("--profiles", nargs="+", default=["full", "small"], choices=sorted(PROFILES),
                        help="full: the notebook's full-profile sizes; small: its quick-profile sizes")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num-subsets", type=int, default=100)
    parser.add_argument("--l2", type=float, default=0.01)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the .json/.md/.png go")
    parser.add_argument("--skip", nargs="*", default=[], help="estimators to leave out (e.g. cg)")
    parser.add_argument("--suffix", default=None, help="file name suffix (default: _quick with --quick, else none)")
    args = parser.parse_args()
    if args.quick:
        args.num_subsets, args.seeds, args.profiles = 12, args.seeds[:1], ["small"]
    suffix = args.suffix if args.suffix is not None else ("_quick" if args.quick else "")
    RESULTS = args.results
    command = "python benchmarks/bench_lds_estimators.py " + " ".join(sys.argv[1:])
    sections = []
    for profile in args.profiles:
        cfg = argparse.Namespace(**vars(args), profile=profile, **PROFILES[profile])
        start, runs = time.perf_counter(), []
        sections.append((runs, cfg, 0.0))
        for seed in args.seeds:
            runs.append(run(seed, cfg))
            sections[-1] = (runs, cfg, time.perf_counter() - start)
            text = write(sections, suffix, command)  # after every seed: partial results survive
    print(text)


if __name__ == "__main__":
    main()
