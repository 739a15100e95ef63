"""Wall-clock timing for the recipes and benchmarks: the fastest of a few runs (the least noisy
statistic on a shared machine), optionally after a first call that compiles."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from workbench.core.numerics import check_positive_int


class Timed(NamedTuple):
    """What a timed function returned and its fastest wall time."""

    result: Any
    seconds: float


def best_time(fn: Callable[[], Any], repeats: int = 3, warmup: bool = False) -> Timed:
    """The fastest of `repeats` wall times of `fn()`, each waited for with `jax.block_until_ready`.

    Args:
        fn: the call to time, without arguments.
        repeats: timed calls (>= 1).
        warmup: first make one untimed call (compilation).

    Returns:
        `Timed(result, seconds)`: the last call's result and the fastest time in seconds.
    """
    check_positive_int("repeats", repeats)
    out = jax.block_until_ready(fn()) if warmup else None
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return Timed(out, best)
