"""Progress bars for long package loops, through `tqdm.auto`.

`bar(...)` is a `tqdm.auto.tqdm` (a widget bar in JupyterLab and voila, a text bar in a terminal)
unless the environment variable `WORKBENCH_PROGRESS` says otherwise:
- "log": no live bar; one summary line on stderr when the loop ends ("train: 500/500 in 1.2 s,
  loss=0.031"). The paper runner sets it: under papermill a widget bar would be saved in the
  output notebook as a frozen "0%" line plus its widget state, and a text bar as thousands of
  carriage-return updates.
- "off": nothing at all.
Progress never changes a result: bars only read the loop counters.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterable
from typing import Any

PROGRESS_ENV = "WORKBENCH_PROGRESS"
MODES = ("auto", "log", "off")


def mode() -> str:
    """How progress bars are shown, read from the WORKBENCH_PROGRESS environment variable.

    Returns:
        "auto" (tqdm.auto: widgets in notebooks, text in terminals; the default), "log" (one
        line on stderr when a bar closes: papermill runs and CI) or "off".

    Raises:
        ValueError: the variable holds another value.
    """
    value = os.environ.get(PROGRESS_ENV, "auto") or "auto"
    if value not in MODES:
        raise ValueError(f"{PROGRESS_ENV} must be one of {MODES}, got {value!r}")
    return value


def _log_bar_class():
    from tqdm.std import tqdm as std_tqdm

    class LogBar(std_tqdm):
        """A tqdm that draws nothing while running and writes one line to stderr when closed."""

        def __init__(self, *args, **kwargs):
            kwargs["file"] = io.StringIO()
            kwargs["mininterval"] = float("inf")
            super().__init__(*args, **kwargs)

        def close(self):
            if not self.disable and not getattr(self, "_logged", False):
                self._logged = True
                elapsed = self._time() - self.start_t
                total = f"/{self.total}" if self.total is not None else ""
                post = f", {self.postfix}" if self.postfix else ""
                sys.stderr.write(f"{self.desc or 'progress'}: {self.n}{total} {self.unit} in {elapsed:.1f} s{post}\n")
                sys.stderr.flush()
            super().close()

    return LogBar


def bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", disable: bool = False,
        leave: bool = True, unit: str = "it", **kwargs: Any):
    """A progress bar (context manager and iterable wrapper, tqdm's interface) for a long loop.

    Finished bars stay (`leave=True`): a notebook bar with leave=False closes its widget model
    while the output still refers to it, and voila then shows "Error displaying widget".

    Args:
        iterable: the iterable to wrap (None for a manual bar updated with `update`).
        total: the expected number of iterations (None: unknown or len(iterable)).
        desc: the label shown before the bar.
        disable: draw nothing (WORKBENCH_PROGRESS=off disables every bar).
        leave: keep the finished bar.
        unit: the name of one iteration ("steps", "probes" ...).
        **kwargs: further tqdm options.

    Returns:
        The tqdm bar (usable as a context manager and as an iterable).
    """
    how = mode()
    if how == "off":
        disable = True
    if how == "log":
        return _log_bar_class()(iterable, total=total, desc=desc, disable=disable, leave=leave, unit=unit, **kwargs)
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=disable, leave=leave, unit=unit, **kwargs)
