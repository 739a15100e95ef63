"""What a compiled step sends between devices: collective payloads read off the compiled HLO.

`collective_bytes(fn, *args)` compiles `fn(*args)` (as `jit` would, with the arguments'
shardings) and sums the output sizes of its cross-device collectives (all-reduce, all-gather,
reduce-scatter, all-to-all, collective-permute), per device. It counts what the program asks the
collectives to move, not the wire traffic of a particular algorithm (a ring all-reduce of B bytes
over P devices sends about 2 B (P - 1) / P per device).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np

_OPS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_SHAPE = re.compile(r"\b(pred|s8|u8|s16|u16|s32|u32|s64|u64|f16|bf16|f32|f64|c64|c128)\[([0-9,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
          "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}


class CollectiveBytes(NamedTuple):
    total: int  # bytes, summed over the collectives of one call, per device
    by_op: dict  # op name -> (count, bytes)
    in_loops: int  # collectives inside a while loop's body: their bytes are counted once per
    #                appearance, not per trip, so `total` is then a lower bound


def _group_size(text: str) -> int | None:
    explicit = re.search(r"replica_groups=\{\{([0-9,]*)\}", text)
    if explicit:
        return len([g for g in explicit.group(1).split(",") if g])
    iota = re.search(r"replica_groups=\[([0-9]+),([0-9]+)\]", text)
    if iota:
        return int(iota.group(2))
    return None


def collective_bytes(fn: Callable, *args) -> CollectiveBytes:
    """Collective payload of one call of `jax.jit(fn)(*args)`, per device (see the module
    docstring). Collectives inside loops are counted once per appearance in the program (and
    reported in `in_loops`), not per trip.

    Args:
        fn: the function (as it would be jitted).
        *args: its arguments (global arrays, shapes as in the real call).

    Returns:
        A `CollectiveBytes` with the bytes per collective kind and the count inside loops.
    """
    text = jax.jit(fn).lower(*args).compile().as_text()
    loop_bodies = set(re.findall(r"\bwhile\(.*?body=%?([\w.\-]+)", text))
    by_op: dict[str, list[int]] = {}
    computation, in_loops = None, 0
    for line in text.splitlines():
        header = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if header and not line.startswith(" "):
            computation = header.group(1)
            continue
        if "=" not in line:
            continue
        rhs = line.split("=", 1)[1]
        op = next((o for o in _OPS if re.search(rf"\b{o}(-start)?\(", rhs)), None)
        if op is None or _group_size(rhs) == 1:  # a collective over one device moves nothing
            continue
        head = rhs.split(op)[0]  # the result type(s) precede the op name
        size = sum(_BYTES[t] * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
                   for t, dims in _SHAPE.findall(head))
        count, total = by_op.get(op, [0, 0])
        by_op[op] = [count + 1, total + size]
        in_loops += computation in loop_bodies
    return CollectiveBytes(sum(v[1] for v in by_op.values()), {k: tuple(v) for k, v in by_op.items()}, in_loops)
