"""A notebook-first research workbench for understanding how neural networks train.

Submodules are imported on use (`from workbench import curvature`); the package root only
carries the two calls every notebook makes: `record(...)` and `save_figure(fig, name)`. Importing
it turns on JAX's persistent compilation cache (`workbench.run.compilation_cache`: a folder under
~/.cache/workbench/jax, safe to delete; `WORKBENCH_JAX_CACHE=off` turns it off).

Layers, top to bottom (a module imports only from its own layer or those above it;
`tests/test_layers.py` enforces it):

    core/             the foundation: tree (beyond optax.tree), numerics (tolerances, finiteness,
                      validators), per_example (per-example losses and gradients), statistics,
                      progress
    data, models, gpt datasets; Flax NNX models -> Functional (params and pure functions)
    curvature, train  the engines: Hessian / GGN / Fisher operators; one optax step and its scans
    spectrum/ sketch/ influence/ schedules/ convex/ icl/ unlearning/ distributed/ continual/
    transport/ mixing/
                      the capabilities: pure functions of loss functions, params and pytrees;
                      never a dataset loader or a model
    experiments/      the recipes papers call (fit this model on digits, GD with sharpness, ...)
    plots/, ui/       presentation: every figure; widget panels over package functions
    run/              running: paper registry, claims, runner, results, lab, workshop,
                      compilation cache, the CLI

API convention, followed everywhere:
- Randomised functions take an explicit `key`, right after what they randomise: the operator,
  the function and its params and data, or the size arguments that describe it:
  `lanczos(op, key, num_iters)`, `train(loss_fn, params, data, key, ...)`,
  `sketch.make(kind, key, dim_in, dim_out)`, `flip_labels(data, key, fraction)`. There is no
  default key; where a key is only needed for some options (e.g. `lissa` without `scale=`),
  leaving it out raises an error that says so, and a function that needs no randomness takes none.
- Results are NamedTuples (`EigenResult`, `TrainResult`, `Correlations`, `EstimatorScore` ...),
  never dicts or bare tuples, and a function returns one type.
- One vocabulary: `data` (or `train_data` / `test_data` where roles differ), `num_steps` for
  optimisation steps, `num_iters` for solver and eigensolver iterations, `chunk_size` for
  examples processed together, `steps_per_chunk` for optimisation steps compiled into one
  program, `kind` for a variant chosen by name, `damping` for a multiple of the identity added to
  a curvature, `optimizer` for an optax `GradientTransformation` (`optimizer_name` where a name,
  "sgd" or "adam", is taken so that the learning rate stays a traced value), `num_matvecs` a
  Python int.
- Integer arguments are validated by `core.numerics.check_positive_int` (NumPy integers
  accepted), example counts by `core.numerics.num_examples`.
- Default tolerances depend on the dtype (`core.numerics.default_tol`: 1e-10 in float64, 1e-4 in
  float32).
- Failure contract: iterative routines carry `finite` (and `converged` where it applies); the
  public boundary turns a failure into an error naming its cause, never a NaN or a zero that
  looks like a result.
- Docstrings are Google style: a one-line summary, the mathematics and the why, then `Args:`,
  `Returns:` and `Raises:`. Each capability's package docstring ends with a short runnable
  `Example:` that the test suite executes (doctest).
"""

from workbench.run import compilation_cache as _compilation_cache
from workbench.run.results import record, save_figure, show

# JAX's persistent compilation cache, so a paper rerun loads its compiled programs instead of
# compiling them again (see workbench/run/compilation_cache.py; WORKBENCH_JAX_CACHE=off turns it off).
_compilation_cache.enable()

__all__ = ["record", "save_figure", "show"]
__version__ = "0.1.0"
