"""All the randomness of one sketch from ONE threefry draw: a uint32 stream consumed in order.

Why: every distinct shape of `jax.random.normal/rademacher/permutation/randint` is its own XLA
program, and threefry costs about a CPU-second to compile on CPU. A paper that builds sketches at
many sizes compiled one per array per size. Here `make` draws `jax.random.bits(key, (L,))` once,
with L the next power of two >= the number of words the kind needs (`bucket`), in a program shared
by every kind and size of that bucket; the kind's initialiser then turns consecutive words into
the arrays it needs, with no threefry in its own program.

Each word is used once, and the conversions are exact transforms of i.i.d. uniform 32-bit words:
- `uniform`: the top 23 bits as the mantissa of a float in [1, 2), minus 1 (what
  `jax.random.uniform` does);
- `normal`: sqrt(2) erfinv(u) with u uniform in (-1, 1) (what `jax.random.normal` does);
- `rademacher`: +-1 from the top bit, p = 1/2 each;
- `randint(shape, n)`: floor(X n / 2^64) with X a 64-bit word (two 32-bit words), computed exactly
  in 32-bit limbs: P(value = v) is within n / 2^64 of 1/n;
- `permutation(n)`: the ranks of n i.i.d. 64-bit words (`lax.sort` on two 32-bit keys); ties have
  probability below n^2 / 2^65, so the permutation is uniform to that precision (JAX's own
  `permutation` sorts 32-bit keys in one round for n up to ~1600).
The same key gives the same stream, in or out of `jit`/`vmap`, in any process.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

MIN_BUCKET = 256


def bucket(num_words: int) -> int:
    """The stream length drawn for `num_words` words: the next power of two, at least MIN_BUCKET.

    Args:
        num_words: how many uint32 words a kind's initialiser consumes.

    Returns:
        The power-of-two length drawn (so kinds and sizes share a few compiled draws).
    """
    return max(MIN_BUCKET, 1 << max(0, int(num_words - 1).bit_length()))


@functools.partial(jax.jit, static_argnums=1)
def draw(key: jax.Array, length: int) -> jax.Array:
    """`length` i.i.d. uniform uint32 words from `key` (one compiled program per length)."""
    return jax.random.bits(key, (length,), jnp.uint32)


def _mulhi(x, s):
    """floor(x * s / 2^32) for uint32 x and a Python int 0 <= s < 2^32, exactly (16-bit limbs)."""
    m16 = np.uint32(0xFFFF)
    s1, s0 = np.uint32(s >> 16), np.uint32(s & 0xFFFF)
    x1, x0 = x >> 16, x & m16
    mid1 = x1 * s0 + ((x0 * s0) >> 16)
    mid2 = x0 * s1 + (mid1 & m16)
    return x1 * s1 + (mid1 >> 16) + (mid2 >> 16)


class Randomness:
    """Hands out consecutive words of one uint32 stream as the arrays a sketch needs.

    `words=None` counts only (the arrays are zeros): `make` runs the initialiser that way under
    `jax.eval_shape` to learn how many words to draw."""

    def __init__(self, words: jax.Array | None, key: jax.Array | None = None):
        self.words, self.key, self.used = words, key, 0

    def _take(self, n: int) -> jax.Array:
        start, self.used = self.used, self.used + int(n)
        if self.words is None:
            return jnp.zeros((int(n),), jnp.uint32)
        return self.words[start: start + int(n)]

    def bits(self, shape) -> jax.Array:
        shape = tuple(int(v) for v in shape)
        return self._take(math.prod(shape)).reshape(shape)

    def uniform(self, shape) -> jax.Array:
        """float32 in [0, 1)."""
        w = self.bits(shape)
        return jax.lax.bitcast_convert_type((w >> 9) | np.uint32(0x3F800000), jnp.float32) - np.float32(1.0)

    def normal(self, shape) -> jax.Array:
        """float32 N(0, 1), as `jax.random.normal` computes it from a uniform in (-1, 1)."""
        lo = np.nextafter(np.float32(-1.0), np.float32(1.0))
        u = jnp.maximum(lo, self.uniform(shape) * (np.float32(1.0) - lo) + lo)
        return np.float32(np.sqrt(2.0)) * jax.lax.erf_inv(u)

    def rademacher(self, shape) -> jax.Array:
        """float32 +-1 with probability 1/2 each."""
        return np.float32(1.0) - np.float32(2.0) * (self.bits(shape) >> 31).astype(jnp.float32)

    def randint(self, shape, n: int) -> jax.Array:
        """int32 uniform in [0, n) (n <= 2^31), from a 64-bit word each."""
        n = int(n)
        if not 1 <= n <= 2**31:
            raise ValueError(f"randint needs 1 <= n <= 2^31, got {n}")
        hi, lo = self.bits(shape), self.bits(shape)
        if n & (n - 1) == 0:  # a power of two: the top log2 n bits are exact
            return (hi >> (32 - (n.bit_length() - 1)) if n > 1 else hi * 0).astype(jnp.int32)
        # floor((hi 2^32 + lo) n / 2^64) = mulhi(hi, n) + carry(low word of hi n + mulhi(lo, n))
        low = hi * np.uint32(n)  # wraps mod 2^32
        carry = (low + _mulhi(lo, n)) < low
        return (_mulhi(hi, n) + carry.astype(jnp.uint32)).astype(jnp.int32)

    def permutation(self, n: int) -> jax.Array:
        """int32 [n], a uniformly random permutation of range(n) (ranks of 64-bit words)."""
        a, b = self.bits((n,)), self.bits((n,))
        return jax.lax.sort((a, b, jnp.arange(n, dtype=jnp.int32)), num_keys=2)[2]

    def permutations(self, rows: int, n: int) -> jax.Array:
        """int32 [rows, n], independent uniform permutations of range(n)."""
        a, b = self.bits((rows, n)), self.bits((rows, n))
        idx = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (rows, n))
        return jax.lax.sort((a, b, idx), dimension=1, num_keys=2)[2]
