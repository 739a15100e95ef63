"""Write requirements.lock: the exact versions of everything `pip install -e '.[dev,workshop]'`
needs, read from the environment this runs in (`make lock` runs it in .venv after `make test`
passes there).

The lock is a pip constraints file (`pip install -c requirements.lock -e '.[dev]'`): it pins
versions without adding requirements, so pyproject.toml keeps the ranges people installing the
package into their own environment get, and an entry a platform does not need is ignored.
It holds the dependency closure of the package's requirements and those extras (markers evaluated
for this interpreter and platform), never the package itself or what else is installed.
"""

from __future__ import annotations

import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

EXTRAS = ("dev", "workshop")
ROOT = Path(__file__).resolve().parents[1]


def _applies(req: Requirement, extra: str = "") -> bool:
    if req.marker is None:
        return True
    return req.marker.evaluate({**default_environment(), "extra": extra})


def closure() -> dict[str, str]:
    """The installed distributions the package's requirements and EXTRAS reach, name -> version."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [Requirement(r) for r in project["dependencies"]]
    todo += [Requirement(r) for e in EXTRAS for r in project["optional-dependencies"][e]]
    found: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if (name, frozenset(req.extras)) in seen:
            continue
        seen.add((name, frozenset(req.extras)))
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            sys.exit(f"lock: {req.name} is required but not installed; run `make` first")
        found[dist.metadata["Name"]] = dist.version
        for text in dist.requires or []:
            sub = Requirement(text)
            if _applies(sub) or any(_applies(sub, e) for e in req.extras):
                todo.append(sub)
    return found


def main() -> None:
    pins = closure()
    lines = [
        "# Exact versions `make` installs (pip constraints: pip install -c requirements.lock -e '.[dev]').",
        f"# Written by `make lock` (.ci/lock.py) with Python {sys.version.split()[0]} on {sys.platform};",
        "# the ranges for other environments are in pyproject.toml.",
        *(f"{name}=={version}" for name, version in sorted(pins.items(), key=lambda kv: kv[0].lower())),
    ]
    (ROOT / "requirements.lock").write_text("\n".join(lines) + "\n")
    print(f"requirements.lock: {len(pins)} packages")


if __name__ == "__main__":
    main()
