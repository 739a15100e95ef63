"""Our EK-FAC / K-FAC influence against kronfluence's, on the same weights (float64, CPU).

The digits MLP of `benchmarks/bench_lds_estimators.py` (profile "full": 64-32-10 tanh, l2 0.01,
200 full-batch Adam steps at lr 0.01 from `nnx.Rngs(0)`, the first 1347 training and 200 test
examples of digits' split 0, float64) is trained once in JAX; its weights are copied into an
equal `torch.nn.Sequential(Linear, Tanh, Linear)` (checked: logits and per-example losses agree
to float64 rounding). Both libraries then fit and score with the same settings:

- EK-FAC (and K-FAC) on the two Linear layers, kernel and bias (both append a 1 to the layer
  input for the bias, as its last column);
- the empirical Fisher (data labels, deterministic): ours `fisher="empirical"`, kronfluence
  `FactorArguments(use_empirical_fisher=True)`, i.e. `compute_train_loss(sample=False)`; the
  per-example loss is the cross-entropy of one example (kronfluence's task sums over a batch,
  so its per-example gradients are the same);
- the same explicit damping added to every eigenvalue: ours builds its estimator from the
  Functional with l2 = 0 (otherwise it adds the objective's l2 on top of `damping`), so both
  invert (Lambda + damping); the default `--damping 0.01` equals the objective's l2, i.e. the
  curvature inverted is the Fisher plus the regulariser's curvature;
- float64 in every kronfluence dtype argument; the query measure is the test example's loss.

Agreement per query (test point), over the 1347 training points: Spearman and Pearson between
our scores and kronfluence's (median and min over queries), the top-10 proponent overlap, the
relative difference of the score matrices, and the factors of each layer (A, S, their
eigenvalues, the EK-FAC Lambda) side by side. Extra rows compare each library's default damping
(ours: None = 0.1 x mean eigenvalue per layer, plus the model's l2; kronfluence:
`ScoreArguments.damping_factor=1e-8`) and the heuristic on both sides.

Time and memory: each measurement is a fresh process pinned to one core (OMP_NUM_THREADS=1,
`torch.set_num_threads(1)`, XLA without its multi-threaded Eigen), alternating ours and
kronfluence, `--pairs` pairs (the first library alternates too); medians reported. Per process:
import time, the first EK-FAC fit and score (JAX compilation included; kronfluence's Analyzer
set-up included), the same again warm, K-FAC warm, and the peak RSS after the EK-FAC part.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_kronfluence.py [--quick]

Writes benchmarks/results/kronfluence.json and .md (_quick suffix with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
HERE = Path(__file__).resolve()
CHUNK = 256  # our fit's chunk and kronfluence's per-device batch (factors and training side of scores)


def _pin_one_core(core: int) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    try:
        os.sched_setaffinity(0, {core})
    except (AttributeError, OSError):
        pass


def _peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not getrusage's ru_maxrss: Linux carries that high-water
    mark across execve, so a worker started by the parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return float(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _jax_setup():
    import jax

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_platforms", "cpu")
    return jax


def _functional(hidden: int, seed: int, l2: float):
    import jax.numpy as jnp
    from flax import nnx

    from workbench import models

    return models.functional(models.MLP(64, [hidden], 10, rngs=nnx.Rngs(seed), param_dtype=jnp.float64), l2=l2)


# ----------------------------------------------------------------------------- the problem (parent)


def make_problem(args, path: Path) -> dict:
    """Train the MLP in JAX, write weights and data to `path` (.npz), check the torch copy; return meta."""
    jax = _jax_setup()
    import optax

    from workbench import models, train
    from workbench.experiments.influence import digits_subsets

    train_set, test_set = digits_subsets(args.n_train, args.n_test, 0)
    fn = _functional(args.hidden, 0, args.l2)
    start = time.perf_counter()
    result = train.train(fn.loss_fn, fn.params, train_set, jax.random.key(0), optimizer=optax.adam(args.lr),
                         num_steps=args.steps, progress=False)
    train_s = time.perf_counter() - start
    params = result.params
    leaves = [np.asarray(a) for a in jax.tree.leaves(params)]
    named = {f"{what}_{i}": np.asarray(params["layers"][i][what]) for i in range(2) for what in ("kernel", "bias")}
    np.savez(path, *leaves, **named, train_x=np.asarray(train_set.x), train_y=np.asarray(train_set.y),
             test_x=np.asarray(test_set.x), test_y=np.asarray(test_set.y))

    import influence_peer_adapters as peers
    import torch

    torch.set_num_threads(1)
    module = peers.torch_module(jax.tree.map(np.asarray, params))
    diffs = {}
    for split, ds in (("train", train_set), ("test", test_set)):
        ours_logits = np.asarray(fn.predict_fn(params, ds.x))
        ours_loss = np.asarray(fn.per_example_loss_fn(params, ds))
        with torch.no_grad():
            logits = module(torch.tensor(np.asarray(ds.x)))
            loss = torch.nn.functional.cross_entropy(logits, torch.tensor(np.asarray(ds.y)).long(), reduction="none")
        diffs[f"{split}_logits_max_abs_diff"] = float(np.max(np.abs(logits.numpy() - ours_logits)))
        diffs[f"{split}_loss_max_abs_diff"] = float(np.max(np.abs(loss.numpy() - ours_loss)))
    print("torch copy vs JAX:", diffs, flush=True)
    assert max(diffs.values()) < 1e-10, f"the torch copy differs from the JAX model: {diffs}"
    return dict(train_s=train_s, train_loss=float(fn.loss_fn(params, train_set)),
                test_accuracy=float(models.accuracy(fn.predict_fn, params, test_set)), torch_copy=diffs,
                num_params=int(sum(a.size for a in leaves)))


# ----------------------------------------------------------------------------- workers (fresh processes)


def worker_ours(args, problem: dict) -> tuple[dict, dict]:
    start = time.perf_counter()
    jax = _jax_setup()
    from workbench import influence
    from workbench.curvature import kfac

    import_s = time.perf_counter() - start
    rss_import = _peak_rss_mb()
    timings = {"import_s": import_s}
    start = time.perf_counter()
    fn = _functional(args.hidden, 0, 0.0)  # l2 0: the damping given is all that is added (see the docstring)
    leaves = [problem[f"arr_{i}"] for i in range(len(jax.tree.leaves(fn.params)))]
    params = jax.tree.unflatten(jax.tree.structure(fn.params), [jax.numpy.asarray(a) for a in leaves])
    train = (jax.numpy.asarray(problem["train_x"]), jax.numpy.asarray(problem["train_y"]))
    test = (jax.numpy.asarray(problem["test_x"]), jax.numpy.asarray(problem["test_y"]))
    timings["setup_s"] = time.perf_counter() - start

    def fit(correct):
        t = time.perf_counter()
        factors = kfac.fit(fn, params, train, fisher="empirical", chunk_size=CHUNK, correct=correct)
        jax.block_until_ready(jax.tree.leaves(factors.layers))
        return factors, time.perf_counter() - t

    def score(kind, factors, damping, model=fn):
        t = time.perf_counter()
        est = influence.make(kind, model, params, train, factors=factors, damping=damping)
        s = np.asarray(jax.block_until_ready(est.scores(test)))
        return s, time.perf_counter() - t, est

    factors, timings["ekfac_fit_first_s"] = fit(True)
    scores, timings["ekfac_score_first_s"], est = score("ekfac", factors, args.damping)
    _, timings["ekfac_fit_warm_s"] = fit(True)
    _, timings["ekfac_score_warm_s"], _ = score("ekfac", factors, args.damping)
    timings["peak_rss_mb"] = _peak_rss_mb()
    timings["rss_after_import_mb"] = rss_import
    kfactors, _ = fit(False)  # compiled already by the EK-FAC fit's first pass
    kfactors, timings["kfac_fit_warm_s"] = fit(False)
    out = {"ekfac": scores}
    out["kfac"], timings["kfac_score_warm_s"], _ = score("kfac", kfactors, args.damping)
    timings["layers"] = est.info["layers"]
    timings["jax_compilation_cache_dir"] = jax.config.jax_compilation_cache_dir
    if args.extras:
        out["ekfac_heuristic"], _, heuristic = score("ekfac", factors, None)
        out["kfac_heuristic"], _, _ = score("kfac", kfactors, None)
        timings["heuristic_damping"] = heuristic.info["damping"]
        with_l2 = _functional(args.hidden, 0, args.l2)  # the model as trained: its default adds l2 too
        fitted_l2 = kfac.fit(with_l2, params, train, fisher="empirical", chunk_size=CHUNK)
        out["ekfac_default"], _, default = score("ekfac", fitted_l2, None, with_l2)
        timings["default_damping"] = {k: v + args.l2 for k, v in default.info["damping"].items()}
        for i, layer in enumerate(factors.coverage.layers):
            f = factors.layers[layer.name]
            out[f"layer{i}_A"], out[f"layer{i}_S"] = np.asarray(f.activation), np.asarray(f.gradient)
            out[f"layer{i}_A_values"] = np.asarray(f.activation_values)
            out[f"layer{i}_S_values"] = np.asarray(f.gradient_values)
            out[f"layer{i}_lambda"] = np.asarray(f.corrected)  # [d_a, d_out]
    return timings, out


def worker_kronfluence(args, problem: dict) -> tuple[dict, dict]:
    start = time.perf_counter()
    import influence_peer_adapters as peers
    import torch
    import torch.nn.functional as F
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task

    torch.set_num_threads(1)
    import_s = time.perf_counter() - start
    rss_import = _peak_rss_mb()
    timings = {"import_s": import_s}
    f64 = torch.float64
    torch.set_default_dtype(f64)

    class Classification(Task):
        def compute_train_loss(self, batch, model, sample=False):
            if sample:
                raise NotImplementedError("this benchmark uses the empirical Fisher only")
            x, y = batch
            return F.cross_entropy(model(x), y, reduction="sum")

        def compute_measurement(self, batch, model):
            x, y = batch
            return F.cross_entropy(model(x), y, reduction="sum")

    start = time.perf_counter()
    params = {"layers": {i: {what: problem[f"{what}_{i}"] for what in ("kernel", "bias")} for i in range(2)}}
    task = Classification()
    model = prepare_model(peers.torch_module(params), task)
    train = torch.utils.data.TensorDataset(torch.tensor(problem["train_x"]), torch.tensor(problem["train_y"]).long())
    test = torch.utils.data.TensorDataset(torch.tensor(problem["test_x"]), torch.tensor(problem["test_y"]).long())
    tmp = tempfile.TemporaryDirectory()
    analyzer = Analyzer("bench", model, task, cpu=True, output_dir=tmp.name, disable_tqdm=True, log_level=40)
    timings["setup_s"] = time.perf_counter() - start
    dtypes = dict(activation_covariance_dtype=f64, gradient_covariance_dtype=f64, eigendecomposition_dtype=f64,
                  per_sample_gradient_dtype=f64, lambda_dtype=f64)
    score_dtypes = dict(per_sample_gradient_dtype=f64, precondition_dtype=f64, score_dtype=f64,
                        query_gradient_svd_dtype=f64)
    count = iter(range(1000))

    def fit(strategy):
        name = f"{strategy}_{next(count)}"
        t = time.perf_counter()
        analyzer.fit_all_factors(name, train, per_device_batch_size=CHUNK,
                                 factor_args=FactorArguments(strategy=strategy, use_empirical_fisher=True, **dtypes))
        return name, time.perf_counter() - t

    def score(factors_name, damping="default"):
        name = f"scores_{next(count)}"
        t = time.perf_counter()
        score_args = ScoreArguments(**score_dtypes) if damping == "default" else \
            ScoreArguments(damping_factor=damping, **score_dtypes)
        analyzer.compute_pairwise_scores(name, factors_name, query_dataset=test, train_dataset=train,
                                         per_device_query_batch_size=len(test), per_device_train_batch_size=CHUNK,
                                         score_args=score_args)
        s = analyzer.load_pairwise_scores(name)["all_modules"].numpy()
        return s, time.perf_counter() - t

    factors, timings["ekfac_fit_first_s"] = fit("ekfac")
    scores, timings["ekfac_score_first_s"] = score(factors, args.damping)
    _, timings["ekfac_fit_warm_s"] = fit("ekfac")
    _, timings["ekfac_score_warm_s"] = score(factors, args.damping)
    timings["peak_rss_mb"] = _peak_rss_mb()
    timings["rss_after_import_mb"] = rss_import
    kfactors, timings["kfac_fit_warm_s"] = fit("kfac")
    out = {"ekfac": scores}
    out["kfac"], timings["kfac_score_warm_s"] = score(kfactors, args.damping)
    names = [n for n, m in model.named_modules() if type(m).__name__ == "TrackedLinear"]
    timings["layers"] = names
    if args.extras:
        out["ekfac_heuristic"], _ = score(factors, None)
        out["kfac_heuristic"], _ = score(kfactors, None)
        out["ekfac_default"], _ = score(factors, "default")
        timings["default_damping"] = ScoreArguments().damping_factor
        cov = analyzer.load_covariance_matrices(factors)
        eig = analyzer.load_eigendecomposition(factors)
        lam = analyzer.load_lambda_matrices(factors)
        for i, name in enumerate(names):
            out[f"layer{i}_A"] = (cov["activation_covariance"][name]
                                  / cov["num_activation_covariance_processed"][name]).numpy()
            out[f"layer{i}_S"] = (cov["gradient_covariance"][name] / cov["num_gradient_covariance_processed"][name]).numpy()
            out[f"layer{i}_A_values"] = eig["activation_eigenvalues"][name].numpy()
            out[f"layer{i}_S_values"] = eig["gradient_eigenvalues"][name].numpy()
            # kronfluence's Lambda is [d_out, d_a]; ours [d_a, d_out]
            out[f"layer{i}_lambda"] = (lam["lambda_matrix"][name] / lam["num_lambda_processed"][name]).numpy().T
            timings[f"layer{i}_heuristic_damping"] = 0.1 * float(out[f"layer{i}_lambda"].mean())
    tmp.cleanup()
    return timings, out


def run_worker(args) -> None:
    _pin_one_core(args.core)
    problem = np.load(args.problem)
    sys.path.insert(0, str(HERE.parent))
    timings, arrays = (worker_ours if args.worker == "ours" else worker_kronfluence)(args, problem)
    timings["loadavg_end"] = os.getloadavg()
    np.savez(args.out + ".npz", **arrays)
    Path(args.out + ".json").write_text(json.dumps(timings))


# ----------------------------------------------------------------------------- comparison (parent)


def spearman_pearson_top(a: np.ndarray, b: np.ndarray, k: int = 10) -> dict:
    from scipy.stats import rankdata

    def pearson(x, y):
        x = x - x.mean(1, keepdims=True)
        y = y - y.mean(1, keepdims=True)
        return np.sum(x * y, 1) / np.sqrt(np.sum(x * x, 1) * np.sum(y * y, 1))

    sp = pearson(rankdata(a, axis=1), rankdata(b, axis=1))
    pe = pearson(a, b)
    top = np.array([len(set(np.argsort(-x)[:k]) & set(np.argsort(-y)[:k])) / k for x, y in zip(a, b)])
    rel = float(np.linalg.norm(a - b) / np.linalg.norm(b))
    slope = float(np.sum(a * b) / np.sum(b * b))
    return {"spearman_median": float(np.median(sp)), "spearman_min": float(np.min(sp)),
            "pearson_median": float(np.median(pe)), "pearson_min": float(np.min(pe)),
            "top10_overlap_median": float(np.median(top)), "top10_overlap_min": float(np.min(top)),
            "relative_frobenius_diff": rel, "scale_a_on_b": slope,
            "max_abs_diff": float(np.max(np.abs(a - b))), "max_abs_kronfluence": float(np.max(np.abs(b)))}


def factor_rows(ours: dict, kron: dict) -> list[dict]:
    rows = []
    i = 0
    while f"layer{i}_A" in ours:
        row = {"layer": i}
        for what in ("A", "S", "A_values", "S_values", "lambda"):
            a, b = ours[f"layer{i}_{what}"], kron[f"layer{i}_{what}"]
            row[f"{what}_shape"] = list(a.shape)
            row[f"{what}_relative_diff"] = float(np.linalg.norm(a - b) / np.linalg.norm(b))
            row[f"{what}_max_abs_diff"] = float(np.max(np.abs(a - b)))
        la, lb = np.sort(ours[f"layer{i}_lambda"].ravel()), np.sort(kron[f"layer{i}_lambda"].ravel())
        row["lambda_sorted_relative_diff"] = float(np.linalg.norm(la - lb) / np.linalg.norm(lb))
        row["lambda_mean_ours"], row["lambda_mean_kronfluence"] = float(la.mean()), float(lb.mean())
        rows.append(row)
        i += 1
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes, one pair (a smoke run)")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--damping", type=float, default=0.01)
    parser.add_argument("--core", type=int, default=None, help="the core every worker is pinned to")
    parser.add_argument("--worker", choices=["ours", "kronfluence"])
    parser.add_argument("--problem")
    parser.add_argument("--out")
    parser.add_argument("--extras", action="store_true")
    parser.add_argument("--n-train", type=int, default=1347)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--l2", type=float, default=0.01)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=0.01)
    args = parser.parse_args()
    if args.worker:
        return run_worker(args)
    if args.quick:
        args.n_train, args.n_test, args.pairs = 300, 20, 1
    core = args.core if args.core is not None else max(os.sched_getaffinity(0))
    command = "OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_kronfluence.py " + " ".join(sys.argv[1:])
    load = {"start": os.getloadavg()}
    tmp = Path(tempfile.mkdtemp(prefix="bench_kron_"))
    problem_path = tmp / "problem.npz"
    sys.path.insert(0, str(HERE.parent))
    meta = make_problem(args, problem_path)
    # workers compile from scratch: JAX's persistent cache (on by `import workbench`) off, and the folder the
    # parent's import put in the environment not inherited
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "WORKBENCH_JAX_CACHE_SET")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parent.parent), WORKBENCH_JAX_CACHE="off")

    def launch(lib, pair, extras=False, cache="off"):
        out = str(tmp / f"{lib}_{pair}")
        cmd = [sys.executable, str(HERE), "--worker", lib.split("_")[0], "--problem", str(problem_path), "--out",
               out, "--core", str(core), "--damping", str(args.damping), "--hidden", str(args.hidden),
               "--l2", str(args.l2)] + (["--extras"] if extras else [])
        load_before = os.getloadavg()
        wall = time.perf_counter()
        subprocess.run(cmd, check=True, env=dict(env, WORKBENCH_JAX_CACHE=cache))
        timings = json.loads(Path(out + ".json").read_text())
        timings.update(lib=lib, pair=pair, process_wall_s=time.perf_counter() - wall, loadavg_start=load_before)
        print(lib, pair, {k: v for k, v in timings.items() if k.endswith("_s") or k.endswith("_mb")}, flush=True)
        return timings

    runs = []
    for pair in range(args.pairs):
        order = ["ours", "kronfluence"] if pair % 2 == 0 else ["kronfluence", "ours"]
        runs += [launch(lib, pair, extras=pair == 0) for lib in order]
    # ours once more with a persistent compilation cache that a first process filled (a returning user)
    launch("ours_cached", -1, cache=str(tmp / "jax_cache"))
    runs.append(launch("ours_cached", 0, cache=str(tmp / "jax_cache")))
    load["end"] = os.getloadavg()
    ours = dict(np.load(tmp / "ours_0.npz"))
    kron = dict(np.load(tmp / "kronfluence_0.npz"))
    # each row "a vs b": our scores a, kronfluence's b unless the name says otherwise
    agreement = {name: spearman_pearson_top(ours[name], kron[name])
                 for name in ("ekfac", "kfac", "ekfac_heuristic", "kfac_heuristic")}
    agreement["ekfac_each_default"] = spearman_pearson_top(ours["ekfac_default"], kron["ekfac_default"])
    agreement["ekfac_ours_default_vs_ours_given"] = spearman_pearson_top(ours["ekfac_default"], ours["ekfac"])
    agreement["ekfac_kron_default_vs_kron_given"] = spearman_pearson_top(kron["ekfac_default"], kron["ekfac"])
    agreement["kfac_vs_ekfac_ours"] = spearman_pearson_top(ours["kfac"], ours["ekfac"])
    factors = factor_rows(ours, kron)
    first = {r["lib"]: r for r in runs if r["pair"] == 0}
    keys = ["import_s", "setup_s", "ekfac_fit_first_s", "ekfac_score_first_s", "ekfac_fit_warm_s",
            "ekfac_score_warm_s", "kfac_fit_warm_s", "kfac_score_warm_s", "peak_rss_mb", "rss_after_import_mb",
            "process_wall_s"]
    medians = {lib: {k: float(np.median([r[k] for r in runs if r["lib"] == lib])) for k in keys}
               for lib in ("ours", "kronfluence", "ours_cached")}
    for lib in medians:
        m = medians[lib]
        m["ekfac_first_call_s"] = float(np.median([r["setup_s"] + r["ekfac_fit_first_s"] + r["ekfac_score_first_s"]
                                                   for r in runs if r["lib"] == lib]))
        m["ekfac_warm_s"] = m["ekfac_fit_warm_s"] + m["ekfac_score_warm_s"]
    import jax
    import kronfluence
    import torch

    out = {"command": command, "args": vars(args), "problem": meta, "agreement": agreement, "factors": factors,
           "layers": {lib: first[lib]["layers"] for lib in first}, "runs": runs, "medians": medians, "loadavg": load,
           "damping": {"given": args.damping, "ours_heuristic": first["ours"].get("heuristic_damping"),
                       "kronfluence_heuristic": {k: v for k, v in first["kronfluence"].items()
                                                 if k.endswith("_heuristic_damping")},
                       "ours_default": first["ours"].get("default_damping"),
                       "kronfluence_default": first["kronfluence"].get("default_damping")},
           "machine": f"{platform.platform()}, {os.cpu_count()} CPUs (shared with other jobs), every worker pinned "
                      f"to core {core}", "versions": {"jax": jax.__version__, "torch": torch.__version__,
                                                      "kronfluence": kronfluence.__version__,
                                                      "python": platform.python_version()}}
    suffix = "_quick" if args.quick else ""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"kronfluence{suffix}.json").write_text(json.dumps(out, indent=1, default=float) + "\n")
    text = markdown(out)
    (RESULTS / f"kronfluence{suffix}.md").write_text(text)
    print(text)


def markdown(out: dict) -> str:
    a, p = out["args"], out["problem"]
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = [f"# Our EK-FAC / K-FAC vs kronfluence {out['versions']['kronfluence']} on the same weights", "",
             f"`{out['command']}`", "",
             f"Digits MLP 64-{a['hidden']}-10 tanh ({p['num_params']} params, l2 {a['l2']}, {a['steps']} Adam steps at "
             f"lr {a['lr']}, float64), {a['n_train']} training / {a['n_test']} query points; train loss "
             f"{p['train_loss']:.4f}, test accuracy {p['test_accuracy']:.3f}. Torch copy vs JAX: "
             + ", ".join(f"{k} {v:.1e}" for k, v in p["torch_copy"].items()) + ".", "",
             f"Layers: ours {out['layers']['ours']}, kronfluence {out['layers']['kronfluence']}. Empirical Fisher on "
             f"both sides; damping {a['damping']} given to both (ours from the l2 = 0 Functional, so both invert "
             "Lambda + damping). Sign: both score g_query^T (F + damping)^-1 g_train with the loss as the measure: "
             "positive = upweighting the training point lowers the query loss (helpful); no flip needed.", "",
             "## Agreement per query (over training points)", "",
             "| comparison | Spearman median | Spearman min | Pearson median | Pearson min | top-10 median | top-10 min "
             "| rel. Frobenius diff | scale (LS slope a on b) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in out["agreement"].items():
        lines.append(f"| {name} | {r['spearman_median']:.6f} | {r['spearman_min']:.6f} | {r['pearson_median']:.6f} | "
                     f"{r['pearson_min']:.6f} | {r['top10_overlap_median']:.2f} | {r['top10_overlap_min']:.2f} | "
                     f"{r['relative_frobenius_diff']:.2e} | {r['scale_a_on_b']:.6f} |")
    d = out["damping"]
    lines += ["", f"Dampings: given {d['given']}; heuristic (damping None on both, 0.1 x mean Lambda per layer): ours "
              f"{d['ours_heuristic']}, kronfluence {d['kronfluence_heuristic']}; each library's default: ours "
              f"(Functional with l2 {a['l2']}, damping None) {d['ours_default']}, kronfluence "
              f"(ScoreArguments().damping_factor) {d['kronfluence_default']}.", "",
              "## Factors, ours vs kronfluence (relative Frobenius difference)", "",
              "| layer | A | S | eig(A) | eig(S) | Lambda (elementwise) | Lambda (sorted) | mean Lambda ours | "
              "mean Lambda kron |", "|---|---|---|---|---|---|---|---|---|"]
    for r in out["factors"]:
        lines.append(f"| {r['layer']} {r['A_shape']}x{r['S_shape']} | {r['A_relative_diff']:.1e} | "
                     f"{r['S_relative_diff']:.1e} | {r['A_values_relative_diff']:.1e} | {r['S_values_relative_diff']:.1e} "
                     f"| {r['lambda_relative_diff']:.1e} | {r['lambda_sorted_relative_diff']:.1e} | "
                     f"{r['lambda_mean_ours']:.4g} | {r['lambda_mean_kronfluence']:.4g} |")
    m = out["medians"]
    lines += ["", f"## Time and memory (medians of {a['pairs']} alternating fresh-process pairs, one core each)", "",
              "| quantity | ours (JAX) | kronfluence (torch) | ratio ours/kron | ours, persistent cache filled |",
              "|---|---|---|---|---|"]
    for k in m["ours"]:
        lines.append(f"| {k} | {fmt(m['ours'][k])} | {fmt(m['kronfluence'][k])} | "
                     f"{m['ours'][k] / m['kronfluence'][k]:.2f} | {fmt(m['ours_cached'][k])} |")
    lines += ["", "Per run: " + "; ".join(
        f"{r['lib']}#{r['pair']} first {r['setup_s'] + r['ekfac_fit_first_s'] + r['ekfac_score_first_s']:.2f}s "
        f"warm {r['ekfac_fit_warm_s'] + r['ekfac_score_warm_s']:.2f}s rss {r['peak_rss_mb']:.0f}MB "
        f"load {r['loadavg_start'][0]:.2f}" for r in out["runs"]) + ".", "",
        f"Machine: {out['machine']}. Load average (1, 5, 15 min) at start {out['loadavg']['start']}, at end "
        f"{out['loadavg']['end']}: the box is shared with a test-suite run and other benchmarks, so times are "
        f"rough. Versions: {out['versions']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
