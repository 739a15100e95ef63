"""The foundation every other layer stands on: nothing here imports the rest of the package.

- `tree`: flattening at an algorithm's boundary and one check that two trees match (tree
  arithmetic is `optax.tree`'s);
- `losses`: the one boundary where a loss enters: a function or a model's `Functional`, resolved
  to the role a caller needs (objective, data loss, per-example loss), with errors naming the slip;
- `numerics`: dtype-aware tolerances, finiteness checks, argument validators, CPU compile options;
- `per_example`: per-example losses and gradients (flat, per leaf, sketched), the one
  implementation every capability uses, and the chunked map / sum over a dataset;
- `statistics`: the ROC AUC of a detector (`auc(scores, positives)`) and Pearson / Spearman
  correlations row by row (`pearson_rows`, `spearman_rows`) or summarised (`correlations`);
- `fingerprint`: a key equal for two functions that compute the same thing (compiled-program
  caches);
- `progress`: progress bars (`tqdm.auto`) for long loops.
"""
