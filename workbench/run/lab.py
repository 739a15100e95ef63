"""JupyterLab on working copies of the papers, never on the papers themselves.

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

The workshop (every paper as a voila app) is `workbench.run.workshop`.

CLI: `python -m workbench lab copies | reset [NAME...] | save NAME`.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from workbench.run import papers as registry

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
ORIGIN_DIR = ".origin"  # hidden in JupyterLab: the committed source each copy was made from
JUPYTEXT_TOML = "jupytext.toml"


def lab_dir() -> Path:
    """The folder of the JupyterLab working copies.

    Returns:
        `lab/` in the repository (git-ignored).
    """
    return registry.repo_root() / "lab"


# ----------------------------------------------------------------------------- saving


def strip_widgets(nb: dict[str, Any]) -> dict[str, Any]:
    """Remove widget views from the outputs and the saved widget state of a notebook (in place).

    A widget's view refers to a model that lives in the kernel; saved, it becomes "Error
    displaying widget: model not found" when the notebook is reopened. An output that was only a
    widget view is dropped; other outputs keep their other representations.

    Args:
        nb: a notebook as a JSON dict (nbformat 4: "metadata", "cells", each cell's "outputs").

    Returns:
        The same dict, changed in place.
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
    """Jupyter server pre-save hook (`ContentsManager.pre_save_hook`): `strip_widgets` on notebooks.

    Args:
        model: the contents model being saved; only `type == "notebook"` models are changed.
        path: the file's path relative to the server root (unused).
        contents_manager: the server's contents manager (unused).
        **kwargs: further arguments Jupyter may pass (unused).
    """
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


def inject_parameters(nb, parameters: dict[str, Any]):
    """`nb` with papermill's injected-parameters cell (nothing executed).

    Args:
        nb: a notebook (`nbformat.NotebookNode`) with a cell tagged `parameters`.
        parameters: the values papermill writes into the `injected-parameters` cell after it.

    Returns:
        A new notebook with that cell; `nb` is left as it was.
    """
    import papermill

    return papermill.execute_notebook(nb, None, parameters=parameters, prepare_only=True,
                                      kernel_name="python3", log_output=False, progress_bar=False)


def prepare_copies(folder: Path | None = None, names: list[str] | None = None,
                   parameters: dict[str, Any] | None = None, quiet: bool = False) -> list[str]:
    """Create or refresh the lab working copies in `folder` (default `lab/`); returns notes.

    A missing copy is created; a copy whose cells still equal the source it was made from follows
    the committed paper; an edited copy is kept. `parameters` (tests, workshops) are injected by
    papermill into new copies.

    Args:
        folder: where the copies go; None means `lab/`.
        names: the papers to copy; None (or empty) means every paper.
        parameters: values injected into new copies by papermill; None injects nothing.
        quiet: do not print the notes to stderr (default: print them).

    Returns:
        A note per edited copy that was kept although its paper changed.

    Raises:
        PaperError: a name that is not a paper.
    """
    import jupytext

    folder = Path(folder) if folder is not None else lab_dir()
    origin = folder / ORIGIN_DIR
    origin.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(registry.repo_root() / JUPYTEXT_TOML, folder / JUPYTEXT_TOML)
    papers = registry.discover()
    notes = []
    for name in names or list(papers):
        paper = registry.get_paper(name, papers)
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
            nb = inject_parameters(nb, parameters)
        _write_pair(nb, folder, name)
        kept.write_text(source_text)
    if not quiet:
        for note in notes:
            print(note, file=sys.stderr)
    return notes


def reset_copies(names: list[str] | None = None, folder: Path | None = None) -> None:
    """Discard the working copies `names` and make them afresh from the papers.

    Args:
        names: the papers whose copies are discarded; None (or empty) means every paper.
        folder: where the copies are; None means `lab/`.

    Raises:
        PaperError: a name that is not a paper.
    """
    folder = Path(folder) if folder is not None else lab_dir()
    names = names or list(registry.discover())
    for name in names:
        registry.get_paper(name)
        for path in (folder / f"{name}.py", folder / f"{name}.ipynb", folder / ORIGIN_DIR / f"{name}.py"):
            path.unlink(missing_ok=True)
    prepare_copies(folder, names)


def save_copy(name: str, folder: Path | None = None) -> Path:
    """Make the lab copy of paper `name` the paper: its cells (no outputs) into notebooks/NAME.py
    and the paired .ipynb. This is the one way lab edits reach the repository.

    Args:
        name: the paper.
        folder: where the copies are; None means `lab/`.

    Returns:
        The path of the paper's source that was written (`notebooks/NAME.py`).

    Raises:
        PaperError: `name` is not a paper, it has no lab copy, the copy carries papermill's
            injected-parameters cell, or the saved notebook is no longer a valid paper.
    """
    import jupytext

    folder = Path(folder) if folder is not None else lab_dir()
    paper = registry.get_paper(name)
    copy_py = folder / f"{name}.py"
    if not copy_py.exists():
        raise registry.PaperError(f"no lab copy of {name!r} at {copy_py}: run `make lab` first")
    nb = jupytext.read(copy_py)
    if any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells):
        raise registry.PaperError(f"{copy_py} carries an injected-parameters cell; remove it before saving")
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    jupytext.write(nb, paper.source, fmt="py:percent")
    nb = jupytext.read(paper.source)
    ipynb = paper.source.with_suffix(".ipynb")
    jupytext.write(nb, ipynb)
    paper.source.touch()
    (folder / ORIGIN_DIR / f"{name}.py").write_text(paper.source.read_text())
    registry.load_paper(paper.source)  # the saved paper must still be a valid paper
    return paper.source
