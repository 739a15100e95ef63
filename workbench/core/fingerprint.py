"""A hashable key that is equal for two functions built by the same calls with the same numbers.

`fingerprint(optax.adam(1e-3))` equals the fingerprint of a second `optax.adam(1e-3)`: functions
are compared by code, defaults and closure contents, containers by their items, scalars and small
arrays by value. Anything else, and any cycle, is keyed by identity. `workbench.train` caches its
compiled programs by it, so re-running a notebook cell that builds a fresh optimizer compiles
nothing new.
"""

from __future__ import annotations

import functools

import jax
import numpy as np


class _Same:
    """Equality by identity for a value the fingerprint cannot read; holding the value keeps
    its id from being reused while a cache entry refers to it."""

    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return isinstance(other, _Same) and other.value is self.value

    def __hash__(self):
        return id(self.value)


def fingerprint(value, seen=()):
    """A hashable key equal for two optimizers built by the same calls with the same numbers
    (e.g. `optax.adam(1e-3)` in a notebook cell run twice): functions by code, defaults and
    closure contents, containers by their items, scalars and small arrays by value. Anything
    else, and any cycle, is keyed by identity (a new object compiles anew, as before).

    Args:
        value: any Python value: an optax transformation, a function, a container, a number.
        seen: ids of the containers being visited (internal, breaks cycles).

    Returns:
        A hashable key; equal keys mean the two values compute the same thing.
    """
    if value is None or isinstance(value, bool | int | float | complex | str | bytes):
        return (type(value), value)
    if id(value) in seen:
        return _Same(value)
    seen = (*seen, id(value))
    if isinstance(value, tuple | list):
        return (type(value), tuple(fingerprint(v, seen) for v in value))
    if isinstance(value, dict):
        return (dict, tuple((k, fingerprint(v, seen)) for k, v in sorted(value.items(), key=lambda kv: repr(kv[0]))))
    if isinstance(value, np.ndarray | jax.Array | np.generic) and np.size(value) <= 64:
        array = np.asarray(value)
        return (np.ndarray, array.dtype.str, array.shape, array.tobytes())
    if isinstance(value, functools.partial):
        return (functools.partial, fingerprint(value.func, seen), fingerprint(value.args, seen),
                fingerprint(value.keywords, seen))
    code = getattr(value, "__code__", None)
    if code is not None and not hasattr(value, "__self__"):
        cells = tuple(_contents(c) for c in (value.__closure__ or ()))
        return (code, fingerprint(value.__defaults__, seen), fingerprint(value.__kwdefaults__, seen),
                fingerprint(cells, seen))
    return _Same(value)


def _contents(cell):
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell (a closure variable not assigned yet): compare by identity
        return _Same(cell)

