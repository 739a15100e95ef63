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
import numpy as np

from workbench.sketch.core import Sketch


def _sketched_product(args, y):
    op, sketch = args
    product = op.mv if hasattr(op, "mv") else op.matvec
    return sketch.apply(product(sketch.transpose(y)))


def sketched_operator(op, sketch: Sketch):
    """The dim_out x dim_out operator Phi H Phi^T, where `op` has a flat `mv`/`matvec` and `dim`.

    Returns a `workbench.curvature.LinearOperator` (usable with `workbench.spectrum`), whose
    products cost one `sketch.transpose`, one product of `op`, and one `sketch.apply`.
    """
    from workbench.curvature import LinearOperator

    if not (hasattr(op, "dim") and (hasattr(op, "mv") or hasattr(op, "matvec"))):
        raise TypeError(f"op must be a linear operator with `dim` and `mv`/`matvec`, got {type(op).__name__}")
    if not isinstance(sketch, Sketch):
        raise TypeError(f"sketch must be a workbench.sketch.Sketch, got {type(sketch).__name__}")
    if op.dim != sketch.dim_in:
        raise ValueError(f"sketch: dim_in={sketch.dim_in} but the operator has dim={op.dim}")
    like = jax.ShapeDtypeStruct((sketch.dim_out,), op.dtype)
    return LinearOperator(_sketched_product, (op, sketch), like)


def top_eigenvalues_exact_and_sketched(loss_fn, params, data, sketch: Sketch, k: int, key):
    """Top-k Hessian eigenvalues of the dataset loss, exact and from Phi H Phi^T.

    Uses `workbench.curvature.operator` + `workbench.spectrum.top_eigenpairs` (Lanczos) on both;
    where those modules are not installed, falls back to the dense Hessian (small models only)
    and Phi H Phi^T built from it. Returns (exact, sketched) numpy arrays, largest first.
    """
    try:
        from workbench import curvature, spectrum
    except ImportError:
        return _dense_top_eigenvalues(loss_fn, params, data, sketch, k)

    op = curvature.operator(loss_fn, params, data, kind="hessian")
    exact = spectrum.top_eigenpairs(op, k, key).values
    approx = spectrum.top_eigenpairs(sketched_operator(op, sketch), k, key).values
    return np.sort(np.asarray(exact))[::-1], np.sort(np.asarray(approx))[::-1]


def _dense_top_eigenvalues(loss_fn, params, data, sketch, k):
    from jax.flatten_util import ravel_pytree

    flat, unravel = ravel_pytree(params)
    hess = jax.hessian(lambda w: loss_fn(unravel(w), data))(flat)
    phi_t = sketch.apply(jax.numpy.eye(flat.size, dtype=flat.dtype))  # rows Phi e_i: Phi^T
    small = phi_t.T @ hess @ phi_t
    exact = np.linalg.eigvalsh(np.asarray(hess, np.float64))[::-1][:k]
    approx = np.linalg.eigvalsh(np.asarray(small, np.float64))[::-1][:k]
    return exact, approx
