"""Live sessions cannot dirty the repository: a simulated JupyterLab session, the lab working
copies, saving them back on purpose, the workshop copies, `make lab`'s command line, and plotly
figures sharing one plotly.js per run directory."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import jupytext
import nbformat
import pytest
from servers import Server, allow_root, free_port, wait_http

from workbench.run import lab, runner, workshop
from workbench.run import papers as registry

REPO = Path(__file__).resolve().parents[1]
WIDGET_OUTPUT = {"output_type": "display_data", "metadata": {},
                 "data": {lab.WIDGET_VIEW: {"model_id": "abc", "version_major": 2, "version_minor": 0},
                          "text/plain": "VBox(children=(Button(),))"}}


def _git_status() -> str:
    """What git sees of the papers and the lab (other tests may write elsewhere meanwhile)."""
    return subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=all",
                           "--", "notebooks", "lab", "jupytext.toml"],
                          capture_output=True, text=True, check=True).stdout


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _request(method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, {}


@pytest.mark.notebook
def test_lab_session_never_changes_what_tests_and_runs_see(tmp_path):
    """A session through the server's REST API (the `make lab` configuration) saves tour with
    outputs, a widget and a scratch cell: its copy keeps them (minus the widget), the committed
    pair is byte-identical, `git status` is unchanged, the server refuses paths outside its root,
    and `workbench run` executes the committed source."""
    committed = [REPO / "notebooks" / "tour.py", REPO / "notebooks" / "tour.ipynb"]
    before = {p: _sha(p) for p in committed}
    status_before = _git_status()
    folder = REPO / "lab" / f".session-test-{os.getpid()}-{secrets.token_hex(3)}"  # inside git-ignored lab/
    lab.prepare_copies(folder, ["tour"], quiet=True)
    port, token = free_port(), secrets.token_hex(16)
    server = Server([sys.executable, "-m", "jupyter", "lab", f"--config={REPO / 'jupyter' / 'lab_config.py'}",
                     f"--ServerApp.root_dir={folder}", f"--port={port}", "--no-browser",
                     f"--IdentityProvider.token={token}", *allow_root()], tmp_path / "lab.log", folder)
    marker = f"SCRATCH_{secrets.token_hex(4)}"
    try:
        api = f"http://127.0.0.1:{port}/api/contents"
        wait_http(f"{api}?token={token}", server.proc, server.log)
        code, model = _request("GET", f"{api}/tour.ipynb?content=1&token={token}")
        assert code == 200 and model["type"] == "notebook"
        nb = model["content"]
        nb["cells"].append({"cell_type": "code", "metadata": {}, "execution_count": 1, "id": "scratch",
                            "source": f"print('{marker}')",
                            "outputs": [{"output_type": "stream", "name": "stdout", "text": marker + "\n"},
                                        WIDGET_OUTPUT]})
        nb["metadata"]["widgets"] = {lab.WIDGET_STATE: {"state": {}}}
        code, _ = _request("PUT", f"{api}/tour.ipynb?token={token}", {"type": "notebook", "content": nb})
        assert code == 200
        for outside in ("../../notebooks/tour.ipynb", "%2E%2E/%2E%2E/notebooks/tour.ipynb"):
            code, _ = _request("PUT", f"{api}/{outside}?token={token}", {"type": "notebook", "content": nb})
            assert code >= 400, f"the server saved {outside} outside its root"
        code, saved = _request("GET", f"{api}/tour.ipynb?content=1&token={token}")
    finally:
        server.stop()
    try:
        cell = saved["content"]["cells"][-1]
        assert marker in cell["source"]
        assert [o["output_type"] for o in cell["outputs"]] == ["stream"], "the widget view was saved"
        assert "widgets" not in saved["content"]["metadata"]
        assert marker in (folder / "tour.py").read_text(), "the copy's jupytext pair was not updated"
        assert {p: _sha(p) for p in committed} == before, "the committed pair changed"
        assert _git_status() == status_before
    finally:
        shutil.rmtree(folder)
    paper = registry.get_paper("tour")
    params = registry.resolve_parameters(paper, {"steps": 20, "compare_learning_rates": [0.05]})
    result = runner.run_paper(paper, params, tmp_path / "runs")
    assert result.ok, result.error
    executed = nbformat.read(result.path / "tour.ipynb", as_version=4)
    sources = [c.source.strip() for c in executed.cells
               if "injected-parameters" not in c.metadata.get("tags", [])]
    assert sources == [c.source.strip() for c in jupytext.read(paper.source).cells]
    assert marker not in json.dumps(executed)


def test_pre_save_drops_widget_views_and_state_only():
    nb = {"metadata": {"widgets": {lab.WIDGET_STATE: {}}, "kernelspec": {}},
          "cells": [{"cell_type": "code", "outputs": [
              json.loads(json.dumps(WIDGET_OUTPUT)),
              {"output_type": "display_data", "metadata": {},
               "data": {lab.WIDGET_VIEW: {"model_id": "x"}, "image/png": "iVBOR", "text/plain": "Figure"}},
              {"output_type": "stream", "name": "stdout", "text": "hello\n"}]},
              {"cell_type": "markdown", "source": "# t"}]}
    lab.pre_save({"type": "notebook", "content": nb}, "x.ipynb")
    assert nb["metadata"] == {"kernelspec": {}}
    assert nb["cells"][0]["outputs"] == [
        {"output_type": "display_data", "metadata": {}, "data": {"image/png": "iVBOR"}},
        {"output_type": "stream", "name": "stdout", "text": "hello\n"}]
    model = {"type": "file", "content": "text"}
    lab.pre_save(model, "x.py")
    assert model == {"type": "file", "content": "text"}


def test_copies_follow_the_paper_until_edited(tmp_path):
    folder = tmp_path / "lab"
    assert lab.prepare_copies(folder, ["tour", "schedule_bounds"], quiet=True) == []
    assert (folder / "jupytext.toml").read_text() == (REPO / "jupytext.toml").read_text()
    source = (REPO / "notebooks" / "tour.py").read_text()
    assert (folder / "tour.py").read_text() == source
    # the committed paper changed since the copies were made: an unedited copy follows it...
    old = source.replace("# # A tour of the workbench", "# # An older tour")
    for name in ("tour", "schedule_bounds"):
        (folder / ".origin" / f"{name}.py").write_text(old if name == "tour" else "changed")
    (folder / "tour.py").write_text(old)
    edited = (folder / "schedule_bounds.py").read_text() + "\n# %%\nprint('mine')\n"
    (folder / "schedule_bounds.py").write_text(edited)
    notes = lab.prepare_copies(folder, ["tour", "schedule_bounds"], quiet=True)
    assert (folder / "tour.py").read_text() == source
    # ...an edited one is kept, with a note that says how to start again
    assert (folder / "schedule_bounds.py").read_text() == edited
    assert len(notes) == 1 and "make lab-reset NAME=schedule_bounds" in notes[0]
    lab.reset_copies(["schedule_bounds"], folder)
    assert (folder / "schedule_bounds.py").read_text() == (REPO / "notebooks" / "schedule_bounds.py").read_text()


def test_save_copy_writes_the_pair_without_outputs(tmp_path, monkeypatch):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    for suffix in (".py", ".ipynb"):
        shutil.copy(REPO / "notebooks" / f"tour{suffix}", notebooks)
    monkeypatch.setenv("WORKBENCH_NOTEBOOKS", str(notebooks))
    folder = tmp_path / "lab"
    lab.prepare_copies(folder, ["tour"], quiet=True)
    nb = nbformat.read(folder / "tour.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("print('kept on purpose')", execution_count=3,
                                              outputs=[nbformat.v4.new_output("stream", text="x\n")]))
    jupytext.write(nb, folder / "tour.py", fmt="py:percent")
    lab.save_copy("tour", folder)
    saved = nbformat.read(notebooks / "tour.ipynb", as_version=4)
    assert saved.cells[-1].source == "print('kept on purpose')"
    assert all(not c.get("outputs") for c in saved.cells if c.cell_type == "code")
    assert [c.source for c in jupytext.read(notebooks / "tour.py").cells] == [c.source for c in saved.cells]
    with pytest.raises(registry.PaperError, match="no lab copy"):
        lab.save_copy("tour", tmp_path / "nowhere")


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_lab_command_line():
    out = subprocess.run(["make", "-n", "-C", str(REPO), "lab", "LAB_ARGS=--port=9999 --no-browser"],
                         capture_output=True, text=True, check=True).stdout
    line = [x for x in out.splitlines() if "jupyter lab" in x][-1]
    assert "--config=jupyter/lab_config.py" in line and line.endswith("--port=9999 --no-browser")
    assert ("--allow-root" in line) == (os.geteuid() == 0)
    assert "python -m workbench lab copies" in out
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("lab_config.py", str(REPO / "jupyter")).load_config()
    assert Path(config.ServerApp.root_dir) == REPO / "lab" and config.ServerApp.ip == "127.0.0.1"
    assert config.ContentsManager.pre_save_hook == "workbench.run.lab.pre_save"
    ignored = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", "lab/tour.ipynb"])
    assert ignored.returncode == 0, "lab/ must be git-ignored"


def test_plotly_figures_share_one_plotlyjs(tmp_path, monkeypatch):
    import plotly.graph_objects as go

    from workbench.run import results

    monkeypatch.setenv(results.RUN_DIR_ENV, str(tmp_path))
    for name in ("a", "b"):
        results.save_figure(go.Figure(go.Scatter(x=[1, 2], y=[3, 4], name=name)), name)
    figures = tmp_path / results.FIGURES_DIR
    assert sorted(p.name for p in figures.iterdir()) == ["a.html", "b.html", "plotly.min.js"]
    for name in ("a", "b"):
        html = (figures / f"{name}.html").read_text()
        assert 'src="plotly.min.js"' in html and len(html) < 50_000
    assert (figures / "plotly.min.js").stat().st_size > 1_000_000


@pytest.mark.parametrize("argv, message", [
    (["lab"], "usage: workbench lab"),  # a lab command is required
    (["lab", "save"], "the following arguments are required: name"),
    (["lab", "frobnicate"], "invalid choice: 'frobnicate'"),
    (["lab", "copies", "--bogus"], "unrecognized arguments: --bogus"),
    (["run", "tour", "--bogus"], "unrecognized arguments: --bogus"),  # only workshop passes flags on
    (["workshop", "--port", "many"], "invalid int value: 'many'"),
])
def test_lab_and_workshop_subcommands_reject_malformed_command_lines(argv, message, capsys):
    from workbench.run import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: workbench" in err and message in err


def test_lab_subcommands_name_an_unknown_paper(capsys):
    from workbench.run import cli

    for argv in (["lab", "save", "tuor"], ["lab", "reset", "tuor"]):
        assert cli.main(argv) == 2
        assert "no paper named 'tuor'. Did you mean 'tour'?" in capsys.readouterr().err


def test_workshop_subcommand_prepares_then_hands_voila_its_own_flags(tmp_path, monkeypatch, capsys):
    """`workbench workshop --serve --preheat --pool-size 2 --parameters day.yaml NAME --Voila.x=1`:
    the pages are prepared with the day's values, then voila serves them with the preheat flags
    and the flag it does not know passed on."""
    from workbench.run import cli

    prepared, served = [], []
    monkeypatch.setattr(workshop, "workshop_dir", lambda: tmp_path)
    monkeypatch.setattr(workshop, "prepare_workshop", lambda **kw: prepared.append(kw) or [tmp_path / "tour.ipynb"])
    monkeypatch.setattr(workshop, "serve", lambda cmd, folder, names, port, preheated: served.append(
        (cmd, names, preheated)) or 0)
    day = tmp_path / "day.yaml"
    day.write_text("tour: {steps: 40}\n")
    assert cli.main(["workshop", "--serve", "--preheat", "--pool-size", "2", "--port", "9001", "--parameters",
                     str(day), "tour", "--VoilaConfiguration.file_allowlist=.*"]) == 0
    assert prepared == [{"names": ["tour"], "profile": "quick", "parameters": {"tour": {"steps": 40}},
                         "presentation": True, "preheat_panels": False}]
    assert "workshop: 1 pages in" in capsys.readouterr().out
    [(cmd, names, preheated)] = served
    assert cmd[:3] == [sys.executable, "-m", "voila"] and cmd[3] == str(tmp_path) and names == ["tour"]
    assert "--port=9001" in cmd and "--preheat_kernel=True" in cmd and "--pool_size=2" in cmd and preheated == 2
    assert cmd[-1] == "--VoilaConfiguration.file_allowlist=.*"
    day.write_text("tour: 3\n")
    assert cli.main(["workshop", "--parameters", str(day)]) == 2
    assert "must map parameter names to values" in capsys.readouterr().err


def _workbench_command_lines(text: str) -> list[list[str]]:
    """The arguments of every `python -m workbench ...` command in `text` (comments cut off)."""
    import shlex

    found = []
    for line in text.splitlines():
        match = re.search(r"python -m workbench (.*)", line)
        if match:
            found.append(shlex.split(match.group(1).split(" #")[0]))
    return found


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_readme_and_makefile_command_lines_parse():
    """Every `python -m workbench ...` example in the README's shell blocks and every one the
    Makefile runs is a valid command line of `workbench.run.cli` (so they cannot drift apart)."""
    from workbench.run import cli

    readme = (REPO / "README.md").read_text()
    blocks = "\n".join(re.findall(r"```bash\n(.*?)```", readme, re.S))
    made = subprocess.run(["make", "-n", "-B", "-C", str(REPO), "lab", "lab-reset", "lab-save", "workshop",
                           "NAME=tour", "PAPERS=tour", "PREHEAT=1"], capture_output=True, text=True, check=True).stdout
    examples = _workbench_command_lines(blocks) + _workbench_command_lines(made)
    commands = {argv[0] for argv in examples}
    assert {"list", "describe", "run", "lab", "workshop"} <= commands, commands
    parser = cli.build_parser()
    for argv in examples:
        args, extra = parser.parse_known_args(argv)
        assert not extra or args.command == "workshop", argv
    import importlib.util

    for module in set(re.findall(r"python -m (workbench[\w.]*)", readme + made)):
        # `python -m workbench.lab ...` was the old spelling: every module named must run
        spec = importlib.util.find_spec(module)
        runnable = spec is not None and (spec.submodule_search_locations is None
                                         or importlib.util.find_spec(f"{module}.__main__") is not None)
        assert runnable, f"README/Makefile run `python -m {module}`, which does not exist"
