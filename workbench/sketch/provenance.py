"""What a gradient store was made from, recorded in its metadata and checked before it is reused.

A store of sketched per-example gradients is a function of four things: the params' values, the
loss, the data and the sketch. Each is fingerprinted in the store's metadata (`store_metadata`):
- the params: a hash of their structure (leaf paths, shapes, dtypes) and one of their values
  (every leaf's bytes), so a refusal can say "same structure, other values";
- the loss: functions cannot be hashed stably across processes, so a numerical probe stands in
  for it: the per-example losses `loss_fn(params, one-example batch)` of the first
  `PROBE_EXAMPLES` examples. With the params and data equal, a different probe means a different
  loss (another function, a rescaled loss, another model state). It is compared with a
  dtype-aware tolerance (`probe_rtol`): the numbers are deterministic on one machine, the
  tolerance only admits a resume on another. A loss that is exactly 0 on every probed example
  cannot tell a rescaled loss apart;
- the data: its size and a hash of its values; the sketch: its kind, key data, a hash of its
  random state, dims and options.
`configuration_differences` says, in user terms, every way a run differs from a store. The
fingerprints themselves (`params_fingerprint`, `array_fingerprint`, `loss_probe`) live in
`workbench.core.fingerprint`, shared with the K-FAC factor files of `workbench.curvature.kfac`.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import jax
import numpy as np

from workbench.core.fingerprint import (  # noqa: F401  (PROBE_EXAMPLES, loss_probe, probe_rtol: re-exported)
    PROBE_EXAMPLES,
    array_fingerprint,
    loss_probe,
    params_fingerprint,
    probe_difference,
    probe_rtol,
)
from workbench.sketch.base import FAMILIES, Sketch, make

FORMAT_VERSION = 3
# kind -> what it meant in format 1, and what to use now
CHANGED_KINDS = {
    "ffd": "a block-diagonal Fastfood (blocks of 1024) followed by row subsampling; 'ffd' is now the "
           "paper's FFD (the transpose of the Fastfood feature map: a sum over input blocks of size D)",
    "affd": "a sum of independent per-block Fastfoods with permutation gathers and random kept rows; "
            "'affd' is now the paper's global R_D(sqrt(N/D) H^pi2 G H^pi1 B x)",
    "afjl": "a blocked Hadamard followed by a hashed sparse Gaussian scatter; 'afjl' is now the "
            "paper's R_D(sqrt(N/D) G H^pi1 B x)",
    "qk": "a Kronecker product of i.i.d. Gaussian factors (balanced, per leaf through for_params), "
          "now the kind 'kronecker'; 'qk' is now the paper's Haar-orthogonal QK truncated to the first D",
    "fjl": "a Hadamard followed by a column-hashed sparse Gaussian (sparsity nonzeros per column); "
           "'fjl' is now the paper's FJL with ~D log^2 N i.i.d. sparse Gaussian non-zeros",
}
_SKETCH_FIELDS = {  # field -> what differs, in user terms
    "kind": "the sketch kind differs", "seed": "the sketch's key differs",
    "sketch_state_hash": "the sketch's random state differs",
    "dim_in": "the sketch's input dimension differs", "dim_out": "the sketch's dimension D differs",
    "options": "the sketch's options differ",
}


def sketch_fields(sketch: Sketch) -> dict:
    """What a store records of its sketch: enough to rebuild it (`sketch_from_metadata`) and to check it.

    Args:
        sketch: the `Sketch`.

    Returns:
        {"kind", "seed" (the key's data as a list of ints), "sketch_state_hash" (`array_fingerprint`
        of the random state without the key), "dim_in", "dim_out", "options" (the sketch's resolved
        options as JSON values: tuples become lists)}.
    """
    options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in sketch.options.items()}
    return {
        "kind": sketch.kind,
        "seed": np.asarray(jax.random.key_data(sketch.state["key"])).tolist(),
        "sketch_state_hash": array_fingerprint({k: v for k, v in sketch.state.items() if k != "key"}),
        "dim_in": sketch.dim_in,
        "dim_out": sketch.dim_out,
        "options": json.loads(json.dumps(options, default=str)),
    }


def _key_candidates(seed) -> list[jax.Array]:
    """Typed keys with key data `seed`: the default PRNG implementation first, then any other whose
    keys have that shape (a store records the key's data, not its implementation)."""
    words = np.asarray(seed, np.uint32)
    default = jax.random.key_impl(jax.random.key(0))
    impls = [default] + [name for name in ("threefry2x32", "rbg", "unsafe_rbg") if name != str(default)]
    keys = []
    for impl in impls:
        try:
            keys.append(jax.random.wrap_key_data(words, impl=impl))
        except (TypeError, ValueError):  # another implementation's key shape
            continue
    return keys


def _options_candidates(kind: str, recorded: dict) -> list[dict]:
    """`make` options that may rebuild a sketch of `kind` whose resolved options were `recorded`.

    A sketch records its resolved configuration, not the options it was made with: the kind's
    options that appear in it are passed back as they are, and the few that a kind resolves into
    something else are recovered (dense: `materialized` -> a `materialize_max` that gives it;
    kronecker: `factors` from `dims_out`, and `distribution`, not recorded, tried both ways). The
    state hash decides which candidate is the recorded sketch.
    """
    family = FAMILIES[kind]
    base = {k: v for k, v in recorded.items() if k in family.options}
    if kind == "dense" and "materialized" in recorded:
        base["materialize_max"] = recorded["dim_in"] * recorded["dim_out"] if recorded["materialized"] else 0
    if kind == "kronecker":
        if base.get("leaf_shapes") is None and base.get("dims_out") is not None:
            base["factors"] = len(base["dims_out"])
        if "distribution" not in recorded:
            return [{**base, "distribution": d} for d in ("gaussian", "rademacher")]
    return [base]


def sketch_from_metadata(meta: dict, path=None) -> Sketch:
    """Rebuild the exact `Sketch` a store was written with, from its metadata alone.

    The store records the sketch's kind, key data (`seed`), dims, resolved options and a hash of
    its random state (`sketch_fields`). The sketch is remade with `make` from these and accepted
    only if every recorded field, the state hash included, is reproduced: a store whose sketch
    cannot be remade exactly is refused rather than read with another map. The key's PRNG
    implementation is not recorded: the default one is tried first, then any other whose key
    data has the recorded shape (a sketch whose state is its key alone, `dense` regenerated on
    the fly, cannot tell two such implementations apart and is then refused).

    Args:
        meta: the store's metadata (`GradientStore.metadata`).
        path: the store's path, for messages (None: not named).

    Returns:
        The `Sketch`: the same map as the one that wrote the store.

    Raises:
        ValueError: the metadata lacks a sketch field, names an unknown kind, or no sketch made
            from it reproduces the recorded state hash and options (the differing fields named).
    """
    where = f"store {path}" if path is not None else "store"
    missing = [f for f in _SKETCH_FIELDS if f not in meta]
    if missing:
        raise ValueError(f"{where}: its metadata lacks the sketch field(s) {missing}, so its sketch cannot be rebuilt")
    kind = meta["kind"]
    if kind == "logra":  # per-layer projections drawn from the model's layers, not a `make` kind
        raise ValueError(f"{where}: holds LoGra projected gradients, not a sketch's; score it with "
                         "sketch.logra_scores(store, projection, functional, ...)")
    if kind not in FAMILIES:
        raise ValueError(f"{where}: its sketch kind {kind!r} is unknown to this workbench (known: {sorted(FAMILIES)})")
    recorded = {f: meta[f] for f in _SKETCH_FIELDS}
    closest = None
    keys = _key_candidates(meta["seed"])
    for key in keys:
        for options in _options_candidates(kind, meta["options"]):
            try:
                sketch = make(kind, key, meta["dim_in"], meta["dim_out"], **_freeze(options))
            except ValueError as error:
                closest = closest or [("options", f"make refused them: {error}")]
                continue
            rebuilt = sketch_fields(sketch)
            differences = [(f, f"{what}: store has {recorded[f]!r}, the rebuilt sketch has {rebuilt[f]!r}")
                           for f, what in _SKETCH_FIELDS.items() if recorded[f] != rebuilt[f]]
            if not differences and sketch.state_size == 0 and len(keys) > 1:
                raise ValueError(
                    f"{where}: its sketch's key data {meta['seed']} fits several PRNG implementations and "
                    f"its {kind} sketch holds no random state to tell them apart (only the key); pass the "
                    f"Sketch that wrote it instead")
            if not differences:
                return sketch
            if closest is None or len(differences) < len(closest):
                closest = differences
    raise ValueError(
        f"{where}: its sketch cannot be rebuilt exactly from its metadata ({describe_differences(closest or [])}); "
        f"pass the Sketch that wrote it instead")


def _freeze(options: dict) -> dict:
    """JSON lists back to tuples (nested too), as `make` keeps options."""
    def freeze(v):
        return tuple(freeze(x) for x in v) if isinstance(v, list | tuple) else v
    return {k: freeze(v) for k, v in options.items()}


def store_metadata(loss_fn: Callable, params, data, sketch: Sketch, chunk_rows: int, dtype) -> dict:
    """The configuration a store records and checks on reopening (see the module docstring).

    Args:
        loss_fn: the loss whose per-example gradients are stored (fingerprinted by `loss_probe`).
        params: the params pytree (its structure and its values are hashed).
        data: the dataset (its size and a hash of its values are recorded).
        sketch: the `Sketch` whose rows are stored.
        chunk_rows: rows per chunk.
        dtype: the stored dtype.

    Returns:
        A JSON-serialisable dict (format version, the sketch's kind, seed, state hash, dims and
        options, dtype, params structure and values hashes, loss probe, data size and hash,
        chunk_rows, num_chunks).
    """
    n = int(jax.tree.leaves(data)[0].shape[0])
    return {
        "format_version": FORMAT_VERSION,
        **sketch_fields(sketch),
        "dtype": str(np.dtype(dtype)),
        "params_structure": params_fingerprint(params),
        "params_values": array_fingerprint(params),
        "loss_probe": loss_probe(loss_fn, params, data),
        "n_data": n,
        "data_hash": array_fingerprint(data),
        "chunk_rows": int(chunk_rows),
        "num_chunks": -(-n // int(chunk_rows)),
    }


def check_format(meta: dict, path) -> None:
    """Refuse to read a store whose sketch kind has changed meaning since it was written (never reinterpret).

    Formats 1 (kinds unchanged since) and 2 are still read; `check_resumable` refuses to resume them.

    Args:
        meta: the store's recorded metadata.
        path: the store's path (for the message).

    Raises:
        ValueError: a format-1 store of a changed kind, or an unknown format version.
    """
    version = meta.get("format_version")
    kind = meta.get("kind")
    if version == 1 and kind in CHANGED_KINDS:
        raise ValueError(
            f"store: {path} was written (format 1) by the old {kind!r} sketch, {CHANGED_KINDS[kind]}. "
            f"Its sketches cannot be read as the new {kind!r}; recompute it into a new path")
    if version not in (1, 2, FORMAT_VERSION):
        raise ValueError(f"store: {path} has format_version {version!r}; this workbench reads 1 (unchanged "
                         f"kinds), 2 and {FORMAT_VERSION}")


def check_resumable(meta: dict, path) -> None:
    """Refuse to resume (or check against a run) a store that lacks the fingerprints of format 3.

    Args:
        meta: the store's recorded metadata (already accepted by `check_format`).
        path: the store's path (for the message).

    Raises:
        ValueError: the store was written before format 3.
    """
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"store: {path} was written in format {version}, which records neither the params' values "
            f"nor the loss it was made with, so it cannot be checked against this run and is not resumed. "
            f"Recompute it into another path (or delete {path}); open_store still reads it as it is")


def configuration_differences(stored: dict, run: dict) -> list[tuple[str, str]]:
    """Every way the `run` configuration differs from the `stored` one, in user terms.

    A consequence is not reported as a cause: the loss probe is compared only when the params
    and the data agree, the data's values only when its size agrees.

    Args:
        stored: the metadata a store records (`store_metadata`).
        run: the metadata this run would write.

    Returns:
        [(field, explanation)], empty when the store was made by this configuration.
    """
    def differs(field):
        return stored.get(field) != run.get(field)

    found = []
    params_differ = differs("params_structure") or differs("params_values")
    if differs("params_structure"):
        found.append(("params_structure", "the params' structure (leaf paths, shapes or dtypes) differs from "
                                          "that of the params the store was made with"))
    elif differs("params_values"):
        found.append(("params_values", "the params' values differ from those the store was made with (same "
                                       "structure, other values: another model, checkpoint or training step)"))
    data_differ = differs("n_data") or differs("data_hash")
    if not params_differ and not data_differ and differs("loss_probe"):
        message = probe_difference(stored.get("loss_probe") or {}, run.get("loss_probe") or {})
        if message:
            found.append(("loss_probe", message))
    if differs("n_data"):
        found.append(("n_data", f"the data differs: the store has {stored.get('n_data')} examples, this run "
                                f"{run.get('n_data')}"))
    elif differs("data_hash"):
        found.append(("data_hash", "the data's values differ from those the store was made with (same "
                                   "number of examples)"))
    found += [(f, f"{what}: store has {stored.get(f)!r}, this run has {run.get(f)!r}")
              for f, what in _SKETCH_FIELDS.items() if differs(f)]
    if differs("dtype"):
        found.append(("dtype", f"the store holds {stored.get('dtype')} sketches, this run's params are "
                               f"{run.get('dtype')}"))
    if differs("chunk_rows"):
        found.append(("chunk_rows", f"the store has {stored.get('chunk_rows')} rows per chunk, this run asks "
                                    f"for {run.get('chunk_rows')} (chunk_size=None uses the store's)"))
    elif differs("num_chunks") and not differs("n_data"):
        found.append(("num_chunks", f"store has {stored.get('num_chunks')!r}, this run has {run.get('num_chunks')!r}"))
    known = {*_SKETCH_FIELDS, "dtype", "params_structure", "params_values", "n_data", "data_hash",
             "loss_probe", "chunk_rows", "num_chunks"}
    for field in sorted(k for k in set(stored) | set(run) if k not in known and differs(k)):
        found.append((field, f"store has {stored.get(field)!r}, this run has {run.get(field)!r}"))
    return found


def describe_differences(differences: list[tuple[str, str]]) -> str:
    """The text of `configuration_differences` for an error message.

    Args:
        differences: [(field, explanation)] as `configuration_differences` returns.

    Returns:
        "field: explanation; field: explanation ...".
    """
    return "; ".join(f"{field}: {text}" for field, text in differences)
