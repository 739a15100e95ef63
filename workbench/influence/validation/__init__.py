"""Evaluations that tell which influence estimator to trust, each against real retraining.

- `loo` / `loo_correlation`: leave-one-out retraining, Pearson and Spearman;
- `lds_ground_truth` / `lds`: the linear datamodeling score over random subsets;
- `flip_labels` + `auc`: mislabel detection by self-influence;
- `correct_mispredictions`: Schioppa et al. 2023, a few fine-tuning steps without the most
  harmful examples against as many random ones;
- `fading`: Schioppa et al. 2023, how the predicted effect of a removal matches the actual one
  as training continues after it (and how far the two runs' parameters drift apart).
"""

from workbench.influence.validation.dynamics import (
    CorrectionResult,
    FadingResult,
    correct_mispredictions,
    fading,
)
from workbench.influence.validation.ground_truth import (
    LDSGroundTruth,
    LDSResult,
    LOOResult,
    flip_labels,
    lds,
    lds_ground_truth,
    loo,
    loo_correlation,
    loo_summary,
)
from workbench.influence.validation.report import (
    Comparison,
    EstimatorScore,
    EvaluationRow,
    MislabelAUC,
    compare,
    evaluation_table,
    markdown_table,
    mislabel_aucs,
)
from workbench.influence.validation.retraining import (
    RetrainResult,
    fit,
    outputs,
    per_example_objective,
    retrain,
)

__all__ = [
    "Comparison", "Correlations", "EstimatorScore", "EvaluationRow", "MislabelAUC", "compare",
    "evaluation_table", "markdown_table", "mislabel_aucs",
    "CorrectionResult", "FadingResult", "correct_mispredictions", "fading",
    "LDSGroundTruth", "LDSResult", "LOOResult", "RetrainResult", "auc",
    "correlations", "fit",
    "flip_labels", "lds", "lds_ground_truth", "loo", "loo_correlation", "loo_summary", "outputs",
    "pearson_rows", "per_example_objective", "retrain", "spearman_rows",
]
