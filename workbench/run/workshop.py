"""Workshops: every paper served as a voila page a class can open at once.

`make workshop` (`prepare_workshop`) first *records* each paper once: it runs the paper with the
workshop's parameters (the profile, and the teacher's per-paper values from a parameter file)
into `workshop/.runs/`, unless a recording of the same paper source with the same parameters is
already there. From the recorded run it writes a page (`workshop/NAME.ipynb` and its page file
`workshop/.pages/NAME.json`, `workbench.run.page`): the paper's text with its recorded outputs
replayed, and the exploration panel started only when a participant clicks (or at once in a
kernel voila preheats). A visitor's kernel therefore starts in about a second and holds tens of
MB until its panel starts, instead of recomputing the paper for every arrival.

`voila_command` serves the folder with a listing by paper title (a voila template written next to
the pages, `listing_html`), idle kernels culled, and an optional pool of preheated kernels per
paper. Preparing again resets the workshop (pages of papers not asked for are removed); a failed
recording is reported and its paper is not served, and a good earlier recording is never
replaced by a failed one.

CLI: `python -m workbench workshop [--profile] [--parameters FILE] [--serve] [--preheat]
[--pool-size N] [--cull-minutes M] [--all-output] [NAME...]`.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from workbench.run import page as pages
from workbench.run import papers as registry

PAGES_DIR = ".pages"
RUNS_DIR = ".runs"
TEMPLATE_ROOT = ".voila"  # a Jupyter data folder holding the listing template
TEMPLATE_NAME = "workbench"
PAGE_FORMAT = 2  # recordings of an older format are made again


def workshop_dir() -> Path:
    """The folder of the workshop apps.

    Returns:
        `workshop/` in the repository (git-ignored).
    """
    return registry.repo_root() / "workshop"


def workshop_parameters(paper: registry.Paper, profile: str = "quick",
                        values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The resolved parameters a paper is recorded with for a workshop (`interactive` off: the
    recording has no panel; the page starts one).

    Args:
        paper: the paper.
        profile: "quick" (default) or "full".
        values: the teacher's values for this paper by parameter name (checked for type and
            allowed values); None for none.

    Returns:
        Every parameter's value by name.

    Raises:
        PaperError: an unknown profile or parameter, or a value of the wrong type or outside its
            allowed values.
    """
    return registry.resolve_parameters(paper, {**(values or {}), "interactive": False}, profile)


def load_workshop_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """The teacher's parameters for the day: a YAML mapping of paper names to parameter values.

    Args:
        path: the file, e.g. `{hessian_spectrum: {num_examples: 150}, tour: {steps: 300}}`.

    Returns:
        The values by paper name (checked when the workshop is prepared).

    Raises:
        PaperError: a missing file, or content that is not a mapping of mappings.
    """
    content = registry.load_parameter_file(path)
    for name, values in content.items():
        if not isinstance(values, dict):
            raise registry.PaperError(f"{path}: the entry of {name!r} must map parameter names to values, "
                                      f"got {values!r}")
    return content


def listing_entry(paper: registry.Paper) -> tuple[str, str]:
    """A paper's line in the listing: its title and a one-line description.

    Args:
        paper: the paper.

    Returns:
        (title, description): the paper's `summary` when it has one (with its whole title), else
        the title's part before " - " and the part after it; else the title and "".
    """
    if paper.summary:
        return paper.title, paper.summary
    if " - " in paper.title:
        title, rest = paper.title.split(" - ", 1)
        return title.strip(), rest.strip()[:1].upper() + rest.strip()[1:]
    return paper.title, ""


def _source_digest(paper: registry.Paper) -> str:
    return hashlib.sha256(paper.source.read_bytes()).hexdigest()[:16]


def _code_cells(nb) -> list:
    """The paper's code cells other than its parameters cell (and papermill's injected one)."""
    return [c for c in nb.cells if c.cell_type == "code"
            and not {"parameters", "injected-parameters"} & set(c.metadata.get("tags", []))]


