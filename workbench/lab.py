"""Live sessions: JupyterLab on working copies, and workshops served as voila apps.

**JupyterLab never edits the committed notebooks.** `make lab` serves `lab/` (git-ignored), which
holds a working copy of every paper: `lab/NAME.ipynb` paired with `lab/NAME.py` through
`lab/jupytext.toml` (the repository's jupytext settings). Outputs, scratch cells and edits stay
there; the server cannot reach `notebooks/` (it is outside its root), so a lab session can neither
break `make test` (pairs in sync, no outputs) nor change what `workbench run` executes. A copy you
have not edited follows the committed paper when that changes; an edited one is kept (and
reported) until you reset it (`make lab-reset [NAME=...]`). To turn your edits into a change of
the paper, save them back on purpose: `make lab-save NAME=...` (source and pair, without outputs).

Saving from JupyterLab (and voila) also drops widget views and widget state from the file
(`pre_save`), so a reopened notebook shows no "Error displaying widget: model not found".

**Workshops.** `make workshop` writes `workshop/NAME.ipynb` for every paper: the committed
notebook with `interactive = True` (and the profile) injected by papermill's parameter injection
(`prepare_only`: nothing is executed, the paper itself is not edited), then serves the folder
with voila. Voila runs each visitor's page in a fresh kernel; reloading the page resets it.
`serve_workshop(..., preheat=True)` keeps one executed kernel ready per paper (voila's preheated
kernels), so the first visitor of a paper does not wait for its computation.

CLI: `python -m workbench.lab copies | reset [NAME...] | save NAME | workshop [--profile] [NAME...]`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from workbench import papers as P

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
ORIGIN_DIR = ".origin"  # hidden in JupyterLab: the committed source each copy was made from
JUPYTEXT_TOML = "jupytext.toml"


def lab_dir() -> Path:
    return P.repo_root() / "lab"


def workshop_dir() -> Path:
    return P.repo_root() / "workshop"


# ----------------------------------------------------------------------------- saving


def strip_widgets(nb: dict[str, Any]) -> dict[str, Any]:
    """Remove widget views from the outputs and the saved widget state of a notebook (in place).

    A widget's view refers to a model that lives in the kernel; saved, it becomes "Error
    displaying widget: model not found" when the notebook is reopened. An output that was only a
    widget view is dropped; other outputs keep their other representations.
    """
    nb.get("metadata", {}).pop("widgets", None)
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            data = out.get("data")
            if data and WIDGET_VIEW in data:
                data.pop(WIDGET_VIEW)
                data.pop("text/plain", None)  # "VBox(children=...)" says nothing without the widget
                if not data:
                    continue
            kept.append(out)
        cell["outputs"] = kept
    return nb


def pre_save(model: dict[str, Any], path: str, contents_manager: Any = None, **kwargs: Any) -> None:
    """Jupyter server pre-save hook (`ContentsManager.pre_save_hook`): `strip_widgets` on notebooks."""
    if model.get("type") == "notebook" and isinstance(model.get("content"), dict):
        strip_widgets(model["content"])


# ----------------------------------------------------------------------------- lab copies


def _cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def _write_pair(nb, folder: Path, name: str) -> None:
    """NAME.ipynb then NAME.py (text last, so jupytext sees the pair as in sync)."""
    import jupytext
    import nbformat

    nbformat.write(nb, folder / f"{name}.ipynb")
    jupytext.write(nb, folder / f"{name}.py", fmt="py:percent")


def _inject(nb, parameters: dict[str, Any]):
    """`nb` with papermill's injected-parameters cell (nothing executed)."""
    import papermill

    return papermill.execute_notebook(nb, None, parameters=parameters, prepare_only=True,
                                      kernel_name="python3", log_output=False, progress_bar=False)


def prepare_copies(folder: Path | None = None, names: list[str] | None = None,
                   parameters: dict[str, Any] | None = None, quiet: bool = False) -> list[str]:
    """Create or refresh the lab working copies in `folder` (default `lab/`); returns notes.

    A missing copy is created; a copy whose cells still equal the source it was made from follows
    the committed paper; an edited copy is kept. `parameters` (tests, workshops) are injected by
    papermill into new copies.
    """
    import jupytext

    folder = Path(folder) if folder is not None else lab_dir()
    origin = folder / ORIGIN_DIR
    origin.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(P.repo_root() / JUPYTEXT_TOML, folder / JUPYTEXT_TOML)
    papers = P.discover()
    notes = []
    for name in names or list(papers):
        paper = P.get_paper(name, papers)
        source_text = paper.source.read_text()
        copy_py, kept = folder / f"{name}.py", origin / f"{name}.py"
        if copy_py.exists() and kept.exists():
            if kept.read_text() == source_text:
                continue  # up to date
            edited = _cells(jupytext.read(copy_py)) != _cells(jupytext.reads(kept.read_text(), fmt="py:percent"))
            if edited:
                notes.append(f"lab/{name}: kept your edited copy; the committed paper has changed "
                             f"since (make lab-reset NAME={name} to start again from it)")
                continue
        nb = jupytext.read(paper.source)
        if parameters:
            nb = _inject(nb, parameters)
        _write_pair(nb, folder, name)
        kept.write_text(source_text)
    if not quiet:
        for note in notes:
            print(note, file=sys.stderr)
    return notes


