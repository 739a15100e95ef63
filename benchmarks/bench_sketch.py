"""Sketch throughput and distortion against dense JL (JAX, TRAK, scikit-learn) and a single read.

Usage: PYTHONPATH=. python benchmarks/bench_sketch.py [--quick]
Writes benchmarks/results/sketch.json and sketch.md. Times are wall-clock medians of warm calls
(after `block_until_ready`); the first call (compile included) is reported separately. Inputs
are float32 Gaussian batches of `batch` vectors; throughput is input bytes / warm time.
Distortion: max over the batch of | ||Phi x||^2 / ||x||^2 - 1 |, plus the same for one
adversarial vector whose mass sits in one 1024-wide block. Combos whose estimated time exceeds
the budget are skipped and listed with the reason.
"""

# ruff: noqa: B023  (timing lambdas are called inside the loop iteration that defines them)

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from workbench import sketch as sk
from workbench.sketch.hadamard import fwht

RESULTS = Path(__file__).parent / "results"
OURS = ("countsketch", "srht", "fjl", "ffd", "affd", "afjl", "qk")
GEN_RATE = None  # dense numbers generated per second, measured once


def timed(fn, reps=3):
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    warm = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        warm.append(time.perf_counter() - t0)
    return out, first, float(np.median(warm))


def distortion(y, x):
    y, x = np.asarray(y, np.float64), np.asarray(x, np.float64)
    r = (y**2).sum(-1) / (x**2).sum(-1)
    return float(np.max(np.abs(r - 1)))


def inputs(n, batch):
    x = jax.random.normal(jax.random.key(1), (batch, n), jnp.float32)
    adv = np.zeros((1, n), np.float32)
    adv[0, 1024:2048] = np.random.default_rng(0).normal(size=1024)
    return x, jnp.asarray(adv)


