"""The one boundary where a loss enters the package: a function or a model's `Functional`.

Every capability that takes a `loss_fn` also takes a `models.Functional` and resolves it here to
the role it needs:
- "objective": the training objective, the batch-mean loss plus its L2 term (`Functional.loss_fn`);
- "data": the batch-mean data loss without the regulariser (gradients that are attributed,
  Fisher products);
- "per_example": the per-example data loss, `(params, batch) -> [n]`.
A plain function is taken as it is, and `check_loss_output` says which kind a function is when
it is not the kind a caller needs (a per-example loss where a batch mean belongs, or the
reverse), instead of an error from deep inside a gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from workbench.core.per_example import mean_loss

PyTree = Any
ROLES = ("objective", "data", "per_example")


def is_functional(obj: Any) -> bool:
    """Whether `obj` is a model's `Functional` (recognised by its fields: core imports no model).

    Args:
        obj: anything.

    Returns:
        True for a `models.Functional` (or an object with its five function fields).
    """
    return all(hasattr(obj, name) for name in ("params", "loss_fn", "per_example_loss_fn", "predict_fn",
                                               "output_loss_fn"))


def _what(obj: Any) -> str:
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def as_loss(loss_fn: Any, *, role: str, caller: str) -> Callable:
    """The function `caller` needs from a plain loss function or a `Functional`.

    Args:
        loss_fn: a function, or a `models.Functional` (resolved to `role`).
        role: "objective", "data" or "per_example" (see the module docstring); a plain function
            is returned unchanged whatever the role.
        caller: the public function asking, named in errors.

    Returns:
        The function.

    Raises:
        TypeError: `loss_fn` is a Flax Module (wrap it with `models.functional`) or not callable.
        ValueError: an unknown role.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if is_functional(loss_fn):
        if role == "objective":
            return loss_fn.loss_fn
        if role == "data":
            return mean_loss(loss_fn.per_example_loss_fn)
        return loss_fn.per_example_loss_fn
    if isinstance(loss_fn, nnx.Module):
        raise TypeError(f"{caller}: got a Flax model ({type(loss_fn).__name__}) where a loss belongs; pass "
                        "models.functional(model, loss='cross_entropy' or 'mse') instead (a Functional), "
                        "or a function loss_fn(params, batch) -> scalar")
    if not callable(loss_fn):
        raise TypeError(f"{caller}: loss_fn must be a callable loss_fn(params, batch) or a models.Functional, "
                        f"got {_what(loss_fn)}")
    return loss_fn


def check_loss_output(loss_fn: Callable, params: PyTree, batch: PyTree, *, expects: str, caller: str) -> None:
    """Raise a clear error when `loss_fn` is not the kind `caller` needs (traced abstractly: no work).

    Args:
        loss_fn: the function to check, `(params, batch) -> value`.
        params: the params it takes.
        batch: a batch of at least one example (only its shapes are used).
        expects: "scalar" (a batch mean) or "per_example" (one value per example).
        caller: the public function asking, named in the error.

    Raises:
        ValueError: the output has the other shape; the message says which kind was given.
    """
    leaves = jax.tree.leaves(batch)
    n = leaves[0].shape[0] if leaves and getattr(leaves[0], "ndim", 0) else None
    out = jax.eval_shape(loss_fn, params, batch)
    shape = getattr(out, "shape", None)
    if expects == "scalar" and shape != ():
        raise ValueError(
            f"{caller} needs a batch-mean loss_fn(params, batch) -> scalar, but the function given returns "
            f"shape {shape}: a per-example loss? Pass the models.Functional itself, or "
            "core.per_example.mean_loss(per_example_loss_fn)")
    if expects == "per_example" and (shape is None or len(shape) != 1 or (n is not None and shape[0] != n)):
        raise ValueError(
            f"{caller} needs a per-example loss (params, batch) -> [n] (n = {n}), but the function given "
            f"returns shape {shape}" + (": a batch mean? Pass the models.Functional itself, or its "
                                        "per_example_loss_fn" if shape == () else ""))
