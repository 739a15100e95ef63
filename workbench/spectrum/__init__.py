"""Spectra of curvature operators: eigensolvers, spectral density, traces, sharpness.

- `krylov`: the factorizations `power_iteration`, `lanczos`, `arnoldi_factorization`, and
  `ritz_pairs` read off them;
- `eigensolver`: `top_eigenpairs` (thick-restart Lanczos, or one Arnoldi factorization), and
  `lowered_programs` (its two programs lowered, for compile and memory measurements);
- `density`: `spectral_density` (stochastic Lanczos quadrature), `trace` (Hutchinson, Hutch++,
  XTrace, each with a standard error);
- `sharpness`: the top Hessian eigenvalue as a training callback;
- `structure`: outliers against the bulk (`outlier_gap`, `outlier_trace_fraction`), the gradient
  in the top eigenspace (`subspace_fraction`, `random_subspace_fraction`), SLQ's distance to the
  exact spectrum relative to a point mass (`relative_wasserstein`), and a dense Hessian by
  automatic differentiation independent of the operators (`autodiff_hessian`).
The solvers and estimators take a `workbench.curvature.LinearOperator` and an explicit PRNG key,
right after it.

Examples:
    >>> import jax, jax.numpy as jnp
    >>> from workbench import curvature, spectrum
    >>> op = curvature.from_matrix(jnp.diag(jnp.array([3.0, 1.0, 0.5, 0.25])))
    >>> top = spectrum.top_eigenpairs(op, jax.random.key(0), k=2)
    >>> [round(float(v), 4) for v in top.values], top.num_matvecs
    ([3.0, 1.0], 4)
    >>> est = spectrum.trace(op, jax.random.key(1), num_probes=2)  # z^T D z = tr D for z = +-1
    >>> round(float(est.estimate), 4), est.num_matvecs
    (4.75, 2)
"""

from workbench.spectrum.density import (
    Density,
    TraceEstimate,
    spectral_density,
    trace,
    wasserstein_to_eigenvalues,
)
from workbench.spectrum.eigensolver import (
    EigenResult,
    LoweredPrograms,
    lowered_programs,
    top_eigenpairs,
)
from workbench.spectrum.krylov import (
    ArnoldiResult,
    LanczosResult,
    PowerResult,
    RitzPairs,
    arnoldi_factorization,
    lanczos,
    power_iteration,
    ritz_pairs,
    tridiagonal,
)
from workbench.spectrum.sharpness import (
    sharpness,
    sharpness_callback,
)
from workbench.spectrum.structure import (
    autodiff_hessian,
    outlier_gap,
    outlier_trace_fraction,
    random_subspace_fraction,
    relative_wasserstein,
    subspace_fraction,
)

__all__ = [
    "ArnoldiResult", "Density", "EigenResult", "LanczosResult", "LoweredPrograms", "PowerResult",
    "RitzPairs", "TraceEstimate", "arnoldi_factorization", "lanczos", "lowered_programs",
    "power_iteration", "ritz_pairs", "sharpness", "sharpness_callback", "spectral_density",
    "top_eigenpairs", "trace", "tridiagonal", "wasserstein_to_eigenvalues", "autodiff_hessian",
    "outlier_gap", "outlier_trace_fraction", "random_subspace_fraction", "relative_wasserstein", "subspace_fraction",
]
