"""The diagonal of a curvature operator, exact or estimated: what Adam-style preconditioners,
pruning saliencies (Optimal Brain Damage) and Laplace approximations read off a Hessian, GGN or
Fisher without forming the matrix.

- `diagonal(op, key=None, method=...)`: the diagonal of any symmetric `LinearOperator`, exact
  (products with the unit vectors, in vmapped blocks) or by Hutchinson's estimator with its
  standard error per entry.
- `dataset_diagonal(loss_fn, params, data, kind, ...)`: the diagonal of
  `operator(loss_fn, params, data, kind)` (data curvature + l2 I); the exact GGN and Fisher
  diagonals come from per-example Jacobians and gradients, far cheaper than one product per
  parameter.
"""


from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from workbench.core import tree as tu
from workbench.core.numerics import (
    check_finite_flag,
    check_floating,
    check_key,
    check_nonnegative,
    check_positive_int,
    num_examples,
    quick_compile_on_cpu,
)
from workbench.core.per_example import flat_per_example_grads, map_chunks, sum_chunks
from workbench.curvature.averaged import operator, resolve_roles
from workbench.curvature.linear import LinearOperator

PyTree = Any
METHODS = ("exact", "hutchinson")
# The exact diagonal of a generic operator costs one product per parameter (each a pass over the
# data for a dataset operator); above this many parameters it is refused unless `force=True`.
EXACT_MAX_DIM = 10_000
DEFAULT_MAX_VECTORS = 32  # products pushed through the operator together (vmapped)
_STRUCTURED_CHUNK = 64  # examples whose per-example Jacobians [C, p] are held at once


class Diagonal(NamedTuple):
    """The diagonal of a curvature matrix, shaped like the vectors the operator acts on.

    - `values`: the diagonal entries, a pytree shaped like the params (the operator's `like`);
    - `std_error`: the standard error of each entry (the sample standard deviation over probes
      divided by sqrt(num_probes)); zeros for the exact method, which has no sampling error;
    - `num_probes`: the random probes used (0 for "exact");
    - `method`: "exact" or "hutchinson".
    `flat` and `flat_std_error` are the same as [dim] vectors (`jax.tree.leaves` order).
    """

    values: PyTree
    std_error: PyTree
    num_probes: int
    method: str

    @property
    def flat(self) -> jax.Array:
        """The diagonal as one [dim] vector (leaves concatenated in `jax.tree.leaves` order)."""
        return jnp.concatenate([jnp.ravel(a) for a in jax.tree.leaves(self.values)])

    @property
    def flat_std_error(self) -> jax.Array:
        """The standard errors as one [dim] vector (the order of `flat`)."""
        return jnp.concatenate([jnp.ravel(a) for a in jax.tree.leaves(self.std_error)])


def _block(max_vectors, count: int) -> int:
    """Products computed together: `max_vectors` (default 32), at most `count`."""
    size = DEFAULT_MAX_VECTORS if max_vectors is None else check_positive_int("max_vectors", max_vectors)
    return min(size, count)


def _check_exact_size(dim: int, force: bool, cost: str) -> None:
    if dim > EXACT_MAX_DIM and not force:
        raise ValueError(
            f"the exact diagonal of a {dim}-parameter operator costs {cost}; it is refused above "
            f"EXACT_MAX_DIM={EXACT_MAX_DIM} parameters: pass method='hutchinson' with a key for an "
            "estimate, or force=True to compute it anyway")


# ----------------------------------------------------------------------------- any operator


@functools.partial(quick_compile_on_cpu, static_argnums=1)
def _exact_entries(op: LinearOperator, block: int):
    """A_ii for every i: the product with unit vector e_i, entry i, `block` unit vectors at once."""

    def entry(i):
        return op.mv(jax.nn.one_hot(i, op.dim, dtype=op.dtype))[i]

    entries = map_chunks(jax.vmap(entry), jnp.arange(op.dim), block, even=True)
    return entries, jnp.all(jnp.isfinite(entries))


