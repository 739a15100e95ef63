"""Workshop pages (`workbench.run.page`, `workbench.run.workshop`): a recorded run replayed for
participants, the panel's setup found by reading the code, and the refusals of a bad request.

The end-to-end tests record a tiny fixture paper (numpy only, `tests/fixtures/workshop`) so they
take seconds; the real papers' pages are exercised by `workbench workshop --check` and by the
browser test of the tour page.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest

from workbench.run import page as pages
from workbench.run import papers as registry
from workbench.run import workshop

FIXTURES = Path(__file__).parent / "fixtures" / "workshop"


def test_setup_code_keeps_the_statements_the_panel_reads_and_nothing_else():
    cells = [
        "import numpy as np\nimport matplotlib.pyplot as plt\nnp.random.seed(0)",  # 0: all kept (set-up)
        "data = np.arange(n)\ncostly = np.linalg.eigvalsh(np.eye(n))\nprint(costly)",  # 1: data only
        "model = {'w': 1}",                                        # 2: model needed
        "model.update(w=2)",                                       # 3: changes model: needed
        "plt.plot(data)\nplt.show()",                              # 4: shows only
        "report = data.sum()\nprint(report)",                      # 5: nothing the panel reads
        "cache = {}\ncache['x'] = 1",                              # 6: not read
        "@functools.cache\ndef step(m, d):\n    return m\nfor _ in range(2):\n    train_step(model, data)",
        "print(data)\ndisplay(model)",                              # 8: shows only
        "if interactive:\n    f = lambda: model['w'] * data",      # 9: the panel
        "late = 1",                                                # 10: after the panel
    ]
    setup = dict(pages.setup_code(cells, [9], given={"n", "interactive"}))
    assert list(setup) == [0, 1, 2, 3, 7, 9]
    assert setup[0] == cells[0] and setup[1] == "data = np.arange(n)" and setup[9] == cells[9]
    assert setup[7] == "for _ in range(2):\n    train_step(model, data)"  # the unused decorated def left out
    # a parameter the panel reads is given, so a statement assigning the same name is not pulled in
    assert pages.setup_code(["n = 3", "if interactive:\n    g = n"], [1], given={"n"}) == [(1, "if interactive:\n    g = n")]
    assert pages.setup_code(["n = 3", "if interactive:\n    g = n"], [1]) == [(0, "n = 3"), (1, "if interactive:\n    g = n")]
    assert pages.setup_code(cells, []) == []


def test_presentation_drops_records_logs_and_hints_and_merges_warnings():
    notes: dict[str, list] = {}
    warning = "/abs/dir/pkg/mod.py:12: RuntimeWarning: arnoldi: ratio {} in /abs/dir/pkg/mod.py; raise k\n  x = f()\n"
    outputs = [{"output_type": "stream", "name": "stdout", "text": "a result\n"},
               {"output_type": "stream", "name": "stderr", "text": warning.format("0.5") + "grid: 3 runs in 0.1 s\n"},
               {"output_type": "stream", "name": "stderr", "text": warning.format("0.7")},
               {"output_type": "execute_result", "data": {"text/plain": "{'a': 1}"}, "metadata": {}},
               {"output_type": "display_data", "data": {"image/png": "AAAA"}, "metadata": {}}]
    shown = pages.presentable_outputs(outputs, "x = f()", notes)
    assert [o["output_type"] for o in shown] == ["stream", "display_data"]
    assert list(notes.values()) == [["arnoldi: ratio 0.5 in mod.py; raise k", 2]]
    recorded = pages.presentable_outputs(outputs[:1] + outputs[4:], "workbench.record(**metrics)", {})
    assert [o["output_type"] for o in recorded] == ["display_data"]
    text = "## Explore\nWith `interactive=True`: vary the steps.\nRun `python -m workbench run tour` again.\nkeep"
    assert pages.presentable_markdown(text) == "## Explore\nVary the steps.\nkeep"
    assert pages.plain_message("see /usr/lib/x/y.py and /a/b") == "see y.py and /a/b"


@pytest.fixture
def fixture_papers(monkeypatch):
    monkeypatch.setenv("WORKBENCH_NOTEBOOKS", str(FIXTURES))


@pytest.mark.notebook
def test_page_replays_the_recording_and_its_panel_starts(fixture_papers, tmp_path):
    lines = []
    [path] = workshop.prepare_workshop(tmp_path, ["panel_paper"], parameters={"panel_paper": {"n": 7}},
                                       echo=lines.append)
    assert lines == ["[1/1] recording panel_paper (quick profile, about 3 s)..."]
    spec = json.loads((tmp_path / ".pages" / "panel_paper.json").read_text())
    assert spec["parameters"]["n"] == 7 and spec["parameters"]["interactive"] is True
    assert spec["setup"][1] == [1, "rng = np.random.default_rng(seed)\nvalues = rng.normal(size=n) * scale"]
    assert [i for i, _ in spec["setup"]] == [0, 1, 4]  # imports, values, panel: not the warnings cell
    assert spec["notes"] == {"2": [["/home/someone/project/module.py says: the threshold 0.5 is small"
                                    .replace("/home/someone/project/", ""), 2]]}
    printed = json.dumps(spec["outputs"])
    assert "sum of 7 values" in printed and "'total'" not in printed and "UserWarning" not in printed
    assert '"image/png"' in printed  # the recording keeps its figures inline, the page replays them
    nb = nbformat.read(path, as_version=4)
    sources = [c.source for c in nb.cells]
    assert sources[0].startswith("from workbench.run import page") and "_page.panel(4)" in sources
    assert not any("n: int" in s for s in sources)  # no parameters cell
    assert not any("python -m workbench" in s or "interactive=True" in s for s in sources)
    assert nb.metadata["title"] == "Panel paper"
    assert not any("Recorded numbers" in s for s in sources)  # a heading over nothing shown is left out
    assert any(s.startswith("## Explore") for s in sources)
    # the listing shows titles and descriptions, not file names
    tree = (tmp_path / ".voila" / "voila" / "templates" / "workbench" / "tree.html").read_text()
    assert "Panel paper" in tree and "A workshop page test fixture" in tree and "voila/render/panel_paper.ipynb" in tree
    # same source and parameters: the recording is reused; other values: recorded again
    lines.clear()
    workshop.prepare_workshop(tmp_path, ["panel_paper"], parameters={"panel_paper": {"n": 7}}, echo=lines.append)
    assert lines == ["[1/1] panel_paper: recorded earlier with these parameters"]
    lines.clear()
    workshop.prepare_workshop(tmp_path, ["panel_paper"], echo=lines.append)
    assert lines[0].startswith("[1/1] recording")
    [(name, check)] = workshop.check_pages(tmp_path, ["panel_paper"], timeout=120).items()
    assert name == "panel_paper" and check.error is None and 20 < check.memory_mb < 1000
    workshop.prepare_workshop(tmp_path, ["panel_paper"], parameters={"panel_paper": {"panel_fails": True}},
                              echo=lines.append)
    [check] = workshop.check_pages(tmp_path, ["panel_paper"], timeout=120).values()
    assert check.error == "the panel's first run failed: ArithmeticError the panel fails on purpose"
    # a failed recording is reported and its page removed, never served stale
    with pytest.raises(registry.PaperError, match="panel_paper: RuntimeError: this recording fails on purpose"):
        workshop.prepare_workshop(tmp_path, ["panel_paper"], parameters={"panel_paper": {"fail": True}},
                                  echo=lines.append)
    assert not (tmp_path / "panel_paper.ipynb").exists() and not (tmp_path / ".pages" / "panel_paper.json").exists()


def test_a_panel_that_cannot_start_says_why_without_paths(tmp_path, capsys):
    spec = {"paper": "p", "title": "P", "parameters": {"interactive": True}, "outputs": {}, "notes": {},
            "panels": ["1"], "setup": [[0, "x = 1"], [1, "raise ValueError('bad value in /abs/path/mod.py')"]],
            "setup_seconds": 0.1}
    (tmp_path / "p.json").write_text(json.dumps(spec))
    page = pages.load(tmp_path / "p.json")
    page.panel(1)
    assert page.start(announce=True) is False
    assert page.error == "ValueError: bad value in mod.py"
    assert "the panel could not start: ValueError: bad value in mod.py" in capsys.readouterr().err
    assert "could not start" in page._status[0].value and page.start() is False  # not rerun


def test_a_preheated_kernel_marks_its_page_ready_and_starts_the_panel_only_when_asked(tmp_path, monkeypatch):
    spec = {"paper": "p", "title": "P", "parameters": {"interactive": True}, "outputs": {}, "notes": {},
            "panels": ["1"], "setup": [[0, "x = 1"], [1, "y = x + 1"]], "setup_seconds": 0.1}
    (tmp_path / ".pages").mkdir()
    monkeypatch.setenv("VOILA_PREHEAT", "True")
    for preheat_panels in (False, True):
        (tmp_path / ".pages" / "p.json").write_text(json.dumps({**spec, "preheat_panels": preheat_panels}))
        page = pages.load(tmp_path / ".pages" / "p.json")
        page.panel(1)
        assert page.started is preheat_panels
        assert workshop.preheated_ready(tmp_path) == {"p": 1}  # this process is alive: counted
    monkeypatch.setenv("VOILA_PREHEAT", "False")
    (tmp_path / ".pages" / ".ready" / f"p-{os.getpid()}").unlink()
    pages.load(tmp_path / ".pages" / "p.json").panel(1)
    assert workshop.preheated_ready(tmp_path) == {}  # a visitor's kernel leaves no marker


def test_workshop_requests_are_checked_before_anything_runs(monkeypatch, tmp_path):
    import shutil

    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    for name in ("panel_paper", "second_paper"):
        shutil.copy(FIXTURES / "panel_paper.py", notebooks / f"{name}.py")
    monkeypatch.setenv("WORKBENCH_NOTEBOOKS", str(notebooks))
    tmp_path = tmp_path / "workshop"
    with pytest.raises(registry.PaperError, match="no paper named"):
        workshop.prepare_workshop(tmp_path, ["panel_paper", "nope"])
    with pytest.raises(registry.PaperError, match=r"parameter 'n' must be in"):
        workshop.prepare_workshop(tmp_path, ["panel_paper"], parameters={"panel_paper": {"n": -1}})
    with pytest.raises(registry.PaperError, match="does not serve"):
        workshop.prepare_workshop(tmp_path, ["second_paper"], parameters={"panel_paper": {"n": 2}})
    assert not tmp_path.exists()
    bad = tmp_path.parent / "day.yaml"
    bad.write_text("panel_paper: 3\n")
    with pytest.raises(registry.PaperError, match="must map parameter names to values"):
        workshop.load_workshop_file(bad)
    bad.write_text("panel_paper: {n: 4}\n")
    assert workshop.load_workshop_file(bad) == {"panel_paper": {"n": 4}}
    with pytest.raises(ValueError, match="pool_size must be at least 1"):
        workshop.voila_command(tmp_path, pool_size=0)


def test_voila_command_serves_the_listing_culls_and_preheats(tmp_path):
    cmd = workshop.voila_command(tmp_path, ip="0.0.0.0", port=9000, preheat=True, pool_size=3, cull_minutes=15)
    assert cmd[:3] == [sys.executable, "-m", "voila"]
    for flag in ("--Voila.ip=0.0.0.0", "--port=9000", "--template=workbench", "--classic_tree=True",
                 "--preheat_kernel=True", "--pool_size=3", "--MappingKernelManager.cull_idle_timeout=900"):
        assert flag in cmd
    assert not any("progressive" in f or "preheat" in f for f in workshop.voila_command(tmp_path))
    assert not any("cull" in f for f in workshop.voila_command(tmp_path, cull_minutes=0))
    env = workshop.voila_environment(tmp_path)
    assert env["JUPYTER_PATH"].split(":")[0] == str((tmp_path / ".voila").resolve())


def test_import_workbench_leaves_jax_unimported_until_used():
    import subprocess

    code = ("import sys, workbench; assert 'jax' not in sys.modules; import jax; "
            "from workbench.run import compilation_cache as c; "
            "assert jax.config.jax_compilation_cache_dir == str(c.requested_dir()), jax.config.jax_compilation_cache_dir")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_the_pool_wait_counts_ready_kernels_and_reports_a_stalled_pool(tmp_path):
    ready = tmp_path / ".pages" / ".ready"
    ready.mkdir(parents=True)
    (ready / f"a-{os.getpid()}").write_text("0\n")
    (ready / "a-999999999").write_text("0\n")  # a kernel that has exited: not counted
    lines = []
    assert workshop.wait_for_pool(tmp_path, ["a"], 1, echo=lines.append, poll_seconds=0.01) == 1
    assert lines == ["preheated kernels ready: 1 of 1", "READY: every paper has its preheated kernels ready"]
    lines.clear()
    assert workshop.wait_for_pool(tmp_path, ["a", "b"], 1, echo=lines.append, poll_seconds=0.01,
                                  stalled_seconds=0.1) == 1
    assert lines[-1].startswith("READY with 1 of 2 preheated kernels")


def test_every_paper_has_a_title_and_a_one_line_description_for_the_listing():
    for name, paper in registry.discover(registry.repo_root() / "notebooks").items():
        title, description = workshop.listing_entry(paper)
        assert title and " - " not in title, name
        assert 10 < len(description) <= 100 and "\n" not in description, (name, description)
