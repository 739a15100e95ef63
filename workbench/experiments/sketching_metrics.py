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
    differs by the factor set by its smallest D_i (Theorem 3.3's product-of-Betas formula,
    `FactorTable.predicted`).

    Args:
        thm: `theorem_3_1_table`'s result (kinds ffd, affd, afjl in that order).
        qk: `qk_factor_table`'s result.

    Returns:
        A dict for `workbench.record`: per-D `thm31_<kind>_p_below_D<d>` / `_p_far_D<d>`, FFD's
        min/max, AFFD's and AFJL's `p_below_max` and `p_far_max` (the controls of FFD's bands,
        and FFD's the controls of theirs), `thm31_num_draws`, `qk_split_variance`,
        `qk_worst_over_best_variance` and its control `control_qk_half_over_half_variance` (the
        larger over the smaller variance of two halves of one split's draws: one variance measured
        twice, which must not look like a split's effect), `qk_variance_over_predicted` (measured
        over Theorem 3.3's variance, per split) and its control `control_qk_variance_over_gaussian`
        (over a dense Gaussian's 2 / D, a formula that ignores the split).
    """
    row = {kind: i for i, kind in enumerate(thm.kinds)}
    return {
        **{f"thm31_{kind}_p_below_D{int(d)}": float(v) for kind, r in zip(thm.kinds, thm.p_below) for d, v in zip(thm.dims, r)},
        **{f"thm31_{kind}_p_far_D{int(d)}": float(v) for kind, r in zip(thm.kinds, thm.p_far) for d, v in zip(thm.dims, r)},
        "thm31_ffd_p_below_min": float(thm.p_below[row["ffd"]].min()),
        "thm31_ffd_p_below_max": float(thm.p_below[row["ffd"]].max()),
        "thm31_ffd_p_far_min": float(thm.p_far[row["ffd"]].min()),
        "thm31_ffd_p_far_max": float(thm.p_far[row["ffd"]].max()),
        **{f"thm31_{kind}_p_{what}_max": float(table[row[kind]].max())
           for kind in ("affd", "afjl") for what, table in (("below", thm.p_below), ("far", thm.p_far))},
        "thm31_num_draws": thm.num_draws,
        "qk_split_variance": {"x".join(map(str, s)): float(v) for s, v in zip(qk.dims_out, qk.variance)},
        "qk_worst_over_best_variance": float(qk.variance.max() / qk.variance.min()),
        "qk_variance_over_predicted": [float(v / p) for v, p in zip(qk.variance, qk.predicted)],
        "control_qk_half_over_half_variance": float((qk.variance_halves.max(1) / qk.variance_halves.min(1)).max()),
        # control of the formula: the variance of a dense Gaussian sketch of the same D, 2 / D,
        # which ignores how D is split into factors
        "control_qk_variance_over_gaussian": [float(v * np.prod(s) / 2) for s, v in zip(qk.dims_out, qk.variance)],
    }


def correlation_tables(problems: Sequence[GradientProblem], key: jax.Array, log2_steps: dict[str, int], *,
                       num_draws: int, kinds: Sequence[str] = TABLE_KINDS,
                       min_log2_dim: int = 4) -> dict[str, quality.CorrelationTable]:
    """Table 6 for each model: `quality.dot_product_correlation` of its exact per-example
    gradients at D = 2^4, 2^(4 + step), ... up to the parameter count (those below
    2^`min_log2_dim` left out), QK capped at `qk_factor_cap` (three factors, as GPT-2 under the
    paper's 1024).

    Args:
        problems: the models (`digits_problem`, `text_problem`).
        key: PRNG key shared by every model (draws are keyed by D and draw index).
        log2_steps: model name -> step between the log2 D tried (1 tries every power of two).
        num_draws: independent sketches per (kind, D).
        kinds: sketch kinds (the paper's five by default).
        min_log2_dim: the smallest log2 D kept (the grid still starts from 4, so a larger value
            drops points without moving the others).

    Returns:
        Model name -> its `quality.CorrelationTable`.
    """
    return {p.name: quality.dot_product_correlation(
                p.grads, kinds, key, [d for d in range(4, int(np.log2(p.num_params)) + 1, log2_steps[p.name])
                                      if d >= min_log2_dim],
                num_draws=num_draws, options={"qk": {"max_factor": qk_factor_cap(p.num_params)}})
            for p in problems}


def log2_dim_gap(r95: dict[str, dict[str, int | None]], kind: str, baseline: str = "affd") -> float | None:
    """The smallest log2 D with r > 0.95 of `kind` minus that of `baseline`, averaged over models.

    Censored, not imputed: a kind that never crosses within the D tried has no smallest D, so the
    gap is unknown (None) and a claim on it fails; counting it as a large D would let a kind that
    never works pass a "needs more D" claim.

    Args:
        r95: model name -> kind -> smallest log2 D with r > 0.95 (None if never crossed).
        kind: the kind compared.
        baseline: the kind it is compared with.

    Returns:
        The mean gap over the models, or None when either kind never crossed on some model.
    """
    gaps = [by_kind[kind] - by_kind[baseline] for by_kind in r95.values()
            if by_kind[kind] is not None and by_kind[baseline] is not None]
    return float(np.mean(gaps)) if gaps and len(gaps) == len(r95) else None


def error_ratio(tables: dict[str, quality.CorrelationTable], kind: str, baseline: str = "fjl",
                min_log2_dim: int = 6) -> float:
    """Geometric mean over models and D >= 2^`min_log2_dim` of (1 - r_kind) / (1 - r_baseline).

    How much more of the dot products' variance `kind` loses than `baseline` at the same D: 1 when
    the two keep geometry equally well (the paper's Table 6: AFFD matches FJL at every threshold),
    > 1 when `kind` needs more D. The smallest D are left out: there every kind is poor and the
    ratio tends to 1 whatever the kinds.

    Args:
        tables: model name -> its `CorrelationTable` (containing `kind` and `baseline`).
        kind: the kind compared.
        baseline: the reference kind.
        min_log2_dim: the smallest log2 D counted.

    Returns:
        The geometric mean of the ratios (NaN when no D qualifies).
    """
    logs = []
    for t in tables.values():
        mean, use = t.mean, t.log2_dims >= min_log2_dim
        a, b = 1 - mean[t.kinds.index(kind)][use], 1 - mean[t.kinds.index(baseline)][use]
        ok = np.isfinite(a) & np.isfinite(b) & (b > 0)
        logs += list(np.log(a[ok] / b[ok]))
    return float(np.exp(np.mean(logs))) if logs else float("nan")


def correlation_metrics(tables: dict[str, quality.CorrelationTable], problems: Sequence[GradientProblem]) -> dict[str, Any]:
    """The recorded metrics of Table 6.

    The paper's ordering, measured as gaps in log2 D against AFFD (`log2_dim_gap`: the smallest D
    with r > 0.95 of AFJL, QK and, as the control that must show no gap, FJL, minus AFFD's,
    averaged over the models; None when a kind never crosses), and its headline that AFFD matches
    FJL (`error_ratio`: AFFD's 1 - r over FJL's; AFJL's, AFFD without its second transform, is the
    control that must not match).

    Args:
        tables: model name -> its `CorrelationTable` (containing affd, fjl, afjl and qk).
        problems: the models the tables were made from (for the QK caps recorded).

    Returns:
        A dict for `workbench.record`: `qk_factor_caps` (model -> cap), `table6_smallest_log2_dim`
        (model -> threshold -> kind -> log2 D), `table6_pearson_mean`, `table6_pearson_std`,
        `table6_<kind>_minus_affd_log2_r95` for afjl and qk, their controls
        `control_table6_fjl_as_<kind>_log2_r95` (FJL's gap, recorded once per claim it must fail),
        `table6_affd_over_fjl_error` and its control `control_table6_afjl_over_fjl_error`.
    """
    smallest = {name: {t: tab.smallest_log2_dim(t) for t in (0.95, 0.98, 0.99)} for name, tab in tables.items()}
    r95 = {name: by_t[0.95] for name, by_t in smallest.items()}
    return {
        "qk_factor_caps": {p.name: qk_factor_cap(p.num_params) for p in problems},
        "table6_smallest_log2_dim": smallest,
        "table6_pearson_mean": {name: {k: np.round(m, 4).tolist() for k, m in zip(t.kinds, t.mean)} for name, t in tables.items()},
        "table6_pearson_std": {name: {k: np.round(s, 4).tolist() for k, s in zip(t.kinds, t.std)} for name, t in tables.items()},
        **{f"table6_{kind}_minus_affd_log2_r95": log2_dim_gap(r95, kind) for kind in ("afjl", "qk")},
        # controls: FJL, which the paper finds as good as AFFD, in AFJL's and in QK's place
        **{f"control_table6_fjl_as_{kind}_log2_r95": log2_dim_gap(r95, "fjl") for kind in ("afjl", "qk")},
        "table6_affd_over_fjl_error": error_ratio(tables, "affd"),
        "control_table6_afjl_over_fjl_error": error_ratio(tables, "afjl"),
    }


def eigen_table(problem: GradientProblem, hessian: jax.Array, key: jax.Array, log2_step: int, *,
                num_draws: int, kinds: Sequence[str] = TABLE_KINDS, k: int = 10,
                max_log2_dim: int | None = None) -> quality.EigenTable:
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
        max_log2_dim: the largest log2 D tried (None: up to the parameter count).

    Returns:
        The `quality.EigenTable`.
    """
    top = int(np.log2(problem.num_params)) if max_log2_dim is None else min(max_log2_dim, int(np.log2(problem.num_params)))
    dims = [d for d in range(5, top + 1) if (d - 4) % log2_step == 0]
    return quality.eigenvalue_errors(hessian, kinds, key, dims, k=k, num_draws=num_draws,
                                     options={"qk": {"max_factor": qk_factor_cap(problem.num_params)}})


def eigen_metrics(eig: quality.EigenTable, log2_dim: int = 8) -> dict[str, Any]:
    """The recorded metrics of Table 7; the claim is QK's error over AFFD's at D = 2^`log2_dim`.

    Args:
        eig: `eigen_table`'s result (containing affd and qk, and log2 D = `log2_dim`).
        log2_dim: the D at which QK and AFFD are compared.

    Returns:
        A dict for `workbench.record`: `table7_smallest_log2_dim` (threshold -> kind -> log2 D),
        `table7_rel_error_mean`, `table7_qk_over_affd_error` and its control
        `control_table7_fjl_over_affd_error` (a kind as good as AFFD in QK's place).
    """
    def error_at(kind):
        return float(np.nanmean(eig.rel_error[eig.kinds.index(kind), :, :][eig.log2_dims == log2_dim]))

    return {
        "table7_smallest_log2_dim": {t: eig.smallest_log2_dim(t) for t in (0.2, 0.1, 0.05)},
        "table7_rel_error_mean": {k: np.round(np.nanmean(e, -1), 4).tolist() for k, e in zip(eig.kinds, eig.rel_error)},
        "table7_qk_over_affd_error": error_at("qk") / error_at("affd"),
        "control_table7_fjl_over_affd_error": error_at("fjl") / error_at("affd"),
    }


def restriction_metrics(r: RestrictionResult) -> dict[str, Any]:
    """The recorded metrics of Table 1: one layer against a whole-model sketch of no larger D.

    Args:
        r: `layer_restriction`'s result.

    Returns:
        A dict for `workbench.record`: the layer and D, both Pearson r and eigenvalue errors, and
        the difference of the Pearson r (reported), the claimed ratios
        `table1_layer_over_sketch_lost_variance` ((1 - r) of the layer over the sketch's: a ratio,
        as the paper compares them, steadier over seeds than the difference of r) and
        `table1_layer_over_sketch_eig_error`, and their controls
        `control_table1_sketch_over_sketch_lost_variance` and
        `control_table1_sketch_over_sketch_eig_error` (the first half of the sketch's draws against
        the second; they need at least two draws).
    """
    pearson_sketch, eig_sketch = float(np.mean(r.pearson_sketch)), float(np.mean(r.eig_error_sketch))
    half = max(1, len(r.pearson_sketch) // 2)
    return {
        "table1_layer": r.layer, "table1_log2_dim": r.log2_dim,
        "table1_pearson_layer": r.pearson_layer, "table1_pearson_sketch": pearson_sketch,
        "table1_layer_minus_sketch_pearson": r.pearson_layer - pearson_sketch,
        "table1_layer_over_sketch_lost_variance": (1 - r.pearson_layer) / (1 - pearson_sketch),
        "table1_eig_error_layer": r.eig_error_layer, "table1_eig_error_sketch": eig_sketch,
        "table1_layer_over_sketch_eig_error": r.eig_error_layer / eig_sketch,
        # controls: the layer replaced by the whole-model sketch itself (its first draws against
        # the others: independent draws of one sketch, which must show no restriction's loss)
        "control_table1_sketch_over_sketch_lost_variance": float((1 - np.mean(r.pearson_sketch[:half]))
                                                                 / (1 - np.mean(r.pearson_sketch[half:]))),
        "control_table1_sketch_over_sketch_eig_error": float(np.mean(r.eig_error_sketch[:half]) / np.mean(r.eig_error_sketch[half:])),
    }


def timing_metrics(table: TimingTable) -> dict[str, Any]:
    """The recorded metrics of time against D: each kind's time at the largest D over the smallest.

    Reported, never claimed: a busy machine moves wall-clock time. (XLA's cost analysis is no
    substitute here: it counts a `lax.scan` body once, so the regenerated dense projection's
    FLOPs would come out 4x, not 16x, over a 16x range of D.)

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
