"""Our EK-FAC / K-FAC influence against kronfluence's, on the same weights (float64, CPU).

Two models, each trained once in JAX and copied into an equal torch module (checked: logits and
per-example losses agree, the max difference is recorded):
- the digits MLP of `benchmarks/bench_lds_estimators.py` (its "full" profile: 64-32-10 tanh, l2
  0.01, 200 full-batch Adam steps at lr 0.01 from `nnx.Rngs(0)`, the first 1347 training and 200
  test examples of digits' split 0): `torch.nn.Sequential(Linear, Tanh, Linear)`;
- a tiny char transformer, `workbench.gpt.GPT` (d_model 32, 2 heads, 2 blocks, context 32, untied
  head; 200 Adam steps at lr 3e-3 on the first 512 windows of `data.load_text`, the last 32 windows
  as queries): `kronfluence_torch.TorchGPT`, the same layer order, causal attention and LayerNorm,
  its token embedding a bias-free Linear on one-hot tokens so that kronfluence (nn.Linear and
  nn.Conv2d only) tracks the same 14 layers as ours (embedding, q/k/v/out and MLP of each block,
  head; LayerNorms and the position table left out by both).

Both libraries then fit and score with the same settings:
- EK-FAC (and K-FAC), kernel and bias together (both append a 1 to the layer input, last);
- the empirical Fisher (data labels, deterministic): ours `fisher="empirical"`, kronfluence
  `FactorArguments(use_empirical_fisher=True)`, i.e. `compute_train_loss(sample=False)`; the
  per-example loss is ours (cross-entropy, the mean over a sequence's positions), summed over the
  batch in kronfluence's task, so the per-example gradients are the same;
- the same explicit damping added to every eigenvalue: ours builds its estimator from the
  Functional with l2 = 0 (otherwise it adds the objective's l2 on top of `damping`), so both
  invert (Lambda + damping); `--damping 0.01` equals the objective's l2;
- float64 in every kronfluence dtype argument; the query measure is the query example's loss;
  factors fitted in chunks of 256 examples on both sides.

Agreement per query, over the training points: Spearman and Pearson between our scores and
kronfluence's (median and min over queries), the top-10 proponent overlap, the relative
difference and least-squares scale of the score matrices, and each layer's factors side by side
(A, S, their eigenvalues, the EK-FAC Lambda). Extra rows: both heuristics (damping None), each
library's default damping (ours: None = 0.1 x mean eigenvalue per layer, plus the model's l2;
kronfluence: `ScoreArguments.damping_factor=1e-8`), and ours K-FAC at positions x damping (see
the notes in the results: kronfluence normalises S per token, we per sequence).

Time and memory: each measurement is a fresh process pinned to one core (OMP_NUM_THREADS=1,
`torch.set_num_threads(1)`, XLA without its multi-threaded Eigen), JAX's persistent compilation
cache off (the package turns it on at import) so that the first call compiles; alternating ours
and kronfluence, `--pairs` pairs (the first library alternates too); medians reported; then ours
once more with a persistent cache an earlier process filled. Per process: import time, set-up,
the first EK-FAC fit and score, the same again warm, K-FAC warm, and the peak RSS (VmHWM) after
the EK-FAC part. kronfluence's times include what its API does per call (writing factors and
scores as safetensors to a temporary folder, data loaders, hooks).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_kronfluence.py [--quick] [--models mlp gpt]

Needs torch and kronfluence (the bench extra) next to the package. Writes
benchmarks/results/kronfluence.json and .md (_quick suffix with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
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


def _functional(args, l2: float):
    """Our model as a Functional: the digits MLP or the char GPT (float64, init seed 0)."""
    import jax.numpy as jnp
    from flax import nnx

    from workbench import gpt, models

    if args.model == "mlp":
        module = models.MLP(64, [args.hidden], 10, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    else:
        module = gpt.GPT(gpt.GPTConfig(**_gpt_config(args)), rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    return models.functional(module, l2=l2)


def _gpt_config(args) -> dict:
    return dict(vocab_size=args.vocab_size, seq_len=args.seq_len, d_model=args.d_model, num_heads=args.num_heads,
                num_layers=args.num_layers)


def _torch_model(args, params: dict):
    """The torch copy of our model holding `params` (a nested dict of numpy arrays)."""
    if args.model == "mlp":
        import influence_peer_adapters as peers

        return peers.torch_module(params)
    import kronfluence_torch

    return kronfluence_torch.gpt_from_params(params, _gpt_config(args))


def _nested(flat: dict) -> dict:
    """{"p:blocks/0/up/kernel": array} -> nested dict (digit keys as ints, as our params)."""
    out: dict = {}
    for key, value in flat.items():
        parts = [int(p) if p.isdigit() else p for p in key[2:].split("/")]
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _torch_loss(logits, y, reduction="sum"):
    """Each example's mean cross-entropy over its positions (ours), summed over the batch (kronfluence's task)."""
    import torch.nn.functional as F

    if logits.dim() == 3:  # [n, T, V]: the mean over positions, as models.cross_entropy
        per_example = F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1)
    else:
        per_example = F.cross_entropy(logits, y, reduction="none")
    return per_example.sum() if reduction == "sum" else per_example


# ----------------------------------------------------------------------------- the problem (parent)


def _data(args):
    import jax.numpy as jnp

    from workbench import data
    from workbench.experiments.influence import digits_subsets

    if args.model == "mlp":
        return digits_subsets(args.n_train, args.n_test, 0)
    text = data.load_text(seq_len=args.seq_len).data  # first n_train windows train, the last n_test query
    args.vocab_size = int(max(int(jnp.max(text.x)), int(jnp.max(text.y))) + 1)
    return text.take(np.arange(args.n_train)), text.take(np.arange(len(text) - args.n_test, len(text)))


def make_problem(args, path: Path) -> dict:
    """Train our model in JAX, write weights and data to `path` (.npz), check the torch copy; return meta."""
    jax = _jax_setup()
    import optax

    from workbench import models, train

    train_set, test_set = _data(args)
    fn = _functional(args, args.l2)
    start = time.perf_counter()
    result = train.train(fn.loss_fn, fn.params, train_set, jax.random.key(0), optimizer=optax.adam(args.lr),
                         num_steps=args.steps, progress=False)
    train_s = time.perf_counter() - start
    params = jax.tree.map(np.asarray, result.params)
    leaves = jax.tree.leaves(params)
    named = {"p:" + "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): a
             for path, a in jax.tree_util.tree_flatten_with_path(params)[0]}
    np.savez(path, *leaves, **named, train_x=np.asarray(train_set.x), train_y=np.asarray(train_set.y),
             test_x=np.asarray(test_set.x), test_y=np.asarray(test_set.y))

    import torch

    torch.set_num_threads(1)
    module = _torch_model(args, _nested(named))
    diffs = {}
    for split, ds in (("train", train_set), ("test", test_set)):
        ours_logits = np.asarray(fn.predict_fn(result.params, ds.x))
        ours_loss = np.asarray(fn.per_example_loss_fn(result.params, ds))
        with torch.no_grad():
            logits = module(torch.tensor(np.asarray(ds.x)))
            loss = _torch_loss(logits, torch.tensor(np.asarray(ds.y)).long(), reduction="none")
        diffs[f"{split}_logits_max_abs_diff"] = float(np.max(np.abs(logits.numpy() - ours_logits)))
        diffs[f"{split}_loss_max_abs_diff"] = float(np.max(np.abs(loss.numpy() - ours_loss)))
    print(args.model, "torch copy vs JAX:", diffs, flush=True)
    # the GPT's attention softmax runs in float32 on both sides (see kronfluence_torch): float32 rounding
    tolerance = 1e-10 if args.model == "mlp" else 1e-6
    assert max(diffs.values()) < tolerance, f"the torch copy differs from the JAX model: {diffs}"
    accuracy = models.accuracy(fn.predict_fn, result.params, test_set) if args.model == "mlp" else None
    return dict(train_s=train_s, train_loss=float(fn.loss_fn(result.params, train_set)),
                test_loss=float(np.mean(fn.per_example_loss_fn(result.params, test_set))),
                test_accuracy=None if accuracy is None else float(accuracy), torch_copy=diffs,
                torch_copy_tolerance=tolerance, num_params=int(sum(a.size for a in leaves)),
                positions=1 if args.model == "mlp" else args.seq_len)


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
    fn = _functional(args, 0.0)  # l2 0: the damping given is all that is added (see the docstring)
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
        with_l2 = _functional(args, args.l2)  # the model as trained: its default adds l2 too
        fitted_l2 = kfac.fit(with_l2, params, train, fisher="empirical", chunk_size=CHUNK)
        out["ekfac_default"], _, default = score("ekfac", fitted_l2, None, with_l2)
        timings["default_damping"] = {k: v + args.l2 for k, v in default.info["damping"].items()}
        positions = int(problem["train_x"].shape[1]) if args.model == "gpt" else 1
        # kronfluence's S is ours / positions (it divides by tokens, we by sequences): its K-FAC at damping d
        # is positions x ours at damping positions x d (EK-FAC's Lambda is per sequence on both sides)
        out["kfac_damping_times_positions"], _, _ = score("kfac", kfactors, args.damping * positions)
        for layer in factors.coverage.layers:
            f, key = factors.layers[layer.name], "layer:" + layer.name.replace("/", ".")
            activation = np.asarray(f.activation)
            out[key + ":A"] = np.diag(activation) if activation.ndim == 1 else activation  # an embedding's: diagonal
            out[key + ":S"] = np.asarray(f.gradient)
            out[key + ":A_values"] = np.asarray(f.activation_values)
            out[key + ":S_values"] = np.asarray(f.gradient_values)
            out[key + ":lambda"] = np.asarray(f.corrected)  # [d_a, d_out]
    return timings, out


def worker_kronfluence(args, problem: dict) -> tuple[dict, dict]:
    start = time.perf_counter()
    import torch
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
            return _torch_loss(model(x), y)

        def compute_measurement(self, batch, model):
            x, y = batch
            return _torch_loss(model(x), y)

    start = time.perf_counter()
    params = _nested({k: problem[k] for k in problem.files if k.startswith("p:")})
    task = Classification()
    model = prepare_model(_torch_model(args, params), task)
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
        for name in names:
            key = "layer:" + name
            out[key + ":A"] = (cov["activation_covariance"][name] / cov["num_activation_covariance_processed"][name]).numpy()
            out[key + ":S"] = (cov["gradient_covariance"][name] / cov["num_gradient_covariance_processed"][name]).numpy()
            out[key + ":A_values"] = eig["activation_eigenvalues"][name].numpy()
            out[key + ":S_values"] = eig["gradient_eigenvalues"][name].numpy()
            # kronfluence's Lambda is [d_out, d_a]; ours [d_a, d_out]
            out[key + ":lambda"] = (lam["lambda_matrix"][name] / lam["num_lambda_processed"][name]).numpy().T
            timings[f"heuristic_damping:{name}"] = 0.1 * float(out[key + ":lambda"].mean())
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


def _relative(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def factor_rows(ours: dict, kron: dict) -> list[dict]:
    """Each layer's factors side by side (ours matched to kronfluence's by name, else in order)."""
    names = lambda d: [k.split(":")[1] for k in d if k.startswith("layer:") and k.endswith(":A")]  # noqa: E731
    ours_names, kron_names = names(ours), names(kron)
    if set(ours_names) == set(kron_names):
        kron_names = list(ours_names)
    rows = []
    for mine, theirs in zip(ours_names, kron_names, strict=True):
        o = {w: ours[f"layer:{mine}:{w}"] for w in ("A", "S", "A_values", "S_values", "lambda")}
        k = {w: kron[f"layer:{theirs}:{w}"] for w in o}
        row = {"layer": mine, "kronfluence_name": theirs, "A_shape": list(o["A"].shape),
               "S_shape": list(o["S"].shape)}
        for what in ("A", "S", "lambda"):
            row[f"{what}_relative_diff"] = _relative(o[what], k[what])
            row[f"{what}_scale_ours_on_kron"] = float(np.sum(o[what] * k[what]) / np.sum(k[what] ** 2))
        for what in ("A_values", "S_values", "lambda"):  # sorted: an embedding's A is not eigendecomposed by us
            row[f"{what}_sorted_relative_diff"] = _relative(np.sort(o[what].ravel()), np.sort(k[what].ravel()))
        row["lambda_mean_ours"], row["lambda_mean_kronfluence"] = float(o["lambda"].mean()), float(k["lambda"].mean())
        rows.append(row)
    return rows


def model_args(args) -> list[str]:
    """The CLI arguments that fix the model and its data (passed on to the workers)."""
    out = ["--model", args.model, "--hidden", str(args.hidden), "--l2", str(args.l2), "--damping", str(args.damping)]
    if args.model == "gpt":
        out += ["--seq-len", str(args.seq_len), "--d-model", str(args.d_model), "--num-heads", str(args.num_heads),
                "--num-layers", str(args.num_layers), "--vocab-size", str(args.vocab_size)]
    return out


SIZES = {  # model -> (n_train, n_test, steps, lr); --quick: smaller
    "mlp": dict(n_train=1347, n_test=200, steps=200, lr=0.01),
    "gpt": dict(n_train=512, n_test=32, steps=200, lr=3e-3),
}
QUICK = {"mlp": dict(n_train=300, n_test=20), "gpt": dict(n_train=64, n_test=8, steps=20)}


def run_model(args, core: int, tmp: Path) -> dict:
    """Train, then the alternating worker pairs and the comparison, for args.model."""
    load = {"start": os.getloadavg()}
    problem_path = tmp / f"{args.model}.npz"
    meta = make_problem(args, problem_path)
    # workers compile from scratch: JAX's persistent cache (on by `import workbench`) off, and the folder the
    # parent's import put in the environment not inherited
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "WORKBENCH_JAX_CACHE_SET")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parent.parent), WORKBENCH_JAX_CACHE="off")

    def launch(lib, pair, extras=False, cache="off"):
        out = str(tmp / f"{args.model}_{lib}_{pair}")
        cmd = [sys.executable, str(HERE), "--worker", lib.split("_")[0], "--problem", str(problem_path), "--out",
               out, "--core", str(core), *model_args(args)] + (["--extras"] if extras else [])
        load_before = os.getloadavg()
        wall = time.perf_counter()
        subprocess.run(cmd, check=True, env=dict(env, WORKBENCH_JAX_CACHE=cache))
        timings = json.loads(Path(out + ".json").read_text())
        timings.update(lib=lib, pair=pair, process_wall_s=time.perf_counter() - wall, loadavg_start=load_before)
        print(args.model, lib, pair, {k: round(v, 4) for k, v in timings.items()
                                      if k.endswith("_s") or k.endswith("_mb")}, flush=True)
        return timings

    runs = []
    for pair in range(args.pairs):
        order = ["ours", "kronfluence"] if pair % 2 == 0 else ["kronfluence", "ours"]
        runs += [launch(lib, pair, extras=pair == 0) for lib in order]
    # ours once more with a persistent compilation cache that a first process filled (a returning user)
    launch("ours_cached", -1, cache=str(tmp / f"{args.model}_jax_cache"))
    runs.append(launch("ours_cached", 0, cache=str(tmp / f"{args.model}_jax_cache")))
    load["end"] = os.getloadavg()
    ours = dict(np.load(tmp / f"{args.model}_ours_0.npz"))
    kron = dict(np.load(tmp / f"{args.model}_kronfluence_0.npz"))
    # each row "a vs b": our scores a, kronfluence's b unless the name says otherwise
    agreement = {name: spearman_pearson_top(ours[name], kron[name])
                 for name in ("ekfac", "kfac", "ekfac_heuristic", "kfac_heuristic")}
    agreement["kfac_ours_at_positions_x_damping"] = spearman_pearson_top(ours["kfac_damping_times_positions"],
                                                                         kron["kfac"])
    agreement["ekfac_each_default"] = spearman_pearson_top(ours["ekfac_default"], kron["ekfac_default"])
    agreement["ekfac_ours_default_vs_ours_given"] = spearman_pearson_top(ours["ekfac_default"], ours["ekfac"])
    agreement["ekfac_kron_default_vs_kron_given"] = spearman_pearson_top(kron["ekfac_default"], kron["ekfac"])
    agreement["kfac_vs_ekfac_ours"] = spearman_pearson_top(ours["kfac"], ours["ekfac"])
    first = {r["lib"]: r for r in runs if r["pair"] == 0}
    keys = ["import_s", "setup_s", "ekfac_fit_first_s", "ekfac_score_first_s", "ekfac_fit_warm_s",
            "ekfac_score_warm_s", "kfac_fit_warm_s", "kfac_score_warm_s", "peak_rss_mb", "rss_after_import_mb",
            "process_wall_s"]
    medians = {}
    for lib in ("ours", "kronfluence", "ours_cached"):
        mine = [r for r in runs if r["lib"] == lib]
        medians[lib] = {k: float(np.median([r[k] for r in mine])) for k in keys}
        medians[lib]["ekfac_first_call_s"] = float(np.median(
            [r["setup_s"] + r["ekfac_fit_first_s"] + r["ekfac_score_first_s"] for r in mine]))
        medians[lib]["ekfac_warm_s"] = float(np.median([r["ekfac_fit_warm_s"] + r["ekfac_score_warm_s"] for r in mine]))
    return {"model": args.model, "args": {k: v for k, v in vars(args).items() if k not in ("worker", "problem", "out")},
            "problem": meta, "agreement": agreement, "factors": factor_rows(ours, kron),
            "layers": {lib: first[lib]["layers"] for lib in ("ours", "kronfluence")}, "runs": runs,
            "medians": medians, "loadavg": load,
            "damping": {"given": args.damping, "ours_heuristic": first["ours"].get("heuristic_damping"),
                        "kronfluence_heuristic": {k.split(":")[1]: v for k, v in first["kronfluence"].items()
                                                  if k.startswith("heuristic_damping:")},
                        "ours_default": first["ours"].get("default_damping"),
                        "kronfluence_default": first["kronfluence"].get("default_damping")}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes, one pair (a smoke run)")
    parser.add_argument("--models", nargs="+", default=["mlp", "gpt"], choices=["mlp", "gpt"])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--damping", type=float, default=0.01)
    parser.add_argument("--core", type=int, default=None, help="the core every worker is pinned to")
    parser.add_argument("--l2", type=float, default=0.01)
    parser.add_argument("--hidden", type=int, default=32, help="the MLP's hidden width")
    parser.add_argument("--seq-len", type=int, default=32, help="the GPT's context (characters per example)")
    parser.add_argument("--d-model", type=int, default=32)
    parser.add_argument("--num-heads", type=int, default=2)
    parser.add_argument("--num-layers", type=int, default=2)
    # set by the parent for its workers
    parser.add_argument("--worker", choices=["ours", "kronfluence"])
    parser.add_argument("--model", choices=["mlp", "gpt"])
    parser.add_argument("--vocab-size", type=int)
    parser.add_argument("--problem")
    parser.add_argument("--out")
    parser.add_argument("--extras", action="store_true")
    args = parser.parse_args()
    if args.worker:
        return run_worker(args)
    if args.quick:
        args.pairs = 1
    core = args.core if args.core is not None else max(os.sched_getaffinity(0))
    command = "OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_kronfluence.py " + " ".join(sys.argv[1:])
    tmp = Path(tempfile.mkdtemp(prefix="bench_kron_"))
    sys.path.insert(0, str(HERE.parent))
    suffix = "_quick" if args.quick else ""
    out = {"command": command, "sections": []}
    for model in args.models:
        margs = argparse.Namespace(**vars(args))
        margs.model = model
        for k, v in {**SIZES[model], **(QUICK[model] if args.quick else {})}.items():
            setattr(margs, k, v)
        out["sections"].append(run_model(margs, core, tmp))
        import jax
        import kronfluence
        import torch

        out.update(machine=f"{platform.platform()}, {os.cpu_count()} CPUs shared with other jobs (a test-suite run, "
                           f"other benchmarks), every worker pinned to core {core}",
                   versions={"jax": jax.__version__, "torch": torch.__version__,
                             "kronfluence": kronfluence.__version__, "python": platform.python_version()})
        RESULTS.mkdir(exist_ok=True)  # after every model: partial results survive
        (RESULTS / f"kronfluence{suffix}.json").write_text(json.dumps(out, indent=1, default=float) + "\n")
        text = markdown(out)
        (RESULTS / f"kronfluence{suffix}.md").write_text(text)
    shutil.rmtree(tmp, ignore_errors=True)
    print(text)


def _section(sec: dict) -> list[str]:
    a, p = sec["args"], sec["problem"]
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    if sec["model"] == "mlp":
        what = (f"## Digits MLP 64-{a['hidden']}-10 tanh ({p['num_params']} params, l2 {a['l2']}, {a['steps']} Adam "
                f"steps at lr {a['lr']}, float64), {a['n_train']} training / {a['n_test']} query points; train "
                f"objective {p['train_loss']:.4f}, test accuracy {p['test_accuracy']:.3f}")
    else:
        what = (f"## Char GPT (`workbench.gpt.GPT`: d_model {a['d_model']}, {a['num_heads']} heads, {a['num_layers']} "
                f"blocks, context {a['seq_len']}, vocabulary {a['vocab_size']}, untied head; {p['num_params']} params, "
                f"l2 {a['l2']}, {a['steps']} Adam steps at lr {a['lr']}, float64), {a['n_train']} training / "
                f"{a['n_test']} query windows of `data.load_text`; train objective {p['train_loss']:.4f}, query loss "
                f"{p['test_loss']:.4f}")
    lines = [what, "", "Torch copy vs JAX: " + ", ".join(f"{k} {v:.1e}" for k, v in p["torch_copy"].items())
             + f" (asserted < {p['torch_copy_tolerance']:g}).", "",
             f"Layers ({len(sec['layers']['ours'])} ours, {len(sec['layers']['kronfluence'])} kronfluence): ours "
             f"{sec['layers']['ours']}; kronfluence {sec['layers']['kronfluence']}.", "",
             "### Agreement per query (over training points)", "",
             "Each row compares scores a (ours unless named) with b (kronfluence's unless named); statistics per "
             "query, then the median and min over queries. scale = least-squares slope of a on b.", "",
             "| comparison | Spearman median | Spearman min | Pearson median | Pearson min | top-10 median | top-10 min "
             "| rel. Frobenius diff | scale |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in sec["agreement"].items():
        lines.append(f"| {name} | {r['spearman_median']:.6f} | {r['spearman_min']:.6f} | {r['pearson_median']:.6f} | "
                     f"{r['pearson_min']:.6f} | {r['top10_overlap_median']:.2f} | {r['top10_overlap_min']:.2f} | "
                     f"{r['relative_frobenius_diff']:.2e} | {r['scale_a_on_b']:.6g} |")
    d = sec["damping"]
    lines += ["", f"Dampings: given {d['given']} to both; heuristic (damping None on both: 0.1 x mean Lambda per "
              f"layer) ours {d['ours_heuristic']}, kronfluence {d['kronfluence_heuristic']}; each library's default: "
              f"ours (Functional with l2 {a['l2']}, damping None: heuristic + l2) {d['ours_default']}, kronfluence "
              f"(`ScoreArguments().damping_factor`) {d['kronfluence_default']}.", "",
              "### Factors, ours vs kronfluence", "",
              "Relative Frobenius difference; scale = least-squares slope ours on kronfluence's; eigenvalues and "
              "Lambda also compared sorted.", "",
              "| layer | A | A scale | S | S scale | eig(A) sorted | eig(S) sorted | Lambda | Lambda sorted | Lambda scale "
              "| mean Lambda ours / kron |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sec["factors"]:
        lines.append(f"| {r['layer']} {r['A_shape'][0]}x{r['S_shape'][0]} | {r['A_relative_diff']:.1e} | "
                     f"{r['A_scale_ours_on_kron']:.6g} | {r['S_relative_diff']:.1e} | {r['S_scale_ours_on_kron']:.6g} | "
                     f"{r['A_values_sorted_relative_diff']:.1e} | {r['S_values_sorted_relative_diff']:.1e} | "
                     f"{r['lambda_relative_diff']:.1e} | {r['lambda_sorted_relative_diff']:.1e} | "
                     f"{r['lambda_scale_ours_on_kron']:.6g} | {r['lambda_mean_ours']:.4g} / "
                     f"{r['lambda_mean_kronfluence']:.4g} |")
    m = sec["medians"]
    lines += ["", f"### Time and memory (medians of {a['pairs']} alternating fresh-process pairs, one core each)", "",
              "first_call = setup + first fit + first score in a fresh process (JAX compilation included; JAX's "
              "persistent cache off); warm = the same fit + score again in that process. Last column: ours in a "
              "process whose persistent compilation cache an earlier process filled.", "",
              "| quantity | ours (JAX) | kronfluence (torch) | ratio ours/kron | ours, persistent cache filled |",
              "|---|---|---|---|---|"]
    for k in m["ours"]:
        lines.append(f"| {k} | {fmt(m['ours'][k])} | {fmt(m['kronfluence'][k])} | "
                     f"{m['ours'][k] / m['kronfluence'][k]:.3g} | {fmt(m['ours_cached'][k])} |")
    lines += ["", "Per run: " + "; ".join(
        f"{r['lib']}#{r['pair']} first {r['setup_s'] + r['ekfac_fit_first_s'] + r['ekfac_score_first_s']:.2f}s "
        f"warm {r['ekfac_fit_warm_s'] + r['ekfac_score_warm_s']:.2f}s rss {r['peak_rss_mb']:.0f}MB "
        f"load {r['loadavg_start'][0]:.2f}" for r in sec["runs"]) + ".", "",
        f"Load average (1, 5, 15 min) at start {tuple(round(x, 2) for x in sec['loadavg']['start'])}, at end "
        f"{tuple(round(x, 2) for x in sec['loadavg']['end'])}.", ""]
    return lines


NOTES = [
    "Normalisation: kronfluence divides both covariances by the number of tokens (positions x examples, "
    "`num_*_covariance_processed`); we divide A by positions x examples and S by examples "
    "(`curvature.kfac`: A = E_n[(1/P) sum_t a a^T], S = E_n[sum_t g g^T]). A agrees to rounding, and S for the "
    "MLP (P = 1); for the GPT our S is exactly P = 32 times kronfluence's (the S scale column), so K-FAC's "
    "eigenvalues a_i s_j are 32 times kronfluence's (the S scale column reads 32 to six digits; A's scale 1). EK-FAC's Lambda is an average over examples on both sides "
    "(kronfluence's `num_lambda_processed` counts examples), so it agrees, and so do the EK-FAC scores at any "
    "damping. K-FAC at a given damping d does not: ours inverts 32 a s + d, kronfluence a s + d; ours at damping "
    "32 d is kronfluence's divided by 32 (row kfac_ours_at_positions_x_damping), and the relative heuristic gives "
    "the same ranking with scale 1/32 (row kfac_heuristic).",
    "Embedding: our K-FAC takes an nnx.Embed's A as the diagonal of token frequencies with the identity as "
    "its eigenbasis; kronfluence, tracking the one-hot Linear, eigendecomposes the same diagonal matrix and "
    "sorts the eigenvalues, so its Lambda is ours with the rows permuted (elementwise difference ~1, sorted "
    "difference at rounding).",
    "GPT attention: `nnx.MultiHeadAttention` goes through `jax.nn.dot_product_attention`, whose XLA path "
    "computes the softmax in float32 even for float64 inputs (`_dot_product_attention_core`: 'always carried "
    "out in fp32'); the torch copy does the same. The two float32 softmaxes still do not round alike (checked "
    "separately with jax 0.10.2 / torch 2.13: float32 exp differs in the last bit for ~10% of random inputs, "
    "softmax outputs by up to 2.8e-7 relative for ~1%), so the GPT's logits agree only to ~5e-7 and its losses "
    "to ~5e-9 (the torch-copy line), its factors to 1e-9..1e-8 and its EK-FAC scores to ~2e-8 relative: "
    "float32 noise in both forward and backward passes, not a difference of method. Worth knowing on its own: "
    "a float64 `workbench.gpt.GPT` is float64 everywhere except its attention softmax (left alone here). The "
    "second block's query/key Lambda means are ~1e-17 on both sides, i.e. gradients of ~1e-9 that float32 "
    "softmax rounding may dominate.",
    "Memory: ours peaks higher on the GPT (~1.1 GB vs ~0.57 GB). A separate probe of one process (VmHWM "
    "after each step) put ~380 MB after set-up, +260 MB in the first covariance pass (compilation and the "
    "chunk's captured inputs and output gradients), +50 MB for the eigenvalue pass and ~+300 MB in scoring: "
    "`Estimator.scores` holds the whole training set's covered-layer gradients (512 x 32.7k float64 = 134 MB, "
    "under its cache_bytes) plus the per-example-gradient program, where kronfluence streams the training "
    "gradients batch by batch. Not investigated further.",
    "Damping defaults: ours None = 0.1 x the mean eigenvalue of each layer (kronfluence's damping_factor=None "
    "rule), plus the model's l2 when the Functional has one; kronfluence's default is damping_factor=1e-8, "
    "nearly undamped, which ranks training points very differently from either damped version (rows "
    "ekfac_each_default and ekfac_kron_default_vs_kron_given).",
    "Sign: both libraries return g_query^T (F + damping)^-1 g_train with the query loss as the measure. Ours "
    "documents score > 0 = removing the training point would raise the query loss (a proponent); kronfluence's "
    "documentation states no sign, but its code takes the plain dot product of the preconditioned query "
    "gradient with the training gradient (no minus), and `bench_influence_peers.py` found its sign +1 against "
    "actual leave-one-out effects. The scale column of the matched rows is +1 here: no flip needed.",
]


def markdown(out: dict) -> str:
    lines = [f"# Our EK-FAC / K-FAC vs kronfluence {out['versions']['kronfluence']} on the same weights", "",
             f"`{out['command']}`", "",
             "Empirical Fisher on both sides, the same layers, float64 everywhere kronfluence takes a dtype, the same "
             "explicit damping (ours from the l2 = 0 Functional, so both invert Lambda + damping). Sign: both score "
             "g_query^T (F + damping)^-1 g_train with the query loss as the measure, positive = upweighting the "
             "training point lowers the query loss (a proponent): no flip needed (the scale column is +1).", "",
             f"Machine: {out['machine']}. Load averages (below, from os.getloadavg()) were ~5-7x the cores: times "
             f"are rough, ratios within one table more telling than seconds. Versions: {out['versions']}.", ""]
    for sec in out["sections"]:
        lines += _section(sec)
    lines += ["## Notes", "", *[f"- {note}" for note in NOTES], ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
