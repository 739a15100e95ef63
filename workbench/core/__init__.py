"""The foundation every other layer stands on: nothing here imports the rest of the package.

- `tree`: inner products, norms and axpy over params-shaped pytrees;
- `numerics`: dtype-aware tolerances, finiteness checks, argument validators, CPU compile options;
- `per_example`: per-example losses and gradients (flat, per leaf, sketched), the one
  implementation every capability uses;
- `statistics`: the ROC AUC of a detector (`auc(scores, positives)`) and Pearson / Spearman
  correlations row by row (`pearson_rows`, `spearman_rows`) or summarised (`correlations`);
- `progress`: progress bars (`tqdm.auto`) for long loops.
"""