@functools.partial(quick_compile_on_cpu, static_argnums=3)
def _hutchinson_entries(op: LinearOperator, key: jax.Array, num_probes: jax.Array, block: int):
    """mean_k z_k * (A z_k) over Rademacher z_k, k < num_probes, and its standard error per entry,
    accumulated block by block (Chan et al.'s pairwise update of the mean and the sum of squared
    deviations: stable in float32 when the mean dominates the spread). Probe k is drawn from
    fold_in(key, k), so the estimate does not depend on `block`; `num_probes` is traced (one
    compiled program per operator kind and block, whatever the count)."""
    zeros = jnp.zeros((op.dim,), op.dtype)

    def step(b, carry):
        count, mean, m2 = carry
        index = b * block + jnp.arange(block, dtype=b.dtype)
        valid = (index < num_probes)[:, None]  # the last block may run past num_probes
        z = jax.vmap(lambda k: jax.random.rademacher(jax.random.fold_in(key, k), (op.dim,), op.dtype))(index)
        samples = jnp.where(valid, z * jax.vmap(op.mv)(z), 0)
        n_b = jnp.sum(valid).astype(op.dtype)
        mean_b = jnp.sum(samples, axis=0) / n_b
        m2_b = jnp.sum(jnp.where(valid, (samples - mean_b) ** 2, 0), axis=0)
        total = count + n_b
        delta = mean_b - mean
        mean = mean + delta * (n_b / total)
        m2 = m2 + m2_b + delta**2 * (count * n_b / total)
        return total, mean, m2

    num_blocks = (num_probes + block - 1) // block
    count, mean, m2 = jax.lax.fori_loop(0, num_blocks, step, (jnp.zeros((), op.dtype), zeros, zeros))
    std_error = jnp.sqrt(m2 / ((count - 1) * count))
    return mean, std_error, jnp.all(jnp.isfinite(mean)) & jnp.all(jnp.isfinite(m2))


