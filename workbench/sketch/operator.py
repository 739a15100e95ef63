"""Sketched curvature operators: y -> Phi H Phi^T y on R^dim_out (the paper's route to large Krylov
subspaces: a Lanczos basis of D-vectors instead of n-vectors).

If H = sum_i lambda_i u_i u_i^T then Phi H Phi^T = sum_i lambda_i (Phi u_i)(Phi u_i)^T; for a
sketch with E Phi^T Phi = I the vectors Phi u_i are nearly orthonormal when D is much larger than
the number of dominant eigenvalues, so the top eigenvalues of the sketched operator approximate
those of H (with relative error ~ sqrt(k/D) for k dominant directions; exact for an orthogonal
Phi restricted to the top eigenspace).
"""

from __future__ import annotations

import jax

from workbench.curvature import LinearOperator
from workbench.sketch.base import Sketch


def _sketched_product(args, y):
    op, sketch = args
    product = op.mv if hasattr(op, "mv") else op.matvec
    return sketch.apply(product(sketch.transpose(y)))


def sketched_operator(op, sketch: Sketch):
    """The dim_out x dim_out operator Phi H Phi^T, where `op` has a flat `mv`/`matvec` and `dim`.

    Returns a `workbench.curvature.LinearOperator` (usable with `workbench.spectrum`), whose
    products cost one `sketch.transpose`, one product of `op`, and one `sketch.apply`.

    Args:
        op: a linear operator with `dim`, `dtype` and a flat `mv` or `matvec` (e.g. a
            `workbench.curvature` operator).
        sketch: Phi, with dim_in = op.dim.

    Returns:
        The [dim_out x dim_out] `LinearOperator` y -> Phi H Phi^T y.

    Raises:
        TypeError: `op` is not an operator or `sketch` not a `Sketch`.
        ValueError: the sketch's dim_in differs from the operator's dim.
    """
    if not (hasattr(op, "dim") and (hasattr(op, "mv") or hasattr(op, "matvec"))):
        raise TypeError(f"op must be a linear operator with `dim` and `mv`/`matvec`, got {type(op).__name__}")
    if not isinstance(sketch, Sketch):
        raise TypeError(f"sketch must be a workbench.sketch.Sketch, got {type(sketch).__name__}")
    if op.dim != sketch.dim_in:
        raise ValueError(f"sketch: dim_in={sketch.dim_in} but the operator has dim={op.dim}")
    like = jax.ShapeDtypeStruct((sketch.dim_out,), op.dtype)
    return LinearOperator(_sketched_product, (op, sketch), like)
