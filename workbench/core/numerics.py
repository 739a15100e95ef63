"""Numerical ground rules in one place: dtype-aware tolerances, finiteness checks, the example
count of a dataset.

Every layer above uses these instead of its own literals and validators, so a float32 run gets
float32 tolerances and every boundary reports bad input with the same words.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


def default_tol(dtype) -> float:
    """Relative tolerance for iterative solvers: 1e-10 in float64, 1e-4 in float32 (and below).

    Args:
        dtype: the floating dtype of the computation.

    Returns:
        The tolerance, a Python float.
    """
    return 1e-10 if jnp.finfo(dtype).bits >= 64 else 1e-4


def num_examples(data: PyTree, name: str = "data") -> int:
    """The common leading (example) axis of every array in `data`; raises ValueError when there
    are no arrays, the arrays disagree, an array has no leading axis, or the data is empty.

    Args:
        data: a pytree of arrays with a leading example axis.
        name: what `data` is called in error messages.

    Returns:
        The number of examples n >= 1.

    Raises:
        ValueError: as above, naming `name`.
    """
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError(f"{name} holds no arrays")
    sizes = {int(np.shape(a)[0]) if np.ndim(a) else -1 for a in leaves}
    if len(sizes) != 1 or -1 in sizes:
        raise ValueError(
            f"{name}: the arrays disagree on the number of examples (every array needs the same "
            f"leading example axis), got shapes {[tuple(np.shape(a)) for a in leaves]}"
        )
    n = sizes.pop()
    if n == 0:
        raise ValueError(f"{name} is empty (0 examples)")
    return n


def check_finite(tree: PyTree, name: str) -> None:
    """Raise ValueError naming the first leaf of `tree` that holds NaN or inf.

    Args:
        tree: the pytree checked (non-floating leaves are skipped).
        name: what `tree` is called in the message.

    Raises:
        ValueError: a leaf holds NaN or inf.
    """
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            continue
        if isinstance(leaf, jax.core.Tracer):
            finite = bool(jnp.all(jnp.isfinite(leaf)))
        else:  # on the host: no program compiled per leaf shape on a first call
            finite = bool(np.all(np.isfinite(np.asarray(leaf))))
        if not finite:
            where = jax.tree_util.keystr(path) or "<root>"
            raise ValueError(f"{name} contains NaN or infinite values (at leaf {where})")


def _raise_nonfinite(where: str, finite) -> None:
    if not np.all(np.asarray(finite)):
        raise FloatingPointError(
            f"{where}: an operator product returned NaN or inf (check the loss, params and data "
            "for non-finite values)"
        )


def check_finite_flag(finite, where: str) -> None:
    """Raise FloatingPointError when an algorithm's `finite` flag is False. Under an outer `jit`
    the check runs as a host callback and surfaces as a runtime error with the same message.

    Args:
        finite: a boolean (array or traced) flag from an algorithm.
        where: the routine named in the message.

    Raises:
        FloatingPointError: the flag is False.
    """
    if isinstance(finite, jax.core.Tracer):
        jax.debug.callback(functools.partial(_raise_nonfinite, where), finite)
    else:
        _raise_nonfinite(where, finite)


def check_key(key, name: str = "key") -> jax.Array:
    """`key` if it is a JAX PRNG key (a typed `jax.random.key(...)` or a raw uint32 [2] key),
    else a clear error: an int where a key belongs is the common slip.

    Args:
        key: the value given.
        name: the argument's name in the message.

    Returns:
        The key, unchanged.

    Raises:
        TypeError: `key` is not a PRNG key (the message shows how to make one).
    """
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key) and getattr(key, "shape", None) == ():
        return key
    if dtype is not None and dtype == jnp.uint32 and getattr(key, "shape", None) == (2,):
        return key
    shown = f"{type(key).__name__} {key!r}" if isinstance(key, (int, float, str)) else type(key).__name__
    raise TypeError(f"{name} must be a JAX PRNG key, e.g. jax.random.key({key if isinstance(key, int) else 0}), "
                    f"got {shown}")


def check_positive_int(name: str, value, least: int = 1) -> int:
    """`value` as an int if it is an integer >= `least`, else a ValueError naming `name`.

    Args:
        name: the argument's name, used in the message.
        value: the value checked (Python or NumPy integer; bools are refused).
        least: the smallest value allowed (1 by default, 0 for counts that may be empty).

    Returns:
        `value` as a Python int.

    Raises:
        ValueError: `value` is not an integer >= `least`.
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
        raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    return int(value)