def write_page(paper: registry.Paper, recorded: Path, params: dict[str, Any], folder: Path,
               presentation: bool = True, preheat_panels: bool = False) -> Path:
    """Write `folder/NAME.ipynb` and its page file from a recorded run of `paper`.

    Args:
        paper: the paper.
        recorded: the executed notebook of a successful run of `paper` with `params`.
        params: the parameters it ran with.
        folder: the workshop folder.
        presentation: leave out raw dicts, command-line hints and stderr, and turn warnings into
            notes (default on); False replays every output.
        preheat_panels: a kernel voila preheats starts the panel too (default off: it has the
            page ready and the panel starts on a click).

    Returns:
        The page notebook written.

    Raises:
        PaperError: the recording's code cells are not the paper's (the paper changed since).
    """
    import jupytext
    import nbformat

    source_nb = jupytext.read(paper.source)
    ran = nbformat.read(recorded, as_version=4)
    cells, ran_cells = _code_cells(source_nb), _code_cells(ran)
    if [c.source for c in cells] != [c.source for c in ran_cells]:
        raise registry.PaperError(f"{recorded} is not a recording of the current {paper.name} (its code differs)")
    sources = [c.source for c in cells]
    panels = [i for i, s in enumerate(sources) if s.lstrip().startswith(pages.PANEL_MARK)]
    setup = pages.setup_code(sources, panels, given=set(params))
    outputs, notes = {}, {}
    for i, cell in enumerate(ran_cells):
        cell_notes: dict[str, list] = {}
        shown = (pages.presentable_outputs(cell.get("outputs", []), cell.source, cell_notes)
                 if presentation else list(cell.get("outputs", [])))
        if shown:
            outputs[str(i)] = shown
        if cell_notes:
            notes[str(i)] = list(cell_notes.values())
    seconds = sum(float(ran_cells[i].metadata.get("papermill", {}).get("duration") or 0) for i, _ in setup)
    spec = {"paper": paper.name, "title": paper.title, "parameters": {**params, "interactive": True},
            "outputs": outputs, "notes": notes, "panels": [str(i) for i in panels],
            "setup": [[i, code] for i, code in setup], "setup_seconds": round(seconds, 1),
            "source_digest": _source_digest(paper), "recorded": str(recorded), "presentation": presentation,
            "recorded_parameters": params, "preheat_panels": preheat_panels, "format": PAGE_FORMAT}
    (folder / PAGES_DIR).mkdir(parents=True, exist_ok=True)
    spec_path = (folder / PAGES_DIR / f"{paper.name}.json").resolve()
    spec_path.write_text(json.dumps(spec) + "\n")

    out = nbformat.v4.new_notebook(metadata={"kernelspec": source_nb.metadata.get("kernelspec", {}),
                                             "title": listing_entry(paper)[0]})
    out.cells.append(nbformat.v4.new_code_cell(
        f"from workbench.run import page as _page_module\n_page = _page_module.load({str(spec_path)!r})"))
    code_index = 0
    heading, silent = None, False  # a bare heading waits for something shown under it
    for cell in source_nb.cells:
        shown = None
        if cell.cell_type == "markdown":
            text = pages.presentable_markdown(cell.source) if presentation else cell.source
            if heading is not None and silent:  # only silent code under the heading: left out
                heading = None
            shown = nbformat.v4.new_markdown_cell(text)
            if presentation and all(line.startswith("#") for line in text.splitlines() if line.strip()):
                if heading is not None:
                    out.cells.append(heading)
                heading, silent = shown, False
                continue
        elif cell.cell_type == "code" and "parameters" not in cell.metadata.get("tags", []):
            if code_index in panels:
                shown = nbformat.v4.new_code_cell(f"_page.panel({code_index})")
            elif str(code_index) in outputs or str(code_index) in notes:
                shown = nbformat.v4.new_code_cell(f"_page.replay({code_index})")
            code_index += 1
            silent = silent or shown is None
        if shown is not None:
            if heading is not None:
                out.cells.append(heading)
            heading = None
            out.cells.append(shown)
    path = folder / f"{paper.name}.ipynb"
    _notary(folder).sign(out)  # trusted: voila shows its outputs without a warning
    nbformat.write(out, path)
    return path


def _notary(folder: Path):
    """The signature store of this workshop's pages (in `folder/.voila`, not the user's own)."""
    from nbformat.sign import NotebookNotary

    data = (Path(folder) / TEMPLATE_ROOT).resolve()
    data.mkdir(parents=True, exist_ok=True)
    return NotebookNotary(data_dir=str(data))


