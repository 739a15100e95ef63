"""First calls (compile included) of the entry points the notebooks call (spectrum, influence,
training, sketched gradients, convex SGD, schedule bounds, ICL), each in a fresh subprocess, next
to its warm time; matfree's equivalents measured the same way.

Problem: the digits MLP 64-32-10 (2410 params, float64, 1347 training images), weights trained
once by the parent and loaded by every child, so a child's "first" is what a notebook user
feels on the first call of that function (the model's own jit of its loss is warm; the entry
point's program is not). "again" is a second call with other options in the same process
(e.g. k=5 after k=1: it should compile nothing), "warm" the best of 3 later calls.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_first_call.py [--out NAME] [--before JSON] [--repeat N] [--only NAME ...]

Writes benchmarks/results/first_call.json and first_call.md (`--out` renames them; `--before`
adds the first/warm columns of an earlier run, e.g. of the code before a change, made with
PYTHONPATH pointing at that checkout; `--repeat N` measures the rows matfree shares N times, in
alternating fresh processes, and reports medians and the ratio within each pair).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)
RESULTS = Path(__file__).parent / "results"


def _timed(fn):
    import jax

    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def _mlp(weights):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from workbench import data, models

    train_data, test_data = data.load_digits(seed=0, dtype=jnp.float64)
    fn = models.functional(models.MLP(64, [32], 10, rngs=nnx.Rngs(0), param_dtype=jnp.float64), l2=0.01)
    flat = np.load(weights)
    params = jax.tree.unflatten(jax.tree.structure(fn.params), [jnp.asarray(flat[f"a{i}"]) for i in range(len(flat.files))])
    return fn, params, train_data, test_data


def entries(fn, params, train_data, test_data):
    """name -> (first call, a second call with other options or None, warm call)."""
    import jax

    from workbench import curvature, influence, spectrum

    key = jax.random.key(0)
    op = curvature.operator(fn, params, train_data)
    test = test_data.take(slice(0, 50))

    def est(kind, **kw):
        return lambda: influence.make(kind, fn.loss_fn, params, train_data, **kw).scores(test)

    ckpts = {s: jax.tree.map(lambda a, s=s: a * (1 + 0.01 * s), params) for s in range(0, 100, 10)}
    top = lambda k: (lambda: spectrum.top_eigenpairs(op, key, k).values)  # noqa: E731
    out = {
        "top_eigenpairs k=1 then k=5": (top(1), top(5), top(5)),
        "top_eigenpairs k=5": (top(5), None, top(5)),
        "top_eigenpairs smallest k=3": (lambda: spectrum.top_eigenpairs(op, key, 3, which="smallest").values, None,
                                        lambda: spectrum.top_eigenpairs(op, key, 3, which="smallest").values),
        "spectral_density 90x10": (lambda: spectrum.spectral_density(op, key, 90, 10).density, None,
                                   lambda: spectrum.spectral_density(op, key, 90, 10).density),
        "spectral_density 80x10": (lambda: spectrum.spectral_density(op, key, 80, 10).density, None,
                                   lambda: spectrum.spectral_density(op, key, 80, 10).density),
        "sharpness": (lambda: spectrum.sharpness(fn.loss_fn, params, train_data, key), None,
                      lambda: spectrum.sharpness(fn.loss_fn, params, train_data, key)),
    }
    for method in ("hutchinson", "hutch++", "xtrace"):
        t = lambda m=method: spectrum.trace(op, key, 100, m).estimate  # noqa: E731
        out[f"trace {method} 100"] = (t, None, t)
    damping = 0.05
    for kind, kw in (("exact", dict(damping=damping)), ("cg", dict(damping=damping)),
                     ("lissa", dict(damping=damping, num_iters=100, key=key)),
                     ("arnoldi", dict(damping=damping, k=50, key=key)), ("grad_dot", {}),
                     ("tracin", dict(checkpoints=ckpts, learning_rates=0.1)),
                     ("trak", dict(dim=512, key=key))):
        out[f"influence {kind} (build + 50 test scores)"] = (est(kind, **kw), None, est(kind, **kw))
    import optax

    from workbench import sketch, train

    def fit():
        return train.train(fn.loss_fn, params, train_data, key, optimizer=optax.adam(1e-3), num_steps=100,
                           batch_size=128).params

    out["train.train (100 Adam steps, batch 128)"] = (fit, None, fit)
    for kind in ("dense", "fjl", "affd", "qk"):
        def grads(kind=kind):
            s = sketch.for_params(kind, key, params, 256)
            return sketch.per_example_gradients(fn.loss_fn, params, train_data, s)

        out[f"sketch.for_params {kind} + per_example_gradients (D=256)"] = (grads, None, grads)
    from workbench import convex, icl, schedules

    problem = convex.make_problem("logistic", jax.random.key(0), n=400, dim=10)
    shapes = {name: schedules.standard_shapes()[name] for name in ("constant", "linear decay")}

    def sgd():
        return convex.compare_schedules(problem, shapes, key, num_steps=1000, num_seeds=32)

    out["convex.compare_schedules (2 shapes, 1000 steps x 32 seeds)"] = (sgd, None, sgd)
    curve = lambda: schedules.bound_curve(shapes["linear decay"], [100, 1000, 10_000])  # noqa: E731
    out["schedules.bound_curve (3 horizons)"] = (curve, None, curve)

    def gd():
        tasks = icl.sample_tasks(key, 256, dim=10, context_length=20)
        eta = icl.line_search_eta(tasks, 4).eta
        return icl.gd_predictions(tasks, eta, 4)

    out["icl.sample_tasks + line_search_eta + gd_predictions (4 steps)"] = (gd, None, gd)
    return out


def matfree_entries(fn, params, train_data):
    """matfree's equivalents with the same outputs: top-k values and Ritz vectors (cut on the
    host, as ours), SLQ nodes and weights broadened on the same 10,000-point grid, Hutchinson's
    estimate."""
    import jax
    import jax.numpy as jnp
    from matfree import decomp, eig, stochtrace

    from workbench import curvature

    key = jax.random.key(0)
    op = curvature.operator(fn, params, train_data)
    v0 = jax.random.normal(key, (op.dim,), jnp.float64)

    @jax.jit
    def eigh40(v):  # values and Ritz vectors, as top_eigenpairs returns
        return eig.eigh_partial(decomp.tridiag_sym(40, reortho="full"))(op.mv, v)

    def top(v):  # the k wanted pairs cut on the host (no program per k), as ours are
        values, vectors = eigh40(v)
        return lambda k: (np.asarray(values)[::-1][:k], np.asarray(vectors)[::-1][:k])

    def slq(num_iters):
        tridiag = decomp.tridiag_sym(num_iters, reortho="full")

        @jax.jit
        def density(k):
            probes = jax.random.rademacher(k, (10, op.dim), jnp.float64)

            def one(v):
                _, t, *_ = tridiag(op.mv, v / jnp.linalg.norm(v))
                nodes, vecs = jnp.linalg.eigh(t)
                return nodes, vecs[0] ** 2

            nodes, weights = jax.vmap(one)(probes)
            # the same output as spectral_density: Gaussian-broadened on a 10,000-point grid
            var = 1e-5 * jnp.maximum(1.0, nodes.max() - nodes.min())
            grid = jnp.linspace(nodes.min() - 0.1, nodes.max() + 0.1, 10_000)
            gauss = jnp.exp(-((grid[None, None, :] - nodes[..., None]) ** 2) / (2 * var)) / jnp.sqrt(2 * jnp.pi * var)
            return grid, jnp.einsum("pi,pig->g", weights, gauss) / nodes.shape[0]

        return lambda: density(key)

    est = stochtrace.estimator_monte_carlo(stochtrace.monte_carlo_trace(), stochtrace.sampler_signs(v0, num=100))
    trace = jax.jit(lambda k: est(op.mv, k))
    return {
        "top_eigenpairs k=1 then k=5": (lambda: top(v0)(1), lambda: top(v0)(5), lambda: top(v0)(5)),
        "top_eigenpairs k=5": (lambda: top(v0)(5), None, lambda: top(v0)(5)),
        "spectral_density 90x10": (slq(90), None, None),
        "spectral_density 80x10": (slq(80), None, None),
        "trace hutchinson 100": (lambda: trace(key), None, lambda: trace(key)),
    }


def child(peer, name, weights):
    fn, params, train_data, test_data = _mlp(weights)
    table = entries(fn, params, train_data, test_data) if peer == "workbench" else matfree_entries(fn, params, train_data)
    first, again, warm = table[name]
    row = {"first_s": _timed(first)}
    if again is not None:
        row["again_s"] = _timed(again)
    warm = warm or first
    row["warm_s"] = min(_timed(warm) for _ in range(3))
    print("RESULT " + json.dumps(row))


def _train(path):
    import jax
    import jax.numpy as jnp

    from workbench.experiments import digits

    fit = digits.fit_digits_mlp(32, 0.01, 300, seed=0)
    import optax

    params = optax.tree.cast(fit.result.params, jnp.float64)
    np.savez(path, **{f"a{i}": np.asarray(a) for i, a in enumerate(jax.tree.leaves(params))})


def markdown(results):
    lines = ["# First calls (compile included) vs warm", "",
             "Digits MLP 64-32-10 (2410 params, float64, 1347 examples). Each row is a fresh process: "
             "`first` is the first call of the entry point (compile included), `again` a second call "
             "with other options (k=5 after k=1), `warm` the best of 3 later calls. "
             f"{results['note']}", "",
             "| entry point | before: first s | before: again s | before: warm s | workbench first s "
             "| again s | warm s | matfree first s | matfree again s | matfree warm s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    f = lambda r, k: f"{r[k]:.3f}" if r and k in r else ""  # noqa: E731
    before = results.get("before", {})
    for name, row in results["workbench"].items():
        m, b = results["matfree"].get(name), before.get(name)
        lines.append(f"| {name} | {f(b, 'first_s')} | {f(b, 'again_s')} | {f(b, 'warm_s')} | {f(row, 'first_s')} "
                     f"| {f(row, 'again_s')} | {f(row, 'warm_s')} | {f(m, 'first_s')} | {f(m, 'again_s')} "
                     f"| {f(m, 'warm_s')} |")
    pairs = {n: r for n, r in results["workbench"].items() if "first_ratio_runs" in r}
    if pairs:
        runs = len(next(iter(pairs.values()))["first_ratio_runs"])
        lines += ["", f"## Head to head: {runs} alternating pairs of fresh processes (ours, then matfree)", "",
                  "The rows above give medians. A shared machine drifts by 10-20% between runs; alternating "
                  "the two in pairs lets the drift hit both alike, and the ratio is taken within each pair.", "",
                  "| entry point | workbench first s (min-max) | matfree first s (min-max) | ratio ours/matfree: "
                  "median (min-max) | pairs where ours was faster |", "|---|---|---|---|---|"]
        span = lambda xs: f"{np.median(xs):.3f} ({min(xs):.3f}-{max(xs):.3f})"  # noqa: E731
        for name, row in pairs.items():
            ratios = row["first_ratio_runs"]
            lines.append(f"| {name} | {span(row['first_s_runs'])} | {span(results['matfree'][name]['first_s_runs'])} "
                         f"| {span(ratios)} | {sum(r < 1 for r in ratios)} of {len(ratios)} |")
    return "\n".join(lines) + "\n"


def main():
    if sys.argv[1:2] == ["--child"]:
        child(*sys.argv[2:5])
        return
    only = sys.argv[sys.argv.index("--only") + 1:] if "--only" in sys.argv else None
    out_name = sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv else "first_call"
    before = json.loads(Path(sys.argv[sys.argv.index("--before") + 1]).read_text())["workbench"] \
        if "--before" in sys.argv else {}
    skip_matfree = "--no-matfree" in sys.argv
    repeat = int(sys.argv[sys.argv.index("--repeat") + 1]) if "--repeat" in sys.argv else 1
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    with tempfile.TemporaryDirectory() as tmp:
        weights = str(Path(tmp) / "mlp.npz")
        _train(weights)
        results = {"machine": platform.processor() or platform.machine(), "workbench": {}, "matfree": {},
                   "before": before, "note": os.environ.get("BENCH_NOTE", "")}
        fn, params, train_data, test_data = _mlp(weights)
        names = {"workbench": list(entries(fn, params, train_data, test_data))}
        try:
            import matfree  # noqa: F401

            names["matfree"] = list(matfree_entries(fn, params, train_data))
        except ImportError:
            names["matfree"] = []
        if skip_matfree:
            names["matfree"] = []
        def measure(peer, name):
            out = subprocess.run([sys.executable, __file__, "--child", peer, name, weights],
                                 capture_output=True, text=True, env=env)
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            row = json.loads(lines[-1][7:]) if lines else {"failed": out.stderr[-300:]}
            print(peer, name, row, flush=True)
            return row

        wanted = lambda name: not only or any(o in name for o in only)  # noqa: E731
        shared = [n for n in names["workbench"] if n in names["matfree"] and wanted(n)]
        for name in shared:  # head to head: alternating fresh processes, so drift hits both alike
            runs = [(measure("workbench", name), measure("matfree", name)) for _ in range(repeat)]
            if any("failed" in r for pair in runs for r in pair):
                results["workbench"][name], results["matfree"][name] = runs[-1]
                continue
            for i, peer in enumerate(("workbench", "matfree")):
                rows = [pair[i] for pair in runs]
                results[peer][name] = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
                results[peer][name]["first_s_runs"] = [r["first_s"] for r in rows]
            results["workbench"][name]["first_ratio_runs"] = [a["first_s"] / b["first_s"] for a, b in runs]
        for peer, rows in names.items():
            for name in rows:
                if wanted(name) and name not in shared:
                    results[peer][name] = measure(peer, name)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{out_name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{out_name}.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
