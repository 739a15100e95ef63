"""requirements.lock, the exact versions `make` installs: it pins every requirement of the package
and of the extras `make` installs, each within the range pyproject.toml allows, and the Makefile
installs with it as pip constraints (so a fresh clone gets the versions the suite passes with)."""

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_lock_pins_every_requirement_within_pyproject_ranges():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [r for e in ("dev", "workshop") for r in project["optional-dependencies"][e]]
    pins = _pins()
    assert "workbench" not in pins, "the lock pins dependencies, never the package itself"
    outside = []
    for text in wanted:
        req = Requirement(text)
        version = pins.get(canonicalize_name(req.name))
        if version is None or not req.specifier.contains(version, prereleases=True):
            outside.append(f"{text}: lock has {version}")
    assert not outside, "requirements.lock is stale (make lock): " + "; ".join(outside)


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_installs_with_the_lock_as_constraints():
    out = subprocess.run(["make", "-n", "-B", "-C", str(REPO), ".venv/.installed"],
                         capture_output=True, text=True, check=True).stdout
    installs = [line for line in out.splitlines() if re.search(r"pip install .*-e '\.\[dev\]'", line)]
    assert installs and all("-c requirements.lock" in line for line in installs)
    rules = (REPO / "Makefile").read_text()
    assert re.search(r"^\$\(STAMP\):.*\$\(LOCK\)", rules, re.M), "the install stamp must depend on the lock"
