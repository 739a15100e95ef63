"""Run several estimators on one problem and tabulate them against the ground truths."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import jax
import numpy as np

from workbench.influence.evaluate.ground_truth import (
    LDSGroundTruth,
    LOOResult,
    lds,
    loo_correlation,
)
from workbench.influence.evaluate.metrics import auc, pearson_rows


def compare(
    builders: Mapping[str, Callable[[], object]],
    test,
    *,
    loo_truth: LOOResult | None = None,
    lds_truth: LDSGroundTruth | None = None,
    reference: str | None = "exact",
) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Build each estimator (`builders[name]()` -> Estimator), score `test`, and evaluate.

    Returns (rows, scores): one row per estimator with `seconds` (build + scoring, wall time,
    compile included), LOO `pearson`/`spearman` when `loo_truth` is given, `lds` when
    `lds_truth` is given, and `vs_<reference>` (Pearson per test point against the reference
    estimator's scores, averaged) when the reference is among the builders.
    """
    rows, scores = [], {}
    for name, build in builders.items():
        start = time.perf_counter()
        est = build()
        s = np.asarray(jax.block_until_ready(est.scores(test)))
        row = {"estimator": name, "seconds": time.perf_counter() - start}
        scores[name] = s
        if loo_truth is not None:
            c = loo_correlation(s, loo_truth)
            row.update(loo_pearson=c["pearson"], loo_spearman=c["spearman"])
        if lds_truth is not None:
            row["lds"] = lds(s, lds_truth).mean
        rows.append(row)
    if reference in scores:
        for row in rows:
            row[f"vs_{reference}"] = float(np.nanmean(pearson_rows(scores[row["estimator"]], scores[reference])))
    return rows, scores


def mislabel_aucs(builders: Mapping[str, Callable[[], object]], flipped) -> list[dict]:
    """AUC of each estimator's self-influence for finding the flipped labels, with its time."""
    rows = []
    for name, build in builders.items():
        start = time.perf_counter()
        est = build()
        si = np.asarray(jax.block_until_ready(est.self_influence()))
        rows.append({"estimator": name, "auc": auc(si, flipped), "seconds": time.perf_counter() - start})
    return rows


def markdown_table(rows: list[dict], digits: int = 3) -> str:
    """A markdown table of `rows` (dicts with the same keys)."""
    if not rows:
        return ""
    keys = list(rows[0])
    fmt = lambda v: f"{v:.{digits}f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)
