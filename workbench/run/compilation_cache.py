"""JAX's persistent compilation cache, on by default for paper runs and notebooks.

Most of a paper's quick run is XLA compiling the same programs it compiled last time. `import
workbench` points JAX's persistent compilation cache at a folder under the user's cache
directory, so a second run (`make papers`, `workbench run NAME`, a notebook reopened in
JupyterLab) loads compiled programs from disk instead of compiling them again. A program loaded
from the cache is the one that was compiled, so results are the same numbers.

Where: `$WORKBENCH_JAX_CACHE` if set to a path; otherwise `$XDG_CACHE_HOME/workbench/jax`, or
`~/.cache/workbench/jax` without XDG_CACHE_HOME. `WORKBENCH_JAX_CACHE=off` (or `0`, `false`,
`no`, `none`) turns it off. A cache directory the user gave JAX itself (`JAX_COMPILATION_CACHE_DIR`
or `jax.config.update("jax_compilation_cache_dir", ...)` before `import workbench`) is left as it
is. The folder only holds compiled programs keyed by a hash of the program, the JAX version and
the configuration: it is safe to delete at any time (the next run compiles again), e.g.
`rm -rf ~/.cache/workbench/jax`. It is not pruned; the quick profiles of all papers fill about
the size `info()` reports after a `make papers`.

Only programs whose compilation took at least `MIN_COMPILE_SECONDS` are written (smaller ones
compile about as fast as they load); `WORKBENCH_JAX_CACHE_MIN_SECONDS` sets another threshold.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NamedTuple

ENV = "WORKBENCH_JAX_CACHE"
OFF = ("off", "0", "false", "no", "none")
MIN_COMPILE_SECONDS = 0.1
MIN_SECONDS_ENV = "WORKBENCH_JAX_CACHE_MIN_SECONDS"
JAX_ENV = "JAX_COMPILATION_CACHE_DIR"
OURS_ENV = "WORKBENCH_JAX_CACHE_SET"  # the folder enable() itself put in JAX_ENV (inherited by children)


class CacheInfo(NamedTuple):
    """Where the persistent compilation cache is (None when off), how many entries and bytes it
    holds, and who chose the folder ("workbench", "jax" for the user's own JAX setting, "off")."""

    path: Path | None
    entries: int
    bytes: int
    source: str


def default_dir() -> Path:
    """The cache folder used when `WORKBENCH_JAX_CACHE` is unset.

    Returns:
        `$XDG_CACHE_HOME/workbench/jax`, or `~/.cache/workbench/jax` without XDG_CACHE_HOME.
    """
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "workbench" / "jax"


def requested_dir() -> Path | None:
    """The folder `WORKBENCH_JAX_CACHE` asks for.

    Returns:
        The path it names (with `~` expanded), `default_dir()` when it is unset or empty, None
        when it is one of `OFF` ("off", "0", "false", "no", "none").
    """
    setting = os.environ.get(ENV, "").strip()
    if setting.lower() in OFF:
        return None
    return Path(setting).expanduser() if setting else default_dir()


_source = "off"


def enable() -> Path | None:
    """Point JAX's persistent compilation cache at `requested_dir()` (called by `import
    workbench`); returns the folder in use, or None when the cache is off.

    Takes effect for programs compiled after the call, so it belongs before the first
    computation (it is part of `import workbench`). A folder the user already gave JAX wins.
    Calling it again follows a changed `WORKBENCH_JAX_CACHE` (and switches the cache off when it
    now says off). When JAX is not imported yet, the folder is set through JAX's environment
    variables, which JAX reads on import: `import workbench` does not import JAX (a workshop page
    that never computes stays a small process).

    Returns:
        The cache folder in use (the user's own JAX setting if there is one), or None when off.
    """
    global _source
    if "jax" not in sys.modules:
        return _enable_before_jax()
    import jax

    own = jax.config.jax_compilation_cache_dir
    if own and _source != "workbench" and own != os.environ.get(OURS_ENV):
        _source = "jax"
        return Path(own)
    path = requested_dir()
    if path is None:
        if _source == "workbench":  # switched off after an earlier enable()
            jax.config.update("jax_compilation_cache_dir", None)
        _source = "off"
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds())
    _source = "workbench"
    return path


def min_compile_seconds() -> float:
    """The compile time from which a program is written to the cache.

    Returns:
        `WORKBENCH_JAX_CACHE_MIN_SECONDS` when set to a number, else `MIN_COMPILE_SECONDS`.
    """
    try:
        return float(os.environ.get(MIN_SECONDS_ENV, MIN_COMPILE_SECONDS))
    except ValueError:
        return MIN_COMPILE_SECONDS


def _enable_before_jax() -> Path | None:
    """`enable()` before JAX is imported: the same choice, written where JAX reads it on import."""
    global _source
    own = os.environ.get(JAX_ENV)
    if own and own != os.environ.get(OURS_ENV):
        _source = "jax"
        return Path(own)
    path = requested_dir()
    if path is None:
        if own:  # ours, inherited from a parent process: off means off
            del os.environ[JAX_ENV]
        _source = "off"
        return None
    os.environ[JAX_ENV] = os.environ[OURS_ENV] = str(path)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = str(min_compile_seconds())
    _source = "workbench"
    return path


def info() -> CacheInfo:
    """The cache folder in use and its size.

    Returns:
        A `CacheInfo`: the folder (None when off), its number of cache entries and their total
        bytes, and who chose the folder.
    """
    import jax

    folder = jax.config.jax_compilation_cache_dir if _source != "off" else None
    if not folder:
        return CacheInfo(None, 0, 0, "off")
    path = Path(folder)
    files = [f for f in path.glob("*-cache") if f.is_file()] if path.is_dir() else []
    return CacheInfo(path, len(files), sum(f.stat().st_size for f in files), _source)