def _recording(paper: registry.Paper, params: dict[str, Any], folder: Path) -> Path | None:
    """The executed notebook of this workshop's recording of `paper` with `params`, when the page
    file says one of the current source exists."""
    spec_path = folder / PAGES_DIR / f"{paper.name}.json"
    if not spec_path.is_file():
        return None
    try:
        spec = json.loads(spec_path.read_text())
    except ValueError:
        return None
    recorded = Path(spec.get("recorded", ""))
    if (spec.get("format") == PAGE_FORMAT and spec.get("recorded_parameters") == json.loads(json.dumps(params))
            and spec.get("source_digest") == _source_digest(paper) and recorded.is_file()):
        return recorded
    return None


def prepare_workshop(folder: Path | None = None, names: list[str] | None = None, profile: str = "quick",
                     parameters: Mapping[str, Mapping[str, Any]] | None = None, presentation: bool = True,
                     preheat_panels: bool = False, echo: Callable[[str], Any] = print) -> list[Path]:
    """Record each paper (unless this workshop already recorded it with the same source and
    parameters) and write its page; pages of papers not asked for are removed.

    Args:
        folder: where the pages go; None means `workshop/`.
        names: the papers; None (or empty) means the papers named in `parameters`, or every paper.
        profile: the profile recorded, "quick" (default) or "full".
        parameters: the teacher's values by paper name, then parameter name; None for none.
        presentation: participants' pages (default) or every output (`write_page`).
        preheat_panels: preheated kernels start their panel too (`write_page`; default off).
        echo: where progress lines go (default `print`).

    Returns:
        The page notebooks written, in the order of `names`.

    Raises:
        PaperError: a name that is not a paper, or a parameter value refused (all checked before
            anything is written or run); or, after the other pages are written, the papers whose
            recording failed (their earlier pages are removed, never served stale).
    """
    from workbench.run import runner

    folder = Path(folder) if folder is not None else workshop_dir()
    parameters = dict(parameters or {})
    papers = registry.discover()
    names = list(names or parameters or papers)
    for name in [*names, *parameters]:
        registry.get_paper(name, papers)  # every name checked before anything is written
    unused = set(parameters) - set(names)
    if unused:
        raise registry.PaperError(f"the parameter file sets {sorted(unused)}, which this workshop does not serve")
    plans = {name: workshop_parameters(registry.get_paper(name, papers), profile, parameters.get(name))
             for name in names}
    folder.mkdir(parents=True, exist_ok=True)
    for stale in [*folder.glob("*.ipynb"), *folder.glob(f"{PAGES_DIR}/*.json")]:
        if stale.stem not in names:
            stale.unlink()
    written, failed = [], []
    for i, name in enumerate(names, 1):
        paper = registry.get_paper(name, papers)
        recorded = _recording(paper, plans[name], folder)
        if recorded is None:
            echo(f"[{i}/{len(names)}] recording {name} ({profile} profile"
                 + (f", about {paper.quick_seconds:.0f} s" if profile == "quick" and paper.quick_seconds else "")
                 + ")...")
            result = runner.run_paper(paper, plans[name], folder / RUNS_DIR, inline_figures=True)
            if not result.ok:
                failed.append(f"{name}: {result.error.splitlines()[-1] if result.error else 'failed'} "
                              f"(traceback: {result.path / 'error.txt'})")
                for old in (folder / f"{name}.ipynb", folder / PAGES_DIR / f"{name}.json"):
                    old.unlink(missing_ok=True)
                continue
            recorded = result.path / f"{name}.ipynb"
        else:
            echo(f"[{i}/{len(names)}] {name}: recorded earlier with these parameters")
        written.append(write_page(paper, recorded, plans[name], folder, presentation, preheat_panels))
    write_listing(folder, [n for n in names if (folder / f"{n}.ipynb").exists()], papers)
    if failed:
        raise registry.PaperError("recording failed, so these papers are not served:\n  " + "\n  ".join(failed))
    return written


