"""Workshops: every paper served as a voila app.

`make workshop` writes `workshop/NAME.ipynb` for every paper: the committed
notebook with `interactive = True` (and the profile) injected by papermill's parameter injection
(`prepare_only`: nothing is executed, the paper itself is not edited), then serves the folder
with voila. Voila runs each visitor's page in a fresh kernel; reloading the page resets it.
`voila_command(..., preheat=True)` (`--preheat`) keeps one executed kernel ready per paper
(voila's preheated kernels), so the first visitor of a paper does not wait for its computation.

CLI: `python -m workbench workshop [--profile] [--serve] [--preheat] [NAME...]`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from workbench.run import papers as registry
from workbench.run.lab import inject_parameters


def workshop_dir() -> Path:
    """The folder of the workshop apps.

    Returns:
        `workshop/` in the repository (git-ignored).
    """
    return registry.repo_root() / "workshop"


def workshop_parameters(paper: registry.Paper, profile: str = "quick") -> dict[str, Any]:
    """What papermill injects into a workshop copy: `interactive`, the profile, and the profile's
    overrides (only values that differ from the notebook's defaults).

    Args:
        paper: the paper.
        profile: "quick" (default) or "full".

    Returns:
        The parameters to inject, by name: `interactive` (True), `profile`, and every value the
        profile changes.

    Raises:
        PaperError: an unknown profile.
    """
    values = registry.resolve_parameters(paper, {"interactive": True}, profile)
    return {k: v for k, v in values.items()
            if k in ("interactive", "profile") or v != paper.parameters[k].default}


def prepare_workshop(folder: Path | None = None, names: list[str] | None = None, profile: str = "quick",
                     overrides: dict[str, Any] | None = None) -> list[Path]:
    """Write `folder/NAME.ipynb` (default `workshop/`) for each paper with `interactive = True`
    injected; every file is rewritten and apps of papers not asked for are removed, so preparing
    again resets the workshop.

    Args:
        folder: where the apps go; None means `workshop/`.
        names: the papers; None (or empty) means every paper.
        profile: the profile injected, "quick" (default) or "full".
        overrides: further parameter values by name (checked for type and allowed values); None
            for none.

    Returns:
        The notebooks written, in the order of `names`.

    Raises:
        PaperError: a name that is not a paper (checked before anything is written), an unknown
            profile or parameter, or a value of the wrong type or outside its allowed values.
    """
    import jupytext
    import nbformat

    folder = Path(folder) if folder is not None else workshop_dir()
    folder.mkdir(parents=True, exist_ok=True)
    papers = registry.discover()
    names = names or list(papers)
    for name in names:
        registry.get_paper(name, papers)  # every name checked before anything is written
    for stale in folder.glob("*.ipynb"):
        if stale.stem not in names:
            stale.unlink()
    written = []
    for name in names:
        paper = registry.get_paper(name, papers)
        params = workshop_parameters(paper, profile)
        params.update({k: registry.check_value(paper.parameters[k], v) for k, v in (overrides or {}).items()})
        nb = inject_parameters(jupytext.read(paper.source), params)
        nb.metadata.pop("jupytext", None)  # a served copy, not a pair
        path = folder / f"{name}.ipynb"
        nbformat.write(nb, path)
        written.append(path)
    return written


def voila_command(folder: Path, ip: str = "127.0.0.1", port: int = 8866, preheat: bool = False,
                  extra: list[str] | None = None) -> list[str]:
    """The voila command line serving every notebook in `folder` (a listing page, one app each).

    Args:
        folder: the workshop folder (`prepare_workshop`'s).
        ip: the address to listen on; "127.0.0.1" (default) is this machine only, "0.0.0.0" every
            network.
        port: the port (default 8866).
        preheat: keep one executed kernel ready per paper instead of rendering cells as they
            finish (default off).
        extra: further voila flags appended as given; None for none.

    Returns:
        The argument list, starting with this Python interpreter (`sys.executable -m voila`).
    """
    cmd = [sys.executable, "-m", "voila", str(folder), f"--Voila.ip={ip}", f"--port={port}",
           "--no-browser", "--show_tracebacks=True", "--theme=light"]
    # A preheated kernel has executed the paper before the visitor comes; without one, the page
    # shows each cell as it finishes (the two are exclusive in voila).
    cmd += ["--preheat_kernel=True", "--pool_size=1"] if preheat else ["--progressive_rendering=True"]
    return cmd + list(extra or [])
