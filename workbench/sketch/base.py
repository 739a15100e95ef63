"""The `Sketch` object and `make(kind, key, dim_in, dim_out, **options)`.

A sketch is a random linear map Phi: R^dim_in -> R^dim_out, scaled so E||Phi x||^2 = ||x||^2.
It is a pytree (its random state arrays are children, its kind and sizes are static), so it can
be passed into `jax.jit`/`vmap` as an argument, and `make` itself traces (vmap over keys works).
Each kind is a `Family` of three pure functions registered in `FAMILIES`:
`init(key, dim_in, dim_out, options) -> (state, config)`, `apply(state, config, x[b, dim_in])`
and `transpose(state, config, y[b, dim_out])`, the exact adjoint of `apply`. A family with
`stream=True` (the paper kinds and `dense`) gets, in place of the key, a `randomness.Randomness`
over ONE threefry draw of a power-of-two length shared by every kind and size (threefry costs
~1 s of XLA compile per distinct shape; its initialiser then compiles without it).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from workbench.core.numerics import check_positive_int
from workbench.sketch.kinds import randomness

PyTree = Any


class Family(NamedTuple):
    init: Callable
    apply: Callable
    transpose: Callable
    options: dict  # option name -> default (None = chosen from the sizes)
    doc: str
    # apply_leaves(state, config, leaves [b, *shape_i]) -> [b, dim_out], or None: a kind whose map
    # is block-diagonal over a tree's leaves can skip concatenating them (per-example gradients)
    apply_leaves: Callable | None = None
    # True: `init` takes a `randomness.Randomness` (one threefry draw per sketch, shared programs)
    # in place of the key; False: `init` draws from the key itself
    stream: bool = False


FAMILIES: dict[str, Family] = {}


def register(kind: str, family: Family) -> None:
    """Register a sketch kind's `Family` under `kind` (called once by each kinds module on import).

    Args:
        kind: the name `make` accepts.
        family: the kind's init / apply / transpose functions, options and description.
    """
    FAMILIES[kind] = family


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Sketch:
    """A random linear map Phi: R^dim_in -> R^dim_out with E||Phi x||^2 = ||x||^2.

    - `apply(x)`: x [dim_in] or [batch, dim_in] -> [dim_out] or [batch, dim_out];
    - `transpose(y)`: the adjoint Phi^T y (same batching), <Phi x, y> = <x, Phi^T y>;
    - `apply_tree(tree, batched=False)`: Phi applied to the raveled tree (leaves in
      `jax.tree.leaves` order, each raveled row-major, as `ravel_pytree` does); with
      `batched=True` every leaf carries a leading batch axis.
    `state` holds seeds-derived arrays only: O(dim_in) vectors for the structured kinds.
    """

    state: dict
    kind: str = dataclasses.field(metadata=dict(static=True))
    dim_in: int = dataclasses.field(metadata=dict(static=True))
    dim_out: int = dataclasses.field(metadata=dict(static=True))
    config: tuple = dataclasses.field(metadata=dict(static=True))

    @property
    def options(self) -> dict:
        return {**dict(self.config), "dim_in": self.dim_in, "dim_out": self.dim_out}

    def _check(self, x: jax.Array, axis_len: int, name: str, what: str) -> jax.Array:
        x = jnp.asarray(x)
        if x.ndim not in (1, 2) or x.shape[-1] != axis_len:
            raise ValueError(
                f"{self.kind} sketch: {name} must have shape [{axis_len}] or [batch, {axis_len}] "
                f"({what}), got {x.shape}"
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"{self.kind} sketch: {name} must be floating point, got {x.dtype}")
        return x

    def apply(self, x: jax.Array) -> jax.Array:
        x = self._check(x, self.dim_in, "x", "dim_in")
        y = _apply_jit(self, x.reshape(-1, self.dim_in))
        return y.reshape(*x.shape[:-1], self.dim_out)

    def transpose(self, y: jax.Array) -> jax.Array:
        y = self._check(y, self.dim_out, "y", "dim_out")
        x = _transpose_jit(self, y.reshape(-1, self.dim_out))
        return x.reshape(*y.shape[:-1], self.dim_in)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.apply(x)

    def apply_tree(self, tree: PyTree, batched: bool = False) -> jax.Array:
        leaf_shapes = dict(self.config).get("leaf_shapes")
        if leaf_shapes is not None and FAMILIES[self.kind].apply_leaves is not None:
            leaves = [jnp.asarray(leaf) for leaf in jax.tree.leaves(tree)]
            shapes = tuple(tuple(leaf.shape[1:] if batched else leaf.shape) for leaf in leaves)
            if shapes == leaf_shapes and len({leaf.dtype for leaf in leaves}) == 1 and (
                    not batched or len({leaf.shape[0] for leaf in leaves}) == 1):
                if not jnp.issubdtype(leaves[0].dtype, jnp.floating):
                    raise ValueError(f"{self.kind} sketch: tree leaves must be floating point, got {leaves[0].dtype}")
                if not batched:
                    return _apply_leaves_jit(self, [leaf[None] for leaf in leaves])[0]
                return _apply_leaves_jit(self, leaves)
        return self.apply(ravel_leaves(tree, batched, self.dim_in, f"{self.kind} sketch"))

    @property
    def state_size(self) -> int:
        """Number of stored scalars (floats or ints) in the random state."""
        arrays = {k: v for k, v in self.state.items() if k != "key"}
        return sum(int(leaf.size) for leaf in jax.tree.leaves(arrays))


@jax.jit
def _apply_jit(sketch: Sketch, x: jax.Array) -> jax.Array:
    # one compiled program per (kind, sizes, batch): eager use would compile every op separately
    return FAMILIES[sketch.kind].apply(sketch.state, sketch.options, x)


@jax.jit
def _apply_leaves_jit(sketch: Sketch, leaves: list) -> jax.Array:
    return FAMILIES[sketch.kind].apply_leaves(sketch.state, sketch.options, leaves)


@jax.jit
def _transpose_jit(sketch: Sketch, y: jax.Array) -> jax.Array:
    return FAMILIES[sketch.kind].transpose(sketch.state, sketch.options, y)


def ravel_leaves(tree: PyTree, batched: bool, dim_in: int | None = None, who: str = "sketch") -> jax.Array:
    """Concatenate the leaves of `tree` as `ravel_pytree` does (optionally keeping a batch axis).

    Args:
        tree: a pytree of arrays sharing one dtype.
        batched: True when every leaf carries a common leading batch axis [b, ...].
        dim_in: the expected number of scalars per example (None: not checked).
        who: the name used in error messages.

    Returns:
        [n] (or [b, n]) array, the leaves raveled row-major in `jax.tree.leaves` order.

    Raises:
        ValueError: the tree has no leaves, mixed dtypes, no common batch axis, or not `dim_in` scalars.
    """
    leaves = jax.tree.leaves(tree)
    if not leaves:
        raise ValueError(f"{who}: tree has no leaves")
    dtypes = {jnp.asarray(leaf).dtype for leaf in leaves}
    if len(dtypes) != 1:
        raise ValueError(f"{who}: all tree leaves must share one dtype, got {sorted(map(str, dtypes))}")
    if batched:
        b = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in leaves}
        if len(b) != 1 or None in b:
            raise ValueError(f"{who}: batched=True needs one common leading axis on every leaf, got {b}")
        flat = jnp.concatenate([jnp.reshape(leaf, (jnp.shape(leaf)[0], -1)) for leaf in leaves], axis=1)
    else:
        flat = jnp.concatenate([jnp.ravel(leaf) for leaf in leaves])
    if dim_in is not None and flat.shape[-1] != dim_in:
        raise ValueError(f"{who}: tree has {flat.shape[-1]} scalars but the sketch has dim_in={dim_in}")
    return flat


def _as_key(key) -> jax.Array:
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    if key.dtype == jnp.uint32 and key.shape == (2,):
        return jax.random.wrap_key_data(key)
    raise ValueError(f"key must be a jax.random.key (or a legacy PRNGKey), got {key.dtype}{key.shape}")


def make(kind: str, key: jax.Array, dim_in: int, dim_out: int, **options) -> Sketch:
    """A random sketch Phi: R^dim_in -> R^dim_out of the given kind (see `KINDS`).

    Kinds: the paper's fjl, ffd, affd, afjl, qk (`PAPER_KINDS`) and our dense, countsketch, srht,
    kronecker. Each is scaled so that
    E||Phi x||^2 = ||x||^2; `transpose` is the exact adjoint; the same key gives the same map.
    Options per kind are listed in `workbench.sketch.describe(kind)`; unknown ones are refused.

    Args:
        kind: the sketch kind (`workbench.sketch.KINDS`).
        key: PRNG key (`jax.random.key` or a legacy uint32 [2] key); the same key gives the same map.
        dim_in: the input dimension n (a positive int).
        dim_out: the sketch dimension D (a positive int).
        **options: the kind's options (`describe(kind)`); missing ones take their defaults.

    Returns:
        The `Sketch`, a pytree usable as a `jit` / `vmap` argument.

    Raises:
        ValueError: unknown kind or option, non-hashable option values, dims not positive ints, or
            sizes the kind cannot map.
    """
    if kind not in FAMILIES:
        raise ValueError(f"kind must be one of {sorted(FAMILIES)}, got {kind!r}")
    dim_in, dim_out = check_positive_int("dim_in", dim_in), check_positive_int("dim_out", dim_out)
    fam = FAMILIES[kind]
    unknown = set(options) - set(fam.options)
    if unknown:
        raise ValueError(f"{kind} sketch: unknown option(s) {sorted(unknown)}; known: {sorted(fam.options)}")
    opts = {**fam.options, **options}
    key = _as_key(key)
    opts = {k: _freeze(v) for k, v in opts.items()}
    try:
        hash(tuple(opts.items()))
    except TypeError as e:
        raise ValueError(f"{kind} sketch: options must be hashable values, got {opts}") from e
    opts = tuple(sorted(opts.items()))
    if fam.stream:
        # draw every random word the kind needs in ONE program shared by all kinds and sizes of
        # that length, then build the state from it without threefry (cheap to compile)
        words = randomness.draw(key, randomness.bucket(_words_needed(kind, dim_in, dim_out, opts)))
        state, config = _init_stream_jit(kind, dim_in, dim_out, opts, words, key)
    else:
        state, config = _init_jit(kind, dim_in, dim_out, opts, key)
    config = config.value
    state = {**state, "key": key}  # kept for provenance (stores record it); one scalar key
    return Sketch(state, kind, dim_in, dim_out, tuple(sorted(config.items())))


def for_params(kind: str, key: jax.Array, params: PyTree, dim_out: int, **options) -> Sketch:
    """A sketch of the raveled `params` tree (dim_in = its size); for `kronecker` one Kronecker
    pair per leaf (`leaf_shapes`), so `apply_tree` on per-example gradients never concatenates them.

    Args:
        kind: the sketch kind.
        key: PRNG key.
        params: the params pytree whose raveled size is dim_in.
        dim_out: the sketch dimension D.
        **options: the kind's options (for kronecker, `leaf_shapes` defaults to the params' leaves).

    Returns:
        The `Sketch` with dim_in = number of params.

    Raises:
        ValueError: `params` has no leaves, or `make` refuses the arguments.
    """
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError("for_params: params has no leaves")
    dim_in = sum(int(jnp.size(leaf)) for leaf in leaves)
    if kind == "kronecker" and "leaf_shapes" not in options:
        options = {**options, "leaf_shapes": tuple(tuple(jnp.shape(leaf)) for leaf in leaves)}
    return make(kind, key, dim_in, dim_out, **options)


def _freeze(value):
    """Lists (also nested) to tuples, so options are hashable static data."""
    return tuple(_freeze(v) for v in value) if isinstance(value, list | tuple) else value


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _init_jit(kind, dim_in, dim_out, opts, key):
    state, config = FAMILIES[kind].init(key, dim_in, dim_out, dict(opts))
    return state, _Static(config)


@functools.lru_cache(maxsize=1024)
def _words_needed(kind, dim_in, dim_out, opts) -> int:
    """How many stream words `kind`'s initialiser consumes at these sizes (traced abstractly)."""
    source = randomness.Randomness(None)
    jax.eval_shape(lambda: FAMILIES[kind].init(source, dim_in, dim_out, dict(opts))[0])
    return source.used


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _init_stream_jit(kind, dim_in, dim_out, opts, words, key):
    state, config = FAMILIES[kind].init(randomness.Randomness(words, key), dim_in, dim_out, dict(opts))
    return state, _Static(config)


class _Static:
    """Carries a Python dict out of a jitted function as static (hashable by identity) data."""

    def __init__(self, value):
        self.value = value


jax.tree_util.register_pytree_node(_Static, lambda s: ((), s.value), lambda aux, _: _Static(aux))


def pad_to(x: jax.Array, n: int) -> jax.Array:
    """Zero-pad the last axis of x to length n.

    Args:
        x: [..., m] array with m <= n.
        n: the length wanted.

    Returns:
        [..., n] array, x followed by zeros (x itself when m == n).
    """
    extra = n - x.shape[-1]
    return x if extra == 0 else jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, extra)])


def cast(a: jax.Array, like: jax.Array) -> jax.Array:
    """`a` in the dtype of `like`: a kind's stored random state (float32) meets inputs of any float dtype.

    Args:
        a: the array to cast.
        like: an array of the dtype wanted.

    Returns:
        `a.astype(like.dtype)`.
    """
    return a.astype(like.dtype)
