"""Random projections of gradients and Hessian-vector products (Schioppa, NeurIPS 2024).

The constructions are stated precisely in each module's docstring (`describe(kind)`); they were
written from the published descriptions of SRHT, FJLT, Fastfood and CountSketch and from our
reading of the paper's FFD / AFFD / AFJL / QK, not from its text or code, which we could not
consult when writing them (treat those four as reconstructions): ffd is Fastfood applied per
Hadamard block then subsampled (a layout with a one-block failure like the one the paper's
Theorem 3.1 is about), the A-variants sum independent per-block transforms (or hash every
coordinate independently) so no block can be lost, and QK is a balanced Kronecker product of
small Gaussian factors, over the whole vector or one pair per params leaf (`for_params`).

- `make(kind, key, dim_in, dim_out, **options)` -> `Sketch` with `apply`, `apply_tree`,
  `transpose`; kinds: dense, countsketch, srht, fjl, ffd, affd, afjl, qk (`KINDS`).
  `for_params(kind, key, params, dim_out)`: a sketch of a raveled params tree (per-leaf for qk).
- `per_example_gradients(loss_fn, params, data, sketch, batch_size, store=PATH)`: sketched
  per-example gradients, streamed to a resumable zarr store (`open_store`).
- `sketched_operator(op, sketch)`: Phi H Phi^T for `workbench.spectrum`;
  `intrinsic_dimension(...)`: accuracy against subspace dimension d and d_int90.
- `fwht(x, block_size)`: the orthonormal fast Walsh-Hadamard transform.
"""

from workbench.sketch import dense, fastfood, kronecker, sparse  # noqa: F401  (register kinds)
from workbench.sketch.core import FAMILIES, Sketch, for_params, make, ravel_leaves
from workbench.sketch.hadamard import DEFAULT_BLOCK_SIZE, fwht
from workbench.sketch.intrinsic import IntrinsicResult, intrinsic_dimension
from workbench.sketch.operator import sketched_operator
from workbench.sketch.store import GradientStore, open_store, per_example_gradients

KINDS = ("dense", "countsketch", "srht", "fjl", "ffd", "affd", "afjl", "qk")


def describe(kind: str) -> str:
    """The construction, scaling and distortion bound of a kind, with its options and defaults."""
    if kind not in FAMILIES:
        raise ValueError(f"kind must be one of {sorted(FAMILIES)}, got {kind!r}")
    fam = FAMILIES[kind]
    return f"{fam.doc}\nOptions (default): {fam.options}"


__all__ = [
    "KINDS", "DEFAULT_BLOCK_SIZE", "GradientStore", "Sketch", "describe", "for_params", "fwht", "make",
    "IntrinsicResult", "intrinsic_dimension", "open_store", "per_example_gradients",
    "ravel_leaves", "sketched_operator",
]
