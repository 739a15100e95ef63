"""Run several estimators on one problem and tabulate them against the ground truths."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import jax
import numpy as np

from workbench.core.numerics import check_positive_int
from workbench.core.statistics import auc, pearson_rows
from workbench.influence.validation.ground_truth import (
    LDSGroundTruth,
    LOOResult,
    lds,
    loo_correlation,
)


class EstimatorScore(NamedTuple):
    """One estimator on one problem; a field is None when its ground truth was not given."""

    estimator: str
    seconds: float  # build + scoring, wall time, compile included
    loo_pearson: float | None = None
    loo_spearman: float | None = None
    lds: float | None = None
    vs_reference: float | None = None  # Pearson per test point against the reference, averaged


class Comparison(NamedTuple):
    """The rows of `compare` and the scores they were computed from."""

    rows: list[EstimatorScore]
    scores: dict[str, np.ndarray]  # estimator -> [n_test, n_train]


class MislabelAUC(NamedTuple):
    """One estimator's mislabel detection: the AUC of its self-influence, with its time."""

    estimator: str
    auc: float  # ROC AUC of self-influence for finding the flipped labels
    seconds: float


class EvaluationRow(NamedTuple):
    """One (model, estimator) of the evaluation table: LDS beside mislabel AUC."""

    model: str
    estimator: str
    lds: float | None
    mislabel_auc: float | None  # None for an estimator whose self-influence was not scored
    seconds: float


def compare(
    builders: Mapping[str, Callable[[], object]],
    test,
    *,
    loo_truth: LOOResult | None = None,
    lds_truth: LDSGroundTruth | None = None,
    reference: str | None = "exact",
) -> Comparison:
    """Build each estimator (`builders[name]()` -> Estimator), score `test`, and evaluate.

    One row per estimator with its `seconds`, the LOO Pearson/Spearman when `loo_truth` is
    given, the LDS when `lds_truth` is given, and `vs_reference` when the reference estimator is
    among the builders.

    Args:
        builders: dict estimator name -> zero-argument function building the estimator (so its
            build is timed), e.g. `workbench.experiments.influence.estimator_builders`.
        test: pytree of arrays [n_test, ...], the test points scored.
        loo_truth: the `LOOResult` of `loo` on these test points, or None.
        lds_truth: the `LDSGroundTruth` of `lds_ground_truth` on these test points, or None.
        reference: the estimator the others are correlated with (`vs_reference`), or None.

    Returns:
        `Comparison(rows, scores)`: one `EstimatorScore` per builder, in order, and the scores
        [n_test, n_train] of each estimator.
    """
    rows, scores = [], {}
    for name, build in builders.items():
        start = time.perf_counter()
        est = build()
        s = np.asarray(jax.block_until_ready(est.scores(test)))
        row = EstimatorScore(name, time.perf_counter() - start)
        scores[name] = s
        if loo_truth is not None:
            c = loo_correlation(s, loo_truth)
            row = row._replace(loo_pearson=c.pearson, loo_spearman=c.spearman)
        if lds_truth is not None:
            row = row._replace(lds=lds(s, lds_truth).mean)
        rows.append(row)
    if reference in scores:
        rows = [r._replace(vs_reference=float(np.nanmean(pearson_rows(scores[r.estimator], scores[reference]))))
                for r in rows]
    return Comparison(rows, scores)


def mislabel_aucs(builders: Mapping[str, Callable[[], object]], flipped) -> list[MislabelAUC]:
    """AUC of each estimator's self-influence for finding the flipped labels, with its time.

    Mislabeled examples are badly fit and pull the model toward them: their self-influence is
    large, so ranking by it should put them first (`core.statistics.auc`, 0.5 = chance).

    Args:
        builders: dict estimator name -> zero-argument function building the estimator on the
            noisy training set.
        flipped: boolean array [n_train], True where the label was flipped (`flip_labels`).

    Returns:
        One `MislabelAUC(estimator, auc, seconds)` per builder, in order.
    """
    rows = []
    for name, build in builders.items():
        start = time.perf_counter()
        est = build()
        si = np.asarray(jax.block_until_ready(est.self_influence()))
        rows.append(MislabelAUC(name, auc(si, flipped), time.perf_counter() - start))
    return rows


def evaluation_table(models: Mapping[str, tuple[Sequence[EstimatorScore], Sequence[MislabelAUC]]]) -> list[EvaluationRow]:
    """One row per (model, estimator): the LDS of `compare` beside the mislabel AUC.

    Args:
        models: dict model name -> (rows of `compare`, rows of `mislabel_aucs`).

    Returns:
        `EvaluationRow(model, estimator, lds, mislabel_auc, seconds)` for each row of `compare`;
        mislabel_auc is None for an estimator `mislabel_aucs` did not score.
    """
    table = []
    for model, (rows, aucs) in models.items():
        auc_of = {a.estimator: a.auc for a in aucs}
        table += [EvaluationRow(model, r.estimator, r.lds, auc_of.get(r.estimator), r.seconds) for r in rows]
    return table


def markdown_table(rows: Sequence[NamedTuple | Mapping], digits: int = 3) -> str:
    """A markdown table of NamedTuple (or mapping) rows; columns None in every row are left out.

    Args:
        rows: NamedTuples (or mappings) with the same fields, one per table row.
        digits: decimals of float cells (None and NaN print as an em dash).

    Returns:
        The table as one string (empty when there are no rows).
    """
    digits = check_positive_int("digits", digits, least=0)
    if not rows:
        return ""
    rows = [r._asdict() if hasattr(r, "_asdict") else dict(r) for r in rows]
    keys = [k for k in rows[0] if any(r.get(k) is not None for r in rows)]
    fmt = lambda v: "—" if v is None or (isinstance(v, float) and math.isnan(v)) else (
        f"{v:.{digits}f}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)