def check_nonnegative(name: str, value, remedy: str = "") -> float:
    """`value` as a float if it is a finite real number >= 0, else a ValueError naming `name`.

    Args:
        name: the argument's name, used in the message.
        value: the value checked (a multiple of the identity, a regularisation strength ...).
        remedy: an optional sentence appended to the message.

    Returns:
        `value` as a Python float.

    Raises:
        ValueError: `value` is negative, NaN, infinite or not a real number.
    """
    try:
        number = float(value) if not isinstance(value, str | bytes | bool) else float("nan")
    except (TypeError, ValueError):
        number = float("nan")
    if not np.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}" + (f"; {remedy}" if remedy else ""))
    return number


def check_floating(params: PyTree, name: str = "params") -> jax.typing.DTypeLike:
    """Check that `params` is a non-empty pytree of floating-point arrays (what every
    differentiating routine needs) and return their common dtype.

    Args:
        params: the pytree checked.
        name: what it is called in the message.

    Returns:
        The result dtype of its leaves.

    Raises:
        ValueError: no leaves, or a leaf that is not floating-point.
    """
    leaves = jax.tree.leaves(params)
    if not leaves or not all(jnp.issubdtype(jnp.result_type(a), jnp.floating) for a in leaves):
        raise ValueError(f"{name} must be a non-empty pytree of floating-point arrays")
    return jnp.result_type(*leaves)


# XLA's CPU backend runs LLVM at -O3 on the loops it generates. For programs whose time goes to
# operator products (library matrix calls either way), -O1 compiles 10-20% faster with equal
# warm times (measured on the spectrum programs: benchmarks/results/first_call.md).
QUICK_CPU_OPTIONS = {"xla_backend_optimization_level": 1}


class QuickCompileOnCpu:
    """`jax.jit(fun, **jit_kwargs)`, compiled with `QUICK_CPU_OPTIONS` when the default backend
    is the CPU (other backends keep XLA's defaults). Calls, `lower`, `trace` and `_cache_size`
    go to the jitted function for the current backend; inside an outer trace it inlines like
    any jitted function."""

    def __init__(self, fun, **jit_kwargs):
        self._default = jax.jit(fun, **jit_kwargs)
        self._cpu = jax.jit(fun, compiler_options=QUICK_CPU_OPTIONS, **jit_kwargs)
        functools.update_wrapper(self, fun)

    def _jitted(self):
        return self._cpu if jax.default_backend() == "cpu" else self._default

    def __call__(self, *args, **kwargs):
        if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((args, kwargs))):
            return self._default(*args, **kwargs)  # inlined into the caller's program
        try:
            return self._jitted()(*args, **kwargs)
        except ValueError as error:  # inside a trace with constant arguments only
            if "compiler_options" not in str(error):
                raise
            return self._default(*args, **kwargs)

    def lower(self, *args, **kwargs):
        return self._jitted().lower(*args, **kwargs)

    def trace(self, *args, **kwargs):
        return self._jitted().trace(*args, **kwargs)

    def _cache_size(self) -> int:
        return self._default._cache_size() + self._cpu._cache_size()


def quick_compile_on_cpu(fun=None, **jit_kwargs):
    """Decorator form of `QuickCompileOnCpu`: `@quick_compile_on_cpu(static_argnums=(2,))`.

    Args:
        fun: the function to compile (None when used as `@quick_compile_on_cpu(...)`).
        **jit_kwargs: `jax.jit` options (static_argnums, donate_argnums ...).

    Returns:
        A `QuickCompileOnCpu` wrapping `fun` (or, without `fun`, a decorator making one).
    """
    if fun is None:
        return functools.partial(quick_compile_on_cpu, **jit_kwargs)
    return QuickCompileOnCpu(fun, **jit_kwargs)
