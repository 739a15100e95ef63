"""Evaluations that tell which influence estimator to trust, each against real retraining.

- `loo` / `loo_correlation`: leave-one-out retraining, Pearson and Spearman of the actual
  effects against `predicted_loo_effects` (scores / (n - 1));
- `lds_ground_truth` / `lds`: the linear datamodeling score over random subsets;
- `flip_labels` + `workbench.core.statistics.auc`: mislabel detection by self-influence;
- `correct_mispredictions`: Schioppa et al. 2023, a few fine-tuning steps without the most
  harmful examples against as many random ones;
- `fading`: Schioppa et al. 2023, how the predicted effect of a removal matches the actual one
  as training continues after it (and how far the two runs' parameters drift apart);
- `fit` / `retrain_weighted`: the retraining behind them (Newton to machine precision for convex
  models, or optax steps), vmapped over many weightings of the training set;
- `compare` / `mislabel_aucs` / `evaluation_table` / `markdown_table`: several estimators on one
  problem, tabulated.
"""

from workbench.influence.validation.dynamics import (
    CorrectionResult,
    FadingCorrelations,
    FadingPeak,
    FadingResult,
    correct_mispredictions,
    fading,
    fading_correlations,
    fading_peak,
)
from workbench.influence.validation.ground_truth import (
    FlippedLabels,
    LDSGroundTruth,
    LDSResult,
    LOOResult,
    flip_labels,
    lds,
    lds_ground_truth,
    loo,
    loo_correlation,
    predicted_loo_effects,
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
    FitResult,
    RetrainResult,
    fit,
    outputs,
    per_example_objective,
    retrain_weighted,
)

__all__ = [
    "Comparison", "EstimatorScore", "EvaluationRow", "MislabelAUC", "compare",
    "evaluation_table", "markdown_table", "mislabel_aucs",
    "CorrectionResult", "FadingCorrelations", "FadingPeak", "FadingResult", "correct_mispredictions",
    "fading", "fading_correlations", "fading_peak",
    "FitResult", "FlippedLabels", "LDSGroundTruth", "LDSResult", "LOOResult", "RetrainResult",
    "fit", "flip_labels", "lds", "lds_ground_truth", "loo", "loo_correlation", "outputs",
    "per_example_objective", "predicted_loo_effects", "retrain_weighted",
]
