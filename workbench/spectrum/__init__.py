"""Spectra of curvature operators: eigensolvers, spectral density, traces, sharpness.

- `krylov`: `power_iteration`, `lanczos`, `arnoldi`, `top_eigenpairs` (thick-restart Lanczos);
- `density`: `spectral_density` (stochastic Lanczos quadrature), `trace` (Hutchinson, Hutch++,
  XTrace, each with a standard error);
- `sharpness`: the top Hessian eigenvalue as a training callback.
All take a `workbench.curvature.LinearOperator` and an explicit PRNG key.
"""

from workbench.spectrum.density import (
    Density,
    TraceEstimate,
    spectral_density,
    trace,
    wasserstein_to_eigenvalues,
)
from workbench.spectrum.krylov import (
    ArnoldiResult,
    EigenResult,
    LanczosResult,
    PowerResult,
    RitzPairs,
    arnoldi,
    lanczos,
    power_iteration,
    ritz_pairs,
    top_eigenpairs,
    tridiagonal,
)
from workbench.spectrum.sharpness import (
    sharpness,
    sharpness_callback,
)

__all__ = [
    "ArnoldiResult", "Density", "EigenResult", "LanczosResult", "PowerResult", "TraceEstimate",
    "RitzPairs", "arnoldi", "lanczos", "ritz_pairs", "power_iteration", "spectral_density", "top_eigenpairs",
    "trace", "tridiagonal", "sharpness", "sharpness_callback", "wasserstein_to_eigenvalues",
]
