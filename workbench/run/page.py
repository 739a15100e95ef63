"""Workshop pages: a paper's recorded run shown at once, its panel computed on a click.

A workshop app (`workbench.run.workshop`) is not the paper executed anew for every visitor: it is
a page whose cells show the outputs of one recorded run of the paper (text, figures, numbers),
replayed from a JSON *page file*, so a page is ready as soon as its kernel has started. Only the
exploration panel needs computation, and it starts when the participant clicks "Start the
panel": the kernel then runs the part of the paper the panel depends on (`setup_code`: the
statements defining the names the panel cell uses, found by reading the code, not by running it)
and shows the live panel in place. A kernel that voila preheats (no one is waiting) has the page
ready, and its panel started too when the workshop preheats panels. Nothing here imports JAX: a page that nobody starts holds an idle Python kernel
only (tens of MB, not the hundreds a computing paper holds).

Presentation mode (the default) shows what a participant needs: outputs of the cell that records
the metrics (a raw dict), command-line hints and stderr logs are left out, and warnings become
one plain-language note each, without file paths.
"""

from __future__ import annotations

import ast
import atexit
import builtins
import html
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

PANEL_MARK = "if interactive:"
# calls on these names display or record (matplotlib's figures and axes by their usual names); they
# do not change what a later statement computes with them or their arguments
DISPLAY_ONLY = frozenset({"plt", "workbench", "display", "print", "fig", "ax", "axes"})
WARNING_LINE = re.compile(r"^\s*(?:\S+?):\d+: (?P<kind>\w*Warning): (?P<message>.*)$")
ABSOLUTE_PATH = re.compile(r"(?:/[\w.+-]+){2,}/(?P<name>[\w.+-]+)")
INTERACTIVE_LEAD = re.compile(r"With `interactive\s*=\s*True`:\s*(\w)")
HINT_LINE = re.compile(r"`[^`]*(python -m |make |workbench run|srun )[^`]*`")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")
READY_DIR = ".ready"
START_FAILED = "the panel could not start"
START_ENV = "WORKBENCH_START_PANELS"  # "1": every page starts its panel as it runs (a rehearsal)


def plain_message(text: str) -> str:
    """A message without absolute file paths (each replaced by its file name).

    Args:
        text: a warning or error message.

    Returns:
        The message with every absolute path `/a/b/c.py` written `c.py`.
    """
    return ABSOLUTE_PATH.sub(lambda m: m.group("name"), text).strip()


def _names(node: ast.AST) -> tuple[set[str], set[str]]:
    """The names a piece of code defines (or may change) and the names it reads."""
    defines, reads = set(), set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            (defines if isinstance(n.ctx, ast.Store | ast.Del) else reads).add(n.id)
        elif isinstance(n, ast.Import | ast.ImportFrom):
            defines.update((a.asname or a.name).split(".")[0] for a in n.names)
        elif isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defines.add(n.name)
        elif isinstance(n, ast.Attribute | ast.Subscript) and isinstance(n.ctx, ast.Store | ast.Del):
            base = n.value
            while isinstance(base, ast.Attribute | ast.Subscript):
                base = base.value
            if isinstance(base, ast.Name):
                defines.add(base.id)  # `x.a = ...`, `x[i] = ...` change x
        elif isinstance(n, ast.Expr) and isinstance(n.value, ast.Call):
            base = n.value.func
            while isinstance(base, ast.Attribute | ast.Call | ast.Subscript):
                base = base.value if not isinstance(base, ast.Call) else base.func
            if isinstance(base, ast.Name) and base.id not in DISPLAY_ONLY:
                if base is not n.value.func:
                    defines.add(base.id)  # `x.method(...)` as a statement may change x
                # a call whose result is dropped is made for what it changes: maybe its arguments
                defines.update(a.id for a in [*n.value.args, *(k.value for k in n.value.keywords)]
                               if isinstance(a, ast.Name))
    return defines, reads


