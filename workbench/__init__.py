"""A notebook-first research workbench for understanding how neural networks train.

Submodules are imported on use (`from workbench import curvature`); the package root only
carries the two calls every notebook makes: `record(...)` and `save_figure(fig, name)`. Importing
it turns on JAX's persistent compilation cache (`workbench.run.compilation_cache`: a folder under
~/.cache/workbench/jax, safe to delete; `WORKBENCH_JAX_CACHE=off` turns it off).

Layers (a module imports only from its own layer or those above it; `tests/test_layers.py`
enforces it):

    core foundation   tree, numerics (tolerances, finiteness, example counts), pergrad
                      (per-example losses and gradients: flat, per-leaf, sketched)
    data and models   data (digits, synthetic sets, text, .npz), models (Flax NNX -> Functional)
    engines           curvature (Hessian / GGN / Fisher operators), train (one optax step,
                      the scan loop, the host loop with callbacks)
    capabilities      spectrum, sketch, influence, schedules, convex, ... (pure functions of
                      loss functions, params and pytrees; never a dataset loader or a model)
    experiments       the recipes papers call (fit this model on digits, GD with sharpness, ...)
    presentation      plots (every figure), ui (widget panels)
    running           results (record, save_figure), papers (registry, runner), the CLI

API convention, followed everywhere:
- Randomised functions take an explicit `key`, right after the operator or the function,
  params and data it randomises: `lanczos(op, key, num_iters)`, `top_eigenpairs(op, key, k)`,
  `sketch.make(kind, key, dim_in, dim_out)`, `train(loss_fn, params, data, key, ...)`. There is
  no default key; where a key is only needed for some options (e.g. `lissa` without `scale=`),
  leaving it out raises an error that says so.
- Results are NamedTuples (`EigenResult`, `TrainResult`, `Correlations`, `EstimatorScore` ...),
  never dicts.
- One vocabulary: `data` (or `train_data` / `test_data` where roles differ), `num_steps` for
  optimisation steps, `num_iters` for solver and eigensolver iterations, `chunk_size` for
  examples processed together, `kind` for a variant chosen by name, `damping` for a multiple
  of the identity added to a curvature.
- Default tolerances depend on the dtype (`numerics.default_tol`: 1e-10 in float64, 1e-4 in
  float32).
- Failure contract: iterative routines carry `finite` (and `converged` where it applies); the
  public boundary turns a failure into an error naming its cause, never a NaN or a zero that
  looks like a result.
"""

from workbench.run import compilation_cache as _compilation_cache
from workbench.run.results import record, save_figure, show

# JAX's persistent compilation cache, so a paper rerun loads its compiled programs instead of
# compiling them again (see workbench/compilation_cache.py; WORKBENCH_JAX_CACHE=off turns it off).
_compilation_cache.enable()

__all__ = ["record", "save_figure", "show"]
__version__ = "0.1.0"
