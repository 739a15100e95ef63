"""The paper runner and CLI: parameter parsing and validation, run directories, failed runs,
no overwriting, determinism. Uses two fixture notebooks so it runs in seconds."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workbench.run import claims, runner
from workbench.run import cli as cli_module
from workbench.run import papers as registry

FIXTURES = Path(__file__).parent / "fixtures" / "notebooks"
NOTEBOOKS = registry.repo_root() / "notebooks"


def cli(*args, runs_dir=None, notebooks=FIXTURES):
    env = dict(os.environ, WORKBENCH_NOTEBOOKS=str(notebooks))
    extra = ["--runs-dir", str(runs_dir)] if runs_dir is not None and args[0] == "run" else []
    return subprocess.run([sys.executable, "-m", "workbench", *args, *extra], capture_output=True, text=True, env=env, timeout=300)


def run_dirs(runs_dir, name):
    return sorted(p for p in (Path(runs_dir) / name).glob("*") if not p.name.startswith("."))


@pytest.fixture(scope="module")
def fixture_papers():
    return registry.discover(FIXTURES)


def test_parse_parameters_types_defaults_help():
    params = registry.parse_parameters('a: int = 3  # the a\nb: float = 1e-3  # the b\nc: list[str] = ["x"]  # c\nd: bool = False\n')
    assert params["a"] == registry.Parameter("a", "int", 3, "the a")
    assert params["b"].default == 1e-3 and params["b"].help == "the b"
    assert params["c"].default == ["x"] and params["d"].help == ""
    with pytest.raises(registry.PaperError, match="unsupported type 'dict'"):
        registry.parse_parameters("a: dict = {}\n")
    with pytest.raises(registry.PaperError, match="expected `name: type = default"):
        registry.parse_parameters("a = 3\n")


def test_parse_parameters_reads_allowed_values_from_the_comment():
    params = registry.parse_parameters(
        "a: int = 3  # the a; in [1, inf)\nb: float = 0.5  # in (0, 1]\nc: list[str] = [\"x\"]  # c; in {x, \"y, z\"}\n"
        "d: str = \"p\"  # letters (a, b or p) in {a, b, p}\ne: int = 2  # no declaration (64-h-10)\n")
    assert params["a"].help == "the a" and params["a"].allowed.text == "[1, inf)"
    assert params["b"].help == "" and params["c"].allowed.choices == ("x", "y, z")
    assert params["d"].help == "letters (a, b or p)" and params["d"].allowed.choices == ("a", "b", "p")
    assert params["e"].allowed is None and params["e"].help == "no declaration (64-h-10)"
    ends = registry.parse_allowed("x", "float", "(0, 1]")
    assert [ends.admits(v) for v in (0.0, 1e-9, 1.0, 1.5)] == [False, True, True, False]
    ends = registry.parse_allowed("x", "int", "[-1, inf)")
    assert [ends.admits(v) for v in (-2, -1, 10**9, float("inf"))] == [False, True, True, False]
    with pytest.raises(registry.PaperError, match="default of parameter 'a' must be in \\[1, inf\\), got 0"):
        registry.parse_parameters("a: int = 0  # the a; in [1, inf)\n")
    with pytest.raises(registry.PaperError, match="expected an interval"):
        registry.parse_parameters("a: int = 0  # the a; in [one, inf)\n")
    with pytest.raises(registry.PaperError, match="empty interval"):
        registry.parse_parameters("a: float = 0  # the a; in [1, 0]\n")
    with pytest.raises(registry.PaperError, match="declare a set of choices"):
        registry.parse_parameters("a: str = \"x\"  # the a; in [1, 2]\n")
    with pytest.raises(registry.PaperError, match="parameter 'a' expects int, got 'x'"):
        registry.parse_parameters("a: int = 1  # the a; in {1, x}\n")


@pytest.mark.parametrize(
    "name, type_name, allowed, value, message",
    [("hidden_size", "int", "[1, inf)", "-5", "parameter 'hidden_size' must be in [1, inf), got -5"),
     ("rate", "float", "(0, inf)", "0", "parameter 'rate' must be in (0, inf), got 0.0"),
     ("kind", "str", "{dense, srht}", "affd", "parameter 'kind' must be one of {dense, srht}, got 'affd'"),
     ("rates", "list[float]", "(0, inf)", "0.1,-2",
      "parameter 'rates': every entry must be in (0, inf), got -2.0 in [0.1, -2.0]")],
)
def test_check_value_refuses_values_outside_the_declaration(name, type_name, allowed, value, message):
    param = registry.Parameter(name, type_name, None, "", registry.parse_allowed(name, type_name, allowed))
    with pytest.raises(registry.PaperError) as err:
        registry.check_value(param, value)
    assert str(err.value) == message


@pytest.mark.parametrize(
    "type_name, text, expected",
    [("int", "12", 12), ("int", "1_000", 1000), ("float", "1e-3", 1e-3), ("float", "2", 2.0),
     ("bool", "true", True), ("bool", "No", False), ("str", "abc", "abc"),
     ("list[int]", "1,2,3", [1, 2, 3]), ("list[float]", "[0.1, 1]", [0.1, 1.0])],
)
def test_coerce_accepts(type_name, text, expected):
    value = registry.coerce("x", type_name, text)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    "type_name, text", [("int", "abc"), ("int", "1.5"), ("int", True), ("float", "fast"), ("float", "nan"),
                        ("bool", "maybe"), ("list[int]", "1,x")],
)
def test_coerce_rejects_with_name_and_type(type_name, text):
    with pytest.raises(registry.PaperError, match=rf"parameter 'x' expects {type_name.replace('[', '.').replace(']', '.')}"):
        registry.coerce("x", type_name, text)


def test_resolve_profiles_and_overrides(fixture_papers):
    paper = fixture_papers["echo_paper"]
    assert registry.resolve_parameters(paper)["n"] == 10
    full = registry.resolve_parameters(paper, profile="full")
    assert full["n"] == 1000 and full["profile"] == "full"
    assert registry.resolve_parameters(paper, {"n": "7"}, profile="full")["n"] == 7  # user beats profile
    with pytest.raises(registry.PaperError, match=r"unknown parameter\(s\).*'scal' \(did you mean 'scale'\?\).*Valid parameters: n, scale"):
        registry.resolve_parameters(paper, {"scal": "2"})
    with pytest.raises(registry.PaperError, match="profile must be one of"):
        registry.resolve_parameters(paper, {"profile": "medium"})


def test_cli_list_and_describe():
    out = cli("list")
    assert out.returncode == 0, out.stderr
    assert "echo_paper" in out.stdout and "Echo (runner test fixture)" in out.stdout and "~2 s" in out.stdout
    out = cli("describe", "echo_paper")
    assert out.returncode == 0
    assert "multiplier" in out.stdout and "list[int]" in out.stdout and "1000" in out.stdout
    out = cli("describe", "echo_papr")
    assert out.returncode == 2 and "Did you mean 'echo_paper'" in out.stderr


def test_cli_rejects_bad_parameters_before_running(tmp_path):
    bad = cli("run", "echo_paper", "-p", "n=abc", runs_dir=tmp_path)
    assert bad.returncode == 2
    assert "parameter 'n' expects int, got 'abc'" in bad.stderr
    unknown = cli("run", "echo_paper", "-p", "nosuch=1", runs_dir=tmp_path)
    assert unknown.returncode == 2
    assert "unknown parameter(s) for paper 'echo_paper': 'nosuch'" in unknown.stderr
    assert "Valid parameters: n, scale, label, flags, seed, profile, interactive" in unknown.stderr
    assert not (tmp_path / "echo_paper").exists()  # no run dir for a rejected request
    assert cli("run", "nosuch", runs_dir=tmp_path).returncode == 2
    assert cli("run", runs_dir=tmp_path).returncode == 2  # neither names nor --all


@pytest.mark.parametrize(
    "paper, assignment, message",
    [("tour", "hidden_size=-5", "parameter 'hidden_size' must be in [1, inf), got -5"),
     ("tour", "learning_rate=-0.01", "parameter 'learning_rate' must be in (0, inf), got -0.01"),
     ("schedule_bounds", "cooldown_fraction=1.5", "parameter 'cooldown_fraction' must be in [0, 1], got 1.5")],
)
def test_cli_refuses_values_outside_a_papers_ranges_before_running(paper, assignment, message, tmp_path,
                                                                    monkeypatch, capsys):
    # the reported commands, on the real papers: refused with status 2 before any run directory
    monkeypatch.setenv("WORKBENCH_NOTEBOOKS", str(NOTEBOOKS))
    monkeypatch.setattr(runner, "run_paper", lambda *a, **k: pytest.fail("a refused request ran"))
    status = cli_module.main(["run", paper, "-p", assignment, "--runs-dir", str(tmp_path / "runs")])
    assert status == 2
    assert f"workbench: error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_cli_range_error_end_to_end(tmp_path):
    out = cli("run", "tour", "-p", "hidden_size=-5", runs_dir=tmp_path / "runs", notebooks=NOTEBOOKS)
    assert out.returncode == 2
    assert "parameter 'hidden_size' must be in [1, inf), got -5" in out.stderr
    assert not (tmp_path / "runs").exists()


def test_workshop_overrides_are_range_checked(tmp_path, monkeypatch):
    from workbench.run import workshop

    monkeypatch.setenv("WORKBENCH_NOTEBOOKS", str(NOTEBOOKS))
    with pytest.raises(registry.PaperError, match=r"parameter 'learning_rate' must be in \(0, inf\), got -0.01"):
        workshop.prepare_workshop(tmp_path, ["tour"], parameters={"tour": {"learning_rate": "-0.01"}})
    assert not any(tmp_path.iterdir())  # refused before anything was written or run


def test_run_writes_complete_run_dir_and_is_deterministic(tmp_path):
    params_file = tmp_path / "p.yaml"
    params_file.write_text(yaml.safe_dump({"n": 5, "label": "from-file"}))
    first = cli("run", "echo_paper", "-f", str(params_file), "-p", "scale=2", runs_dir=tmp_path)
    assert first.returncode == 0, first.stderr
    second = cli("run", "echo_paper", "-f", str(params_file), "-p", "scale=2", runs_dir=tmp_path)
    assert second.returncode == 0, second.stderr
    dirs = run_dirs(tmp_path, "echo_paper")
    assert len(dirs) == 2  # the second run did not overwrite the first
    run = dirs[0]
    assert {p.name for p in run.iterdir()} >= {"echo_paper.ipynb", "params.yaml", "metrics.json", "manifest.json", "figures"}
    assert (run / "figures" / "values.png").stat().st_size > 1000
    params = yaml.safe_load((run / "params.yaml").read_text())
    assert params == {"n": 5, "scale": 2.0, "label": "from-file", "flags": [1, 2], "seed": 0, "profile": "quick", "interactive": False}
    metrics = [json.loads((d / "metrics.json").read_text()) for d in dirs]
    assert metrics[0] == metrics[1] and metrics[0]["n"] == 5 and metrics[0]["label"] == "from-file"
    manifest = json.loads((run / "manifest.json").read_text())
    for key in ("packages", "jax", "git", "python", "platform", "start", "end", "duration_seconds", "seed"):
        assert key in manifest
    assert manifest["status"] == "ok" and manifest["packages"]["jax"]
    assert run.name.endswith(registry.params_hash(params))
    other = cli("run", "echo_paper", "-p", "seed=1", runs_dir=tmp_path)
    assert other.returncode == 0
    newest = max(run_dirs(tmp_path, "echo_paper"), key=lambda d: json.loads((d / "manifest.json").read_text())["start"])
    assert json.loads((newest / "metrics.json").read_text())["total"] != metrics[0]["total"]


def test_failed_run_is_kept_and_earlier_runs_untouched(tmp_path):
    good = cli("run", "fail_paper", "-p", "fail=false", runs_dir=tmp_path)
    assert good.returncode == 0, good.stderr
    good_dir = run_dirs(tmp_path, "fail_paper")[0]
    before = {p: p.read_bytes() for p in good_dir.rglob("*") if p.is_file()}
    bad = cli("run", "fail_paper", runs_dir=tmp_path)
    assert bad.returncode == 1
    assert "this paper fails on purpose" in bad.stderr
    failed = [d for d in run_dirs(tmp_path, "fail_paper") if d.name.endswith("-failed")]
    assert len(failed) == 1
    assert "RuntimeError: this paper fails on purpose" in (failed[0] / "error.txt").read_text()
    assert json.loads((failed[0] / "metrics.json").read_text()) == {"before_failure": 1}
    assert (failed[0] / "fail_paper.ipynb").exists()  # the partly executed notebook
    assert json.loads((failed[0] / "manifest.json").read_text())["status"] == "failed"
    assert {p: p.read_bytes() for p in good_dir.rglob("*") if p.is_file()} == before
    assert not list((tmp_path / "fail_paper").glob(".tmp-*"))


def test_a_hung_cell_fails_its_run_after_the_cell_timeout(tmp_path, monkeypatch):
    monkeypatch.setenv(runner.CELL_TIMEOUT_ENV, "2")
    hung = cli("run", "fail_paper", "-p", "fail=false", "-p", "hang_seconds=600", runs_dir=tmp_path)
    assert hung.returncode == 1 and "a cell ran past WORKBENCH_CELL_TIMEOUT=2 s" in hung.stderr, hung.stderr
    [failed] = run_dirs(tmp_path, "fail_paper")
    assert failed.name.endswith("-failed")
    assert json.loads((failed / "metrics.json").read_text()) == {"before_failure": 1}
    monkeypatch.setenv(runner.CELL_TIMEOUT_ENV, "soon")
    refused = cli("run", "fail_paper", runs_dir=tmp_path)
    assert refused.returncode != 0 and "WORKBENCH_CELL_TIMEOUT must be a positive number" in refused.stderr
    assert run_dirs(tmp_path, "fail_paper") == [failed]  # refused before anything ran


def test_run_all_summarises_and_fails_if_any_failed(tmp_path):
    out = cli("run", "--all", runs_dir=tmp_path)
    assert out.returncode == 1
    assert "papers: 1 ran, 1 failed" in out.stdout
    assert "echo_paper" in out.stdout and "FAILED" in out.stdout


def test_run_all_two_at_a_time_gives_the_same_summary(tmp_path):
    out = cli("run", "--all", "--jobs", "2", runs_dir=tmp_path)
    assert out.returncode == 1, out.stderr
    assert "running 2 papers, 2 at a time" in out.stdout and "papers: 1 ran, 1 failed" in out.stdout
    rows = [line.split()[0] for line in out.stdout.splitlines() if line.startswith(("echo_paper ", "fail_paper "))]
    assert rows == sorted(rows) == ["echo_paper", "fail_paper"]  # the table keeps the order asked
    assert len(run_dirs(tmp_path, "echo_paper")) == 1
    assert json.loads((run_dirs(tmp_path, "echo_paper")[0] / "manifest.json").read_text())["status"] == "ok"
    bad = cli("run", "--all", "--jobs", "0", runs_dir=tmp_path / "none")
    assert bad.returncode == 2 and "--jobs must be at least 1" in bad.stderr
    assert not (tmp_path / "none").exists()


def test_claims_are_checked_recorded_and_fail_the_run_command(tmp_path):
    paper = registry.get_paper("echo_paper", registry.discover(FIXTURES))
    assert [(c.metric, c.profiles) for c in paper.claims] == [
        ("n", ("quick", "full")), ("scale", ("quick", "full")), ("total", ("quick",))]
    good = cli("run", "echo_paper", runs_dir=tmp_path)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "claim pass: n <100" in good.stdout
    run = run_dirs(tmp_path, "echo_paper")[0]
    assert [c["passed"] for c in json.loads((run / "claims.json").read_text())] == [True, True, True, True]
    assert json.loads((run / "manifest.json").read_text())["claims"] == {"passed": 4, "failed": [], "controls": 1}
    assert "control pass: n_control must fail n <100 (value 200)" in good.stdout
    bad = cli("run", "echo_paper", "-p", "n=500", "-p", "scale=8", runs_dir=tmp_path)
    assert bad.returncode == 1  # the run itself succeeded; its claims did not hold
    assert "claim FAIL: n <100 (value 500)" in bad.stdout and "claim FAIL: scale" in bad.stdout
    newest = [d for d in run_dirs(tmp_path, "echo_paper") if d != run][0]
    assert {"n", "scale"} <= set(json.loads((newest / "manifest.json").read_text())["claims"]["failed"])
    metrics = {"n": 5}
    results = {c.metric: c for c in claims.check_claims(paper.claims, "quick", metrics)}
    assert results["n"].passed and not results["total"].passed and results["total"].reason == "metric not recorded"
    assert not claims.Claim("x", ">0").check({"x": [1.0, float("nan")]}).passed  # every entry, and NaN fails
    assert claims.Claim("x", [0, 1]).check({"x": 1.0}).passed and not claims.Claim("x", "<1").check({"x": 1.0}).passed
    assert claims.Claim("a/b c/d", ">=2").check({"a": {"b c": {"d": 2}}}).passed  # a nested entry
    with pytest.raises(registry.PaperError, match="expected"):
        claims.parse_claims({"x": "about 3"}, "here")
    with pytest.raises(registry.PaperError, match="unknown profiles"):
        claims.parse_claims({"x": {"medium": ">1"}}, "here")


def test_a_control_that_passes_its_claim_fails_the_run_and_seeds_tabulate_every_claim(tmp_path, monkeypatch, capsys):
    paper = registry.get_paper("echo_paper", registry.discover(FIXTURES))
    assert paper.controls == {"n_control": "n"}
    weak = cli("run", "echo_paper", "-p", "n=2", runs_dir=tmp_path / "weak")  # n_control = 40 < 100
    assert weak.returncode == 1, weak.stdout + weak.stderr
    assert "control FAIL: n_control must fail n <100 (value 40) - control satisfies the claim" in weak.stdout
    run = run_dirs(tmp_path / "weak", "echo_paper")[0]
    assert "n_control" in json.loads((run / "manifest.json").read_text())["claims"]["failed"]
    results = {c.metric: c for c in claims.check_controls(paper.controls, paper.claims, "quick", {"n": 5})}
    assert not results["n_control"].passed and results["n_control"].reason == "control not recorded"
    nan = claims.check_controls(paper.controls, paper.claims, "quick", {"n_control": float("nan")})
    assert not nan[0].passed and nan[0].reason == "control is not finite"  # a crashed control proves nothing
    assert claims.Claim("x", "<1").check({"x": 0.25}).margin == 0.75
    assert claims.Claim("x", "<1").check_control("y", {"y": [3.0, 0.5]}).passed  # one entry outside fails the claim
    with pytest.raises(registry.PaperError, match="without a claim"):
        claims.parse_controls({"c": "nothing"}, paper.claims, "here")

    summary = tmp_path / "summary.json"
    seeds = cli("run", "echo_paper", "--seeds", "0,5", "--summary", str(summary), runs_dir=tmp_path / "seeds")
    assert seeds.returncode == 0, seeds.stdout + seeds.stderr
    table = seeds.stdout.split("claims and controls by seed")[1]
    assert "seed 0" in table and "seed 5" in table and "n_control (control of n)" in table
    rows = json.loads(summary.read_text())
    assert [r["seed"] for r in rows] == [0, 5] and all(r["ok"] for r in rows)
    totals = [next(c["value"] for c in r["claims"] if c["metric"] == "total") for r in rows]
    assert totals[0] != totals[1]  # each run had its own seed
    monkeypatch.setenv("WORKBENCH_NOTEBOOKS", str(FIXTURES))
    monkeypatch.setattr(runner, "run_paper", lambda *a, **k: pytest.fail("a refused request ran"))
    for bad, message in ((["--seeds", "0,x"], "comma-separated integers"), (["--seeds", "1,1"], "distinct"),
                         (["--seeds", "0,1", "-p", "seed=2"], "not both")):
        assert cli_module.main(["run", "echo_paper", *bad, "--runs-dir", str(tmp_path / "bad")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_every_real_paper_declares_valid_metadata():
    papers = registry.discover()
    assert "tour" in papers
    for paper in papers.values():
        assert paper.title != paper.name, f"{paper.name}: give a title in the jupytext header"
        assert paper.quick_seconds, f"{paper.name}: give quick_seconds"
        for name, param in paper.parameters.items():
            assert param.help, f"{paper.name}: parameter {name} has no help comment"
            # papermill's own parser warns about (and mis-reads) a help comment holding '='
            assert "=" not in param.help, f"{paper.name}: help of {name} contains '='"
        registry.resolve_parameters(paper, profile="full")


def test_every_paper_declares_a_control_for_its_claims():
    # a claim no broken method fails is no claim: each paper runs at least one broken or trivial
    # variant and declares the claim it must fail (its quick run checks that it does)
    for paper in registry.discover().values():
        assert paper.controls, (f"{paper.name}: declare at least one control in the header "
                                "(`controls: {control_metric: claim_metric}`)")
        quick = {c.metric for c in paper.claims if "quick" in c.profiles}
        assert any(target in quick for target in paper.controls.values()), (
            f"{paper.name}: no control is checked on the quick profile")


def test_every_parameter_of_every_paper_declares_its_allowed_values():
    # a new parameter without `; in [lo, hi]` or `; in {a, b}` fails here (bools need none)
    papers = registry.discover()
    assert len(papers) >= 19
    for paper in papers.values():
        for name, param in paper.parameters.items():
            if param.type == "bool":
                continue
            assert param.allowed is not None, (
                f"{paper.name}: parameter {name} declares no allowed values; end its comment with "
                "'; in [lo, hi]' (ends may be open: '(0, inf)') or '; in {a, b}'")
            for value in (param.default, paper.full.get(name, param.default)):
                registry.check_allowed(param, value)  # defaults and full values lie inside
        assert set(paper.parameters["profile"].allowed.choices) == set(claims.PROFILES)
        seed = paper.parameters["seed"].allowed
        assert seed.admits(0) and not seed.admits(-1)


def test_declared_choices_match_the_package():
    from workbench import convex
    from workbench.experiments import continual, unlearning
    from workbench.experiments import transport as transport_recipes
    from workbench.sketch import intrinsic

    papers = registry.discover()
    choices = lambda paper, name: set(papers[paper].parameters[name].allowed.choices)
    assert choices("neural_transport", "methods") == choices("neural_transport", "disks_methods") == set(transport_recipes.METHODS)
    assert choices("intrinsic_dimension", "kind") == set(intrinsic.SWEEP_KINDS)
    assert choices("intrinsic_dimension", "search_kind") == set(intrinsic.NESTED_KINDS)
    assert choices("task_switch", "task_kind") == set(continual.TASK_KINDS)
    assert choices("unlearning", "forget_kinds") == set(unlearning.FORGET_KINDS)
    assert choices("last_iterate", "problem_kind") == set(convex.PROBLEMS)


def test_stale_temporaries_of_dead_runs_are_cleaned(tmp_path):
    stale = tmp_path / "echo_paper" / ".tmp-20200101T000000Z-abc-999999999"
    stale.mkdir(parents=True)
    runner.cleanup_stale_temporaries(tmp_path)
    assert not stale.exists()
