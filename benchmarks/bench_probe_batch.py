"""How many probes to push through the operator at once: warm time of `spectrum.trace`
(Hutchinson, 100 probes) and `spectrum.spectral_density` (80 steps x 10 probes) against the
batch size, on two digits MLPs (64-32-10: 2,410 params; 64-256-256-10: 85,002 params; float64,
1,347 examples). Sets the default `TRACE_MAX_BATCH` of `workbench.spectrum.density`.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_probe_batch.py

Writes benchmarks/results/probe_batch.{json,md}.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from workbench import curvature, data, models, spectrum
from workbench.experiments import digits

jax.config.update("jax_enable_x64", True)
RESULTS = Path(__file__).parent / "results"


def warm(f, repeats):
    jax.block_until_ready(f())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(f())
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    train, _ = data.load_digits(seed=0, dtype=jnp.float64)
    small = digits.fit_digits_mlp(32, 0.01, 300, seed=0)
    small_fn = models.functional(models.MLP(64, [32], 10, rngs=nnx.Rngs(0), param_dtype=jnp.float64), l2=0.01)
    big = models.functional(models.MLP(64, [256, 256], 10, rngs=nnx.Rngs(0), param_dtype=jnp.float64), l2=0.01)
    ops = {"MLP 64-32-10": curvature.operator(small_fn, optax.tree.cast(small.result.params, jnp.float64), train),
           "MLP 64-256-256-10": curvature.operator(big, big.params, train)}
    key = jax.random.key(0)
    rows = []
    for name, op in ops.items():
        for b in (1, 2, 4, 8, 16, 100):
            f = lambda b=b, op=op: spectrum.trace(op, key, 100, batch_bytes=b * 2 * op.dim * 8, max_batch=b).estimate  # noqa: E731
            used = max(d for d in range(1, b + 1) if 100 % d == 0)  # equal batches: a divisor of 100
            rows.append({"model": name, "dim": op.dim, "task": "trace hutchinson 100", "max_batch": b, "batch": used,
                         "warm_s": warm(f, 5)})
            print(rows[-1], flush=True)
        for b in (1, 2, 5, 10) if op.dim < 10_000 else (1, 10):  # the large model's densities take ~20 s each
            f = lambda b=b, op=op: spectrum.spectral_density(op, key, 80, 10, batch_bytes=b * 82 * op.dim * 8).density  # noqa: E731
            rows.append({"model": name, "dim": op.dim, "task": "spectral_density 80x10", "max_batch": b, "batch": b,
                         "warm_s": warm(f, 2)})
            print(rows[-1], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "probe_batch.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["# Probes per batch (warm seconds, best of 5 for traces, of 2 for densities)", "",
             "| model | params | task | max batch | probes per product | warm s |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['dim']} | {r['task']} | {r['max_batch']} | {r['batch']} | {r['warm_s']:.4f} |"
              for r in rows]
    (RESULTS / "probe_batch.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
