"""Every paper notebook: paired .py/.ipynb in sync, committed without outputs, and executed on its
quick profile through the runner (the same path `make papers` takes)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest

from workbench.run import papers as registry
from workbench.run import runner

NOTEBOOKS = sorted(registry.notebooks_dir().glob("*.py"))


def _cells(nb):
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


@pytest.mark.parametrize("source", NOTEBOOKS, ids=lambda p: p.stem)
def test_pair_in_sync_and_without_outputs(source):
    ipynb = source.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} missing: run `make sync`"
    paired = nbformat.read(ipynb, as_version=4)
    for cell in paired.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{ipynb.name} carries outputs"
    assert _cells(paired) == _cells(jupytext.read(source)), f"{ipynb.name} is out of sync with {source.name}: run `make sync`"


# The papers run in four files so pytest-xdist (--dist loadfile) can balance them over both
# workers and no single file holds the run's tail: the groups balance the quick-profile times
# measured inside the suite (about 160-190 s each; this file also holds the determinism test). A
# paper added later runs here.
OTHER_FILES = {
    "second": {"sketching", "hessian_spectrum", "last_iterate", "tour", "edge_of_stability"},
    "third": {"icl_as_gradient_descent", "influence_evaluation", "task_switch", "influence_fades"},
    "fourth": {"distributed_minimisation", "neural_transport", "diffusion_unlearning", "intrinsic_dimension",
               "objective_mixing"},
    "fifth": {"your_own_model"},
}


def papers_of(group: str) -> list[str]:
    """The papers whose quick profile runs in the file of `group` ("first" is this file)."""
    elsewhere = set().union(*OTHER_FILES.values())
    return [p.stem for p in NOTEBOOKS if (p.stem not in elsewhere if group == "first" else p.stem in OTHER_FILES[group])]


@pytest.mark.notebook
@pytest.mark.parametrize("name", papers_of("first"))
def test_paper_runs_on_quick_profile(name, tmp_path):
    run_and_check_paper(name, tmp_path)


def run_and_check_paper(name, tmp_path):
    """Run `name` on its quick profile through the runner and check its outputs and claims, with
    `interactive=True` so its exploration panel is built under papermill too (panels run their
    function on a button, so this adds only the widgets' construction)."""
    paper = registry.get_paper(name)
    result = runner.run_paper(paper, registry.resolve_parameters(paper, {"interactive": True}, profile="quick"), tmp_path)
    assert result.ok, f"{name} failed: {result.error}\nsee {result.path / 'error.txt'}:\n" + (
        (result.path / "error.txt").read_text()[-3000:] if (result.path / "error.txt").exists() else "")
    metrics = json.loads((result.path / "metrics.json").read_text())
    assert metrics, f"{name} recorded no headline numbers"
    figures = list((result.path / "figures").iterdir())
    assert any(f.suffix == ".png" for f in figures), f"{name} saved no figure"
    assert paper.claims, f"{name} declares no claims in its header"
    failed = [f"{c.metric} {c.claim}: {c.value!r} ({c.reason})" for c in result.claims if not c.passed]
    assert not failed, f"{name}: quick-profile claims failed: {failed}"


@pytest.mark.notebook
def test_same_parameters_give_identical_metrics_across_processes(tmp_path):
    """Two separate `workbench run` processes (each with its own kernel) write byte-identical
    metrics for the same parameters. They share a fresh
    persistent compilation cache: the first compiles and fills it, the second loads its programs
    from it, and the numbers must not change."""
    cache = tmp_path / "jax-cache"
    # every program is written (the suite's own threshold of 2 s would leave the tour's out)
    env = dict(os.environ, WORKBENCH_JAX_CACHE=str(cache), WORKBENCH_JAX_CACHE_MIN_SECONDS="0")

    def run(*extra):
        args = [sys.executable, "-m", "workbench", "run", "tour", "-p", "steps=60",
                "-p", "compare_learning_rates=0.05", "--runs-dir", str(tmp_path), *extra]
        out = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
        path = out.stdout.split("-> ")[1].split()[0]  # the run ran; its claims may not hold at 60 steps
        assert json.loads((Path(path) / "manifest.json").read_text())["status"] == "ok", out.stderr
        return path

    first = run()
    entries = sorted(cache.glob("*-cache"))
    assert entries, "the first run wrote nothing to the compilation cache"
    second = run()
    assert first != second
    read = lambda d: (Path(d) / "metrics.json").read_bytes()
    assert read(first) == read(second)
    # not vacuous: the metrics are numbers the training computed (that a seed changes them is
    # checked by the --seeds test in test_papers.py, without a third kernel here)
    accuracy = json.loads(read(first))["test_accuracy"]
    assert isinstance(accuracy, float) and 0.1 < accuracy < 1.0
