"""LDS of the influence estimators against real retraining on the ~1M-parameter char GPT, over seeds.

The model is `workbench.gpt.GPT` at size "1M" (float32, no dropout, l2 0), trained on N
fixed-length windows of `data.load_corpus(seq_len=L)`'s training split (drawn at random per
seed) by `steps` full-batch Adam steps from its initialisation. The ground truth: M models
trained the same way (same initialisation, same Adam budget) on random halves of the N
windows; the measure is the loss (mean cross-entropy over the window's positions) of Q query
windows from the validation split (regions of the text disjoint from the training windows).
`validation.lds_ground_truth` is not used for the retraining: it trains every model on the
whole set with 0/1 weights (twice the work of training on the half) and vmaps 16 models at
once (their activations do not fit this machine's memory budget); here each half is trained
by one compiled `lax.scan` loop on the gathered half, and the masks, measures and LDS are
`validation`'s (`LDSGroundTruth`, `validation.lds`), the same subset draw as
`lds_ground_truth` (one split of the key per subset, a permutation's first N/2).

Estimators, built at the full-data model with `influence.make` (float32): ekfac and kfac
(kronfluence's defaults: true Fisher, damping None), logra (k_in = k_out = 8 per layer, damping
None = LogIX's 0.1 x mean eigenvalue per layer), trak (D = 2048 count sketch, output "loss":
the margin of `make`'s default is a classifier's, not a sequence model's), grad_dot, arnoldi
(top-k eigenpairs of the GGN, if it fits the time budget) and random scores. exact does not
fit: its dense Hessian of 1.0M x 1.0M float32 is 4 TB.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_lds_transformer.py [--seeds 0 1 2] [--num-subsets 32]

Writes benchmarks/results/lds_transformer.json and .md (`_smoke` suffix with --smoke).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from workbench import data, gpt, influence, models
from workbench.influence import validation
from workbench.influence.validation import LDSGroundTruth

RESULTS = Path(__file__).parent / "results"
ESTIMATORS = ("ekfac", "kfac", "logra", "trak", "grad_dot", "arnoldi")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def train(loss_fn, num_steps: int, lr: float, params, batch):
    """`num_steps` full-batch Adam steps of loss_fn on `batch` from `params` (one compiled scan)."""
    opt = optax.adam(lr)

    def step(carry, _):
        p, s = carry
        loss, g = jax.value_and_grad(loss_fn)(p, batch)
        updates, s = opt.update(g, s, p)
        return (optax.apply_updates(p, updates), s), loss

    (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), None, length=num_steps)
    return params, losses


@functools.partial(jax.jit, static_argnums=(0,))
def window_losses(per_example_loss_fn, params, batch):
    """Each window's loss (mean over its positions), [n]."""
    return per_example_loss_fn(params, batch)


def unigram_loss(train_set, query, vocab_size: int) -> float:
    """Cross-entropy of the query targets under the training targets' character frequencies (add-one)."""
    counts = np.bincount(np.asarray(train_set.y).ravel(), minlength=vocab_size) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[np.asarray(query.y)].mean())


