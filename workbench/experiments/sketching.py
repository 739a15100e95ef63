"""Recipes that reproduce Schioppa (2024)'s sketching findings on our models (the `sketching` and
`intrinsic_dimension` papers): Theorem 3.1's table, QK's per-factor dependence (Theorem 3.3),
per-example gradients of the digits MLP and the character-level transformer for Table 6, dense
Hessians for Table 7, Table 1's one-layer restriction, time against D, and the doubling search."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from workbench import curvature, models
from workbench import data as wd
from workbench import sketch as sk
from workbench.experiments.digits import fit_digits_mlp
from workbench.sketch import quality
from workbench.train import train

# ----------------------------------------------------------------------------- Theorems 3.1 / 3.3


class NormRatioTable(NamedTuple):
    kinds: tuple[str, ...]
    dims: np.ndarray  # [num_dims] target dimensions D
    p_below: np.ndarray  # [kinds, dims] P(ratio < 0.1)
    p_far: np.ndarray  # [kinds, dims] P(|ratio - 1| > 0.5)
    q90: np.ndarray  # [kinds, dims] 90% quantile of |ratio - 1|
    num_draws: int


def theorem_3_1_table(key: jax.Array, dims: Sequence[int] = (64, 256, 1024), *, num_draws: int = 2000,
                      kinds: Sequence[str] = ("ffd", "affd", "afjl"), blocks: int = 4) -> NormRatioTable:
    """||Phi x||^2 / ||x||^2 over `num_draws` sketches on Theorem 3.1's input (a row of H_D in the
    second of `blocks` blocks of width D, N = blocks * D), for each kind and D.

    Args:
        key: PRNG key; the draws at D use fold_in(key, D).
        dims: the sketch dimensions D (each input has N = blocks * D).
        num_draws: independent sketches per kind and D.
        kinds: sketch kinds compared (FFD first: the metrics read it by name).
        blocks: the number of blocks of width D in the input.

    Returns:
        A `NormRatioTable`: P(ratio < 0.1), P(|ratio - 1| > 0.5) and the 90% quantile of
        |ratio - 1| per kind and D.
    """
    dims = np.asarray(list(dims))
    shape = (len(kinds), len(dims))
    p_below, p_far, q90 = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    for j, d in enumerate(dims):
        x = quality.hadamard_row_input(blocks * int(d), int(d), which=1, row=1).astype(np.float32)
        for i, kind in enumerate(kinds):
            r = quality.norm_ratios(x, kind, jax.random.fold_in(key, int(d)), int(d), num_draws)
            p_below[i, j], p_far[i, j] = np.mean(r < 0.1), np.mean(np.abs(r - 1) > 0.5)
            q90[i, j] = np.quantile(np.abs(r - 1), 0.9)
    return NormRatioTable(tuple(kinds), dims, p_below, p_far, q90, num_draws)


class FactorTable(NamedTuple):
    dims_out: tuple[tuple[int, ...], ...]  # the per-factor sizes D_i tried (same D = prod D_i)
    dims_in: tuple[int, ...]
    variance: np.ndarray  # measured Var(ratio) on a one-hot input
    predicted: np.ndarray  # prod_i (1 + 2 (B_i - D_i) / (D_i (B_i + 2))) - 1
    p_far: np.ndarray  # P(|ratio - 1| > 0.5)
    variance_halves: np.ndarray  # [splits, 2] Var(ratio) over the first and second half of the draws


def qk_factor_table(key: jax.Array, splits: Sequence[tuple[int, int]] = ((32, 32), (128, 8), (512, 2)), *,
                    factor: int = 1024, num_draws: int = 2000) -> FactorTable:
    """QK's concentration against its per-factor sizes (Theorem 3.3), same D = prod D_i, on a
    one-hot input of N = factor^2 (no truncation: the ratio is a product of scaled Betas).

    Args:
        key: PRNG key; split t uses fold_in(key, t).
        splits: the per-factor output sizes (D_1, D_2) compared.
        factor: the factor width B (the input has N = B^2).
        num_draws: independent sketches per split.

    Returns:
        A `FactorTable`: measured and predicted Var(ratio) and P(|ratio - 1| > 0.5) per split, and
        the variance over each half of the draws (two independent estimates of one variance).
    """
    n = factor * factor
    x = np.zeros(n, np.float32)
    x[n // 3 + 5] = 1.0
    var, pred, far, halves = [], [], [], []
    for t, split in enumerate(splits):
        d = int(np.prod(split))
        r = quality.norm_ratios(x, "qk", jax.random.fold_in(key, t), d, num_draws, max_factor=factor, dims_out=tuple(split))
        var.append(r.var())
        pred.append(np.prod([1 + 2 * (factor - di) / (di * (factor + 2)) for di in split]) - 1)
        far.append(np.mean(np.abs(r - 1) > 0.5))
        halves.append([r[: num_draws // 2].var(), r[num_draws // 2:].var()])
    return FactorTable(tuple(tuple(s) for s in splits), (factor, factor), np.asarray(var), np.asarray(pred),
                       np.asarray(far), np.asarray(halves))


# ----------------------------------------------------------------------------- models and gradients


class GradientProblem(NamedTuple):
    name: str
    loss_fn: Any  # loss_fn(params, batch)
    params: Any
    train_data: Any
    grads: jax.Array  # [num_examples, num_params] exact per-example gradients
    num_params: int


def digits_problem(num_examples: int = 64, num_steps: int = 300, seed: int = 0, hidden_size: int = 32) -> GradientProblem:
    """The tour's digits MLP (64-32-10 tanh, 2410 parameters) trained with Adam, and the exact
    per-example gradients of its first `num_examples` training examples.

    Args:
        num_examples: how many training examples get exact per-example gradients.
        num_steps: Adam steps of the fit.
        seed: data split, initialisation and training seed.
        hidden_size: the MLP's hidden width.

    Returns:
        A `GradientProblem` named "digits_mlp".
    """
    fit = fit_digits_mlp(hidden_size=hidden_size, num_steps=num_steps, seed=seed)
    train_data, _ = wd.load_digits(seed=seed)
    grads = sk.per_example_gradients(fit.model.loss_fn, fit.result.params, train_data.take(slice(0, num_examples)), None)
    return GradientProblem("digits_mlp", fit.model.loss_fn, fit.result.params, train_data, grads, optax.tree.size(fit.result.params))


def text_problem(num_examples: int = 48, num_steps: int = 150, seed: int = 0, seq_len: int = 32,
                 d_model: int = 32) -> GradientProblem:
    """A one-block character-level transformer (d_model 32) on Python's own module sources,
    trained with Adam, and the exact per-example gradients of `num_examples` sequences.

    Args:
        num_examples: how many sequences get exact per-example gradients.
        num_steps: Adam steps (batch 32, learning rate 3e-3).
        seed: initialisation and training seed.
        seq_len: characters per sequence.
        d_model: the transformer's width.

    Returns:
        A `GradientProblem` named "char_transformer".
    """
    data, vocab = wd.load_text(seq_len=seq_len)
    model = models.TinyTransformer(len(vocab), seq_len, d_model=d_model, rngs=nnx.Rngs(seed))
    fn = models.functional(model)
    result = train(fn.loss_fn, fn.params, data, jax.random.key(seed), optimizer=optax.adam(3e-3),
                   num_steps=num_steps, batch_size=32)
    grads = sk.per_example_gradients(fn.loss_fn, result.params, data.take(slice(0, num_examples)), None)
    return GradientProblem("char_transformer", fn.loss_fn, result.params, data, grads, optax.tree.size(result.params))


def problem_hessian(problem: GradientProblem, num_examples: int = 256) -> jax.Array:
    """The exact Hessian of the mean loss over the first `num_examples` training examples.

    Args:
        problem: the trained model, its loss and training data.
        num_examples: how many training examples (from the first) the loss averages over.

    Returns:
        The symmetric Hessian [p, p] (`workbench.curvature.dense_hessian`).
    """
    batch = problem.train_data.take(slice(0, num_examples))
    return curvature.dense_hessian(problem.loss_fn, problem.params, batch)


# ----------------------------------------------------------------------------- Table 1


class RestrictionResult(NamedTuple):
    layer: str
    layer_size: int
    log2_dim: int  # D of the whole-model sketch compared (<= the layer size)
    pearson_layer: float  # r of <g_i|L, g_j|L> against the exact <g_i, g_j>
    pearson_sketch: np.ndarray  # [draws] r of a whole-model AFFD sketch of dimension D
    eig_error_layer: float  # mean relative error of the top-k eigenvalues of H_LL against H's
    eig_error_sketch: np.ndarray  # [draws] the same for Phi H Phi^T


def layer_restriction(problem: GradientProblem, hessian: jax.Array, key: jax.Array, *, layer: int = -1,
                      kind: str = "affd", k: int = 10, num_draws: int = 5) -> RestrictionResult:
    """Table 1's point: gradients restricted to one layer (leaf `layer` in `jax.tree.leaves`
    order, default the output kernel) against a whole-model sketch with no more coordinates.

    Args:
        problem: the model and its exact per-example gradients.
        hessian: its dense Hessian [n, n].
        key: PRNG key of the whole-model sketches.
        layer: the leaf index kept (in `jax.tree.leaves` order; -1 = the last, the output kernel).
        kind: the whole-model sketch kind.
        k: number of top eigenvalues compared.
        num_draws: independent whole-model sketches.

    Returns:
        A `RestrictionResult`: Pearson r and eigenvalue errors of the one-layer restriction and of
        the sketch with D = the largest power of two <= the layer's size.
    """
    leaves = jax.tree_util.tree_flatten_with_path(problem.params)[0]
    sizes = [int(np.size(v)) for _, v in leaves]
    offsets = np.cumsum([0] + sizes)
    idx = layer % len(leaves)
    lo, hi = int(offsets[idx]), int(offsets[idx + 1])
    log_d = int(np.floor(np.log2(hi - lo)))
    g = np.asarray(problem.grads, np.float64)
    iu = np.triu_indices(g.shape[0], 1)
    exact = (g @ g.T)[iu]
    gl = g[:, lo:hi]
    r_layer = np.corrcoef(exact, (gl @ gl.T)[iu])[0, 1]
    table = quality.dot_product_correlation(problem.grads, [kind], key, [log_d], num_draws=num_draws)
    h = np.asarray(hessian, np.float64)
    top = quality.top_eigenvalues(h, k)
    err_layer = float(np.mean(np.abs(quality.top_eigenvalues(h[lo:hi, lo:hi], k) / top - 1)))
    eig = quality.eigenvalue_errors(hessian, [kind], key, [log_d], k=k, num_draws=num_draws)
    return RestrictionResult(jax.tree_util.keystr(leaves[idx][0]), hi - lo, log_d, float(r_layer),
                             table.pearson[0, 0], err_layer, eig.rel_error[0, 0])


# ----------------------------------------------------------------------------- time against D


class TimingTable(NamedTuple):
    kinds: tuple[str, ...]
    log2_dims: np.ndarray
    seconds: np.ndarray  # [kinds, dims] warm median wall time of one apply
    dim_in: int
    batch: int


def time_against_dim(log2_dim_in: int = 14, log2_dims: Sequence[int] = (8, 10, 12), *,
                     kinds: Sequence[str] = ("dense", "affd", "qk"), batch: int = 8, reps: int = 3) -> TimingTable:
    """Warm time of `apply` on a float32 [batch, 2^log2_dim_in] input against D (Table 11's shape):
    `dense` regenerates its Gaussian matrix on the fly (TRAK-style), so it grows linearly in D.

    Args:
        log2_dim_in: log2 of the input size N.
        log2_dims: log2 of the sketch dimensions D timed.
        kinds: sketch kinds timed (`dense` regenerated on the fly).
        batch: rows per apply.
        reps: warm repetitions per (kind, D); the median is kept.

    Returns:
        A `TimingTable` of seconds per apply [kinds, dims].
    """
    n = 1 << log2_dim_in
    x = jax.random.normal(jax.random.key(1), (batch, n), jnp.float32)
    log2_dims = np.asarray(list(log2_dims))
    out = np.full((len(kinds), len(log2_dims)), np.nan)
    f = jax.jit(lambda s, v: s.apply(v))
    for i, kind in enumerate(kinds):
        for j, log_d in enumerate(log2_dims):
            opts = {"materialize_max": 0} if kind == "dense" else {}
            s = sk.make(kind, jax.random.key(0), n, 1 << int(log_d), **opts)
            f(s, x).block_until_ready()
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                f(s, x).block_until_ready()
                times.append(time.perf_counter() - t0)
            out[i, j] = float(np.median(times))
    return TimingTable(tuple(kinds), log2_dims, out, n, batch)
