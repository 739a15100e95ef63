"""Curvature operators on pytrees: Hessian, Gauss-Newton and empirical-Fisher products.

- `hvp(loss_fn, params, batch, v)`: Hessian-vector product by forward-over-reverse.
- `ggn_vp(predict_fn, output_loss_fn, params, batch, v)`: Gauss-Newton J^T H_out J v.
- `fisher_vp(loss_fn, params, batch, v)`: empirical Fisher (1/B) sum_i g_i g_i^T v.
- `operator(loss_fn, params, data, kind=..., chunk_size=...)`: the curvature of the loss averaged
  over a whole dataset (each chunk of examples weighted by its size), as a `LinearOperator`
  whose `matvec` takes a flat vector or a params-shaped pytree. Chunks are summed by
  `core.per_example.sum_chunks`, and sharded over devices (`sharded_sum`) when several are
  present: the reduction `distributed.curvature_operator` runs over several processes.
- `dense_hessian(loss_fn, params, data)`: the package's one dense Hessian (the operator's columns).
- `from_matrix(A)` / `linear_operator(mv, like)`: the same operator type around any matvec.
- `to_scipy(op)`: a `scipy.sparse.linalg.LinearOperator` (eigsh, cg ...); `as_matvec(op)`: the
  pair (matvec(v, *params), params) matfree's decompositions take.
- `diagonal(op, key=None, method=...)` / `dataset_diagonal(loss_fn, params, data, kind, ...)`:
  the exact diagonal, or Hutchinson's estimate with its standard error per entry.
- `kfac`: K-FAC and EK-FAC factors of a model's layers (`kfac.fit(functional, params, data)`),
  their damped inverse, and stored factors; `kfac.capture` (module `curvature.capture`): each layer's
  inputs and output gradients per example, from one forward and backward pass. These read a
  `models.Functional`'s layers (nnx.Linear, nnx.LinearGeneral, nnx.Embed).
"""

from workbench.curvature import kfac
from workbench.curvature.averaged import KINDS, dense_hessian, operator, resolve_roles
from workbench.curvature.diagonal import Diagonal, dataset_diagonal, diagonal
from workbench.curvature.linear import (
    LinearOperator,
    as_matvec,
    from_matrix,
    leaf_names,
    linear_operator,
    to_scipy,
)
from workbench.curvature.products import fisher_vp, ggn_vp, hvp

__all__ = [
    "KINDS", "Diagonal", "LinearOperator", "as_matvec", "dataset_diagonal", "dense_hessian",
    "diagonal", "fisher_vp", "from_matrix", "ggn_vp", "hvp", "leaf_names", "linear_operator",
    "operator", "resolve_roles", "to_scipy", "kfac",
]