def run(seed: int, corpus, args) -> dict:
    rng = np.random.default_rng(seed)
    take = lambda d, idx: data.Dataset(*(jnp.asarray(np.asarray(a)[idx]) for a in (d.x, d.y)))  # noqa: E731
    train_set = take(corpus.train, np.sort(rng.choice(len(corpus.train.x), args.n_train, replace=False)))
    query = take(corpus.validation, np.sort(rng.choice(len(corpus.validation.x), args.n_query, replace=False)))
    config = gpt.gpt_config("1M", len(corpus.vocab), args.seq_len)
    fn = models.functional(gpt.GPT(config, rngs=nnx.Rngs(seed)))
    n_params = sum(int(np.size(a)) for a in jax.tree.leaves(fn.params))
    init = fn.params
    row = {"seed": seed, "n_params": n_params}

    start = time.perf_counter()
    params, losses = train(fn.loss_fn, args.steps, args.lr, init, train_set)
    jax.block_until_ready(params)
    row["train_first_s"] = time.perf_counter() - start  # compile included (the warm cost: the retrainings')
    row["train_loss_final"] = float(losses[-1])
    row["query_loss_init"] = float(np.mean(window_losses(fn.per_example_loss_fn, init, query)))
    row["query_loss"] = float(np.mean(window_losses(fn.per_example_loss_fn, params, query)))
    row["unigram_loss"] = unigram_loss(train_set, query, len(corpus.vocab))
    print(f"seed {seed}: {n_params} params, train {row['train_first_s']:.1f}s (first call), "
          f"train loss {row['train_loss_final']:.3f}, query loss {row['query_loss']:.3f} (init "
          f"{row['query_loss_init']:.3f}, unigram {row['unigram_loss']:.3f})", flush=True)

    # ground truth: M retrainings on random halves (the subsets `validation.lds_ground_truth` draws)
    n, half = args.n_train, args.n_train // 2
    keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), 1), args.num_subsets)
    masks, outputs = np.zeros((args.num_subsets, n), bool), []
    start = time.perf_counter()
    for m in range(args.num_subsets):
        idx = np.sort(np.asarray(jax.random.permutation(keys[m], n))[:half])
        masks[m, idx] = True
        sub, _ = train(fn.loss_fn, args.steps, args.lr, init, take(train_set, idx))
        outputs.append(np.asarray(window_losses(fn.per_example_loss_fn, sub, query)))
        if m == 0:
            row["retrain_first_s"] = time.perf_counter() - start
    row["retrain_total_s"] = time.perf_counter() - start
    row["retrain_per_model_s"] = (row["retrain_total_s"] - row["retrain_first_s"]) / max(args.num_subsets - 1, 1)
    outputs = np.stack(outputs)
    truth = LDSGroundTruth(masks, outputs, np.full(args.num_subsets, np.nan))
    row["subset_query_loss"] = float(outputs.mean())
    print(f"seed {seed}: {args.num_subsets} retrainings in {row['retrain_total_s']:.0f}s "
          f"({row['retrain_per_model_s']:.1f}s each warm); subset-model query loss {outputs.mean():.3f} "
          f"(spread over subsets, mean per query: {outputs.std(0).mean():.4f})", flush=True)

    key = jax.random.fold_in(jax.random.key(seed), 2)
    builders = {
        "ekfac": lambda: influence.make("ekfac", fn, params, train_set, key=key, chunk_size=args.chunk),
        "kfac": lambda: influence.make("kfac", fn, params, train_set, key=key, chunk_size=args.chunk),
        "logra": lambda: influence.make("logra", fn, params, train_set, key=key, k_in=args.logra_k,
                                        k_out=args.logra_k, chunk_size=args.chunk),
        "trak": lambda: influence.make("trak", fn, params, train_set, key=key, dim=args.trak_dim,
                                       output_fn="loss", chunk_size=args.chunk),
        "grad_dot": lambda: influence.make("grad_dot", fn, params, train_set, chunk_size=args.chunk),
        "arnoldi": lambda: influence.make("arnoldi", fn, params, train_set, key=key, k=args.arnoldi_k,
                                          kind="ggn", damping=args.arnoldi_damping, chunk_size=args.chunk),
    }
    row["estimators"] = {}
    for name in args.estimators:
        start = time.perf_counter()
        try:
            est = builders[name]()
            build_s = time.perf_counter() - start
            start = time.perf_counter()
            scores = np.asarray(est.scores(query), dtype=np.float64)
            score_s = time.perf_counter() - start
        except Exception as error:  # recorded, not hidden: the table says why a row is missing
            row["estimators"][name] = {"error": f"{type(error).__name__}: {error}"[:400]}
            print(f"seed {seed} {name}: FAILED {type(error).__name__}: {error}"[:400], flush=True)
            continue
        result = validation.lds(scores, truth)
        info = {k: v for k, v in est.info.items() if k in ("damping", "dim", "k", "k_in", "k_out", "fisher", "kind")}
        damping = info.get("damping")
        if isinstance(damping, dict | list):
            vals = list(damping.values()) if isinstance(damping, dict) else damping
            info["damping"] = f"mean {np.mean(vals):.3g} over {len(vals)} blocks"
        row["estimators"][name] = {"lds": result.mean, "lds_per_query_std": float(np.nanstd(result.per_test)),
                                   "build_s": build_s, "score_s": score_s, "info": info}
        print(f"seed {seed} {name:9s} LDS {result.mean:.3f} build {build_s:.1f}s score {score_s:.1f}s "
              f"peak RSS {peak_rss_mb():.0f} MB", flush=True)
        del est
    random_scores = np.asarray(jax.random.normal(jax.random.fold_in(key, 99), (args.n_query, n)))
    row["estimators"]["random"] = {"lds": validation.lds(random_scores, truth).mean}
    print(f"seed {seed} random    LDS {row['estimators']['random']['lds']:.3f}", flush=True)
    row["peak_rss_mb"] = peak_rss_mb()
    return row


