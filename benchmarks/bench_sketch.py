"""Sketch throughput, explicit vs implicit gradient sketching, per-example cost, peak memory.

Usage: PYTHONPATH=. python benchmarks/bench_sketch.py [--quick]
Writes benchmarks/results/sketch.json and sketch.md. Times are wall-clock medians of warm calls
(after `block_until_ready`); inputs are float32. Sections:
1. throughput at N = 2^20 -> D = 2^12 for every kind and pre-conditioner / factor variant, as a
   multiple of one read of the same input (`jnp.sum`: the memory-traffic floor);
2. time against D (2^10 .. 2^16) at N = 2^16: dense regenerated on the fly vs AFFD and QK;
3. explicit (grad, then apply_tree) vs implicit (grad of L(theta0 + Phi^T w) at w = 0) time for the
   gradient of a 301k-parameter MLP on a batch of 256, per kind;
4. per-example gradients of that MLP (256 examples) with and without sketching, per kind;
5. peak memory per kind at N = 2^22 from XLA's compiled memory analysis of `apply` on one vector
   (arguments + temporaries + output; no execution).
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
import optax

from workbench import sketch as sk

RESULTS = Path(__file__).parent / "results"
VARIANTS = {  # label -> (kind, options)
    "fjl": ("fjl", {}), "ffd": ("ffd", {}),
    "affd": ("affd", {}), "affd[f=32]": ("affd", {"max_factor": 32}), "affd[f=128]": ("affd", {"max_factor": 128}),
    "affd[fft]": ("affd", {"preconditioner": "fft"}), "affd[q]": ("affd", {"preconditioner": "q"}),
    "afjl": ("afjl", {}), "afjl[f=32]": ("afjl", {"max_factor": 32}), "afjl[f=128]": ("afjl", {"max_factor": 128}),
    "afjl[fft]": ("afjl", {"preconditioner": "fft"}), "afjl[q]": ("afjl", {"preconditioner": "q"}),
    "qk": ("qk", {}), "qk[f=128]": ("qk", {"max_factor": 128}),
    "countsketch": ("countsketch", {}), "srht": ("srht", {}), "kronecker": ("kronecker", {}),
}
MEMORY_KINDS = ("fjl", "ffd", "affd", "afjl", "qk", "countsketch", "srht", "kronecker")


def timed(fn, reps=3):
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    warm = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        warm.append(time.perf_counter() - t0)
    return first, float(np.median(warm))


def throughput(log_n=20, log_d=12):
    n, d = 1 << log_n, 1 << log_d
    batch = max(1, (1 << 21) // n)
    x = jax.random.normal(jax.random.key(1), (batch, n), jnp.float32)
    read = jax.jit(jnp.sum)
    _, floor = timed(lambda: read(x).block_until_ready(), reps=7)
    f = jax.jit(lambda s_, v: s_.apply(v))
    rows = []
    for label, (kind, opts) in VARIANTS.items():
        s = sk.make(kind, jax.random.key(0), n, d, **opts)
        first, warm = timed(lambda: f(s, x).block_until_ready())
        y = np.asarray(f(s, x), np.float64)
        dist = float(np.max(np.abs((y**2).sum(-1) / np.asarray((x.astype(jnp.float64) ** 2).sum(-1)) - 1)))
        rows.append(dict(method=label, log2_dim_in=log_n, log2_dim_out=log_d, batch=batch, first_s=first,
                         warm_s=warm, floor_s=floor, x_floor=warm / floor, distortion=dist))
        print(rows[-1], flush=True)
    return rows


def time_against_dim(log_n=16, log_dims=(10, 12, 14, 16), budget=30.0):
    n = 1 << log_n
    x = jax.random.normal(jax.random.key(1), (8, n), jnp.float32)
    f = jax.jit(lambda s_, v: s_.apply(v))
    out = {}
    for kind in ("dense", "affd", "qk"):
        out[kind] = {}
        for log_d in log_dims:
            d = 1 << log_d
            if kind == "dense" and out[kind] and max(out[kind].values()) * d / (1 << max(int(k) for k in out[kind])) > budget:
                out[kind][str(log_d)] = None  # estimated past the budget (linear in D)
                continue
            s = sk.make(kind, jax.random.key(0), n, d, **({"materialize_max": 0} if kind == "dense" else {}))
            _, warm = timed(lambda: f(s, x).block_until_ready(), reps=1 if kind == "dense" else 3)
            out[kind][str(log_d)] = warm
        print(kind, out[kind], flush=True)
    return dict(log2_dim_in=log_n, batch=8, seconds=out)


def _mlp():
    from flax import nnx

    from workbench import data as wd
    from workbench import models

    fn = models.functional(models.MLP(64, [512, 512], 10, rngs=nnx.Rngs(0)))
    data = wd.make_classification(jax.random.key(0), 256, 64, 10)
    return fn, data


def explicit_vs_implicit(d=1 << 12):
    from workbench.sketch.gradients import implicit_grad_fn

    fn, data = _mlp()
    n = optax.tree.size(fn.params)
    out = dict(num_params=n, batch=256, dim_out=d)
    for kind in ("fjl", "ffd", "affd", "afjl", "qk", "countsketch", "kronecker"):
        s = sk.make(kind, jax.random.key(0), n, d)
        exp = jax.jit(lambda s_, p, b: s_.apply_tree(jax.grad(fn.loss_fn)(p, b)))
        imp = jax.jit(lambda s_, p, b: implicit_grad_fn(fn.loss_fn, s_, p)(b))
        _, te = timed(lambda: exp(s, fn.params, data).block_until_ready())
        _, ti = timed(lambda: imp(s, fn.params, data).block_until_ready())
        err = float(jnp.max(jnp.abs(exp(s, fn.params, data) - imp(s, fn.params, data))))
        out[kind] = dict(explicit_s=te, implicit_s=ti, implicit_over_explicit=ti / te, max_abs_diff=err)
        print(kind, out[kind], flush=True)
    return out


def per_example_cost(d=1 << 12):
    fn, data = _mlp()
    n = optax.tree.size(fn.params)

    def ex_loss(p, ex):
        return fn.loss_fn(p, jax.tree.map(lambda a: a[None], ex))

    grads = jax.jit(lambda p, b: sk.ravel_leaves(jax.vmap(jax.grad(ex_loss), in_axes=(None, 0))(p, b), True))
    _, g_warm = timed(lambda: jax.block_until_ready(grads(fn.params, data)))
    out = dict(num_params=n, examples=256, grads_only_s=g_warm, dim_out=d)
    for kind in ("affd", "afjl", "qk", "ffd", "fjl", "countsketch", "kronecker_per_leaf"):
        s = (sk.for_params("kronecker", jax.random.key(0), fn.params, d) if kind == "kronecker_per_leaf"
             else sk.make(kind, jax.random.key(0), n, d))
        f = jax.jit(lambda s_, p, b: s_.apply_tree(jax.vmap(jax.grad(ex_loss), in_axes=(None, 0))(p, b), batched=True))
        _, warm = timed(lambda: f(s, fn.params, data).block_until_ready())
        out[kind] = dict(warm_s=warm, overhead=warm / g_warm - 1)
        print(kind, out[kind], flush=True)
    return out


def peak_memory(log_n=22, log_d=12):
    n, d = 1 << log_n, 1 << log_d
    x = jax.ShapeDtypeStruct((1, n), jnp.float32)
    out = {}
    for kind in MEMORY_KINDS:
        s = sk.make(kind, jax.random.key(0), n, d)
        compiled = jax.jit(lambda s_, v: s_.apply(v)).lower(s, x).compile()
        m = compiled.memory_analysis()
        total = m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes
        out[kind] = dict(state_mb=sum(int(a.nbytes) for a in jax.tree.leaves(s.state) if hasattr(a, "nbytes")) / 2**20,
                         temp_mb=m.temp_size_in_bytes / 2**20, total_mb=total / 2**20)
        print(kind, out[kind], flush=True)
    return dict(log2_dim_in=log_n, log2_dim_out=log_d, kinds=out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="N = 2^16 for throughput, skip time-vs-D and per-example")
    args = ap.parse_args()
    RESULTS.mkdir(exist_ok=True)
    t0 = time.time()
    res = dict(throughput=throughput(16 if args.quick else 20, 12))
    res["peak_memory"] = peak_memory()
    res["explicit_vs_implicit"] = explicit_vs_implicit()
    if not args.quick:
        res["per_example"] = per_example_cost()
        res["time_against_dim"] = time_against_dim()
    env = dict(python=sys.version.split()[0], jax=jax.__version__, machine=platform.machine(),
               backend=jax.default_backend(), wall_s=time.time() - t0)
    res["env"] = env
    (RESULTS / "sketch.json").write_text(json.dumps(res, indent=1))
    _write_md(res)


def _write_md(res):
    env = res["env"]
    lines = ["# Sketch benchmarks (CPU)", "",
             f"JAX {env['jax']} on {env['backend']}, float32. Measured once on the shared 2-core machine while "
             "other jobs ran (load ~8): absolute times are noisy; ratios within one section are the result.", "",
             "## Throughput, N = 2^20 -> D = 2^12", "",
             "`x floor` = warm time / one read of the same input (`jnp.sum`); distortion = max over the batch of "
             "| ||Phi x||^2/||x||^2 - 1 | on Gaussian inputs. [f=k]: Kronecker factors of at most k; [fft], [q]: "
             "the pre-conditioner variants.", "",
             "| kind | batch | first call (s) | warm (ms) | x floor | distortion |", "|---|---|---|---|---|---|"]
    for r in res["throughput"]:
        lines.append(f"| {r['method']} | {r['batch']} | {r['first_s']:.2f} | {r['warm_s'] * 1e3:.1f} | "
                     f"{r['x_floor']:.1f} | {r['distortion']:.3f} |")
    if res.get("time_against_dim"):
        t = res["time_against_dim"]
        dims = sorted({k for v in t["seconds"].values() for k in v}, key=int)
        lines += ["", f"## Time against D (N = 2^{t['log2_dim_in']}, batch {t['batch']}; ms per apply)", "",
                  "| kind | " + " | ".join(f"D = 2^{k}" for k in dims) + " |", "|---" * (len(dims) + 1) + "|"]
        for kind, v in t["seconds"].items():
            lines.append(f"| {kind}{' (on the fly)' if kind == 'dense' else ''} | " + " | ".join(
                "skipped (> budget)" if v.get(k) is None else f"{v[k] * 1e3:.1f}" for k in dims) + " |")
    e = res["explicit_vs_implicit"]
    lines += ["", f"## Explicit vs implicit ({e['num_params']} params, gradient of a batch of {e['batch']}, D = {e['dim_out']})", "",
              "| kind | explicit (ms) | implicit (ms) | implicit / explicit | max abs diff |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {v['explicit_s'] * 1e3:.1f} | {v['implicit_s'] * 1e3:.1f} | {v['implicit_over_explicit']:.2f} | {v['max_abs_diff']:.1e} |"
              for k, v in e.items() if isinstance(v, dict)]
    if res.get("per_example"):
        pe = res["per_example"]
        lines += ["", f"## Per-example gradients + sketch ({pe['num_params']} params, {pe['examples']} examples, D = {pe['dim_out']})",
                  "", f"Gradients alone: {pe['grads_only_s'] * 1e3:.1f} ms warm.", "",
                  "| kind | warm (ms) | overhead vs gradients alone |", "|---|---|---|"]
        lines += [f"| {k} | {v['warm_s'] * 1e3:.1f} | {v['overhead'] * 100:.0f}% |" for k, v in pe.items() if isinstance(v, dict)]
    m = res["peak_memory"]
    lines += ["", f"## Peak memory of `apply` on one vector, N = 2^{m['log2_dim_in']}, D = 2^{m['log2_dim_out']} "
              "(XLA compiled memory analysis; the input alone is 16 MiB)", "",
              "| kind | random state (MiB) | temporaries (MiB) | arguments + temporaries + output (MiB) |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['state_mb']:.1f} | {v['temp_mb']:.1f} | {v['total_mb']:.1f} |" for k, v in m["kinds"].items()]
    lines += ["", f"Total wall time {env['wall_s']:.0f} s."]
    (RESULTS / "sketch.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
