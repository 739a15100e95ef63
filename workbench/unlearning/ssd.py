"""Selective synaptic dampening (SSD, Foster et al. 2024): no fine-tuning, one pass over the data.

The diagonal of the empirical Fisher on the forget set is compared with the one on the full
training set; the weights where the forget set's importance exceeds `alpha` times the full set's
are dampened by lambda times the ratio. `fisher_diagonal` computes the diagonal through the one
per-example gradient implementation (`workbench.core.per_example`).
"""


from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from workbench.core.numerics import check_positive_int, num_examples
from workbench.core.per_example import per_example_grads
from workbench.train import NonFiniteLossError
from workbench.unlearning.methods import Unlearned, _dtype, _finish, _positive
from workbench.unlearning.sets import check_sets, is_traced

PyTree = Any


@functools.partial(jax.jit, static_argnames=("loss_fn", "chunk_size"))
def fisher_diagonal(loss_fn: Callable, params: PyTree, data: PyTree, chunk_size: int = 256) -> PyTree:
    """Empirical Fisher diagonal: the mean over examples of the squared per-example gradient.

    F = (1/n) sum_i g_i * g_i with g_i the gradient of `loss_fn` on the batch of example i alone
    (`workbench.core.per_example`), accumulated chunk by chunk so memory stays at `chunk_size`
    gradients (the data is padded to whole chunks; padding rows carry weight 0).

    Args:
      loss_fn: `loss_fn(params, batch) -> scalar`, a batch mean.
      params: the params pytree the gradients are taken at.
      data: the examples, a pytree with a leading example axis.
      chunk_size: examples whose gradients are computed together (static).

    Returns:
      A params-shaped pytree of the diagonal's entries (non-negative).
    """
    n = num_examples(data)
    c = max(1, min(chunk_size, n))
    chunks = -(-n // c)
    pad = chunks * c - n
    padded = jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[:1], pad, 0)]).reshape(chunks, c, *a.shape[1:]),
                          data)
    weights = (jnp.arange(chunks * c) < n).astype(_dtype(params)).reshape(chunks, c)

    def body(total, xs):
        chunk, w = xs
        g = per_example_grads(loss_fn, params, chunk)
        return jax.tree.map(lambda t, gi: t + jnp.einsum("n,n...->...", w, gi * gi), total, g), None

    total, _ = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, params), (padded, weights))
    return jax.tree.map(lambda t: t / n, total)


@functools.partial(jax.jit, static_argnames=("loss_fn", "chunk_size"))
def _fishers(loss_fn, chunk_size, params, forget, retain):
    """The Fisher diagonals on the forget set, the retain set and the full data: one program that
    `ssd` and `fisher_ratio` share (compiled once for both)."""
    n_f, n_r = num_examples(forget, "forget"), num_examples(retain, "retain")
    f_forget = fisher_diagonal(loss_fn, params, forget, chunk_size)
    f_retain = fisher_diagonal(loss_fn, params, retain, chunk_size)
    f_full = jax.tree.map(lambda a, b: (n_f * a + n_r * b) / (n_f + n_r), f_forget, f_retain)
    return f_forget, f_retain, f_full


@jax.jit
def _dampen(params, f_forget, f_full, alpha, lam):
    sel = jax.tree.map(lambda ff, fd: ff > alpha * fd, f_forget, f_full)
    beta = jax.tree.map(lambda ff, fd: jnp.minimum(lam * fd / jnp.where(ff > 0, ff, 1), 1), f_forget, f_full)
    new = jax.tree.map(lambda p, s, b: jnp.where(s, p * b, p), params, sel, beta)
    count = sum(jnp.sum(s) for s in jax.tree.leaves(sel))
    total = sum(s.size for s in jax.tree.leaves(sel))
    return Unlearned(new, jnp.zeros((0,), _dtype(params)), (count / total).astype(_dtype(params)))


def _ssd(loss_fn, chunk_size, params, forget, retain, alpha, lam):
    f_forget, _, f_full = _fishers(loss_fn, chunk_size, params, forget, retain)
    return _dampen(params, f_forget, f_full, alpha, lam)


