"""workbench.influence against dattri, kronfluence and traker, side by side in one run.

Two problems, both float64, trained by our code, the same weights copied into torch:
- digits logistic regression (L2 0.01, Newton optimum, all 1347 training points): LOO by
  warm-started retraining, LDS over random half-data models retrained to convergence;
- digits MLP 64-32-10 tanh (L2 0.01, 300 full-batch Adam steps from a fixed init): LOO and LDS
  by retraining from the same init with the same steps (deterministic, so the differences are
  the removals'); damping max(0, -lambda_min(H)) + 0.01 for every inverse-curvature method,
  ours and the peers'.

Rows (ours | peer): explicit = exact | dattri explicit; cg; lissa (same depth and scale);
arnoldi (same k and Krylov depth); tracin (same checkpoints and learning rates); grad_dot |
dattri TracIn with one checkpoint; trak (same D, same ensemble, Gaussian projection, no ridge)
| dattri TRAK and traker; ekfac / kfac: kronfluence only. Peer time = build + cache + attribute
(one call); ours = build + score, first call (with compilation) and warm. Libraries differ in
their sign conventions: each peer's scores are multiplied by the sign of their mean correlation
with the actual LOO effects (recorded as `sign`).

    PYTHONPATH=. python benchmarks/bench_influence_peers.py [--quick]

Writes benchmarks/results/influence_peers.json and .md (_quick suffix with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import influence_peer_adapters as peers
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from workbench import data, influence, models, spectrum, train
from workbench.core import statistics
from workbench.influence import validation as ev

jax.config.update("jax_enable_x64", True)
RESULTS = Path(__file__).parent / "results"
L2, TRAK_DIM, MLP_STEPS, MLP_LR, MLP_ENSEMBLE = 0.01, 512, 300, 0.01, 3


def timed(build, test):
    """(scores, first-call seconds, warm seconds): build + score, twice."""
    times, scores = [], None
    for _ in range(2):
        start = time.perf_counter()
        scores = np.asarray(jax.block_until_ready(build().scores(test)))
        times.append(time.perf_counter() - start)
    return scores, times[0], times[1]


def evaluate(scores, loo, lds_truth):
    return {"loo": ev.loo_correlation(scores, loo).pearson, "lds": ev.lds(scores, lds_truth).mean}


def logistic_problem(train_set, test_set, sizes, key):
    f = models.functional(models.LogisticRegression(64, 10, rngs=nnx.Rngs(0), param_dtype=jnp.float64), l2=L2)
    params, _ = ev.fit(f.loss_fn, f.params, train_set)
    removed = np.linspace(0, len(train_set) - 1, sizes["removed"]).astype(int)
    loo = ev.loo(f.loss_fn, params, train_set, test_set, removed)
    lds_truth = ev.lds_ground_truth(f.loss_fn, params, train_set, key, test_set, num_subsets=sizes["subsets"])
    sgd = train.train(f.loss_fn, f.params, train_set, key, optimizer=optax.sgd(1.0), num_steps=200, checkpoint_steps=list(range(0, 200, 20)), progress=False)
    return dict(f=f, params=params, loo=loo, lds=lds_truth, damping=0.0, checkpoints=sgd.checkpoints,
                lr=1.0, ensemble=[params], lissa_depth=100)


def mlp_problem(train_set, test_set, sizes, key):
    f = models.functional(models.MLP(64, [32], 10, rngs=nnx.Rngs(0), param_dtype=jnp.float64), l2=L2)
    opt = dict(method="optax", optimizer=optax.adam(MLP_LR), num_steps=MLP_STEPS)
    run = train.train(f.loss_fn, f.params, train_set, key, optimizer=optax.adam(MLP_LR), num_steps=MLP_STEPS, checkpoint_steps=list(range(0, MLP_STEPS, MLP_STEPS // 10)), progress=False)
    n = len(train_set)
    removed = np.linspace(0, n - 1, sizes["removed"]).astype(int)
    weights = jnp.concatenate([jnp.ones((1, n)), 1.0 - jax.nn.one_hot(jnp.asarray(removed), n)])
    retrained = ev.retrain_weighted(f.loss_fn, f.params, train_set, weights, **opt)
    params = jax.tree.map(lambda a: a[0], retrained.params)  # full data, same init and steps
    outs = np.asarray(ev.outputs(f.loss_fn, retrained.params, test_set))
    loo = ev.LOOResult(removed, (outs[1:] - outs[:1]).T, np.asarray(retrained.grad_norm[1:]), n)
    lds_truth = ev.lds_ground_truth(f.loss_fn, f.params, train_set, key, test_set, num_subsets=sizes["subsets"], **opt)
    choice = influence.damping_above_min_eigenvalue(f.loss_fn, params, train_set, margin=0.01)
    damping, evals = choice.damping, np.asarray(choice.eigen[0])
    ensemble = [params]
    for seed in range(1, MLP_ENSEMBLE):  # TRAK's ensemble: the same training from other inits
        g = models.functional(models.MLP(64, [32], 10, rngs=nnx.Rngs(seed), param_dtype=jnp.float64), l2=L2)
        r = ev.retrain_weighted(f.loss_fn, g.params, train_set, jnp.ones((1, n)), **opt)
        ensemble.append(jax.tree.map(lambda a: a[0], r.params))
    return dict(f=f, params=params, loo=loo, lds=lds_truth, damping=damping, checkpoints=run.checkpoints,
                lr=MLP_LR, ensemble=ensemble, lissa_depth=100, hessian_eigs=(float(evals[0]), float(evals[-1])))


def contenders(pb, train_set, n_train):
    """{row: (ours builder or None, [(peer, runner() -> (scores, seconds))])}."""
    f, params, lam = pb["f"], pb["params"], pb["damping"]
    p_size = sum(np.size(a) for a in jax.tree.leaves(params))
    eig_max = pb["lambda_max"]
    scale = 1.1 * (eig_max + lam)
    depth, k, krylov = pb["lissa_depth"], pb["arnoldi_k"], pb["arnoldi_iters"]
    steps = sorted(pb["checkpoints"])
    mk = lambda name, **o: (lambda: influence.make(name, f.loss_fn, params, train_set, **o))
    problem = pb["torch"]
    ckpt_problem = problem._replace(modules=[peers.torch_module(pb["checkpoints"][s]) for s in steps])
    one_problem = problem._replace(modules=problem.modules[:1])
    margin = influence.margin_output(f.predict_fn)
    return {
        "explicit": (mk("exact", damping=lam), [("dattri", lambda: peers.dattri(one_problem, "explicit", regularization=lam))]),
        "cg": (mk("cg", damping=lam, num_iters=100, tol=1e-10),
               [("dattri", lambda: peers.dattri(one_problem, "cg", max_iter=100, tol=1e-10, regularization=lam))]),
        # dattri's LiSSA: x <- v + (1 - d) x - H x / s, output x / s = (H + d s)^{-1} v: d = damping / s
        "lissa": (mk("lissa", damping=lam, num_iters=depth, scale=scale),
                  [("dattri", lambda: peers.dattri(one_problem, "lissa", batch_size=n_train, recursion_depth=depth,
                                                   damping=lam / scale, scaling=scale))]),
        f"arnoldi_k{k}": (mk("arnoldi", damping=lam, k=k, num_iters=krylov, tail="none", key=jax.random.key(0)),
                          [("dattri", lambda: peers.dattri(one_problem, "arnoldi", proj_dim=k, max_iter=krylov,
                                                           regularization=lam))]),
        # ours with defaults (flat tail at lambda_{k+1}, depth 2k + 20): no peer has it
        "arnoldi_k50_flat_tail": (mk("arnoldi", damping=lam, k=50, key=jax.random.key(0)), []),
        "tracin": (mk("tracin", checkpoints=pb["checkpoints"], learning_rates=pb["lr"]),
                   [("dattri", lambda: peers.dattri(ckpt_problem, "tracin", weights=[pb["lr"]] * len(steps)))]),
        "grad_dot": (mk("grad_dot"), [("dattri", lambda: peers.dattri(one_problem, "tracin", weights=[1.0]))]),
        f"trak_D{TRAK_DIM}": (mk("trak", key=jax.random.key(0), models=pb["ensemble"], dim=min(TRAK_DIM, p_size), sketch_kind="dense",
                                 output_fn=margin, damping=0.0),
                              [("dattri", lambda: peers.dattri(problem, "trak", dim=min(TRAK_DIM, p_size))),
                               ("traker", lambda: peers.traker(problem, dim=min(TRAK_DIM, p_size)))]),
        "ekfac": (None, [("kronfluence", lambda: peers.kronfluence(one_problem, "ekfac", damping=L2 + lam))]),
        "kfac": (None, [("kronfluence", lambda: peers.kronfluence(one_problem, "kfac", damping=L2 + lam))]),
    }


def run_problem(model_name, pb, train_set, test_set):
    rows = []
    for method, (ours, runners) in contenders(pb, train_set, len(train_set)).items():
        row = {"model": model_name, "method": method}
        if ours is not None:
            s, first, warm = timed(ours, test_set)
            row.update(ours_first_s=first, ours_warm_s=warm, **{f"ours_{k}": v for k, v in evaluate(s, pb["loo"], pb["lds"]).items()})
        for peer, runner in runners:
            try:
                s, sec = runner()
                if s.shape != (len(test_set), len(train_set)):
                    raise ValueError(f"scores of shape {s.shape}")
                sign = float(np.sign(np.nanmean(statistics.pearson_rows(s[:, pb["loo"].removed], pb["loo"].actual)))) or 1.0
                row.update({f"{peer}_s": sec, f"{peer}_sign": int(sign),
                            **{f"{peer}_{k}": v for k, v in evaluate(sign * s, pb["loo"], pb["lds"]).items()}})
            except Exception as err:  # a peer failing is a result too
                row[f"{peer}_error"] = f"{type(err).__name__}: {str(err)[:300]}"
        rows.append(row)
        print(row, flush=True)
    return rows


def table(rows, peer_names):
    cols = ["method", "ours_loo", "ours_lds", "ours_first_s", "ours_warm_s"]
    for p in peer_names:
        cols += [f"{p}_loo", f"{p}_lds", f"{p}_s", f"{p}_sign"]
    cols = [c for c in cols if any(c in r for r in rows)]
    fmt = lambda v: "" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer test points / removals / subsets (development)")
    args = parser.parse_args()
    import torch

    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(os.cpu_count() or 1)
    sizes = {"test": 10, "removed": 30, "subsets": 10} if args.quick else {"test": 50, "removed": 60, "subsets": 40}
    train_set, test_full = data.load_digits(dtype=jnp.float64)
    test_set = test_full.take(np.arange(sizes["test"]))
    key = jax.random.key(0)
    torch_split = lambda d: (np.asarray(d.x), np.asarray(d.y))
    all_rows, meta = [], {}
    for name, build, k in (("logistic", logistic_problem, 200), ("mlp", mlp_problem, 200)):
        t0 = time.perf_counter()
        pb = build(train_set, test_set, sizes, key)
        op = influence.iterative.curvature_operator(pb["f"].loss_fn, pb["params"], train_set)

        pb["lambda_max"] = float(spectrum.power_iteration(op, jax.random.key(1)).value)
        pb["arnoldi_k"], pb["arnoldi_iters"] = k, int(1.5 * k)
        pb["torch"] = peers.Problem(name, [peers.torch_module(p) for p in pb["ensemble"]], L2,
                                    torch_split(train_set), torch_split(test_set))
        meta[name] = {"ground_truth_s": time.perf_counter() - t0, "damping": pb["damping"],
                      "lambda_max": pb["lambda_max"], "lissa_depth": pb["lissa_depth"],
                      "arnoldi_k": k, "arnoldi_iters": pb["arnoldi_iters"], "ensemble": len(pb["ensemble"]),
                      "hessian_eigs": pb.get("hessian_eigs"),
                      "loo_grad_norm_max": float(np.max(pb["loo"].grad_norm))}
        print(name, meta[name], flush=True)
        all_rows += run_problem(name, pb, train_set, test_set)

    meta.update(platform=platform.platform(), jax=jax.__version__, torch=torch.__version__,
                torch_threads=torch.get_num_threads(), cpus=os.cpu_count(), sizes=sizes, n_train=len(train_set),
                quick=args.quick)
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    (RESULTS / f"influence_peers{suffix}.json").write_text(json.dumps({"meta": meta, "rows": all_rows}, indent=2) + "\n")
    peer_names = ["dattri", "traker", "kronfluence"]
    md = ["# workbench.influence vs dattri, kronfluence and traker on digits (float64, CPU)", "",
          f"{len(train_set)} training / {sizes['test']} test points; LOO Pearson over {sizes['removed']} removals, "
          f"LDS over {sizes['subsets']} half-data models (see the module docstring of "
          "`benchmarks/bench_influence_peers.py` for the ground truths and the matched options). Peer time: "
          "build + cache + attribute; ours: build + score, first call (compilation included) and warm. "
          "`sign`: the factor that aligns a peer's convention with ours (positive = helpful).", ""]
    for name in ("logistic", "mlp"):
        m = meta[name]
        md += [f"## {name}", "", f"damping {m['damping']:.4g}, lambda_max {m['lambda_max']:.4g}, LiSSA depth "
               f"{m['lissa_depth']} (scale 1.1 (lambda_max + damping)), Arnoldi k {m['arnoldi_k']} at Krylov depth "
               f"{m['arnoldi_iters']}, TRAK D {TRAK_DIM} over {m['ensemble']} model(s).", "",
               table([r for r in all_rows if r["model"] == name], peer_names), ""]
        errors = [(r["method"], k, v) for r in all_rows if r["model"] == name for k, v in r.items() if k.endswith("_error")]
        md += [f"- {method} / {k[:-6]}: `{v}`" for method, k, v in errors] + ([""] if errors else [])
    md += [f"Platform: {meta['platform']}, jax {meta['jax']}, torch {meta['torch']} ({meta['torch_threads']} threads)."]
    (RESULTS / f"influence_peers{suffix}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