def setup_code(cells: list[str], panel_indices: list[int], given: set[str] = frozenset()) -> list[tuple[int, str]]:
    """The code a panel needs, statement by statement: walking back from the panel cells, a
    top-level statement is kept when it defines a name that a kept statement reads.

    "Defines" means assigns, imports, or may change: through an attribute or an item
    (`x.a = ...`, `x[i] = ...`), a method call used as a statement (`x.update(...)`), or as an
    argument of a call whose result is dropped (`train_step(model, batch)`). Imports, and
    top-level statements that change an imported module (`jax.config.update(...)`,
    `os.environ[...] = ...`), are always kept: they set up the process. Names in `given` (the parameters) and builtins are
    never looked for. Calls on `plt`, `fig`, `ax`, `axes` and `workbench`, `print` and
    `display` (showing and recording) change nothing a later statement reads. Statements after the last panel cell are
    not looked at.

    Args:
        cells: the paper's code cells' sources, in order.
        panel_indices: the indices of the panel cells in `cells` (kept whole).
        given: names defined before any cell runs (the parameters).

    Returns:
        (cell index, code) for every cell with a statement kept, in order: the kept statements'
        lines, or the whole cell for a panel cell.

    Raises:
        SyntaxError: a cell that is not Python.
    """
    if not panel_indices:
        return []
    statements = []  # (cell index, node, its lines)
    for i, source in enumerate(cells[:max(panel_indices) + 1]):
        lines = source.splitlines()
        for node in ast.parse(source).body:
            first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
            statements.append((i, node, "\n".join(lines[first - 1:node.end_lineno])))
    modules = {name for _, node, _ in statements if isinstance(node, ast.Import | ast.ImportFrom)
               for name in _names(node)[0]}
    names = [_names(node) for _, node, _ in statements]
    keep = [i in panel_indices or isinstance(node, ast.Import | ast.ImportFrom)
            or (isinstance(node, ast.Expr | ast.Assign | ast.AugAssign) and bool(names[k][0] & modules))
            for k, (i, node, _) in enumerate(statements)]
    needed = set().union(*(names[k][1] for k in range(len(statements)) if keep[k]))
    ignored = set(given) | set(dir(builtins))
    for k in range(len(statements) - 1, -1, -1):
        defines, reads = names[k]
        if keep[k] or defines & (needed - ignored):
            keep[k] = True
            needed |= reads
    code: dict[int, list[str]] = {}
    for k, (i, _, text) in enumerate(statements):
        if keep[k]:
            code.setdefault(i, []).append(text)
    return [(i, cells[i] if i in panel_indices else "\n".join(parts)) for i, parts in code.items()]


def presentable_markdown(text: str) -> str:
    """A markdown cell for participants: the `With interactive=True:` lead-ins and lines that
    hold a command line left out.

    Args:
        text: the paper's markdown.

    Returns:
        The markdown without command-line hints.
    """
    text = INTERACTIVE_LEAD.sub(lambda m: m.group(1).upper(), text)
    return "\n".join(line for line in text.splitlines() if not HINT_LINE.search(line))


def note_key(message: str) -> str:
    """What two warnings share when they differ only in their numbers (one note for both).

    Args:
        message: a warning's message.

    Returns:
        The message with every number written `#`.
    """
    return NUMBER.sub("#", message)


def presentable_outputs(outputs: list[dict], source: str, notes: dict[str, list]) -> list[dict]:
    """A recorded cell's outputs as participants see them (presentation mode).

    Left out: everything printed by the cell that records the metrics (`workbench.record`, a
    raw dict), results shown as a bare dict, and stderr. Each warning found in stderr becomes a
    note, its message without file paths; warnings that differ only in their numbers share one
    note, which counts them.

    Args:
        outputs: the cell's outputs as nbformat writes them (dicts).
        source: the cell's code.
        notes: the page's notes so far, `note_key(message) -> [first message, count]`; updated
            in place.

    Returns:
        The outputs to show.
    """
    kept = []
    records = "workbench.record(" in source
    for out in outputs:
        kind = out.get("output_type")
        if kind == "stream" and out.get("name") == "stderr":
            for line in "".join(out.get("text", "")).splitlines():
                match = WARNING_LINE.match(line)
                if match:
                    note = plain_message(match.group("message"))
                    notes.setdefault(note_key(note), [note, 0])[1] += 1
            continue
        if records and kind in ("stream", "execute_result"):
            continue
        if kind == "execute_result" and "".join(out.get("data", {}).get("text/plain", "")).lstrip().startswith("{"):
            continue
        kept.append(out)
    return kept


def _show_outputs(outputs: list[dict]) -> None:
    from IPython.display import publish_display_data

    for out in outputs:
        kind = out.get("output_type")
        if kind == "stream":
            text = "".join(out.get("text", ""))
            publish_display_data({"text/plain": text, "text/html": f"<pre style='margin:0'>{html.escape(text)}</pre>"})
        elif kind in ("display_data", "execute_result"):
            publish_display_data({k: "".join(v) if isinstance(v, list) else v for k, v in out.get("data", {}).items()},
                                 out.get("metadata", {}))


