"""A hashable key that is equal for two functions built by the same calls with the same numbers.

`fingerprint(optax.adam(1e-3))` equals the fingerprint of a second `optax.adam(1e-3)`: functions
are compared by code, defaults and closure contents, containers by their items, scalars and small
arrays by value. Anything else, and any cycle, is keyed by identity. `workbench.train` caches its
compiled programs by it, so re-running a notebook cell that builds a fresh optimizer compiles
nothing new.

What a store was made from is fingerprinted here too, for every store of the package (sketched
gradient stores, K-FAC factor files): the params' structure (`params_fingerprint`) and values
(`array_fingerprint`), the data's values, and the loss by a numerical probe (`loss_probe`: the
losses of the first examples, each alone, compared within `probe_rtol` by `probe_difference`).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from workbench.core.per_example import per_example_losses

PROBE_EXAMPLES = 4  # examples whose losses fingerprint the loss function


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


# ----------------------------------------------------------------------------- what a store was made from


def params_fingerprint(params) -> str:
    """Hash of the params structure: leaf paths, shapes and dtypes (not the values).

    Args:
        params: a params pytree.

    Returns:
        A 16-hex-digit hash that changes with the structure, shapes or dtypes, not with the values.
    """
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    desc = [(jax.tree_util.keystr(p), tuple(np.shape(x)), str(jnp.asarray(x).dtype)) for p, x in leaves]
    return hashlib.sha256(repr(desc).encode()).hexdigest()[:16]


def array_fingerprint(tree) -> str:
    """Hash of every leaf's shape, dtype and bytes (PRNG keys by their key data): what a store was made from.

    Args:
        tree: a pytree of arrays (the params, the data, or a sketch's random state).

    Returns:
        A 16-hex-digit hash of the values.
    """
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        a = np.asarray(jax.random.key_data(leaf) if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key) else leaf)
        h.update(repr((a.shape, str(a.dtype))).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


@functools.partial(jax.jit, static_argnums=0)
def _probe_losses(loss_fn, params, batch):
    # one compiled program per loss_fn: every process and every reopening computes the same numbers
    return per_example_losses(loss_fn, params, batch)


def loss_probe(loss_fn: Callable, params, data) -> dict:
    """The loss's numerical fingerprint: the losses of the first `PROBE_EXAMPLES` examples, each alone.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, a batch mean.
        params: the params pytree.
        data: a pytree of arrays with a leading example axis [n, ...].

    Returns:
        {"dtype": the loss's dtype, "values": [min(n, PROBE_EXAMPLES) Python floats]}.
    """
    count = min(int(jax.tree.leaves(data)[0].shape[0]), PROBE_EXAMPLES)
    values = np.asarray(_probe_losses(loss_fn, params, jax.tree.map(lambda a: a[:count], data)))
    return {"dtype": str(values.dtype), "values": [float(v) for v in values]}


def probe_rtol(dtype) -> float:
    """Relative tolerance of the loss probe: 1e-10 in float64, 1e-5 in float32, 1e-2 below.

    Args:
        dtype: the loss's dtype.

    Returns:
        The tolerance, relative to the largest probed loss (deterministic on one machine; the
        slack only admits a resume on another).
    """
    bits = jnp.finfo(dtype).bits
    return 1e-10 if bits >= 64 else 1e-5 if bits >= 32 else 1e-2


def probe_difference(stored: dict, run: dict) -> str | None:
    """How a run's loss probe differs from a stored one, in user terms, or None within `probe_rtol`.

    Args:
        stored: the probe a store recorded (`loss_probe`'s dict).
        run: this run's probe.

    Returns:
        "the loss differs: ..." naming the first differing example, or None when they agree.
    """
    if stored.get("dtype") != run.get("dtype"):
        return (f"the loss differs: the store's loss was computed in {stored.get('dtype')}, this run's "
                f"in {run.get('dtype')}")
    old, new = (np.asarray(p.get("values", []), np.float64) for p in (stored, run))
    if old.shape != new.shape:
        return f"the loss differs: the store probed {old.size} examples' losses, this run {new.size}"
    scale = max(np.max(np.abs(old[np.isfinite(old)]), initial=0.0), np.max(np.abs(new[np.isfinite(new)]), initial=0.0))
    tol = probe_rtol(run["dtype"]) * max(scale, np.finfo(np.float64).tiny)
    same = (np.abs(old - new) <= tol) | (np.isnan(old) & np.isnan(new)) | (old == new)
    if np.all(same):
        return None
    i = int(np.flatnonzero(~same)[0])
    return (f"the loss differs: at example {i} the store's loss was {float(old[i])!r}, this run's is {float(new[i])!r} "
            f"(the params and data are the same: another loss function, a rescaled loss or another "
            f"model state?)")