def listing_html(entries: list[tuple[str, str, str]]) -> str:
    """The listing page's body: one link per paper, by title, with its description.

    Args:
        entries: (notebook file name, title, description) per paper, in order.

    Returns:
        A voila tree template (Jinja, extending the lab template's page) listing them.
    """
    items = "\n".join(
        f"<li><a href=\"{{{{ base_url }}}}voila/render/{html.escape(file)}\">"
        f"<span class=\"wb-title\">{html.escape(title)}</span>"
        f"<span class=\"wb-description\">{html.escape(description)}</span></a></li>"
        for file, title, description in entries)
    return ("{% extends \"page.html\" %}\n{% block title %}Workshop papers{% endblock %}\n"
            "{% block stylesheets %}{{ super() }}<style>"
            "body{font-family:system-ui,sans-serif;background:#f7f7f7;margin:0}"
            "main{max-width:860px;margin:40px auto;padding:0 16px}"
            "h1{font-size:1.6em;margin-bottom:4px} p.wb-lead{color:#444;margin-top:0}"
            "ul.wb-papers{list-style:none;padding:0} ul.wb-papers li{margin:10px 0}"
            "ul.wb-papers a{display:block;padding:12px 16px;background:#fff;border:1px solid #ccc;"
            "border-radius:6px;text-decoration:none;color:#111}"
            "ul.wb-papers a:hover,ul.wb-papers a:focus{border-color:#1976d2;outline:2px solid #1976d2}"
            ".wb-title{display:block;font-weight:600;font-size:1.1em}"
            ".wb-description{display:block;color:#555;margin-top:3px}</style>{% endblock %}\n"
            "{% block body %}<main><h1>Workshop papers</h1>"
            "<p class=\"wb-lead\">Open a paper: its text and figures show at once; its panel starts "
            "when you click <b>Start the panel</b>.</p>"
            f"<ul class=\"wb-papers\">\n{items}\n</ul></main>{{% endblock %}}\n")


def write_listing(folder: Path, names: list[str], papers: dict[str, registry.Paper] | None = None) -> Path:
    """Write the voila template whose tree page lists the served papers by title.

    Args:
        folder: the workshop folder.
        names: the papers served, in order.
        papers: the paper registry; None discovers it.

    Returns:
        The template folder (`folder/.voila/voila/templates/workbench`).
    """
    papers = papers or registry.discover()
    entries = [(f"{n}.ipynb", *listing_entry(papers[n])) for n in names]
    template = folder / TEMPLATE_ROOT / "voila" / "templates" / TEMPLATE_NAME
    template.mkdir(parents=True, exist_ok=True)
    (template / "conf.json").write_text(json.dumps({"base_template": "lab"}) + "\n")
    (template / "tree.html").write_text(listing_html(entries))
    write_kernelspec(folder)
    return template


def write_kernelspec(folder: Path) -> Path:
    """Write the kernel the pages run in: this Python's ipykernel, logging errors only.

    It is found first on `voila_environment`'s `JUPYTER_PATH` under the usual name "python3".
    Quieter than the default kernel: ipykernel warns at every start that its TCP sockets are not
    encrypted. They listen on 127.0.0.1, this machine only, also when voila serves a classroom
    network; voila's CurveZMQ encryption (`--KernelManager.transport_encryption`) is not used: it
    left 8 page requests in 120 waiting forever for a cell's reply, against 3 in 216 without it.

    Args:
        folder: the workshop folder.

    Returns:
        The kernelspec folder (`folder/.voila/kernels/python3`).
    """
    spec = Path(folder) / TEMPLATE_ROOT / "kernels" / "python3"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-Xfrozen_modules=off", "-m", "ipykernel_launcher", "-f", "{connection_file}",
                 "--IPKernelApp.log_level=ERROR"],
        "display_name": "Python 3 (workshop)", "language": "python", "metadata": {"debugger": False},
    }, indent=1) + "\n")
    return spec


def voila_environment(folder: Path) -> dict[str, str]:
    """The environment voila runs in: this one, with the listing template's Jupyter data folder
    first on `JUPYTER_PATH`.

    Args:
        folder: the workshop folder.

    Returns:
        The environment variables.
    """
    extra = str((Path(folder) / TEMPLATE_ROOT).resolve())
    current = os.environ.get("JUPYTER_PATH")
    return {**os.environ, "JUPYTER_PATH": extra + (os.pathsep + current if current else "")}


