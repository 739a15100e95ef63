"""Spectra of curvature operators: eigensolvers, spectral density, traces, sharpness.

- `krylov`: `power_iteration`, `lanczos`, `arnoldi`, `top_eigenpairs` (thick-restart Lanczos);
- `density`: `spectral_density` (stochastic Lanczos quadrature), `trace` (Hutchinson, Hutch++,
  XTrace, each with a standard error);
- `sharpness`: the top Hessian eigenvalue as a training callback.
All take a `workbench.curvature.LinearOperator` and an explicit PRNG key.
"""

from workbench.spectrum.density import Density, TraceEstimate, spectral_density, trace
from workbench.spectrum.krylov import (
    ArnoldiResult,
    EigenResult,
    LanczosResult,
    PowerResult,
    arnoldi,
    default_tol,
    lanczos,
    power_iteration,
    top_eigenpairs,
    tridiagonal,
)

__all__ = [
    "ArnoldiResult", "Density", "EigenResult", "LanczosResult", "PowerResult", "TraceEstimate",
    "arnoldi", "default_tol", "lanczos", "power_iteration", "spectral_density", "top_eigenpairs",
    "trace", "tridiagonal",
]