def inputs_and_floor(n):
    """A batch of 2^21 floats in all (at least one vector), an adversarial vector, and the time of
    one read of the batch (`jnp.sum`): the memory-traffic floor."""
    batch = max(1, (1 << 21) // n)
    x, adv = inputs(n, batch)
    read = jax.jit(jnp.sum)
    _, _, floor = timed(lambda: read(x).block_until_ready(), reps=5)
    return batch, x, adv, floor


def bench_ours(kind, n, d, x, adv):
    t0 = time.perf_counter()
    s = sk.make(kind, jax.random.key(0), n, d)
    jax.block_until_ready(s.state)
    make_s = time.perf_counter() - t0
    f = jax.jit(lambda s_, v: s_.apply(v))
    y, first, warm = timed(lambda: f(s, x).block_until_ready())
    ya = f(s, adv)
    return dict(make_s=make_s, first_s=first, warm_s=warm, distortion=distortion(y, x),
                adversarial=distortion(ya, adv), state_floats=s.state_size)


def bench_dense_jax(n, d, x, adv):
    s = sk.make("dense", jax.random.key(0), n, d, materialize_max=0)
    f = jax.jit(lambda s_, v: s_.apply(v))
    y, first, warm = timed(lambda: f(s, x).block_until_ready(), reps=1)
    return dict(first_s=first, warm_s=warm, distortion=distortion(y, x), adversarial=distortion(f(s, adv), adv))


def bench_trak(n, d, x, adv):
    import torch
    from trak.projectors import BasicProjector, ProjectionType

    torch.set_num_threads(2)
    proj = BasicProjector(n, d, seed=0, proj_type=ProjectionType.normal, device=torch.device("cpu"))
    xt, at = torch.from_numpy(np.asarray(x)), torch.from_numpy(np.asarray(adv))
    scale = 1.0 / np.sqrt(d)  # BasicProjector is unscaled: entries N(0, 1)
    y, first, warm = timed(lambda: proj.project(xt, model_id=0), reps=1)
    return dict(first_s=first, warm_s=warm, distortion=distortion(y.numpy() * scale, x),
                adversarial=distortion(proj.project(at, model_id=0).numpy() * scale, adv))


def bench_sklearn(kind, n, d, x, adv):
    from sklearn import random_projection

    cls = random_projection.GaussianRandomProjection if kind == "gaussian" else random_projection.SparseRandomProjection
    xn, an = np.asarray(x), np.asarray(adv)
    t0 = time.perf_counter()
    proj = cls(n_components=d, random_state=0).fit(xn[:1])
    fit = time.perf_counter() - t0
    y, first, warm = timed(lambda: proj.transform(xn), reps=1)
    return dict(fit_s=fit, first_s=first + fit, warm_s=warm, distortion=distortion(y, xn),
                adversarial=distortion(proj.transform(an), an))


def fwht_layouts(n=1 << 20, batch=4):
    x = jnp.ones((batch, n), jnp.float32)
    out = {}
    for b in (2, 4, 8, 16, 32, 64, 256, 1024):
        f = jax.jit(lambda v, b=b: fwht(v, b))
        _, first, warm = timed(lambda: f(x).block_until_ready())
        out[b] = dict(first_s=first, warm_s=warm)
    return out


def per_example_cost(d=1 << 12):
    """Per-example gradients of a ~300k-parameter MLP on 256 examples, with and without sketching."""
    from flax import nnx

    from workbench import data as wd
    from workbench import models
    from workbench import tree as tu

    model = models.MLP(64, [512, 512], 10, rngs=nnx.Rngs(0))
    fn = models.functional(model)
    data = wd.make_classification(jax.random.key(0), 256, 64, 10)
    n = tu.size(fn.params)

    def ex_loss(p, ex):
        return fn.loss_fn(p, jax.tree.map(lambda a: a[None], ex))

    # the per-example gradients themselves, materialised as [examples, n] (what any sketch must read)
    grads = jax.jit(lambda p, b: sk.ravel_leaves(jax.vmap(jax.grad(ex_loss), in_axes=(None, 0))(p, b), True))
    _, g_first, g_warm = timed(lambda: jax.block_until_ready(grads(fn.params, data)))
    out = dict(num_params=n, examples=256, grads_only_s=g_warm, grads_first_s=g_first, dim_out=d)
    for kind in ("srht", "affd", "afjl", "qk", "countsketch", "qk_per_leaf"):
        s = sk.for_params("qk", jax.random.key(0), fn.params, d) if kind == "qk_per_leaf" else sk.make(kind, jax.random.key(0), n, d)
        f = jax.jit(lambda s_, p, b: s_.apply_tree(jax.vmap(jax.grad(ex_loss), in_axes=(None, 0))(p, b), batched=True))
        _, first, warm = timed(lambda: f(s, fn.params, data).block_until_ready())
        out[kind] = dict(warm_s=warm, first_s=first, overhead=warm / g_warm - 1)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="only dim_in = 2^16")
    ap.add_argument("--only", default="", help="comma list of sections to rerun into the existing "
                    "results: trak (TRAK rows at n=2^16), ours (our kinds at n=2^20, 2^22), per_example, layouts")
    ap.add_argument("--budget", type=float, default=40.0, help="skip a peer whose estimate exceeds this (s)")
    args = ap.parse_args()
    global GEN_RATE
    RESULTS.mkdir(exist_ok=True)
    # dense on-the-fly cost is dominated by drawing D*n Gaussians: measure the rate once
    s = sk.make("dense", jax.random.key(0), 1 << 16, 1 << 10, materialize_max=0)
    f = jax.jit(lambda s_, v: s_.apply(v))
    v = jnp.ones((1, 1 << 16), jnp.float32)
    _, _, w = timed(lambda: f(s, v).block_until_ready())
    GEN_RATE = (1 << 26) / w
    if args.only:
        return rerun(args.only.split(","))
    rows, skipped = [], []
    dims_in = [16] if args.quick else [16, 20, 22]
    for log_n in dims_in:
        n = 1 << log_n
        batch, x, adv, floor = inputs_and_floor(n)
        for log_d in (10, 12, 14):
            d = 1 << log_d
            base = dict(log2_dim_in=log_n, log2_dim_out=log_d, batch=batch, floor_s=floor)
            for kind in OURS:
                try:
                    r = bench_ours(kind, n, d, x, adv)
                    rows.append({**base, "method": kind, **r})
                except Exception as e:  # noqa: BLE001 - record and go on
                    skipped.append(f"{kind} n=2^{log_n} D=2^{log_d}: {type(e).__name__}: {e}")
                print(rows[-1], flush=True)
            est = n * d / GEN_RATE
            if est > args.budget:
                skipped.append(f"dense JAX / TRAK / sklearn-gaussian n=2^{log_n} D=2^{log_d}: "
                               f"estimated {est:.0f} s per call > budget {args.budget:.0f} s")
            else:
                for name, fn in (("dense_jax_on_the_fly", lambda: bench_dense_jax(n, d, x, adv)),
                                 ("trak_basic_projector", lambda: bench_trak(n, d, x, adv)),
                                 ("sklearn_gaussian", lambda: bench_sklearn("gaussian", n, d, x, adv))):
                    try:
                        rows.append({**base, "method": name, **fn()})
                        print(rows[-1], flush=True)
                    except Exception as e:  # noqa: BLE001
                        skipped.append(f"{name} n=2^{log_n} D=2^{log_d}: {type(e).__name__}: {e}")
            if n * d / 1e9 * 20 < args.budget:  # sparse sklearn: ~ sqrt(n) * d nonzeros
                try:
                    rows.append({**base, "method": "sklearn_sparse", **bench_sklearn("sparse", n, d, x, adv)})
                    print(rows[-1], flush=True)
                except Exception as e:  # noqa: BLE001
                    skipped.append(f"sklearn_sparse n=2^{log_n} D=2^{log_d}: {type(e).__name__}: {e}")
            _write(rows, skipped, None, None)
    layouts = fwht_layouts()
    pe = per_example_cost()
    _write(rows, skipped, layouts, pe)