def diagonal(
    op: LinearOperator,
    key: jax.Array | None = None,
    *,
    method: str = "exact",
    num_probes: int = 100,
    max_vectors: int | None = None,
    force: bool = False,
) -> Diagonal:
    """The diagonal of a symmetric `LinearOperator` A, exact or by Hutchinson's estimator.

    "exact": A_ii = e_i^T A e_i, `max_vectors` unit vectors pushed through the operator at once
    (vmapped); it costs `op.dim` operator products (for a dataset operator, each a pass over the
    data) and is refused above `EXACT_MAX_DIM` parameters unless `force=True`.

    "hutchinson": d ~ (1/m) sum_k z_k * (A z_k) over m Rademacher probes z_k (entries +-1), which
    is unbiased since E[z_i z_j] = delta_ij. One probe's sample of entry i is
    A_ii + sum_{j != i} A_ij z_i z_j, of variance sum_{j != i} A_ij^2: the estimate is accurate
    where the diagonal dominates its row and slow (error ~ 1/sqrt(m)) elsewhere. The standard
    error reported is the sample standard deviation of the m samples over sqrt(m). Probe k is
    drawn from `jax.random.fold_in(key, k)`: the same key gives the same estimate whatever
    `max_vectors`, and more probes extend the same sequence.

    Args:
        op: the operator (symmetric: every curvature operator is).
        key: PRNG key drawing the probes; for method="hutchinson" only (None for "exact").
        method: "exact" or "hutchinson".
        num_probes: probes for "hutchinson" (>= 2, for a standard error).
        max_vectors: the most products computed together (vmapped; default 32): bounds memory
            at max_vectors * dim, the result does not depend on it.
        force: compute the exact diagonal above `EXACT_MAX_DIM` parameters.

    Returns:
        A `Diagonal(values, std_error, num_probes, method)`, values shaped like `op.like`.

    Raises:
        TypeError: `op` is not a `LinearOperator`.
        ValueError: an unknown method, a missing or malformed key (or a key with "exact"),
            num_probes < 2, a bad max_vectors, or an exact diagonal too large without `force`.
        FloatingPointError: an operator product was NaN or inf.
    """
    if not isinstance(op, LinearOperator):
        raise TypeError(f"op must be a curvature.LinearOperator, got {type(op).__name__}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "exact":
        if key is not None:
            raise ValueError("key is used by method='hutchinson' only; pass method='hutchinson' to "
                             "estimate the diagonal, or no key for the exact one")
        _check_exact_size(op.dim, force, f"{op.dim} operator products")
        flat, finite = _exact_entries(op, _block(max_vectors, op.dim))
        check_finite_flag(finite, "curvature.diagonal(method='exact')")
        return Diagonal(op.unravel(flat), op.unravel(jnp.zeros_like(flat)), 0, "exact")
    if key is None:
        raise ValueError("key is required for method='hutchinson' (it draws the probes)")
    key = check_key(key)
    if key.dtype == jnp.uint32:  # a legacy PRNGKey: the draws below take a typed key
        key = jax.random.wrap_key_data(jnp.asarray(key))
    if isinstance(num_probes, bool) or not isinstance(num_probes, int | np.integer) or num_probes < 2:
        raise ValueError(f"num_probes must be an int >= 2 (a standard error needs two probes), got {num_probes!r}")
    num_probes = int(num_probes)
    block = _block(max_vectors, num_probes)
    mean, std_error, finite = _hutchinson_entries(op, key, jnp.asarray(num_probes, jnp.int32), block)
    check_finite_flag(finite, "curvature.diagonal(method='hutchinson')")
    return Diagonal(op.unravel(mean), op.unravel(std_error), num_probes, "hutchinson")


# ----------------------------------------------------------------------------- dataset curvature


@functools.partial(quick_compile_on_cpu, static_argnums=(0, 1, 4))
def _ggn_entries(predict_fn: Callable, output_loss_fn: Callable, params, data, chunk_size: int):
    """sum_n diag(J_n^T H_n J_n) / N, J_n [C, p] the Jacobian of example n's C outputs (C
    backward passes), H_n [C, C] the Hessian of its loss in its outputs."""
    flat, unravel = tu.ravel(params)

    def example(x, y):
        outputs_of = lambda f: predict_fn(unravel(f), x[None])  # noqa: E731
        outputs = outputs_of(flat)
        jac = jax.jacrev(lambda f: jnp.ravel(outputs_of(f)))(flat)  # [C, p]
        loss = lambda o: output_loss_fn(o.reshape(outputs.shape), y[None])[0]  # noqa: E731
        h_out = jax.hessian(loss)(jnp.ravel(outputs))  # [C, C]
        return jnp.sum(jac * (h_out @ jac), axis=0)

    def chunk_sum(chunk):
        x, y = chunk
        return jnp.sum(jax.vmap(example)(x, y), axis=0)

    total = sum_chunks(chunk_sum, data, chunk_size)
    entries = total / jnp.asarray(num_examples(data), total.dtype)
    return entries, jnp.all(jnp.isfinite(entries))


@functools.partial(quick_compile_on_cpu, static_argnums=(0, 3))
def _fisher_entries(loss_fn: Callable, params, data, chunk_size: int):
    """mean_n g_n^2, g_n the gradient of example n's loss: one backward pass per example."""
    def chunk_sum(chunk):
        return jnp.sum(flat_per_example_grads(loss_fn, params, chunk) ** 2, axis=0)

    total = sum_chunks(chunk_sum, data, chunk_size)
    entries = total / jnp.asarray(num_examples(data), total.dtype)
    return entries, jnp.all(jnp.isfinite(entries))


def dataset_diagonal(
    loss_fn,
    params: PyTree,
    data: Any,
    kind: str = "hessian",
    *,
    method: str = "exact",
    key: jax.Array | None = None,
    num_probes: int = 100,
    chunk_size: int | None = None,
    predict_fn: Callable | None = None,
    output_loss_fn: Callable | None = None,
    l2: float | None = None,
    max_vectors: int | None = None,
    force: bool = False,
) -> Diagonal:
    """The diagonal of `operator(loss_fn, params, data, kind)`: data curvature + l2 I averaged
    over the whole dataset, exact or by Hutchinson's estimator (see `diagonal`).

    The roles are resolved as `operator` resolves them (`resolve_roles`): a plain batch-mean
    `loss_fn` or a `models.Functional`, whose l2 the GGN and Fisher diagonals add and whose
    objective carries it for the Hessian. The exact diagonals cost:
    - "hessian": `diagonal(op)` with one dataset Hessian-vector product per parameter;
    - "ggn": per example, the Jacobian J_n [C, p] of its C outputs (C backward passes) and the
      Hessian H_n [C, C] of its loss in them: diag = (1/N) sum_n sum_ab H_n,ab J_n,ai J_n,bi,
      i.e. C backward passes per example instead of p dataset products (assumes each example's
      outputs and loss depend on that example alone, as in `ggn_vp`);
    - "fisher": (1/N) sum_n g_n^2, one backward pass per example.
    All three are refused above `EXACT_MAX_DIM` parameters unless `force=True`. The
    "hutchinson" estimate uses the dataset operator's products for every kind.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar` (a batch mean) or a `models.Functional`.
        params: the point (pytree of floating arrays).
        data: pytree of arrays with a leading example axis [N, ...]; an (x, y) pair for "ggn".
        kind: "hessian", "ggn" or "fisher".
        method: "exact" or "hutchinson".
        key: PRNG key drawing the probes, for method="hutchinson" only.
        num_probes: probes for "hutchinson" (>= 2).
        chunk_size: examples processed at once (operator products: as in `operator`; the exact
            GGN and Fisher: 64 by default, their per-example Jacobians held together).
        predict_fn: for "ggn" (overrides the Functional's).
        output_loss_fn: for "ggn" (overrides the Functional's).
        l2: the multiple of I added to "ggn" and "fisher" (default the Functional's, else 0).
        max_vectors: the most operator products computed together (see `diagonal`).
        force: compute the exact diagonal above `EXACT_MAX_DIM` parameters.

    Returns:
        A `Diagonal(values, std_error, num_probes, method)`, values shaped like `params`.

    Raises:
        TypeError: `loss_fn` is neither callable nor a Functional.
        ValueError: as `operator` and `diagonal` raise them, or "ggn" data that is not an
            (x, y) pair.
        FloatingPointError: a NaN or inf in the products, gradients or Jacobians.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "hutchinson" or kind not in ("ggn", "fisher"):
        op = operator(loss_fn, params, data, kind, chunk_size=chunk_size, predict_fn=predict_fn,
                      output_loss_fn=output_loss_fn, l2=l2)
        return diagonal(op, key, method=method, num_probes=num_probes, max_vectors=max_vectors, force=force)
    if key is not None:
        raise ValueError("key is used by method='hutchinson' only; pass method='hutchinson' to "
                         "estimate the diagonal, or no key for the exact one")
    loss_fn, predict_fn, output_loss_fn, l2 = resolve_roles(loss_fn, kind, predict_fn, output_loss_fn, l2)
    l2 = check_nonnegative("l2", l2 or 0.0, "it is the regulariser's curvature, l2 I")
    check_floating(params)
    n = num_examples(data)
    chunk_size = min(check_positive_int("chunk_size", chunk_size or _STRUCTURED_CHUNK), n)
    dim = int(sum(np.size(a) for a in jax.tree.leaves(params)))
    if kind == "ggn":
        if not (isinstance(data, tuple | list) and len(tuple(data)) == 2):  # Dataset.__len__ counts examples
            raise ValueError(f"kind='ggn' needs data as an (x, y) pair, got {type(data).__name__}")
        _check_exact_size(dim, force, f"{n} per-example Jacobians of shape [outputs, {dim}]")
        flat, finite = _ggn_entries(predict_fn, output_loss_fn, params, tuple(data), chunk_size)
    else:
        _check_exact_size(dim, force, f"{n} per-example gradients of length {dim}")
        flat, finite = _fisher_entries(loss_fn, params, data, chunk_size)
    check_finite_flag(finite, f"curvature.dataset_diagonal(kind={kind!r}, method='exact')")
    flat = flat + jnp.asarray(l2, flat.dtype)
    unravel = tu.ravel(params)[1]
    return Diagonal(unravel(flat), unravel(jnp.zeros_like(flat)), 0, "exact")
