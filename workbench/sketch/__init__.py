"""Random projections of gradients and Hessian-vector products (Schioppa, NeurIPS 2024).

Two groups of kinds, each stated precisely by `describe(kind)`:
- the paper's constructions, rebuilt from its equations (see ../shared/references and the module
  docstrings): `fjl` (Hadamard + sparse Gaussian with ~D log^2 N non-zeros), `ffd` (Fastfood used
  implicitly: the transpose of the Fastfood feature map, a sum over input blocks of size D),
  `affd` = R_D(sqrt(N/D) H^{pi2} G H^{pi1} B x) and `afjl` = R_D(sqrt(N/D) G H^{pi1} B x) with the
  Hadamard as a Kronecker product of small permuted factors (pre-conditioner variants "fft" and
  "q"), and `qk` (Kronecker product of Haar-orthogonal factor rows, truncated to the first D);
- ours, under their own names: `dense` (Gaussian JL, stored or regenerated on the fly),
  `countsketch`, `srht`, and `kronecker` (i.i.d. Gaussian Kronecker factors; one pair per params
  leaf through `for_params`, the cheapest sketch of per-example gradients).
Stores written before format 2 by a kind whose map changed are refused (`store.CHANGED_KINDS`).

- `make(kind, key, dim_in, dim_out, **options)` -> `Sketch` with `apply`, `apply_tree`,
  `transpose` (the exact adjoint). `for_params(kind, key, params, dim_out)`.
- `sketch_gradient(loss_fn, params, data, sketch, method="explicit"|"implicit")`: Phi grad L,
  either applied to the gradient or as d/dw L(theta0 + Phi^T w) at w = 0 (same numbers).
- `per_example_gradients(loss_fn, params, data, sketch, batch_size, store=PATH)`: sketched
  per-example gradients, streamed to a resumable zarr store (`open_store`).
- `sketched_operator(op, sketch)`: Phi H Phi^T for `workbench.spectrum`;
  `intrinsic_dimension(...)`: the vmapped sweep; `intrinsic_search(...)`: the paper's doubling
  search (`workbench.sketch.intrinsic_search`).
- `fwht(x, block_size)`: the orthonormal fast Walsh-Hadamard transform.
"""

from workbench.sketch import kinds  # noqa: F401  (registers every kind)
from workbench.sketch.base import FAMILIES, Sketch, for_params, make, ravel_leaves
from workbench.sketch.gradients import sketch_gradient
from workbench.sketch.intrinsic import IntrinsicResult, intrinsic_dimension
from workbench.sketch.intrinsic_search import SearchResult, intrinsic_search
from workbench.sketch.kinds.hadamard import DEFAULT_BLOCK_SIZE, fwht
from workbench.sketch.operator import sketched_operator
from workbench.sketch.store import GradientStore, open_store, per_example_gradients

PAPER_KINDS = ("fjl", "ffd", "affd", "afjl", "qk")
OUR_KINDS = ("dense", "countsketch", "srht", "kronecker")
KINDS = PAPER_KINDS + OUR_KINDS

_ORIGIN = {
    **{k: "The paper's construction (Schioppa 2024), rebuilt from its equations." for k in PAPER_KINDS},
    **{k: "Ours, not a construction of the paper." for k in OUR_KINDS},
}


def describe(kind: str) -> str:
    """Whose construction a kind is, its map, scaling and distortion bound, options and defaults."""
    if kind not in FAMILIES:
        raise ValueError(f"kind must be one of {sorted(FAMILIES)}, got {kind!r}")
    fam = FAMILIES[kind]
    return f"{kind}: {_ORIGIN[kind]}\n{fam.doc}\nOptions (default): {fam.options}"


__all__ = [
    "KINDS", "OUR_KINDS", "PAPER_KINDS", "DEFAULT_BLOCK_SIZE", "GradientStore", "Sketch", "describe",
    "for_params", "fwht", "make", "IntrinsicResult", "intrinsic_dimension", "SearchResult",
    "intrinsic_search", "open_store", "per_example_gradients", "ravel_leaves", "sketch_gradient",
    "sketched_operator",
]
