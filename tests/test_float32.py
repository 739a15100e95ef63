"""The float32 lane: the key numerical routines in the dtype users get by default.

The rest of the suite runs with x64 enabled (float64 references); this module runs its checks in
a fresh process without x64, so nothing can silently compute in float64, and compares against
float64 references computed with numpy. Tolerances are float32-sized, tight enough that an
accumulation or a tolerance taken from the wrong dtype would fail them.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = r'''
import json
import jax, jax.numpy as jnp, numpy as np, optax
from flax import nnx
assert not jax.config.jax_enable_x64
from workbench import curvature, data, influence, models, spectrum, train
from workbench.core.numerics import default_tol
out = {}
ds = data.make_classification(jax.random.key(1), 200, 8, num_classes=3)
fn = models.functional(models.MLP(8, [6], 3, rngs=nnx.Rngs(0)), l2=1e-2)
assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(fn.params))
flat, unravel = jax.flatten_util.ravel_pytree(fn.params)
h64 = np.asarray(jax.hessian(lambda w: fn.loss_fn(unravel(w), ds))(flat), np.float64)
op = curvature.operator(fn, fn.params, ds, chunk_size=64)
out["op_dtype"] = str(op.dtype)
dense = np.asarray(op.dense(), np.float64)
out["hessian_rel_err"] = float(np.abs(dense - h64).max() / np.abs(h64).max())
evals = np.linalg.eigvalsh(0.5 * (h64 + h64.T))
top = spectrum.top_eigenpairs(op, jax.random.key(2), 3)
out["top_dtype"] = str(top.values.dtype)
out["top_rel_err"] = float(np.max(np.abs(np.asarray(top.values) - evals[::-1][:3]) / evals[-1]))
out["top_converged"] = bool(np.all(np.asarray(top.converged)))
out["default_tol"] = default_tol(op.dtype)
tr = spectrum.trace(op, jax.random.key(3), 60, "xtrace")
out["trace_rel_err"] = float(abs(float(tr.estimate) - evals.sum()) / evals.sum())
res = train.train(fn.loss_fn, fn.params, ds, jax.random.key(4), optimizer=optax.sgd(0.3), num_steps=50, progress=False)
out["train_loss_dtype"] = str(res.history["loss"].dtype)
out["train_loss_drop"] = float(res.history["loss"][0] - res.history["loss"][-1])
train_set, test_set = ds.take(slice(0, 150)), ds.take(slice(150, 160))
params = res.params
flat, unravel = jax.flatten_util.ravel_pytree(params)
damping = influence.damping_above_min_eigenvalue(fn.loss_fn, params, train_set, margin=0.1).damping
out["damping"] = damping
exact = influence.make("exact", fn, params, train_set, damping=damping)
s = np.asarray(exact.scores(test_set), np.float64)
out["scores_dtype"] = str(exact.scores(test_set).dtype)
# float64 reference of the same formula: data gradients, objective Hessian + damping
g = lambda w, x, y: jax.grad(lambda q: fn.per_example_loss_fn(unravel(q), (x[None], y[None]))[0])(w)
gt = np.asarray(jax.vmap(lambda x, y: g(flat, x, y))(train_set.x, train_set.y), np.float64)
gs = np.asarray(jax.vmap(lambda x, y: g(flat, x, y))(test_set.x, test_set.y), np.float64)
h_train = np.asarray(jax.hessian(lambda w: fn.loss_fn(unravel(w), train_set))(flat), np.float64)
ref = gs @ np.linalg.solve(h_train + damping * np.eye(flat.size), gt.T)
out["exact_rel_err"] = float(np.abs(s - ref).max() / np.abs(ref).max())
cg = np.asarray(influence.make("cg", fn, params, train_set, damping=damping).scores(test_set), np.float64)
out["cg_rel_err"] = float(np.abs(cg - ref).max() / np.abs(ref).max())
print(json.dumps(out))
'''


def test_key_routines_in_float32():
    env = dict(os.environ, JAX_ENABLE_X64="0", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("op_dtype", "top_dtype", "train_loss_dtype", "scores_dtype"):
        assert out[name] == "float32", (name, out)
    assert out["default_tol"] == 1e-4
    assert out["hessian_rel_err"] < 1e-5, out  # float32 accumulation of a 200-example average
    assert out["top_rel_err"] < 1e-3 and out["top_converged"], out
    assert out["trace_rel_err"] < 0.05, out
    assert out["train_loss_drop"] > 0.05, out
    assert out["exact_rel_err"] < 1e-4 and out["cg_rel_err"] < 1e-3, out


if __name__ == "__main__":  # print the measured errors
    env = dict(os.environ, JAX_ENABLE_X64="0", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    print(subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True).stdout)
