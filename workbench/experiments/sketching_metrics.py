"""The sketching paper's steps and recorded metrics, read off the tables that
`workbench.experiments.sketching` computes: QK's factor splits and caps, Theorem 3.1 / 3.3
summaries, Table 6's correlation thresholds as gaps against AFFD, Table 7's eigenvalue errors,
Table 1's restriction, and time against D (a reported metric, never a claim)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from workbench.experiments.sketching import (
    FactorTable,
    GradientProblem,
    NormRatioTable,
    RestrictionResult,
    TimingTable,
)
from workbench.sketch import quality

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
        hessian: its dense Hessian [n, n] (`experiments.sketching.problem_hessian`).
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
