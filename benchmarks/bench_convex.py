"""Seeds per second of the vmapped convex SGD runner against a Python loop over seeds.

Both sides run the same compiled single-seed SGD (lax.scan over steps): the loop calls
`run_one` once per seed, the vmapped runner `run_many` does every seed in one call. First-call
(compile) time is reported separately from warm time. Writes benchmarks/results/convex.{json,md}.

    PYTHONPATH=$PWD python benchmarks/bench_convex.py [--steps 2000] [--seeds 256]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

from workbench import convex, schedules  # noqa: E402
from workbench.core.numerics import num_examples  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    jax.block_until_ready(out)
    return time.perf_counter() - start


def bench(problem, steps: int, seeds: int, loop_seeds: int, repeats: int) -> dict:
    D = float((problem.w_star**2).sum() ** 0.5)
    schedule = schedules.linear_decay(D / (problem.lipschitz * steps**0.5), steps)
    runner = convex.make_sgd(problem, schedule, num_steps=steps)
    keys = jax.random.split(jax.random.key(0), seeds)
    compile_many = timed(runner.run_many, keys)
    warm_many = min(timed(runner.run_many, keys) for _ in range(repeats))
    compile_one = timed(runner.run_one, keys[0])
    loop = lambda ks: [runner.run_one(k) for k in ks]
    warm_loop = min(timed(loop, keys[:loop_seeds]) for _ in range(repeats))
    many_rate, loop_rate = seeds / warm_many, loop_seeds / warm_loop
    # the naive baseline: a Python loop over seeds and steps around one jitted SGD step
    grad = jax.grad(lambda w, b: convex.objective(problem, w, b))
    lrs = runner.lrs

    @jax.jit
    def one_step(x, t, idx):
        return x - lrs[t] * grad(x, problem.data.take(idx))

    def naive(key):
        x = jax.numpy.zeros(problem.dim, problem.data.x.dtype)
        idx = convex.sample_indices(key, jax.numpy.arange(steps), num_examples(problem.data), 1)
        for t in range(steps):
            x = one_step(x, t, idx[t])
        return x

    timed(naive, keys[0])
    warm_naive = min(timed(naive, keys[1]) for _ in range(2))
    return {
        "problem": problem.name, "n": len(problem.data), "dim": problem.dim, "steps": steps,
        "seeds_vmapped": seeds, "seeds_loop": loop_seeds,
        "vmapped_first_call_s": compile_many, "vmapped_warm_s": warm_many,
        "loop_first_call_s": compile_one, "loop_warm_s": warm_loop,
        "vmapped_seeds_per_s": many_rate, "loop_seeds_per_s": loop_rate,
        "speedup": many_rate / loop_rate,
        "step_loop_seeds_per_s": 1 / warm_naive, "speedup_vs_step_loop": many_rate * warm_naive,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--loop-seeds", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    key = jax.random.key(0)
    problems = [convex.least_absolute_deviations(key), convex.hinge_svm(key), convex.l1_logistic(key)]
    rows = [bench(p, args.steps, seeds, args.loop_seeds, args.repeats)
            for p in problems for seeds in args.seeds]
    meta = {"jax": jax.__version__, "platform": platform.platform(),
            "cpu_count": __import__("os").cpu_count(), "dtype": "float64", "batch_size": 1}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "convex.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Vmapped convex SGD runner vs a Python loop over seeds",
        "",
        f"Same compiled single-seed SGD (lax.scan over {args.steps} steps, batch 1, float64); "
        f"vmapped: {' or '.join(map(str, args.seeds))} seeds in one call; loop: {args.loop_seeds} calls of the jitted "
        "single-seed run. Warm time is the best of "
        f"{args.repeats}; first call includes compilation. Scan-loop: a Python loop over seeds "
        "calling the compiled single-seed run (lax.scan over steps), the strong baseline. "
        "Step-loop: a Python loop over seeds and steps around one jitted SGD step (what one "
        "writes without the runner). Timed on a shared 2-core machine (load average ~6): "
        f"ratios are more reliable than absolute rates. {meta['platform']}, jax {jax.__version__}.",
        "",
        "| problem | seeds | vmapped seeds/s | scan-loop seeds/s | speedup | step-loop seeds/s | "
        "speedup | vmapped first call (s) | vmapped warm (s) | scan-loop first call (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['problem']} | {r['seeds_vmapped']} | {r['vmapped_seeds_per_s']:.0f} | {r['loop_seeds_per_s']:.1f} | "
                     f"{r['speedup']:.1f}x | {r['step_loop_seeds_per_s']:.2f} | "
                     f"{r['speedup_vs_step_loop']:.0f}x | {r['vmapped_first_call_s']:.2f} | "
                     f"{r['vmapped_warm_s']:.3f} | {r['loop_first_call_s']:.2f} |")
    (RESULTS / "convex.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
