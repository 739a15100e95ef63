"""Beyond one machine: JAX's multi-process engine (`jax.distributed`) for the curvature operator,
the gradient store and quasi-Newton minimisation (L-BFGS, OWL-QN, entropic optimal transport)."""
