"""Hessian spectrum side by side: workbench vs matfree (JAX), PyHessian, hessian-eigenthings and
curvlinops (PyTorch, CPU), on the digits MLP (64-32-10, 2410 params) with identical float64
weights and the full training set (1347 images, cross-entropy).

Tasks: top-1 and top-5 eigenvalues, trace with 100 matvecs, spectral density (SLQ, 90 Lanczos
steps x 10 probes where the peer allows). Errors are against the dense Hessian's eigh; density
error is the Wasserstein-1 distance from the peer's node/weight measure (or its grid density
when it exposes no nodes) to the exact eigenvalues. "first" is the first call in this process
(compile included for JAX), "warm" the median of later calls. Also: HVP cost relative to a
gradient, and a ~1M-parameter MLP (time, peak memory) run in a subprocess.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_spectrum.py [--skip-large]
"""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

jax.config.update("jax_enable_x64", True)

from flax import nnx  # noqa: E402
from scipy.stats import wasserstein_distance  # noqa: E402

from workbench import curvature, data, models, spectrum  # noqa: E402
from workbench.experiments import digits  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TASKS = ("top1", "top5", "trace", "density")


def timed(fn, repeats=3):
    """(result, first-call seconds, median warm seconds)."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - start
    warm = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        warm.append(time.perf_counter() - start)
    return out, first, float(np.median(warm))


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b) / np.abs(b)))


# ----------------------------------------------------------------------------- problem


def setup():
    fit = digits.fit_digits_mlp(32, 0.01, 300, seed=0)
    train_data, _ = data.load_digits(seed=0, dtype=jnp.float64)
    params = optax.tree.cast(fit.result.params, jnp.float64)
    fn = models.functional(models.MLP(64, [32], 10, rngs=nnx.Rngs(0), param_dtype=jnp.float64))
    return fn, params, train_data


def ours(fn, params, ds, key):
    op = curvature.operator(fn, params, ds)
    return {
        "top1": lambda: spectrum.top_eigenpairs(op, key, 1).values,
        "top5": lambda: spectrum.top_eigenpairs(op, key, 5).values,
        "trace": lambda: spectrum.trace(op, key, 100, "hutchinson").estimate,
        "trace_one_probe_at_a_time": lambda: spectrum.trace(op, key, 100, "hutchinson", batch_bytes=1).estimate,
        "trace_hutch++": lambda: spectrum.trace(op, key, 100, "hutch++").estimate,
        "trace_xtrace": lambda: spectrum.trace(op, key, 100, "xtrace").estimate,
        "density": lambda: spectrum.spectral_density(op, key, 90, 10),
        "density_one_probe_at_a_time": lambda: spectrum.spectral_density(op, key, 90, 10, batch_bytes=1),
        # fewer steps, still more accurate than every peer's 90-step density (equal-accuracy speed)
        "density_50_steps": lambda: spectrum.spectral_density(op, key, 50, 10),
    }, op


def matfree_tasks(op, key):
    from matfree import decomp, eig, stochtrace

    mv = op.mv
    v0 = jax.random.normal(key, (op.dim,), jnp.float64)
    top = jax.jit(lambda v: eig.eigh_partial(decomp.tridiag_sym(40, reortho="full"))(mv, v)[0])
    est = stochtrace.estimator_monte_carlo(
        stochtrace.monte_carlo_trace(), stochtrace.sampler_signs(v0, num=100)
    )
    trace = jax.jit(lambda k: est(mv, k))
    tridiag = decomp.tridiag_sym(90, reortho="full")

    @jax.jit
    def density(k):  # SLQ from matfree's tridiagonalisation under vmap (matfree has no density routine)
        probes = jax.random.rademacher(k, (10, op.dim), jnp.float64)

        def one(v):
            _, t, *_ = tridiag(mv, v / jnp.linalg.norm(v))  # t: dense tridiagonal [90, 90]
            nodes, vecs = jnp.linalg.eigh(t)
            return nodes, vecs[0] ** 2

        nodes, weights = jax.vmap(one)(probes)
        return nodes, weights / probes.shape[0]

    return {
        "top1": lambda: top(v0)[-1:],
        "top5": lambda: top(v0)[::-1][:5],
        "trace": lambda: trace(key),
        "density": lambda: density(key),
    }


def torch_problem(params, ds):
    import torch

    torch.manual_seed(0)
    w = jax.tree.map(np.asarray, params)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10)).double()
    with torch.no_grad():
        for i, layer in ((0, net[0]), (1, net[2])):
            layer.weight.copy_(torch.from_numpy(w["layers"][i]["kernel"].T.copy()))
            layer.bias.copy_(torch.from_numpy(w["layers"][i]["bias"].copy()))
    x = torch.from_numpy(np.asarray(ds.x))
    y = torch.from_numpy(np.asarray(ds.y).astype(np.int64))
    return net, torch.nn.CrossEntropyLoss(), x, y


def pyhessian_tasks(net, crit, x, y):
    from pyhessian import hessian

    def h():
        return hessian(net, crit, data=(x, y), cuda=False)

    def density():
        nodes, weights = h().density(iter=90, n_v=10)
        return np.array(nodes), np.array(weights) / len(nodes)

    return {
        "top1": lambda: np.array(h().eigenvalues(top_n=1)[0]),
        "top5": lambda: np.array(h().eigenvalues(top_n=5)[0]),
        "trace": lambda: np.mean(h().trace(maxIter=100, tol=0.0)),
        "density": density,
    }


def eigenthings_tasks(net, crit, x, y):
    import hessian_eigenthings as he

    op = he.HessianOperator(net, [(x, y)], he.supervised_loss(crit), full_dataset=True)

    def density():
        r = he.spectral_density(op, num_runs=10, lanczos_steps=90, seed=0)
        return r.raw_eigenvalues.numpy(), r.raw_weights.numpy() / r.raw_weights.shape[0]

    return {
        "top1": lambda: he.lanczos(op, k=1, which="LA", seed=0).eigenvalues.numpy(),
        "top5": lambda: np.sort(he.lanczos(op, k=5, which="LA", seed=0).eigenvalues.numpy())[::-1],
        "trace": lambda: float(he.trace(op, num_matvecs=100, method="hutchinson", seed=0).estimate),
        "density": density,
    }


def curvlinops_tasks(net, crit, x, y):
    import curvlinops
    from scipy.sparse.linalg import eigsh

    params = [p for p in net.parameters()]
    op = curvlinops.HessianLinearOperator(net, crit, params, [(x, y)])
    sp = op.to_scipy()

    def density():
        grid, dens = curvlinops.lanczos_approximate_spectrum(op, ncv=90, num_repeats=10)
        grid, dens = np.asarray(grid), np.asarray(dens)
        return grid, dens / dens.sum()

    return {
        "top1": lambda: eigsh(sp, k=1, which="LA")[0],
        "top5": lambda: np.sort(eigsh(sp, k=5, which="LA")[0])[::-1],
        "trace": lambda: float(curvlinops.hutchinson_trace(op, 100)),
        "density": density,
    }


def density_error(out, exact):
    if hasattr(out, "nodes"):
        nodes, weights = np.asarray(out.nodes).ravel(), np.asarray(out.weights).ravel() / out.nodes.shape[0]
    else:
        nodes, weights = (np.asarray(a, np.float64).ravel() for a in out)
    return float(wasserstein_distance(nodes, exact, u_weights=np.maximum(weights, 0)))


def evaluate(name, tasks, exact):
    rows = {}
    for task, fn in tasks.items():
        try:
            out, first, warm = timed(fn, repeats=1 if name != "workbench" and name != "matfree" else 3)
            if task == "top1":
                err = rel(np.ravel(out)[:1], exact[-1:])
            elif task == "top5":
                err = rel(np.ravel(out)[:5], exact[::-1][:5])
            elif task.startswith("trace"):
                err = abs(float(np.ravel(out)[0]) - exact.sum()) / abs(exact.sum())
            else:
                err = density_error(out, exact)
            rows[task] = {"error": err, "first_s": first, "warm_s": warm}
        except Exception as e:  # a peer that breaks is recorded, not fatal
            rows[task] = {"failed": f"{type(e).__name__}: {e}"[:300]}
            traceback.print_exc()
        print(name, task, rows[task], flush=True)
    return rows


def hvp_cost(fn, params, ds, op):
    grad = jax.jit(jax.grad(fn.loss_fn))
    mv = jax.jit(op.mv)
    v = jnp.ones(op.dim, jnp.float64)
    _, _, t_grad = timed(lambda: grad(params, ds), repeats=20)
    _, _, t_hvp = timed(lambda: mv(v), repeats=20)
    return {"grad_ms": 1e3 * t_grad, "hvp_ms": 1e3 * t_hvp, "ratio": t_hvp / t_grad}


def torch_hvp_cost(net, crit, x, y):
    import torch

    params = list(net.parameters())
    v = [torch.ones_like(p) for p in params]

    def grad():
        return torch.autograd.grad(crit(net(x), y), params)

    def hvp():
        g = torch.autograd.grad(crit(net(x), y), params, create_graph=True)
        return torch.autograd.grad(g, params, grad_outputs=v)

    _, _, t_grad = timed(grad, repeats=20)
    _, _, t_hvp = timed(hvp, repeats=20)
    return {"grad_ms": 1e3 * t_grad, "hvp_ms": 1e3 * t_hvp, "ratio": t_hvp / t_grad}


# ----------------------------------------------------------------------------- large case


def large_case():
    """A 64-1024-896-10 MLP (993,930 params, float32) on digits: HVP, gradient, top-5."""
    jax.config.update("jax_enable_x64", False)
    ds, _ = data.load_digits(seed=0)
    fn = models.functional(models.MLP(64, [1024, 896], 10, rngs=nnx.Rngs(0)))
    op = curvature.operator(fn, fn.params, ds)
    key = jax.random.key(0)
    grad = jax.jit(jax.grad(fn.loss_fn))
    mv = jax.jit(op.mv)
    v = jnp.ones(op.dim, jnp.float32)
    _, _, t_grad = timed(lambda: grad(fn.params, ds), repeats=5)
    _, _, t_hvp = timed(lambda: mv(v), repeats=5)
    out, first, warm = timed(lambda: spectrum.top_eigenpairs(op, key, 5), repeats=1)
    return {
        "num_params": op.dim, "dtype": "float32", "grad_ms": 1e3 * t_grad, "hvp_ms": 1e3 * t_hvp,
        "hvp_over_grad": t_hvp / t_grad, "top5_first_s": first, "top5_warm_s": warm,
        "top5_values": np.asarray(out.values).tolist(), "top5_matvecs": int(out.num_matvecs),
        "top5_converged": bool(np.all(out.converged)),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# ----------------------------------------------------------------------------- report


def markdown(results):
    lines = ["# Hessian spectrum benchmark", "",
             f"Digits MLP 64-32-10 ({results['num_params']} params, float64, {results['num_examples']} "
             f"examples, full batch). Machine: {results['machine']}. Errors vs dense `eigh`: relative for "
             "eigenvalues and trace (one 100-probe draw), Wasserstein-1 for the density.", "",
             "| peer | task | error | warm s | first s | warm vs workbench |",
             "|---|---|---|---|---|---|"]
    base = results["peers"]["workbench"]
    for peer, rows in results["peers"].items():
        for task, r in rows.items():
            if "failed" in r:
                lines.append(f"| {peer} | {task} | failed: {r['failed'][:80]} | | | |")
                continue
            ratio = r["warm_s"] / base[task]["warm_s"] if task in base and "warm_s" in base[task] else float("nan")
            lines.append(f"| {peer} | {task} | {r['error']:.2e} | {r['warm_s']:.3f} | {r['first_s']:.2f} | {ratio:.1f}x |")
    h = results["hvp_cost"]
    lines += ["", "## HVP cost relative to a gradient (full batch, warm)", "",
              "| implementation | grad ms | HVP ms | HVP / grad |", "|---|---|---|---|",
              f"| workbench (JAX) | {h['grad_ms']:.2f} | {h['hvp_ms']:.2f} | {h['ratio']:.2f} |"]
    if "torch_hvp_cost" in results:
        t = results["torch_hvp_cost"]
        lines.append(f"| PyTorch double-backward | {t['grad_ms']:.2f} | {t['hvp_ms']:.2f} | {t['ratio']:.2f} |")
    if "large" in results:
        L = results["large"]
        lines += ["", "## ~1M-parameter MLP (64-1024-896-10, float32, 1347 examples)", ""]
        lines += [f"- {k}: {v}" for k, v in L.items()]
    if "note" in results:
        lines += ["", f"Note: {results['note']}."]
    lines += ["", "Peers not installable/importable are listed as failed with the reason."]
    return "\n".join(lines) + "\n"


def main():
    if "--large-only" in sys.argv:
        print(json.dumps(large_case()))
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    jax_only = "--jax-only" in sys.argv  # re-measure the JAX rows, keep the PyTorch rows on file
    fn, params, ds = setup()
    key = jax.random.key(0)
    tasks, op = ours(fn, params, ds, key)
    start = time.perf_counter()
    exact = np.linalg.eigvalsh(np.asarray(op.dense()))
    print(f"dense reference in {time.perf_counter() - start:.1f} s; top {exact[-5:]}", flush=True)
    results = {"num_params": op.dim, "num_examples": len(ds), "machine": platform.processor() or platform.machine(),
               "exact_top5": exact[::-1][:5].tolist(), "exact_trace": float(exact.sum()), "peers": {}}
    results["peers"]["workbench"] = evaluate("workbench", tasks, exact)
    results["hvp_cost"] = hvp_cost(fn, params, ds, op)
    try:
        results["peers"]["matfree"] = evaluate("matfree", matfree_tasks(op, key), exact)
    except Exception as e:
        results["peers"]["matfree"] = {t: {"failed": repr(e)[:300]} for t in TASKS}
    if jax_only:
        previous = json.loads((RESULTS / "spectrum.json").read_text())
        for key_ in ("torch_hvp_cost", "large"):
            if key_ in previous:
                results[key_] = previous[key_]
        for peer, rows in previous["peers"].items():
            results["peers"].setdefault(peer, rows)
        results["note"] = "workbench/matfree rows re-measured with --jax-only; PyTorch rows from the full run"
    try:
        if jax_only:
            raise ImportError("skipped (--jax-only)")
        import torch

        torch.set_num_threads(2)
        problem = torch_problem(params, ds)
        results["torch_hvp_cost"] = torch_hvp_cost(*problem)
        for peer, make in (("pyhessian", pyhessian_tasks), ("hessian-eigenthings", eigenthings_tasks),
                           ("curvlinops", curvlinops_tasks)):
            try:
                results["peers"][peer] = evaluate(peer, make(*problem), exact)
            except Exception as e:
                results["peers"][peer] = {t: {"failed": repr(e)[:300]} for t in TASKS}
    except ImportError as e:
        if not jax_only:
            results["torch_error"] = repr(e)
    if "--skip-large" not in sys.argv and not jax_only:
        out = subprocess.run([sys.executable, __file__, "--large-only"], capture_output=True, text=True)
        try:
            results["large"] = json.loads(out.stdout.strip().splitlines()[-1])
        except Exception:
            results["large"] = {"failed": out.stderr[-500:]}
    (RESULTS / "spectrum.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "spectrum.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
