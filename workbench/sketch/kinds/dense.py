"""Dense Johnson-Lindenstrauss sketches: i.i.d. Gaussian or Rademacher entries / sqrt(dim_out).

Phi = G / sqrt(D) with G_ij ~ N(0, 1) (`distribution="gaussian"`) or +-1 (`"rademacher"`), so
E||Phi x||^2 = ||x||^2 and Var(||Phi x||^2 / ||x||^2) = 2/D (Gaussian) or
(2/D)(1 - sum x_i^4 / ||x||^4) (Rademacher). When D * dim_in <= `materialize_max` the matrix is
drawn once and stored; otherwise only the key is stored and column chunks of width `chunk` are
regenerated on every call from `fold_in(key, chunk_index)` inside a `lax.scan` (TRAK-style
on-the-fly projection): memory O(D * chunk), time dominated by drawing D * dim_in numbers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from workbench.sketch.base import Family, cast, pad_to, register


def _draw(key, shape, distribution):
    if distribution == "gaussian":
        return jax.random.normal(key, shape, jnp.float32)
    return jax.random.rademacher(key, shape, jnp.float32)


def _init(rand, n, d, opts):
    distribution = opts["distribution"]
    if distribution not in ("gaussian", "rademacher"):
        raise ValueError(f"dense sketch: distribution must be 'gaussian' or 'rademacher', got {distribution!r}")
    materialize = d * n <= int(opts["materialize_max"])
    chunk = opts["chunk"] or max(1, min(n, (1 << 22) // d))
    config = dict(distribution=distribution, materialized=materialize, chunk=int(chunk))
    if materialize:  # from the one stream of `make` (`randomness.Randomness`)
        g = (rand.normal((d, n)) if distribution == "gaussian" else rand.rademacher((d, n))) * np.float32(1.0 / np.sqrt(d))
        return {"matrix": g}, config
    return {"key": rand.key}, config  # regenerated per chunk on every call


def _chunk_matrix(key, c, d, chunk, distribution):
    return _draw(jax.random.fold_in(key, c), (d, chunk), distribution) * np.float32(1.0 / np.sqrt(d))


def _apply(state, cfg, x):
    if cfg["materialized"]:
        return x @ cast(state["matrix"], x).T
    b, n = x.shape
    chunk = cfg["chunk"]
    num = -(-n // chunk)
    xs = pad_to(x, num * chunk).reshape(b, num, chunk).transpose(1, 0, 2)
    d = cfg["dim_out"]

    def body(acc, inputs):
        c, xc = inputs
        g = _chunk_matrix(state["key"], c, d, chunk, cfg["distribution"])
        return acc + xc @ cast(g, xc).T, None

    acc0 = jnp.zeros((b, d), x.dtype)
    return jax.lax.scan(body, acc0, (jnp.arange(num), xs))[0]


def _transpose(state, cfg, y):
    if cfg["materialized"]:
        return y @ cast(state["matrix"], y)
    chunk, n = cfg["chunk"], cfg["dim_in"]
    num = -(-n // chunk)

    def body(c):
        g = _chunk_matrix(state["key"], c, y.shape[1], chunk, cfg["distribution"])
        return y @ cast(g, y)

    parts = jax.lax.map(body, jnp.arange(num))  # [num, b, chunk]
    return parts.transpose(1, 0, 2).reshape(y.shape[0], num * chunk)[:, :n]


register(
    "dense",
    Family(
        _init, _apply, _transpose,
        {"distribution": "gaussian", "materialize_max": 1 << 24, "chunk": None},
        __doc__, stream=True,
    ),
)
