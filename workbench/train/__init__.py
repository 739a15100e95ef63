"""Optax training loop: jit-compiled chunks of steps, checkpoints at chosen steps, deterministic.

- `step(loss_fn, optimizer, params, opt_state, batch)`: the one optax step of the package.
- `optimize(...)`: `num_steps` steps in one `lax.scan`, a pure function (under `jit`/`vmap`).
- `train(...)`: the host loop with checkpoints, callbacks, evaluations and a progress bar.
  Steps run inside `lax.scan` in chunks of `steps_per_chunk` (one compilation, whatever the
  step count); the host only wakes at chunk ends and at event steps (checkpoints, callbacks,
  evaluations) to record, save and update the progress bar.
"""

from workbench.train.loop import (
    NONFINITE_POLICIES,
    TrainResult,
    load_checkpoint,
    save_checkpoint,
    train,
)
from workbench.train.steps import (
    NonFiniteLossError,
    OptimizeResult,
    StepResult,
    batch_indices,
    optimize,
    optimize_streams,
    step,
)

__all__ = [
    "NONFINITE_POLICIES", "NonFiniteLossError", "OptimizeResult", "StepResult", "TrainResult",
    "batch_indices", "load_checkpoint", "optimize", "optimize_streams", "save_checkpoint", "step",
    "train",
]