def voila_command(folder: Path, ip: str = "127.0.0.1", port: int = 8866, preheat: bool = False,
                  extra: list[str] | None = None, pool_size: int = 1, cull_minutes: float = 10) -> list[str]:
    """The voila command line serving every page in `folder` (run it in `voila_environment`).

    Args:
        folder: the workshop folder (`prepare_workshop`'s).
        ip: the address to listen on; "127.0.0.1" (default) is this machine only, "0.0.0.0" every
            network.
        port: the port (default 8866).
        preheat: keep `pool_size` kernels per paper with the page executed (and the panel started
            when the pages were written with `preheat_panels`) (default off).
        extra: further voila flags appended as given; None for none.
        pool_size: preheated kernels per paper (default 1; only with `preheat`).
        cull_minutes: a kernel whose page was closed (or lost its connection) and that has been
            idle this long is shut down (default 10; 0 never culls).

    Returns:
        The argument list, starting with this Python interpreter (`sys.executable -m voila`).

    Raises:
        ValueError: a pool size below 1 or negative minutes.
    """
    if pool_size < 1 or cull_minutes < 0:
        raise ValueError(f"pool_size must be at least 1 and cull_minutes at least 0, got {pool_size} and {cull_minutes}")
    data = (Path(folder) / TEMPLATE_ROOT).resolve()
    cmd = [sys.executable, "-m", "voila", str(folder), f"--Voila.ip={ip}", f"--port={port}",
           "--no-browser", "--show_tracebacks=True", "--theme=light", f"--template={TEMPLATE_NAME}",
           "--classic_tree=True", f"--NotebookNotary.data_dir={data}"]
    # A preheated kernel has executed the page before the visitor comes. Without one the page is
    # sent once its (replaying, fast) cells have run: voila's progressive rendering lost the panel
    # widget of 1 tab in 6 when a class arrived at once.
    cmd += ["--preheat_kernel=True", f"--pool_size={pool_size}"] if preheat else []
    if cull_minutes:
        cmd += [f"--MappingKernelManager.cull_idle_timeout={int(cull_minutes * 60)}",
                "--MappingKernelManager.cull_interval=60", "--MappingKernelManager.cull_connected=False"]
    return cmd + list(extra or [])


class PageCheck(NamedTuple):
    """A page executed with its panel started and run once: the error (None when the panel started
    and its first run raised nothing), the kernel's resident memory in MB after that run, and the
    seconds it all took."""

    error: str | None
    memory_mb: float
    seconds: float


RUN_FAILED = "the panel's first run failed"
# the last cell of a checked page: run the panel once with its starting values (as a participant's
# first click), then report the kernel's memory
CHECK_PROBE = ("import sys as _sys\nfrom pathlib import Path as _P\n_p = globals().get('panel')\n"
               "if _p is not None and hasattr(_p, 'run') and not _p.history:\n    _p.run()\n"
               "if _p is not None and getattr(_p, 'last_error', None) is not None:\n"
               f"    print({RUN_FAILED!r} + ':', type(_p.last_error).__name__, _p.last_error, file=_sys.stderr)\n"
               "print('workbench-kernel-rss-kb', [l.split()[1] for l in _P('/proc/self/status').read_text()"
               ".splitlines() if l.startswith('VmRSS:')][0])")


def check_pages(folder: Path, names: list[str], timeout: float = 900) -> dict[str, PageCheck]:
    """Execute each page with its panel started at once, run the panel once with its starting
    values (a participant's first click), and report what failed and the memory each kernel then
    holds: a rehearsal of the workshop before the class comes (`workbench workshop --check`), and
    the numbers for sizing the machine.

    Args:
        folder: the workshop folder.
        names: the papers to check (their pages must exist).
        timeout: seconds allowed per cell (default 900).

    Returns:
        A `PageCheck` by paper (memory 0 where /proc is not available).
    """
    import time

    import nbformat
    from nbclient import NotebookClient

    from workbench.run.kernel_client import SlicedPollKernelManager

    results: dict[str, PageCheck] = {}
    saved = os.environ.get(pages.START_ENV)
    os.environ[pages.START_ENV] = "1"
    try:
        for name in names:
            nb = nbformat.read(Path(folder) / f"{name}.ipynb", as_version=4)
            nb.cells.append(nbformat.v4.new_code_cell(CHECK_PROBE))
            start = time.perf_counter()
            error = None
            try:
                NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(folder)}},
                               kernel_manager_class=SlicedPollKernelManager,
                               extra_arguments=["--IPKernelApp.log_level=CRITICAL"]).execute()  # as the runner
            except Exception as err:  # a failing cell: reported, the next paper still checked
                error = pages.plain_message(str(err).strip().splitlines()[-1])
            lines = [line for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "stream"
                     for line in o.get("text", "").splitlines()]
            error = error or next((line for line in lines if line.startswith((pages.START_FAILED, RUN_FAILED))), None)
            kb = next((line.split()[-1].strip("'") for line in lines if line.startswith("workbench-kernel-rss-kb")), "0")
            results[name] = PageCheck(error, round(int(kb) / 1024, 1), round(time.perf_counter() - start, 1))
    finally:
        if saved is None:
            os.environ.pop(pages.START_ENV, None)
        else:
            os.environ[pages.START_ENV] = saved
    return results


