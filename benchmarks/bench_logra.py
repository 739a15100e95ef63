"""LoGra projection vs full per-example gradients (jax.vmap(jax.grad)) on a tiny MLP and TinyTransformer.

Times the steady state (after one compile) of `sketch.logra_project` over all examples in one
chunk, and of a jitted vmap(grad) giving the full per-example gradients; prints the sizes.
Run: PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_logra.py
"""

import time

import jax
import numpy as np
from flax import nnx

from workbench import data, models
from workbench.core.per_example import mean_loss, per_example_grads
from workbench.sketch import logra


def _best(f, repeats=5):
    jax.block_until_ready(f())  # compile
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f())
        times.append(time.perf_counter() - t)
    return min(times)


def _bench(name, fn, batch, k_in, k_out):
    params = fn.params
    projection = logra.logra_projection(fn, jax.random.key(0), k_in, k_out)
    full = jax.jit(lambda p, b: per_example_grads(mean_loss(fn.per_example_loss_fn), p, b))
    n = len(jax.tree.leaves(batch)[0])
    t_proj = _best(lambda: logra.logra_project(projection, fn, params, batch))
    t_full = _best(lambda: full(params, batch))
    n_params = sum(x.size for x in jax.tree.leaves(params))
    print(f"{name}: n={n}, params={n_params} (projected layers cover {projection.covered_params}), "
          f"layers={len(projection.layers)}, k_in={k_in}, k_out={k_out}, projected dim={projection.dim}; "
          f"logra_project {t_proj * 1e3:.1f} ms, vmap(grad) {t_full * 1e3:.1f} ms")


if __name__ == "__main__":
    mlp = models.functional(models.MLP(64, [128, 128], 10, rngs=nnx.Rngs(0)))
    _bench("MLP 64-128-128-10", mlp, data.make_classification(jax.random.key(1), 400, 64, num_classes=10), 8, 8)
    with jax.numpy_dtype_promotion("standard"):
        tf = models.functional(models.TinyTransformer(32, 16, d_model=32, num_heads=2, rngs=nnx.Rngs(1)))
        tokens = np.random.default_rng(3).integers(0, 32, (300, 17)).astype(np.int32)
        _bench("TinyTransformer(vocab 32, seq 16, d 32)", tf, data.Dataset(tokens[:, :16], tokens[:, 1:]), 8, 8)
