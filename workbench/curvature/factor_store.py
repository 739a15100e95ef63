"""K-FAC factors as data: the fitted `Factors` of a model's layers, what made them, and their file.

A factors file (`Factors.save`, read by `load`) is one .npz holding every layer's arrays and a
JSON record of what the factors were fitted from, fingerprinted as the package's other stores are
(`workbench.core.fingerprint`): the params' structure and values, the data's size and values, the
loss (the per-example losses of the first examples), the covered layers, and the Fisher kind, its
key and number of samples, and whether the EK-FAC correction was fitted. `load` and
`check_factors` refuse factors fitted otherwise, naming each difference. The file is written to a
temporary name and renamed into place, so a failed write never leaves a half-written file or
replaces a good one; non-finite factors are never written.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from workbench.core.fingerprint import (
    array_fingerprint,
    loss_probe,
    params_fingerprint,
    probe_difference,
)
from workbench.core.numerics import num_examples
from workbench.core.per_example import mean_loss
from workbench.curvature.capture import Coverage, check_functional, coverage
from workbench.models import Functional

FORMAT = "workbench-kfac-factors"
FORMAT_VERSION = 1


class LayerFactors(NamedTuple):
    """One layer's Kronecker factors, their eigendecompositions and the EK-FAC eigenvalues.

    An embedding's A is diagonal (token frequencies): `activation` holds its diagonal and
    `activation_vectors` is None (the identity).
    """

    activation: jax.Array  # A [d_a, d_a] ([d_a] diagonal for an embedding)
    gradient: jax.Array  # S [d_out, d_out]
    activation_values: jax.Array  # eigenvalues of A [d_a], ascending (an embedding's: in token order)
    activation_vectors: jax.Array | None  # Q_A [d_a, d_a]; None: the identity
    gradient_values: jax.Array  # eigenvalues of S [d_out], ascending
    gradient_vectors: jax.Array  # Q_S [d_out, d_out]
    corrected: jax.Array | None  # EK-FAC Lambda [d_a, d_out], or None when not fitted


class Factors(NamedTuple):
    """Fitted K-FAC factors of every covered layer, and what they were fitted from."""

    coverage: Coverage  # the layers (and the parameters left out)
    layers: dict  # layer name -> LayerFactors
    fisher: str  # "true", "empirical" or "ggn"
    num_examples: int
    metadata: dict  # fingerprints of the params, data and loss; the Fisher and its key

    def save(self, path: str | Path) -> Path:
        """Write the factors to `path` (a .npz file) atomically: a temporary file renamed into place.

        A failed write leaves any earlier file at `path` as it was; non-finite factors are never
        written.

        Args:
            path: the file to write.

        Returns:
            The path written.

        Raises:
            FloatingPointError: a factor holds NaN or inf.
        """
        return save(self, path)


def _key_data(key) -> list | None:
    if key is None:
        return None
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    return np.asarray(data).tolist()


@functools.lru_cache(maxsize=64)
def _data_loss(functional: Functional):
    """The model's batch-mean data loss, one function per model (so its loss probe compiles once)."""
    return mean_loss(functional.per_example_loss_fn)


def metadata(functional: Functional, params, data, covered: Coverage, fisher: str, key, correct: bool,
             num_samples: int = 1) -> dict:
    """What factors fitted with these arguments record: the fingerprints `load` checks.

    Args:
        functional: the model (its per-example loss is probed).
        params: the params pytree.
        data: the data (its size and a hash of its values).
        covered: the `Coverage` (the covered layers' names and shapes are recorded).
        fisher: the Fisher kind.
        key: the key of the sampled labels, or None.
        correct: whether the EK-FAC eigenvalues are fitted.
        num_samples: labels sampled per example ("true").

    Returns:
        A JSON-serialisable dict.
    """
    dtype = jnp.result_type(*jax.tree.leaves(params))
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fisher": fisher,
        "key": _key_data(key),
        "num_samples": int(num_samples),
        "corrected": bool(correct),
        "dtype": str(np.dtype(dtype)),
        "params_structure": params_fingerprint(params),
        "params_values": array_fingerprint(params),
        "n_data": num_examples(data),
        "data_hash": array_fingerprint(data),
        "loss_probe": loss_probe(_data_loss(functional), params, data),
        "layers": [[layer.name, layer.kind, layer.in_features, layer.out_features, layer.bias is not None]
                   for layer in covered.layers],
    }


_DESCRIBED = {
    "params_structure": "the params' structure (leaf paths, shapes or dtypes) differs from that of the params "
                        "the factors were fitted at",
    "params_values": "the params' values differ from those the factors were fitted at (another model, "
                     "checkpoint or training step)",
    "n_data": "the data differs in its number of examples",
    "data_hash": "the data's values differ from those the factors were fitted on",
    "layers": "the model's covered layers differ",
    "dtype": "the params' dtype differs",
}


def differences(stored: dict, run: dict, *, fitting: bool = False) -> list[str]:
    """Every way the factors' recorded configuration `stored` differs from `run`, in user terms.

    Args:
        stored: the metadata the factors record.
        run: the metadata of the params, data and loss at hand.
        fitting: also compare the Fisher kind, its key and whether the correction was fitted
            (a `fit(path=...)` asks for particular ones; `load` takes whatever was fitted).

    Returns:
        The differences, empty when the factors were fitted from `run`.
    """
    found = [f"{field}: {text}" for field, text in _DESCRIBED.items() if stored.get(field) != run.get(field)]
    if not found:
        probe = probe_difference(stored.get("loss_probe") or {}, run.get("loss_probe") or {})
        if probe:
            found.append(f"loss_probe: {probe}")
    if fitting:
        for field in ("fisher", "key", "num_samples", "corrected"):
            if stored.get(field) != run.get(field):
                found.append(f"{field}: the factors have {stored.get(field)!r}, this fit asks for {run.get(field)!r}")
    return found


