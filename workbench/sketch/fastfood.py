"""Subsampled Hadamard sketches: SRHT, Fastfood (FFD) and the blocked, summed Fastfood (AFFD).

Notation: E = diag of random signs, G = diag of i.i.d. N(0, 1), Pi a random permutation,
H the orthonormal Walsh-Hadamard transform (symmetric, orthogonal), R the selection of D
distinct coordinates chosen uniformly (without replacement).

- `srht`: Phi = sqrt(N/D) R H_N E on the input zero-padded to N = next power of two.
  E||Phi x||^2 = (N/D) (D/N) ||H E x||^2 = ||x||^2; with z = H E x,
  Var(||Phi x||^2) = (N/D)(N - D)/(N - 1) (sum_j z_j^4 - ||z||^4 / N) ~ (2/D)||x||^4 for a
  flattened z (z_j^2 ~ ||x||^2/N, Gaussian-like). Needs D <= N.
- `ffd` (Fastfood, Le, Sarlos & Smola 2013, as used to sketch gradients / for intrinsic
  dimension): the padded input is cut into N/B blocks of width B = `block` (the accelerator
  friendly layout) and each block gets its own Fastfood V_j = H_B G_j Pi_j H_B E_j; then D of the
  N outputs are kept: Phi = sqrt(N/D) R diag(V_1, ..., V_{N/B}). Unbiased (E||V_j u||^2 = ||u||^2),
  but it does not mix across blocks. **Failure (our analysis of this layout; the paper's Theorem 3.1 states a
  Fastfood failure, whose exact form we could not check here):** if x
  lives in one block, only the K ~ Hypergeometric(N, B, D) kept rows inside that block see it, so
  ||Phi x||^2 / ||x||^2 ~ (N/D)(K/B) (times Fastfood's own O(1/B) noise). With DB/N = 1 (e.g.
  N = 2^20, B = D = 2^10) K is about Poisson(1): Phi x = 0 with probability ~ e^{-1} and the
  distortion is O(1) whatever D. Needs D <= N.
- `affd` (the "A" variant): blocks of width B = max(block, next pow2 >= D) each get an
  independent Fastfood and the blocks are *summed* before subsampling:
  Phi = sqrt(B/D) R_B sum_j V_j P_j, with P_j x the j-th block. E||Phi x||^2 = ||x||^2 by the
  independence of the E_j (cross terms vanish). Mass in one block is sketched by a full
  B -> D Fastfood, Var <= (2/D + O(1/B)) ||x||^4, so the failure above cannot happen. No global
  permutation (only per-block gathers), padding only to a multiple of B, O(N log B) work.
  Needs D <= next power of two >= dim_in.
State: signs, Gaussians and per-block permutations (O(N)), the D kept indices; never D x N.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from workbench.sketch.core import Family, cast, pad_to, register
from workbench.sketch.hadamard import fwht, next_power_of_two
from workbench.sketch.sparse import blocked_width


def _check_dim(kind, d, limit, why):
    if d > limit:
        raise ValueError(f"{kind} sketch cannot map up: dim_out={d} exceeds {why}={limit}")


def _choose_rows(key, n, d):
    return jax.random.permutation(key, n)[:d].astype(jnp.int32)


# --------------------------------------------------------------------------- srht


def _srht_init(key, n, d, opts):
    n_pad = next_power_of_two(n)
    _check_dim("srht", d, n_pad, "the padded input size")
    k1, k2 = jax.random.split(key)
    state = {"signs": jax.random.rademacher(k1, (n_pad,), jnp.float32), "rows": _choose_rows(k2, n_pad, d)}
    return state, {"padded": n_pad, "fwht_block": opts["fwht_block"]}


def _srht_apply(state, cfg, x):
    z = fwht(pad_to(x, cfg["padded"]) * cast(state["signs"], x), cfg["fwht_block"])
    scale = np.sqrt(cfg["padded"] / cfg["dim_out"]).astype(np.float32)
    return z[:, state["rows"]] * cast(jnp.asarray(scale), x)


def _srht_transpose(state, cfg, y):
    scale = cast(jnp.asarray(np.sqrt(cfg["padded"] / cfg["dim_out"]).astype(np.float32)), y)
    z = jnp.zeros((y.shape[0], cfg["padded"]), y.dtype).at[:, state["rows"]].set(y * scale)
    return (fwht(z, cfg["fwht_block"]) * cast(state["signs"], y))[:, : cfg["dim_in"]]


register("srht", Family(_srht_init, _srht_apply, _srht_transpose, {"fwht_block": None}, __doc__))


# --------------------------------------------------------------------------- fastfood blocks


def _fastfood_state(key, num_blocks, width):
    k1, k2, k3 = jax.random.split(key, 3)
    perm = jax.vmap(lambda k: jax.random.permutation(k, width))(jax.random.split(k3, num_blocks))
    perm = perm.astype(jnp.int32)
    inv = jnp.argsort(perm, axis=1).astype(jnp.int32)
    return {
        "signs": jax.random.rademacher(k1, (num_blocks, width), jnp.float32),
        "gauss": jax.random.normal(k2, (num_blocks, width), jnp.float32),
        "perm": perm,
        "inv_perm": inv,
    }


def _fastfood_blocks(state, u, fwht_block):
    """V_j u_j = H G_j Pi_j H E_j u_j for u [b, m, B]."""
    u = fwht(u * cast(state["signs"], u), fwht_block)
    u = jnp.take_along_axis(u, jnp.broadcast_to(state["perm"], u.shape), axis=-1)
    return fwht(u * cast(state["gauss"], u), fwht_block)


def _fastfood_blocks_t(state, w, fwht_block):
    """V_j^T w_j = E_j H Pi_j^T G_j H w_j for w [b, m, B] (or broadcastable)."""
    w = fwht(w, fwht_block) * cast(state["gauss"], w)
    w = jnp.take_along_axis(w, jnp.broadcast_to(state["inv_perm"], w.shape), axis=-1)
    return fwht(w, fwht_block) * cast(state["signs"], w)


def _ffd_init(key, n, d, opts):
    width = min(int(opts["block"]), next_power_of_two(n))
    if width < 1 or width & (width - 1):
        raise ValueError(f"ffd sketch: block must be a power of two, got {opts['block']!r}")
    n_pad = -(-n // width) * width
    _check_dim("ffd", d, n_pad, "the padded input size")
    k1, k2 = jax.random.split(key)
    state = _fastfood_state(k1, n_pad // width, width)
    state["rows"] = _choose_rows(k2, n_pad, d)
    return state, {"padded": n_pad, "block": width, "fwht_block": opts["fwht_block"]}


def _ffd_apply(state, cfg, x):
    b, (n_pad, width) = x.shape[0], (cfg["padded"], cfg["block"])
    u = pad_to(x, n_pad).reshape(b, n_pad // width, width)
    z = _fastfood_blocks(state, u, cfg["fwht_block"]).reshape(b, n_pad)
    return z[:, state["rows"]] * cast(jnp.asarray(np.float32(np.sqrt(n_pad / cfg["dim_out"]))), x)


def _ffd_transpose(state, cfg, y):
    b, (n_pad, width) = y.shape[0], (cfg["padded"], cfg["block"])
    scale = cast(jnp.asarray(np.float32(np.sqrt(n_pad / cfg["dim_out"]))), y)
    w = jnp.zeros((b, n_pad), y.dtype).at[:, state["rows"]].set(y * scale)
    x = _fastfood_blocks_t(state, w.reshape(b, n_pad // width, width), cfg["fwht_block"])
    return x.reshape(b, n_pad)[:, : cfg["dim_in"]]


register("ffd", Family(_ffd_init, _ffd_apply, _ffd_transpose, {"block": 1024, "fwht_block": None}, __doc__))


# --------------------------------------------------------------------------- affd


def _affd_init(key, n, d, opts):
    _check_dim("affd", d, next_power_of_two(n), "the next power of two >= dim_in")
    width = blocked_width(n, d, opts["block"])
    n_pad = -(-n // width) * width
    k1, k2 = jax.random.split(key)
    state = _fastfood_state(k1, n_pad // width, width)
    state["rows"] = _choose_rows(k2, width, d)
    return state, {"padded": n_pad, "block": width, "fwht_block": opts["fwht_block"]}


def _affd_apply(state, cfg, x):
    b, (n_pad, width) = x.shape[0], (cfg["padded"], cfg["block"])
    u = pad_to(x, n_pad).reshape(b, n_pad // width, width)
    z = _fastfood_blocks(state, u, cfg["fwht_block"]).sum(axis=1)
    return z[:, state["rows"]] * cast(jnp.asarray(np.float32(np.sqrt(width / cfg["dim_out"]))), x)


def _affd_transpose(state, cfg, y):
    b, (n_pad, width) = y.shape[0], (cfg["padded"], cfg["block"])
    scale = cast(jnp.asarray(np.float32(np.sqrt(width / cfg["dim_out"]))), y)
    w = jnp.zeros((b, width), y.dtype).at[:, state["rows"]].set(y * scale)
    w = fwht(w, cfg["fwht_block"])[:, None, :]  # the first H is shared by every block
    w = w * cast(state["gauss"], y)
    w = jnp.take_along_axis(w, jnp.broadcast_to(state["inv_perm"], w.shape), axis=-1)
    x = fwht(w, cfg["fwht_block"]) * cast(state["signs"], y)
    return x.reshape(b, n_pad)[:, : cfg["dim_in"]]


register("affd", Family(_affd_init, _affd_apply, _affd_transpose, {"block": None, "fwht_block": None}, __doc__))