def preheated_ready(folder: Path) -> dict[str, int]:
    """How many preheated kernels of each paper are ready: page shown, and panel live when panels
    are preheated (their page leaves a marker file; markers of kernels that have exited are not
    counted).

    Args:
        folder: the workshop folder.

    Returns:
        Live preheated kernels by paper name.
    """
    from workbench.run.runner import _pid_alive

    counts: dict[str, int] = {}
    for marker in (Path(folder) / PAGES_DIR / pages.READY_DIR).glob("*-*"):
        name, pid = marker.name.rsplit("-", 1)
        if pid.isdigit() and _pid_alive(int(pid)):
            counts[name] = counts.get(name, 0) + 1
    return counts


def wait_for_pool(folder: Path, names: list[str], preheated: int, echo: Callable[[str], Any] = print,
                  poll_seconds: float = 1.0, stalled_seconds: float = 120.0,
                  is_running: Callable[[], bool] = lambda: True) -> int:
    """Wait until every paper has `preheated` kernels ready, saying how many are as they come; a
    pool that stops growing for `stalled_seconds` is reported as it is (voila does not replace a
    pooled kernel that failed to start, e.g. on a port taken in between by another process).

    Args:
        folder: the workshop folder.
        names: the papers served.
        preheated: kernels per paper to wait for.
        echo: where the lines go (default `print`).
        poll_seconds: how often to look (default 1).
        stalled_seconds: how long without a new ready kernel before giving up waiting (default 120).
        is_running: whether the server still runs (the wait ends when it stops).

    Returns:
        The number of preheated kernels ready.
    """
    import time

    wanted, done, last_change = preheated * len(names), -1, time.monotonic()
    while is_running():
        counts = preheated_ready(folder)
        now = sum(min(counts.get(n, 0), preheated) for n in names)
        if now != done:
            done, last_change = now, time.monotonic()
            echo(f"preheated kernels ready: {done} of {wanted}")
        if done >= wanted:
            echo("READY: every paper has its preheated kernels ready")
            break
        if time.monotonic() - last_change > stalled_seconds:
            echo(f"READY with {done} of {wanted} preheated kernels: the others did not start (voila's log says "
                 "why); pages still open, on a fresh kernel")
            break
        time.sleep(poll_seconds)
    return max(done, 0)


def serve(cmd: list[str], folder: Path, names: list[str], port: int, preheated: int = 0,
          echo: Callable[[str], Any] = print, poll_seconds: float = 1.0) -> int:
    """Run voila (`voila_command`'s `cmd`) until it stops, telling the teacher when the workshop
    is ready: when voila answers and, with preheating, when every paper has `preheated` kernels
    ready.

    Args:
        cmd: the voila command line.
        folder: the workshop folder.
        names: the papers served.
        port: the port voila listens on (for the address printed).
        preheated: preheated kernels per paper to wait for (0: none).
        echo: where the readiness lines go (default `print`).
        poll_seconds: how often to look (default 1).

    Returns:
        voila's exit status (0 after Ctrl-C).
    """
    import shutil
    import subprocess
    import time
    import urllib.request

    shutil.rmtree(Path(folder) / PAGES_DIR / pages.READY_DIR, ignore_errors=True)
    proc = subprocess.Popen(cmd, env=voila_environment(folder))
    url = f"http://127.0.0.1:{port}/"
    try:
        while proc.poll() is None:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(poll_seconds)
        if proc.poll() is None:
            echo(f"READY: {len(names)} pages served at {url} (on the classroom network: this machine's address, "
                 f"port {port})" + (f"; preheating {preheated} kernel(s) per paper..." if preheated else ""))
        if preheated:
            wait_for_pool(folder, names, preheated, echo, poll_seconds, is_running=lambda: proc.poll() is None)
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        return 0
