"""Wall-clock timing for the recipes and benchmarks: the fastest of a few runs (the least noisy
statistic on a shared machine), optionally after a first call that compiles."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax


def best_time(fn: Callable[[], Any], repeats: int = 3, warmup: bool = False) -> tuple[Any, float]:
    """(result, the fastest of `repeats` wall times of `fn()`, each waited for with
    `jax.block_until_ready`); `warmup=True` first makes one untimed call (compilation)."""
    out = jax.block_until_ready(fn()) if warmup else None
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return out, best
