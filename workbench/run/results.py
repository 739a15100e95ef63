"""Headline numbers and figures of a paper run: `record(...)` and `save_figure(fig, name)`.

The paper runner sets WORKBENCH_RUN_DIR for the notebook's kernel; these calls write into that
run directory (`metrics.json`, `figures/`). Run by hand in JupyterLab (no run directory), they
keep the metrics in memory and return them, and figures are only displayed, so exploring a
notebook never litters the repository.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

RUN_DIR_ENV = "WORKBENCH_RUN_DIR"
METRICS_FILE = "metrics.json"
FIGURES_DIR = "figures"

_metrics: dict[str, Any] = {}


def run_dir() -> Path | None:
    """The directory of the paper run this process belongs to.

    Returns:
        The path in `$WORKBENCH_RUN_DIR` (set by the runner for the notebook's kernel), or None
        outside a paper run.
    """
    value = os.environ.get(RUN_DIR_ENV)
    return Path(value) if value else None


def _to_json(value: Any, name: str) -> Any:
    """Plain JSON values from numpy/JAX scalars and arrays; a non-finite float becomes its string
    ("nan", "inf"), visible in metrics.json and failing any claim on it."""
    if hasattr(value, "tolist"):  # numpy / jax arrays and scalars
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _to_json(v, f"{name}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(v, name) for v in value]
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    raise TypeError(f"record(): {name} has type {type(value).__name__}, which is not a number, "
                    "string, list or dict")


def record(**metrics: Any) -> dict[str, Any]:
    """Record headline numbers of this run; returns every metric recorded so far.

    Values may be Python or numpy/JAX numbers, strings, or (nested) lists and dicts of them.
    A metric recorded twice keeps its last value. Inside a paper run the metrics are merged into
    the run's `metrics.json` (written atomically); a non-finite float is written as its string
    ("nan", "inf") so it stays visible and fails any claim on it.

    Args:
        **metrics: the headline numbers by name (a name becomes a key of `metrics.json`).

    Returns:
        Every metric recorded so far by this process, by name, as plain JSON values.

    Raises:
        TypeError: a value is not a number, string, list or dict of them.
    """
    for name, value in metrics.items():
        _metrics[name] = _to_json(value, name)
    out = run_dir()
    if out is not None:
        path = out / METRICS_FILE
        existing = json.loads(path.read_text()) if path.exists() else {}
        existing.update({k: _metrics[k] for k in metrics})
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(existing, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
    return dict(_metrics)


def save_figure(fig: Any, name: str) -> Path | None:
    """Save a matplotlib figure as PNG or a plotly figure as HTML into the run dir's `figures/`.

    Every plotly HTML of a run loads one shared `figures/plotly.min.js` (written next to it once),
    so the run directory opens offline without carrying 4.8 MB of JavaScript per figure.

    Args:
        fig: a matplotlib `Figure` (saved as PNG at 110 dpi) or a plotly `Figure` (saved as HTML).
        name: the file stem, e.g. "loss_curves" (no folder, not starting with ".").

    Returns:
        The path written, or None outside a paper run (nothing is written then).

    Raises:
        ValueError: `name` is empty, contains "/" or starts with ".".
        TypeError: `fig` is neither a matplotlib nor a plotly figure.
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"figure name must be a plain file stem, got {name!r}")
    out = run_dir()
    if out is None:
        return None
    folder = out / FIGURES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(fig, "savefig"):  # matplotlib
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
    elif hasattr(fig, "write_html"):  # plotly: one plotly.min.js per figures/ folder, loaded locally
        path = folder / f"{name}.html"
        fig.write_html(path, include_plotlyjs="directory", full_html=True)
    else:
        raise TypeError(f"save_figure(): expected a matplotlib or plotly figure, got {type(fig).__name__}")
    return path


PLOTLY_MIMETYPE = "application/vnd.plotly.v1+json"


def show(fig: Any, name: str) -> Path | None:
    """Save `fig` like `save_figure` and show it inline: a plotly figure as a live (hoverable) plot,
    a matplotlib figure as its image. Returns the path written, or None outside a paper run.

    A plotly figure is shown through JupyterLab's (and voila's) plotly renderer, without
    embedding plotly.js in the notebook, so an executed notebook stays small.

    Args:
        fig: a matplotlib or plotly figure.
        name: the file stem it is saved under (see `save_figure`).

    Returns:
        The path written, or None outside a paper run.

    Raises:
        ValueError: `name` is not a plain file stem.
        TypeError: `fig` is neither a matplotlib nor a plotly figure.
    """
    from IPython.display import display

    path = save_figure(fig, name)
    if hasattr(fig, "to_plotly_json"):
        note = f"interactive plotly figure {name!r}" + (f" (saved as {path.name})" if path else "")
        display({PLOTLY_MIMETYPE: json.loads(fig.to_json()), "text/plain": note}, raw=True)
    else:
        display(fig)
    return path