class Page:
    """One paper's workshop page, read from its page file (`workshop.write_page` writes it).

    Attributes: `spec` (the page file's content: paper, title, parameters, outputs and notes by
    code cell, setup code, panel cells, the setup's recorded seconds), `path` (the page file), `started`
    (whether the panel's setup has run), `error` (the setup's error message, or None),
    `placeholders` (panel cell index -> its `ipywidgets.Output`).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.spec = json.loads(self.path.read_text())
        self.started = False
        self.error: str | None = None
        self.placeholders: dict[int, Any] = {}
        self._buttons: list[Any] = []
        self._status: list[Any] = []

    def replay(self, index: int) -> None:
        """Show code cell `index`'s recorded outputs, then its warnings as notes.

        Args:
            index: the code cell's index among the paper's code cells.
        """
        _show_outputs(self.spec["outputs"].get(str(index), []))
        _show_notes(self.spec["notes"].get(str(index), []))

    def panel(self, index: int) -> None:
        """Show panel cell `index`'s place: a start button (or the live panel at once, in a kernel
        voila preheats for a workshop that preheats panels, or with `WORKBENCH_START_PANELS=1`).

        Args:
            index: the panel cell's index among the paper's code cells.
        """
        import ipywidgets as w
        from IPython.display import display

        out = w.Output()
        self.placeholders[index] = out
        seconds = self.spec["setup_seconds"]
        button = w.Button(description="Start the panel", button_style="primary", icon="play",
                          tooltip="compute what the panel needs, then show it")
        status = w.HTML(value=f"computes what the panel needs first (at most about {max(1, round(seconds))} s "
                              "when the machine is not busy)")
        button.on_click(lambda _: self.start())
        self._buttons.append(button)
        self._status.append(status)
        with out:
            display(w.HBox(children=[button, status]))
        display(out)
        if index == max(int(i) for i in self.spec["panels"]):
            if os.environ.get(START_ENV) == "1" or (_preheated() and self.spec.get("preheat_panels")):
                self.start(announce=True)
            else:
                self._mark_ready(0.0)

    def start(self, announce: bool = False) -> bool:
        """Run the setup cells, then each panel cell into its place; an error is shown there.

        Args:
            announce: also print an error to stderr (when the page's own execution starts the
                panel, so a check of the executed page sees it; default off).

        Returns:
            Whether the panel started (False after an error, shown in the page).
        """
        if self.started:
            return self.error is None
        self.started = True
        from IPython import get_ipython
        from IPython.utils.capture import capture_output

        for b in self._buttons:
            b.disabled, b.icon = True, "hourglass"
        for s in self._status:
            s.value = "<i>computing what the panel needs...</i>"
        shell = get_ipython()
        namespace = shell.user_ns if shell is not None else {}
        namespace.update(self.spec["parameters"], interactive=True)
        start = time.perf_counter()
        try:
            for index, source in self.spec["setup"]:
                if str(index) in self.spec["panels"]:
                    out = self.placeholders[int(index)]
                    out.clear_output(wait=True)
                    with out:
                        exec(compile(source, f"<{self.spec['paper']} cell {index}>", "exec"), namespace)
                else:
                    with capture_output():
                        exec(compile(source, f"<{self.spec['paper']} cell {index}>", "exec"), namespace)
                    _close_figures()
        except Exception as err:  # shown in the page, never raised into the widget loop
            self.error = plain_message(f"{type(err).__name__}: {err}")
            for s, b in zip(self._status, self._buttons, strict=True):
                s.value = f"<span style='color:#b00'>the panel could not start: {html.escape(self.error)}</span>"
                b.icon = "times"
            if announce:
                print(f"{START_FAILED}: {self.error}", file=sys.stderr)
            return False
        self._mark_ready(time.perf_counter() - start)
        return True

    def _mark_ready(self, seconds: float) -> None:
        """In a preheated kernel, leave a file saying this kernel's page is ready (its panel live
        when the workshop preheats panels); the workshop command counts them to tell the teacher
        when preheating has finished."""
        if not _preheated():
            return
        folder = self.path.parent / READY_DIR
        folder.mkdir(exist_ok=True)
        marker = folder / f"{self.spec['paper']}-{os.getpid()}"
        marker.write_text(f"{seconds:.1f}\n")
        atexit.register(lambda: marker.unlink(missing_ok=True))


def _preheated() -> bool:
    """Whether this kernel is one voila preheats (executing the page before anyone visits)."""
    return os.environ.get("VOILA_PREHEAT") == "True"


def _show_notes(notes: list) -> None:
    """The warnings of a recorded cell, once each, in plain words (nothing when none)."""
    from IPython.display import HTML, display

    if notes:
        items = "".join(f"<li>{html.escape(text)}" + (f" <i>({count} times)</i>" if count > 1 else "") + "</li>"
                        for text, count in notes)
        display(HTML(f"<details style='color:#7a5a00'><summary>Note{'s' if len(notes) > 1 else ''} on the "
                     f"recorded run ({len(notes)}): its settings, not the panel's</summary><ul>{items}</ul>"
                     "</details>"))


def _close_figures() -> None:
    """Close the figures a setup cell drew (they are not shown and would hold memory)."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        plt.close("all")


def load(path: str | Path) -> Page:
    """The page of a page file; a workshop notebook's first cell calls it.

    Args:
        path: the page file (`workshop/.pages/NAME.json`).

    Returns:
        The `Page`.
    """
    page = Page(path)
    if not page.spec["panels"]:
        page._mark_ready(0.0)  # a page without a panel is ready once loaded
    return page