def reset_copies(names: list[str] | None = None, folder: Path | None = None) -> None:
    """Discard the working copies `names` (default: all) and make them afresh from the papers."""
    folder = Path(folder) if folder is not None else lab_dir()
    names = names or list(P.discover())
    for name in names:
        P.get_paper(name)
        for path in (folder / f"{name}.py", folder / f"{name}.ipynb", folder / ORIGIN_DIR / f"{name}.py"):
            path.unlink(missing_ok=True)
    prepare_copies(folder, names)


def save_copy(name: str, folder: Path | None = None) -> Path:
    """Make the lab copy of paper `name` the paper: its cells (no outputs) into notebooks/NAME.py
    and the paired .ipynb. This is the one way lab edits reach the repository."""
    import jupytext

    folder = Path(folder) if folder is not None else lab_dir()
    paper = P.get_paper(name)
    copy_py = folder / f"{name}.py"
    if not copy_py.exists():
        raise P.PaperError(f"no lab copy of {name!r} at {copy_py}: run `make lab` first")
    nb = jupytext.read(copy_py)
    if any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells):
        raise P.PaperError(f"{copy_py} carries an injected-parameters cell; remove it before saving")
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    jupytext.write(nb, paper.source, fmt="py:percent")
    nb = jupytext.read(paper.source)
    ipynb = paper.source.with_suffix(".ipynb")
    jupytext.write(nb, ipynb)
    paper.source.touch()
    (folder / ORIGIN_DIR / f"{name}.py").write_text(paper.source.read_text())
    P.load_paper(paper.source)  # the saved paper must still be a valid paper
    return paper.source


# ----------------------------------------------------------------------------- workshops


def workshop_parameters(paper: P.Paper, profile: str = "quick") -> dict[str, Any]:
    """What papermill injects into a workshop copy: `interactive`, the profile, and the profile's
    overrides (only values that differ from the notebook's defaults)."""
    values = P.resolve_parameters(paper, {"interactive": True}, profile)
    return {k: v for k, v in values.items()
            if k in ("interactive", "profile") or v != paper.parameters[k].default}


def prepare_workshop(folder: Path | None = None, names: list[str] | None = None, profile: str = "quick",
                     overrides: dict[str, Any] | None = None) -> list[Path]:
    """Write `folder/NAME.ipynb` (default `workshop/`) for each paper with `interactive = True`
    injected; every file is rewritten and apps of papers not asked for are removed, so preparing
    again resets the workshop."""
    import jupytext
    import nbformat

    folder = Path(folder) if folder is not None else workshop_dir()
    folder.mkdir(parents=True, exist_ok=True)
    papers = P.discover()
    names = names or list(papers)
    for name in names:
        P.get_paper(name, papers)  # every name checked before anything is written
    for stale in folder.glob("*.ipynb"):
        if stale.stem not in names:
            stale.unlink()
    written = []
    for name in names:
        paper = P.get_paper(name, papers)
        params = workshop_parameters(paper, profile)
        params.update({k: P.coerce(k, paper.parameters[k].type, v) for k, v in (overrides or {}).items()})
        nb = _inject(jupytext.read(paper.source), params)
        nb.metadata.pop("jupytext", None)  # a served copy, not a pair
        path = folder / f"{name}.ipynb"
        nbformat.write(nb, path)
        written.append(path)
    return written


def voila_command(folder: Path, ip: str = "127.0.0.1", port: int = 8866, preheat: bool = False,
                  extra: list[str] | None = None) -> list[str]:
    """The voila command line serving every notebook in `folder` (a listing page, one app each)."""
    cmd = [sys.executable, "-m", "voila", str(folder), f"--Voila.ip={ip}", f"--port={port}",
           "--no-browser", "--show_tracebacks=True", "--theme=light"]
    # A preheated kernel has executed the paper before the visitor comes; without one, the page
    # shows each cell as it finishes (the two are exclusive in voila).
    cmd += ["--preheat_kernel=True", "--pool_size=1"] if preheat else ["--progressive_rendering=True"]
    return cmd + list(extra or [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench.lab", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("copies", help="create or refresh the lab/ working copies")
    reset = sub.add_parser("reset", help="discard lab/ working copies (all, or the papers named)")
    reset.add_argument("names", nargs="*")
    save = sub.add_parser("save", help="make the lab copy of a paper the committed paper")
    save.add_argument("name")
    shop = sub.add_parser("workshop", help="write workshop/ (interactive copies of the papers)")
    shop.add_argument("names", nargs="*")
    shop.add_argument("--profile", default="quick", choices=P.PROFILES)
    shop.add_argument("--serve", action="store_true", help="then serve them with voila")
    shop.add_argument("--ip", default="127.0.0.1", help="address to listen on (0.0.0.0: every network)")
    shop.add_argument("--port", type=int, default=8866)
    shop.add_argument("--preheat", action="store_true", help="keep one executed kernel ready per paper")
    args, extra = parser.parse_known_args(argv)
    try:
        if args.command == "copies":
            prepare_copies()
        elif args.command == "reset":
            reset_copies(args.names)
        elif args.command == "save":
            print(f"saved lab/{args.name}.py -> {save_copy(args.name)} (and its .ipynb)")
        elif args.command == "workshop":
            written = prepare_workshop(names=args.names, profile=args.profile)
            print(f"workshop: {len(written)} apps in {workshop_dir()}")
            if args.serve:
                import os

                cmd = voila_command(workshop_dir(), args.ip, args.port, args.preheat, extra)
                os.execv(cmd[0], cmd)
    except P.PaperError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
