"""Random projections of gradients and Hessian-vector products (Schioppa, NeurIPS 2024).

A sketch is a random linear map Phi: R^dim_in -> R^dim_out (D = dim_out much smaller than the
number of parameters) scaled so that E||Phi x||^2 = ||x||^2: dot products of gradients and the
top of a Hessian's spectrum survive it, in D numbers per vector instead of dim_in.

Two groups of kinds, each stated precisely by `describe(kind)`:
- the paper's constructions, rebuilt from its equations (see the kinds' module
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
  either applied to the gradient or as d/dw L(theta0 + Phi^T w) at w = 0 (same numbers); a
  non-finite result raises when called eagerly (under `jit` it cannot).
- `per_example_gradients(loss_fn, params, data, sketch, chunk_size)`: sketched per-example
  gradients [n, D] in memory; `write_gradient_store(loss_fn, params, data, sketch, path)`: the
  same rows streamed to a resumable zarr store keyed by what made it (params' values, the loss,
  the data, the sketch: another configuration is refused, and NaN rows are never written);
  `check_store(loss_fn, params, data, sketch, path)` checks a store against a run without
  writing, `open_store` reads it as it is.
- Asking a store (`workbench.sketch.query`): `sketch_from_store(path)` rebuilds the exact sketch
  from the store's metadata (checked against its recorded state hash), and
  `score_store(path, loss_fn, params, data, test_data, top_k=k)` sketches the test examples'
  gradients with it and scores them against every stored row, <Phi g_test, Phi g_i> (or cosines),
  reading the store in row blocks with a running top-k of proponents and opponents, so memory
  stays bounded (`keep_scores=False`: independent of n_train). An incomplete store, or one made
  with other params, another loss or other data, is refused.
- LoGra (`workbench.sketch.logra`, Choe et al. 2024): `logra_projection(functional, key, k_in, k_out)`
  draws a Gaussian pair (P_in, P_out) per layer `curvature.capture` covers, `logra_project` gives
  each example's P_in^T G_n P_out from one forward and backward pass (no per-example gradient),
  `logra_store` writes them to a gradient store keyed like the others, `logra_scores` scores test
  examples against it (optionally through LoGra's damped inverse covariance).
- `sketched_operator(op, sketch)`: Phi H Phi^T for `workbench.spectrum`.
- `intrinsic_sweep(...)`: train in random subspaces of each d of a grid at once;
  `intrinsic_search(...)`: the paper's doubling search (both in `workbench.sketch.intrinsic`).
- `quality`: how well a sketch keeps geometry (dot-product correlation, eigenvalue errors, norm
  ratios over many draws: the paper's Tables 6 and 7 and Theorems 3.1 and 3.3).
- `fwht(x, block_size)`: the orthonormal fast Walsh-Hadamard transform.

Examples:
    A sketch of R^64 to R^16 keeps a vector's squared norm in expectation, and `transpose` is
    its exact adjoint, <Phi x, y> = <x, Phi^T y>:

    >>> import jax, numpy as np
    >>> from workbench import sketch
    >>> phi = sketch.make("srht", jax.random.key(0), 64, 16)
    >>> x = jax.random.normal(jax.random.key(1), (64,))
    >>> y = jax.random.normal(jax.random.key(2), (16,))
    >>> phi.apply(x).shape, phi.transpose(y).shape
    ((16,), (64,))
    >>> bool(np.isclose(phi.apply(x) @ y, x @ phi.transpose(y), rtol=1e-4))
    True
    >>> ratios = sketch.quality.norm_ratios(x, "srht", jax.random.key(3), 16, num_draws=100)
    >>> print(round(float(ratios.mean()), 1))
    1.0
"""

from workbench.sketch import (
    kinds,  # noqa: F401  (registers every kind)
    quality,  # noqa: F401  (sketch.quality.*)
)
from workbench.sketch.base import FAMILIES, Sketch, for_params, make, ravel_leaves
from workbench.sketch.gradients import sketch_gradient
from workbench.sketch.intrinsic import (
    IntrinsicSearchResult,
    IntrinsicSweepResult,
    intrinsic_search,
    intrinsic_sweep,
)
from workbench.sketch.kinds.hadamard import DEFAULT_BLOCK_SIZE, fwht
from workbench.sketch.logra import (
    LograProjection,
    check_logra_store,
    logra_covariance,
    logra_project,
    logra_projection,
    logra_scores,
    logra_store,
)
from workbench.sketch.operator import sketched_operator
from workbench.sketch.query import StoreScores, score_store, sketch_from_store
from workbench.sketch.store import (
    GradientStore,
    check_store,
    open_store,
    per_example_gradients,
    write_gradient_store,
)

PAPER_KINDS = ("fjl", "ffd", "affd", "afjl", "qk")
OUR_KINDS = ("dense", "countsketch", "srht", "kronecker")
KINDS = PAPER_KINDS + OUR_KINDS

_ORIGIN = {
    **{k: "The paper's construction (Schioppa 2024), rebuilt from its equations." for k in PAPER_KINDS},
    **{k: "Ours, not a construction of the paper." for k in OUR_KINDS},
}


def describe(kind: str) -> str:
    """Whose construction a kind is, its map, scaling and distortion bound, options and defaults.

    Args:
        kind: a sketch kind (`KINDS`).

    Returns:
        A few lines of text: origin (the paper's or ours), the map and its options with defaults.

    Raises:
        ValueError: `kind` is unknown.
    """
    if kind not in FAMILIES:
        raise ValueError(f"kind must be one of {sorted(FAMILIES)}, got {kind!r}")
    fam = FAMILIES[kind]
    return f"{kind}: {_ORIGIN[kind]}\n{fam.doc}\nOptions (default): {fam.options}"


__all__ = [
    "KINDS", "OUR_KINDS", "PAPER_KINDS", "DEFAULT_BLOCK_SIZE", "GradientStore", "Sketch", "check_store", "describe",
    "for_params", "fwht", "make", "IntrinsicSweepResult", "intrinsic_sweep", "IntrinsicSearchResult",
    "intrinsic_search", "open_store", "per_example_gradients", "quality", "ravel_leaves", "sketch_gradient",
    "sketched_operator", "write_gradient_store", "StoreScores", "score_store", "sketch_from_store",
    "LograProjection", "check_logra_store", "logra_covariance", "logra_project", "logra_projection", "logra_scores",
    "logra_store",
]