def write(runs: list[dict], args, command: str, wall_s: float, suffix: str) -> str:
    names = [k for k in (*args.estimators, "random") if any(k in r["estimators"] for r in runs)]
    summary = {}
    for name in names:
        vals = [r["estimators"][name].get("lds") for r in runs if name in r["estimators"]]
        vals = [v for v in vals if v is not None]
        entry = {"lds_mean": float(np.mean(vals)) if vals else None, "lds_std": float(np.std(vals)) if vals else None,
                 "lds_per_seed": vals}
        for f in ("build_s", "score_s"):
            fv = [r["estimators"][name][f] for r in runs if f in r["estimators"].get(name, {})]
            if fv:
                entry[f] = float(np.mean(fv))
        errors = [r["estimators"][name]["error"] for r in runs if "error" in r["estimators"].get(name, {})]
        if errors:
            entry["errors"] = errors
        summary[name] = entry
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other jobs, "
               "OMP_NUM_THREADS=1, 1 XLA CPU device")
    out = {"command": command, "machine": machine, "jax": jax.__version__, "loadavg_start": args.load_start,
           "loadavg_end": list(os.getloadavg()), "n_train": args.n_train, "n_query": args.n_query,
           "seq_len": args.seq_len, "steps": args.steps, "lr": args.lr, "num_subsets": args.num_subsets,
           "fraction": 0.5, "seeds": [r["seed"] for r in runs], "logra_k": args.logra_k, "trak_dim": args.trak_dim,
           "arnoldi_k": args.arnoldi_k, "arnoldi_damping": args.arnoldi_damping, "wall_s": wall_s,
           "summary": summary, "runs": runs,
           "exact": "not run: the dense Hessian of ~1.0M float32 parameters is ~4 TB"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"lds_transformer{suffix}.json").write_text(json.dumps(out, indent=1) + "\n")
    mean = lambda f: float(np.mean([r[f] for r in runs]))  # noqa: E731
    std = lambda f: float(np.std([r[f] for r in runs]))  # noqa: E731
    lines = [
        "# LDS of influence estimators against real retraining, ~1M char GPT", "",
        f"`{command}`", "",
        f"Machine: {machine}; load average at start {args.load_start}, at end "
        f"{[round(x, 2) for x in os.getloadavg()]} (times are rough: other heavy jobs shared the 2 cores). "
        f"JAX {jax.__version__}. Wall time {wall_s:.0f} s.", "",
        f"Model: `gpt.GPT` size 1M ({runs[0]['n_params']:,} params, float32, l2 0), context {args.seq_len}. "
        f"Training set: {args.n_train} random windows of {args.seq_len} characters of `data.load_corpus`'s training "
        f"split; {args.steps} full-batch Adam steps (lr {args.lr}) from the seed's initialisation. Query: "
        f"{args.n_query} random windows of the validation split (disjoint text), measure = each window's mean "
        f"cross-entropy. Ground truth: M = {args.num_subsets} models retrained the same way (same init, same "
        f"steps) on random halves; LDS = `validation.lds`. Seeds {[r['seed'] for r in runs]} (windows, init, "
        "subsets, estimator keys); mean ± std over seeds (population std).", "",
        f"Full-data model: query loss {mean('query_loss'):.3f} ± {std('query_loss'):.3f} nats (init "
        f"{mean('query_loss_init'):.3f}, unigram of the training characters {mean('unigram_loss'):.3f}: "
        f"{mean('unigram_loss') - mean('query_loss'):.3f} below it); training loss {mean('train_loss_final'):.3f}; "
        f"half-data models' query loss {mean('subset_query_loss'):.3f}.", "",
        f"Retraining cost per seed: the full-data training run {mean('train_first_s'):.1f} s (first call, compile "
        f"included); {args.num_subsets} half-data retrainings "
        f"{mean('retrain_total_s'):.0f} ± {std('retrain_total_s'):.0f} s in all, {mean('retrain_per_model_s'):.1f} s "
        f"per model warm; over all seeds {sum(r['retrain_total_s'] for r in runs):.0f} s.", "",
        "| estimator | LDS mean ± std | per-seed LDS | build s | score s | settings |",
        "|---|---|---|---|---|---|"]
    for name, s in summary.items():
        per_seed = ", ".join(f"{v:.3f}" for v in s["lds_per_seed"])
        lds = "—" if s["lds_mean"] is None else f"{s['lds_mean']:.3f} ± {s['lds_std']:.3f}"
        b = f"{s['build_s']:.1f}" if "build_s" in s else "—"
        sc = f"{s['score_s']:.1f}" if "score_s" in s else "—"
        info = runs[0]["estimators"].get(name, {}).get("info", {})
        note = ", ".join(f"{k}={v}" for k, v in info.items())
        if "errors" in s:
            note += f" FAILED: {s['errors'][0][:200]}"
        lines.append(f"| {name} | {lds} | {per_seed} | {b} | {sc} | {note} |")
    lines += ["", "exact: not run (a dense Hessian of ~1.0M float32 parameters is ~4 TB). Build and score times "
              "are first calls, compile included, means over seeds. random = standard-normal scores (control)."]
    text = "\n".join(lines) + "\n"
    (RESULTS / f"lds_transformer{suffix}.md").write_text(text)
    return text


def main() -> None:
    global RESULTS
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-train", type=int, default=256)
    parser.add_argument("--n-query", type=int, default=24)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--num-subsets", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--logra-k", type=int, default=8)
    parser.add_argument("--trak-dim", type=int, default=2048)
    parser.add_argument("--arnoldi-k", type=int, default=20)
    parser.add_argument("--arnoldi-damping", type=float, default=1e-3)
    parser.add_argument("--estimators", nargs="*", default=list(ESTIMATORS))
    parser.add_argument("--smoke", action="store_true", help="writes the _smoke files")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.load_start = [round(x, 2) for x in os.getloadavg()]
    RESULTS = args.results
    command = "OMP_NUM_THREADS=1 python benchmarks/bench_lds_transformer.py " + " ".join(sys.argv[1:])
    corpus = data.load_corpus(seq_len=args.seq_len)
    start, runs = time.perf_counter(), []
    for seed in args.seeds:
        runs.append(run(seed, corpus, args))
        text = write(runs, args, command, time.perf_counter() - start, "_smoke" if args.smoke else "")
    print(text)


if __name__ == "__main__":
    main()
