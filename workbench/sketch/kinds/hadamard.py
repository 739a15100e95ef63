"""Fast Walsh-Hadamard transform (orthonormal, Sylvester order) along the last axis.

H_N (N = 2^k) is the Sylvester Hadamard matrix scaled by 1/sqrt(N), so it is symmetric and
orthogonal: H_N = H_N^T = H_N^{-1}. Sylvester's construction is a Kronecker product,
H_N = H_{f_1} (x) H_{f_2} (x) ... (x) H_{f_m} for any factorisation N = f_1 ... f_m into powers of
two, so the transform is the same matrix whatever the factorisation; only the memory layout of
the computation changes. `block_size` picks it: the vector is viewed as a tensor of shape
[f_1, ..., f_m] with f_i = block_size (the last factor takes the remainder) and a dense
f_i x f_i Hadamard is contracted along each axis. block_size=2 is the classical butterfly
(log2 N add/sub passes); larger blocks trade passes for small dense matmuls, which is what an
accelerator's matrix unit wants. On CPU the fastest layout is measured in
`benchmarks/bench_sketch.py` and used as `DEFAULT_BLOCK_SIZE`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# Measured in benchmarks/bench_sketch.py (fwht layout table) on the 2-core CPU box.
DEFAULT_BLOCK_SIZE = 8


def is_power_of_two(n: int) -> bool:
    """Whether `n` is a positive power of two (1, 2, 4, ...).

    Args:
        n: the integer tested.

    Returns:
        True when n >= 1 and n has one bit set.
    """
    return n >= 1 and (n & (n - 1)) == 0


def next_power_of_two(n: int) -> int:
    """The smallest power of two >= `n` (1 for n <= 1): the padded length of a Hadamard transform.

    Args:
        n: a length.

    Returns:
        2^ceil(log2 n) as an int.
    """
    return 1 << max(0, int(n - 1).bit_length())


@functools.cache
def _hadamard_np(n: int) -> np.ndarray:
    """Unnormalised +-1 Sylvester Hadamard matrix of order n (a power of two)."""
    h = np.ones((1, 1), dtype=np.float32)
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def _factors(n: int, block_size: int) -> list[int]:
    factors = []
    while n > 1:
        f = min(block_size, n)
        factors.append(f)
        n //= f
    return factors


def fwht(x: jax.Array, block_size: int | None = None) -> jax.Array:
    """Orthonormal Walsh-Hadamard transform of `x` along its last axis (length a power of two).

    `block_size` (a power of two >= 2) sets the Kronecker layout, not the result.

    Args:
        x: [..., n] floating array, n a power of two.
        block_size: largest Hadamard factor applied as one small matmul (None: `DEFAULT_BLOCK_SIZE`).

    Returns:
        H_n x / sqrt(n) along the last axis, same shape and dtype (its own inverse).

    Raises:
        ValueError: n is not a power of two, x is not floating point, or `block_size` is not a
            power of two >= 2.
    """
    n = x.shape[-1]
    if not is_power_of_two(n):
        raise ValueError(f"fwht: last axis of x must be a power of two, got {n}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"fwht: x must be floating point, got {x.dtype}")
    block_size = DEFAULT_BLOCK_SIZE if block_size is None else int(block_size)
    if block_size < 2 or not is_power_of_two(block_size):
        raise ValueError(f"fwht: block_size must be a power of two >= 2, got {block_size}")
    if n == 1:
        return x
    lead = x.shape[:-1]
    factors = _factors(n, block_size)
    y = x.reshape(-1, n)
    pre = 1
    for f in factors:  # static, at most log2(n) factors
        post = n // (pre * f)
        y = y.reshape(-1, pre, f, post)
        if f == 2:
            a, b = y[:, :, 0], y[:, :, 1]
            y = jnp.stack([a + b, a - b], axis=2)
        else:
            h = jnp.asarray(_hadamard_np(f), dtype=x.dtype)
            y = jnp.einsum("ij,bpjq->bpiq", h, y)
        pre *= f
    scale = jnp.asarray(1.0 / np.sqrt(n), dtype=x.dtype)
    return (y.reshape(*lead, n)) * scale


def block_fwht(x: jax.Array, block: int, block_size: int | None = None) -> jax.Array:
    """(I_{N/block} (x) H_block) x along the last axis: an independent transform per block.

    Args:
        x: [..., N] floating array, N a multiple of `block`.
        block: the transform's width (a power of two).
        block_size: passed to `fwht`.

    Returns:
        The blockwise orthonormal transform, same shape as x.

    Raises:
        ValueError: N is not a multiple of `block`.
    """
    n = x.shape[-1]
    if n % block:
        raise ValueError(f"block_fwht: last axis {n} is not a multiple of block {block}")
    y = x.reshape(*x.shape[:-1], n // block, block)
    return fwht(y, block_size).reshape(x.shape)