def rerun(sections):
    """Rerun some sections and merge them into benchmarks/results/sketch.json."""
    global GEN_RATE
    old = json.loads((RESULTS / "sketch.json").read_text())
    GEN_RATE = old["env"]["dense_gen_rate_per_s"]
    rows, skipped = old["rows"], old["skipped"]
    layouts, pe = old.get("fwht_layouts"), old.get("per_example")
    if "trak" in sections:
        import torch  # noqa: F401  (a first import inside the sweep once failed half-way; import up front)

        for log_d in (10, 12):
            n, d = 1 << 16, 1 << log_d
            x, adv = inputs(n, 32)
            floor = next(r["floor_s"] for r in rows if r["log2_dim_in"] == 16)
            rows = [r for r in rows if not (r["method"] == "trak_basic_projector" and r["log2_dim_out"] == log_d and r["log2_dim_in"] == 16)]
            rows.append(dict(log2_dim_in=16, log2_dim_out=log_d, batch=32, floor_s=floor,
                             method="trak_basic_projector", **bench_trak(n, d, x, adv)))
        skipped = [s for s in skipped if not s.startswith("trak_basic_projector n=2^16")]
    if "ours" in sections:  # our kinds (and the floor) at dim_in 2^20 and 2^22, no dense peers
        for log_n in (20, 22):
            n = 1 << log_n
            batch, x, adv, floor = inputs_and_floor(n)
            for log_d in (10, 12, 14):
                base = dict(log2_dim_in=log_n, log2_dim_out=log_d, batch=batch, floor_s=floor)
                for kind in OURS:
                    rows = [r for r in rows if not (r["method"] == kind and r["log2_dim_in"] == log_n
                                                    and r["log2_dim_out"] == log_d)]
                    rows.append({**base, "method": kind, **bench_ours(kind, n, 1 << log_d, x, adv)})
        for r in rows:  # peers at these sizes keep their old floor only if measured then
            if r["log2_dim_in"] in (20, 22) and r["method"] not in OURS:
                r["floor_s"] = next(q["floor_s"] for q in rows if q["log2_dim_in"] == r["log2_dim_in"] and q["method"] in OURS)
    if "layouts" in sections:
        layouts = fwht_layouts()
    if "per_example" in sections:
        pe = per_example_cost()
    _write(rows, skipped, layouts, pe)


def _write(rows, skipped, layouts, per_example):
    env = dict(python=sys.version.split()[0], jax=jax.__version__, machine=platform.machine(),
               cpus=jax.local_device_count(), backend=jax.default_backend(),
               dense_gen_rate_per_s=GEN_RATE)
    (RESULTS / "sketch.json").write_text(json.dumps(
        dict(env=env, rows=rows, skipped=skipped, fwht_layouts=layouts, per_example=per_example), indent=1))
    lines = ["# Sketch throughput (CPU)", "",
             f"JAX {env['jax']} on {env['backend']}; float32 inputs; warm = median wall time; "
             "`xfloor` = warm time / single read of the input; distortion = max over the batch of "
             "| ||Phi x||^2/||x||^2 - 1 |; adversarial = one vector with its mass in one 1024-block.", "",
             "| log2 n | log2 D | batch | method | first call (s) | warm (ms) | GB/s | x floor | distortion | adversarial |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gbs = r["batch"] * (1 << r["log2_dim_in"]) * 4 / r["warm_s"] / 1e9
        lines.append(f"| {r['log2_dim_in']} | {r['log2_dim_out']} | {r['batch']} | {r['method']} | "
                     f"{r['first_s']:.2f} | {r['warm_s'] * 1e3:.1f} | {gbs:.2f} | {r['warm_s'] / r['floor_s']:.0f} | "
                     f"{r['distortion']:.3f} | {r['adversarial']:.3f} |")
    if layouts:
        lines += ["", "## FWHT layout (n = 2^20, batch 4)", "", "| block size | first call (s) | warm (ms) |", "|---|---|---|"]
        lines += [f"| {b} | {v['first_s']:.2f} | {v['warm_s'] * 1e3:.1f} |" for b, v in layouts.items()]
    if per_example:
        pe = per_example
        lines += ["", f"## Per-example gradients + sketch ({pe['num_params']} params, {pe['examples']} examples, D = {pe['dim_out']})",
                  "", f"Gradients alone: {pe['grads_only_s'] * 1e3:.1f} ms warm.", "",
                  "| kind | warm (ms) | overhead vs gradients alone |", "|---|---|---|"]
        lines += [f"| {k} | {v['warm_s'] * 1e3:.1f} | {v['overhead'] * 100:.0f}% |" for k, v in pe.items() if isinstance(v, dict)]
    if skipped:
        lines += ["", "## Skipped", ""] + [f"- {s}" for s in skipped]
    (RESULTS / "sketch.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