def fisher_ratio(loss_fn: Callable, params: PyTree, forget: PyTree, retain: PyTree, *,
                 reference: str = "full", chunk_size: int = 256) -> PyTree:
    """SSD's selection statistic per weight: F_forget / F_full, the forget set's Fisher diagonal
    over the full data's (forget + retain, weighted by their sizes).

    SSD dampens exactly the weights whose ratio exceeds alpha, so the fraction of ratios above
    alpha is the fraction `ssd` would select, and the largest ratio is the largest alpha that
    selects anything. Since F_full = (|D_f| F_forget + |D_r| F_retain) / |D|, every ratio is at
    most |D| / |D_f|, with equality for weights the retain set does not use. A weight that no
    example uses (F_full = 0) has ratio 0.

    `reference="retain"` divides by the retain set's Fisher instead, F_forget / F_retain: not
    SSD's statistic but a broken variant of it, unbounded (a weight that only the forget set uses
    has an arbitrarily large ratio), kept as a negative control of the bound; where F_retain = 0
    its ratio is 0 too. Both come from one compiled program.

    Args:
      loss_fn: `loss_fn(params, batch) -> scalar`, the training objective (a batch mean).
      params: the trained model's params.
      forget: the examples to forget, a pytree with a leading example axis.
      retain: the examples to keep, disjoint from `forget`.
      reference: "full" (SSD's F_forget / F_full) or "retain" (F_forget / F_retain).
      chunk_size: examples per chunk of the Fisher diagonals.

    Returns:
      A params-shaped pytree of the ratios (non-negative).

    Raises:
      ValueError: on bad sets, chunk_size or reference.
      NonFiniteLossError: when the Fisher diagonals are not finite.
    """
    check_sets(forget, retain)
    chunk_size = check_positive_int("chunk_size", chunk_size)
    if reference not in ("full", "retain"):
        raise ValueError(f"reference must be 'full' or 'retain', got {reference!r}")
    f_forget, f_retain, f_full = _fishers(loss_fn, chunk_size, params, forget, retain)
    to_full, to_retain, finite = _ratios(f_forget, f_retain, f_full)
    if not bool(finite):
        raise NonFiniteLossError("fisher_ratio: the Fisher diagonals are not finite; check params and data")
    return to_full if reference == "full" else to_retain


@jax.jit
def _ratios(f_forget, f_retain, f_full):
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(f)) for f in jax.tree.leaves((f_forget, f_retain))]))
    ratio = lambda ff, fd: jnp.where(fd > 0, ff / jnp.where(fd > 0, fd, 1), 0)
    return jax.tree.map(ratio, f_forget, f_full), jax.tree.map(ratio, f_forget, f_retain), finite


def ssd(loss_fn: Callable, params: PyTree, forget: PyTree, retain: PyTree, *,
        alpha: float = 10.0, lam: float = 1.0, chunk_size: int = 256) -> Unlearned:
    """Selective Synaptic Dampening (Foster et al. 2024): dampen the weights the forget set needs most.

    With diagonal Fishers F_D on the full data (forget + retain) and F_f on the forget set, every
    weight with F_f > alpha F_D is multiplied by min(lam F_D / F_f, 1); the rest are untouched.
    No training and no randomness (so no key).

    Since F_D = (|D_f| F_f + |D_r| F_r) / |D| >= (|D_f| / |D|) F_f, the ratio F_f / F_D never
    exceeds |D| / |D_f|: `alpha >= |D| / |D_f|` can select nothing and raises ValueError, as does
    any alpha that happens to select no weight (the model would be returned unchanged).

    Args:
      loss_fn: `loss_fn(params, batch) -> scalar`, the training objective (a batch mean).
      params: the trained model's params.
      forget: the examples to forget, a pytree with a leading example axis.
      retain: the examples to keep, disjoint from `forget`.
      alpha: the selection threshold on F_f / F_D, positive and below |D| / |D_f|.
      lam: the dampening strength lambda, positive (smaller dampens more).
      chunk_size: examples per chunk of the Fisher diagonals.

    Returns:
      `Unlearned(params, losses=[] (no training), selected)`, `selected` the fraction of weights
      dampened.

    Raises:
      ValueError: on bad sets, a non-positive alpha or lam, or an alpha that selects no weight.
      NonFiniteLossError: when the Fisher diagonals or the result are not finite.
    """
    n_f, n_r = check_sets(forget, retain)
    alpha, lam = _positive(alpha, "alpha"), _positive(lam, "lam")
    chunk_size = check_positive_int("chunk_size", chunk_size)
    bound = (n_f + n_r) / n_f
    if alpha >= bound:
        raise ValueError(f"alpha={alpha} can select no weight: F_forget / F_full <= |D|/|D_f| = {bound:.4g} "
                         f"always (F_full averages F_forget with weight |D_f|/|D|); choose alpha < {bound:.4g}")
    dt = _dtype(params)
    out = _ssd(loss_fn, chunk_size, params, forget, retain, jnp.asarray(alpha, dt), jnp.asarray(lam, dt))
    if not is_traced(out) and float(out.selected) == 0.0:
        raise ValueError(f"alpha={alpha} selected no weight (no parameter has F_forget > alpha * F_full); "
                         "the model would be unchanged: lower alpha")
    return _finish("ssd", out, "the Fisher diagonals are not finite; check params and data")
