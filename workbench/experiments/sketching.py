"""Recipes that reproduce Schioppa (2024)'s sketching findings on our models (the `sketching` and
`intrinsic_dimension` papers): Theorem 3.1's table, QK's per-factor dependence (Theorem 3.3),
per-example gradients of the digits MLP and the character-level transformer for Table 6, dense
Hessians for Table 7, Table 1's one-layer restriction, time against D, and the doubling search."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
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
        A `FactorTable`: measured and predicted Var(ratio) and P(|ratio - 1| > 0.5) per split.
    """
    n = factor * factor
    x = np.zeros(n, np.float32)
    x[n // 3 + 5] = 1.0
    var, pred, far = [], [], []
    for t, split in enumerate(splits):
        d = int(np.prod(split))
        r = quality.norm_ratios(x, "qk", jax.random.fold_in(key, t), d, num_draws, max_factor=factor, dims_out=tuple(split))
        var.append(r.var())
        pred.append(np.prod([1 + 2 * (factor - di) / (di * (factor + 2)) for di in split]) - 1)
        far.append(np.mean(np.abs(r - 1) > 0.5))
    return FactorTable(tuple(tuple(s) for s in splits), (factor, factor), np.asarray(var), np.asarray(pred), np.asarray(far))


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


def dense_hessian(problem: GradientProblem, num_examples: int = 256) -> jax.Array:
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


# ----------------------------------------------------------------------------- the paper's steps and metrics

TABLE_KINDS = ("affd", "fjl", "ffd", "afjl", "qk")  # the paper's kinds, in the order the tables list them
NEVER = 99  # a kind that never crosses a threshold counts as beyond the largest D


def qk_splits(factor: int) -> list[tuple[int, int]]:
    """The per-factor sizes (D_1, D_2) compared for QK at one D: balanced, skewed, one factor.

    Args:
        factor: the factor width B (64 in the quick profile, otherwise 256).

    Returns:
        Three splits with the same product D: [(8, 8), (32, 2), (64, 1)] for B = 64, else
        [(16, 16), (64, 4), (256, 1)].
    """
    return [(8, 8), (32, 2), (64, 1)] if factor == 64 else [(16, 16), (64, 4), (256, 1)]


def qk_factor_cap(num_params: int) -> int:
    """QK's factor cap that puts a model of `num_params` in GPT-2's regime under the paper's 1024:
    the smallest power of two f with f^3 >= num_params (three factors).

    Args:
        num_params: the model's number of parameters N.

    Returns:
        The cap f = 2^ceil(log2(N) / 3).
    """
    return 1 << int(np.ceil(np.log2(num_params) / 3))


def theorem_metrics(thm: NormRatioTable, qk: FactorTable) -> dict[str, Any]:
    """The recorded metrics of Theorems 3.1 and 3.3.

    FFD's probabilities are those of chi-square(1) at every D (0.248 and 0.741) when its norm is
    decided by one Gaussian, so their min and max over D are claimed in a narrow band around them;
    AFFD and AFJL concentrate (`thm31_*_p_far_max` small); QK's variance across splits of one D
    differs by the factor set by its smallest D_i.

    Args:
        thm: `theorem_3_1_table`'s result (kinds ffd, affd, afjl in that order).
        qk: `qk_factor_table`'s result.

    Returns:
        A dict for `workbench.record`: per-D `thm31_<kind>_p_below_D<d>` / `_p_far_D<d>`, FFD's
        min/max, AFFD's and AFJL's `p_far_max`, `thm31_num_draws`, `qk_split_variance` and
        `qk_worst_over_best_variance`.
    """
    row = {kind: i for i, kind in enumerate(thm.kinds)}
    return {
        **{f"thm31_{kind}_p_below_D{int(d)}": float(v) for kind, r in zip(thm.kinds, thm.p_below) for d, v in zip(thm.dims, r)},
        **{f"thm31_{kind}_p_far_D{int(d)}": float(v) for kind, r in zip(thm.kinds, thm.p_far) for d, v in zip(thm.dims, r)},
        "thm31_ffd_p_below_min": float(thm.p_below[row["ffd"]].min()),
        "thm31_ffd_p_below_max": float(thm.p_below[row["ffd"]].max()),
        "thm31_ffd_p_far_min": float(thm.p_far[row["ffd"]].min()),
        "thm31_ffd_p_far_max": float(thm.p_far[row["ffd"]].max()),
        "thm31_affd_p_far_max": float(thm.p_far[row["affd"]].max()),
        "thm31_afjl_p_far_max": float(thm.p_far[row["afjl"]].max()),
        "thm31_num_draws": thm.num_draws,
        "qk_split_variance": {"x".join(map(str, s)): float(v) for s, v in zip(qk.dims_out, qk.variance)},
        "qk_worst_over_best_variance": float(qk.variance.max() / qk.variance.min()),
    }


def correlation_tables(problems: Sequence[GradientProblem], key: jax.Array, log2_steps: dict[str, int], *,
                       num_draws: int, kinds: Sequence[str] = TABLE_KINDS) -> dict[str, quality.CorrelationTable]:
    """Table 6 for each model: `quality.dot_product_correlation` of its exact per-example
    gradients at D = 2^4, 2^(4 + step), ... up to the parameter count, QK capped at
    `qk_factor_cap` (three factors, as GPT-2 under the paper's 1024).

    Args:
        problems: the models (`digits_problem`, `text_problem`).
        key: PRNG key shared by every model (draws are keyed by D and draw index).
        log2_steps: model name -> step between the log2 D tried (1 tries every power of two).
        num_draws: independent sketches per (kind, D).
        kinds: sketch kinds (the paper's five by default).

    Returns:
        Model name -> its `quality.CorrelationTable`.
    """
    return {p.name: quality.dot_product_correlation(
                p.grads, kinds, key, range(4, int(np.log2(p.num_params)) + 1, log2_steps[p.name]),
                num_draws=num_draws, options={"qk": {"max_factor": qk_factor_cap(p.num_params)}})
            for p in problems}


def correlation_metrics(tables: dict[str, quality.CorrelationTable], problems: Sequence[GradientProblem]) -> dict[str, Any]:
    """The recorded metrics of Table 6.

    The claim is the paper's ordering, measured as gaps in log2 D against AFFD: the smallest D
    with r > 0.95 for AFJL and QK minus AFFD's, averaged over the models (a kind that never
    crosses counts as `NEVER`).

    Args:
        tables: model name -> its `CorrelationTable` (containing affd, afjl and qk).
        problems: the models the tables were made from (for the QK caps recorded).

    Returns:
        A dict for `workbench.record`: `qk_factor_caps` (model -> cap), `table6_smallest_log2_dim` (model -> threshold -> kind ->
        log2 D), `table6_pearson_mean`, `table6_pearson_std`, `table6_afjl_minus_affd_log2_r95`
        and `table6_qk_minus_affd_log2_r95`.
    """
    smallest = {name: {t: tab.smallest_log2_dim(t) for t in (0.95, 0.98, 0.99)} for name, tab in tables.items()}
    r95 = {name: by_t[0.95] for name, by_t in smallest.items()}

    def gap(kind):
        return float(np.mean([(r95[n][kind] or NEVER) - (r95[n]["affd"] or NEVER) for n in r95]))

    return {
        "qk_factor_caps": {p.name: qk_factor_cap(p.num_params) for p in problems},
        "table6_smallest_log2_dim": smallest,
        "table6_pearson_mean": {name: {k: np.round(m, 4).tolist() for k, m in zip(t.kinds, t.mean)} for name, t in tables.items()},
        "table6_pearson_std": {name: {k: np.round(s, 4).tolist() for k, s in zip(t.kinds, t.std)} for name, t in tables.items()},
        "table6_afjl_minus_affd_log2_r95": gap("afjl"),
        "table6_qk_minus_affd_log2_r95": gap("qk"),
    }


def eigen_table(problem: GradientProblem, hessian: jax.Array, key: jax.Array, log2_step: int, *,
                num_draws: int, kinds: Sequence[str] = TABLE_KINDS, k: int = 10) -> quality.EigenTable:
    """Table 7 for one model: `quality.eigenvalue_errors` of its dense Hessian at the log2 D of
    Table 6 from 2^5 on (2^8 always among them), QK capped as in `correlation_tables`.

    Args:
        problem: the model (its parameter count sets the largest D).
        hessian: its dense Hessian [n, n] (`dense_hessian`).
        key: PRNG key.
        log2_step: step between the log2 D tried (as in Table 6: log2 D = 4 + multiples of it).
        num_draws: independent sketches per (kind, D).
        kinds: sketch kinds (the paper's five by default).
        k: number of top eigenvalues compared.

    Returns:
        The `quality.EigenTable`.
    """
    dims = [d for d in range(5, int(np.log2(problem.num_params)) + 1) if (d - 4) % log2_step == 0]
    return quality.eigenvalue_errors(hessian, kinds, key, dims, k=k, num_draws=num_draws,
                                     options={"qk": {"max_factor": qk_factor_cap(problem.num_params)}})


def eigen_metrics(eig: quality.EigenTable, log2_dim: int = 8) -> dict[str, Any]:
    """The recorded metrics of Table 7; the claim is QK's error over AFFD's at D = 2^`log2_dim`.

    Args:
        eig: `eigen_table`'s result (containing affd and qk, and log2 D = `log2_dim`).
        log2_dim: the D at which QK and AFFD are compared.

    Returns:
        A dict for `workbench.record`: `table7_smallest_log2_dim` (threshold -> kind -> log2 D),
        `table7_rel_error_mean` and `table7_qk_over_affd_error`.
    """
    def error_at(kind):
        return float(np.nanmean(eig.rel_error[eig.kinds.index(kind), :, :][eig.log2_dims == log2_dim]))

    return {
        "table7_smallest_log2_dim": {t: eig.smallest_log2_dim(t) for t in (0.2, 0.1, 0.05)},
        "table7_rel_error_mean": {k: np.round(np.nanmean(e, -1), 4).tolist() for k, e in zip(eig.kinds, eig.rel_error)},
        "table7_qk_over_affd_error": error_at("qk") / error_at("affd"),
    }


def restriction_metrics(r: RestrictionResult) -> dict[str, Any]:
    """The recorded metrics of Table 1: one layer against a whole-model sketch of no larger D.

    Args:
        r: `layer_restriction`'s result.

    Returns:
        A dict for `workbench.record`: the layer and D, both Pearson r and eigenvalue errors, and
        the claimed gaps `table1_layer_minus_sketch_pearson` and `table1_layer_over_sketch_eig_error`.
    """
    pearson_sketch, eig_sketch = float(np.mean(r.pearson_sketch)), float(np.mean(r.eig_error_sketch))
    return {
        "table1_layer": r.layer, "table1_log2_dim": r.log2_dim,
        "table1_pearson_layer": r.pearson_layer, "table1_pearson_sketch": pearson_sketch,
        "table1_layer_minus_sketch_pearson": r.pearson_layer - pearson_sketch,
        "table1_eig_error_layer": r.eig_error_layer, "table1_eig_error_sketch": eig_sketch,
        "table1_layer_over_sketch_eig_error": r.eig_error_layer / eig_sketch,
    }


def timing_metrics(table: TimingTable) -> dict[str, Any]:
    """The recorded metrics of time against D: each kind's time at the largest D over the smallest.

    Args:
        table: `time_against_dim`'s result (kinds dense, affd and qk).

    Returns:
        A dict for `workbench.record`: `time_seconds` (kind -> seconds per D) and
        `time_<kind>_growth` for each kind.
    """
    return {"time_seconds": {k: row.tolist() for k, row in zip(table.kinds, table.seconds)},
            **{f"time_{k}_growth": float(row[-1] / row[0]) for k, row in zip(table.kinds, table.seconds)}}


def benchmark_summary(max_chars: int = 3000) -> str:
    """The start of `benchmarks/results/sketch.md` (throughput of every kind), for the notebook.

    Args:
        max_chars: how many characters to return.

    Returns:
        The file's first `max_chars` characters, or a line saying how to produce it.
    """
    results = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "sketch.md"
    return results.read_text()[:max_chars] if results.exists() else "run benchmarks/bench_sketch.py to measure throughput"
