"""SRHT, and the paper's FFD: Fastfood used implicitly (Schioppa 2024, eqs. 3-4, Theorem 3.1).

Notation: B = diag of random signs, G = diag of i.i.d. N(0, 1), Pi a random permutation,
H the orthonormal Walsh-Hadamard transform (symmetric, orthogonal), R a selection of D distinct
coordinates chosen uniformly (without replacement).

- `srht` (ours, not a paper kind): Phi = sqrt(N/D) R H_N B on the input zero-padded to
  N = next power of two. E||Phi x||^2 = ||x||^2; with z = H B x,
  Var(||Phi x||^2) = (N/D)(N - D)/(N - 1) (sum_j z_j^4 - ||z||^4 / N) ~ (2/D)||x||^4 for a
  flattened z. Needs D <= N.
- `ffd` (the paper's FFD): Fastfood (Le, Sarlos & Smola 2013) is a random-FEATURE map
  R^D -> R^N that concatenates N/D blocks V_b = H_D G_b Pi_b H_D B_b (block size = D, the target
  dimension; sigma = 1, no row subsampling). Sketching a gradient with it means applying its
  TRANSPOSE, a SUM over the N/D input blocks x_b (the input is zero-padded to a multiple of D):
      FFD(x) = sum_b V_b^T x_b = sum_b B_b H_D Pi_b^T G_b H_D x_b,
  and `transpose` is the feature map itself, [V_1 w; ...; V_{N/D} w]. E||FFD x||^2 = ||x||^2
  (independent blocks, E G^2 = 1). Theorem 3.1: if x lives in one block and equals a row of H_D
  there (H_D x_b = e_1), then FFD x = g B_b H_D e_{pi(1)} with g ~ N(0, 1), so
  ||FFD x||^2 / ||x||^2 = g^2 ~ chi-square(1) whatever D and N:
  P(ratio < 0.1) = 0.248 and P(|ratio - 1| > 0.5) = 0.741 at every D. D must be a power of two.
State: signs, Gaussians and permutations (O(N)) for ffd, the D kept indices for srht.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from workbench.sketch.base import Family, cast, pad_to, register
from workbench.sketch.kinds.hadamard import fwht, next_power_of_two


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




# --------------------------------------------------------------------------- ffd (the paper's)


def _ffd_init(rand, n, d, opts):
    if d & (d - 1):
        raise ValueError(f"ffd sketch: dim_out must be a power of two (it is Fastfood's Hadamard size), got {d}")
    num_blocks = -(-n // d)
    signs, gauss = rand.rademacher((num_blocks, d)), rand.normal((num_blocks, d))  # one stream, in order
    perm = rand.permutations(num_blocks, d)
    state = {
        "signs": signs,
        "gauss": gauss,
        "perm": perm,
        "inv_perm": jnp.argsort(perm, axis=1).astype(jnp.int32),
    }
    return state, {"padded": num_blocks * d, "fwht_block": opts["fwht_block"]}


def _ffd_apply(state, cfg, x):
    """sum_b B_b H Pi_b^T G_b H x_b ((Pi v)_i = v_perm[i], so Pi^T gathers with the inverse)."""
    b, d = x.shape[0], cfg["dim_out"]
    u = fwht(pad_to(x, cfg["padded"]).reshape(b, -1, d), cfg["fwht_block"]) * cast(state["gauss"], x)
    u = jnp.take_along_axis(u, jnp.broadcast_to(state["inv_perm"], u.shape), axis=-1)
    return jnp.sum(fwht(u, cfg["fwht_block"]) * cast(state["signs"], x), axis=1)


def _ffd_transpose(state, cfg, y):
    """The Fastfood features [V_b y]_b = [H G_b Pi_b H B_b y]_b, cropped to dim_in."""
    b = y.shape[0]
    u = fwht(y[:, None, :] * cast(state["signs"], y), cfg["fwht_block"])
    u = jnp.take_along_axis(u, jnp.broadcast_to(state["perm"], u.shape), axis=-1)
    u = fwht(u * cast(state["gauss"], y), cfg["fwht_block"])
    return u.reshape(b, cfg["padded"])[:, : cfg["dim_in"]]


register("ffd", Family(_ffd_init, _ffd_apply, _ffd_transpose, {"fwht_block": None}, __doc__, stream=True))