def reuse(path: Path, record: dict, functional: Functional) -> Factors:
    """The factors stored at `path` if they were fitted as `record` says, else a refusal naming what differs.

    Args:
        path: an existing factors file.
        record: the `metadata` of the fit asked for.
        functional: the model.

    Returns:
        The stored `Factors`.

    Raises:
        ValueError: they were fitted otherwise (nothing is changed).
    """
    stored = _read(path)
    found = differences(stored[3], record, fitting=True)
    if found:
        raise ValueError(f"kfac.fit: {path} holds factors fitted otherwise: {'; '.join(found)}. Nothing in it was "
                         f"changed; use another path, or delete {path} to refit")
    return _assemble(stored, functional)


def save(factors: Factors, path: str | Path) -> Path:
    """Write `factors` to `path` atomically (see `Factors.save`).

    Args:
        factors: the `Factors`.
        path: the .npz file to write.

    Returns:
        The path written.

    Raises:
        FloatingPointError: a factor holds NaN or inf (nothing is written).
    """
    path = Path(path)
    arrays = {}
    for name, layer_factors in factors.layers.items():
        for field, value in layer_factors._asdict().items():
            if value is None:
                continue
            value = np.asarray(value)
            if not np.all(np.isfinite(value)):
                raise FloatingPointError(f"kfac: the factor {field} of layer {name!r} holds NaN or inf; not written")
            arrays[f"{name}|{field}"] = value
    meta = {**factors.metadata, "num_examples": factors.num_examples,
            "left_out": [list(item) for item in factors.coverage.left_out]}
    arrays["__metadata__"] = np.asarray(json.dumps(meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(fd, "wb") as file:
            np.savez(file, **arrays)
        os.replace(tmp, path)  # atomic: the old file stays whole until the new one is complete
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _read(path: Path):
    if not path.exists():
        raise FileNotFoundError(f"kfac: no factors at {path}")
    with np.load(path, allow_pickle=False) as file:
        if "__metadata__" not in file:
            raise ValueError(f"kfac: {path} is not a K-FAC factors file (no metadata)")
        meta = json.loads(str(file["__metadata__"]))
        arrays = {k: np.asarray(file[k]) for k in file.files if k != "__metadata__"}
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"kfac: {path} has format {meta.get('format')!r} version {meta.get('format_version')!r}; "
                         f"this workbench reads {FORMAT!r} version {FORMAT_VERSION}")
    return path, arrays, meta["left_out"], meta


def _assemble(stored, functional: Functional) -> Factors:
    path, arrays, left_out, meta = stored
    covered = coverage(functional)
    layers = {}
    for layer in covered.layers:
        fields = {field: (jax.device_put(arrays[f"{layer.name}|{field}"]) if f"{layer.name}|{field}" in arrays else None)
                  for field in LayerFactors._fields}
        layers[layer.name] = LayerFactors(**fields)
    covered = Coverage(covered.layers, tuple(tuple(item) for item in left_out))
    record = {k: v for k, v in meta.items() if k not in ("num_examples", "left_out")}
    return Factors(covered, layers, meta["fisher"], int(meta["num_examples"]), record)


def load(path: str | Path, functional: Functional, params, data) -> Factors:
    """Read factors written by `Factors.save`, after checking they were fitted from these params and data.

    Args:
        path: the .npz file.
        functional: the model (its covered layers and loss are checked).
        params: the params the factors must have been fitted at.
        data: the data they must have been fitted on.

    Returns:
        The `Factors`.

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: not a factors file, or fitted from other params, data, loss or layers (each
            difference named).
    """
    check_functional(functional, "kfac.load")
    stored = _read(Path(path))
    meta = stored[3]
    run = metadata(functional, params, data, coverage(functional), meta["fisher"], None, meta["corrected"])
    found = differences(meta, run)
    if found:
        raise ValueError(f"kfac.load: {path} holds factors fitted otherwise: {'; '.join(found)}. Refit them for "
                         "these params and data (kfac.fit)")
    return _assemble(stored, functional)


def check_factors(factors: Factors, functional: Functional, params, data) -> None:
    """Refuse `factors` fitted from other params, data, loss or layers (each difference named).

    Args:
        factors: the `Factors`.
        functional: the model.
        params: the params they must have been fitted at.
        data: the data they must have been fitted on.

    Raises:
        TypeError: `factors` is not a `Factors`.
        ValueError: they were fitted otherwise.
    """
    if not isinstance(factors, Factors):
        raise TypeError(f"factors must be kfac.Factors (from kfac.fit or kfac.load) or a path, got "
                        f"{type(factors).__name__}")
    meta = factors.metadata
    run = metadata(functional, params, data, coverage(functional), meta["fisher"], None, meta["corrected"])
    found = differences(meta, run)
    if found:
        raise ValueError(f"kfac: the factors given were fitted otherwise: {'; '.join(found)}")


