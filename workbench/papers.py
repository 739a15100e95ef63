"""The paper registry and papermill runner.

A paper is a notebook pair `notebooks/NAME.py` (jupytext percent, the source) + `NAME.ipynb`.
Its jupytext header carries `workbench: {title, quick_seconds, full: {param: value}, claims: {...}}`,
and its
cell tagged `parameters` declares typed defaults (`name: type = default  # help`), which are the
quick profile. Parameters are validated here, before anything executes. Each run goes to
`runs/NAME/<UTC time>-<param hash>/` through a temporary directory renamed on success; a failed
run is kept as `...-failed/` with its traceback, and earlier runs are never touched.

Claims: the header's `claims` maps a metric name (a key of `metrics.json`) to what the paper
asserts about it: ">0.95", "<0.01", ">=1", "<=0", a range [lo, hi], or per profile
`{quick: ..., full: ...}`; "a/b" names the entry b of a nested metric a. A list-valued metric
must satisfy the claim in every entry. After each
run the claims are checked, written to `claims.json` and the manifest, and printed; a missing
metric fails its claim.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import io
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
import tokenize
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from workbench.progress import PROGRESS_ENV
from workbench.results import FIGURES_DIR, METRICS_FILE, RUN_DIR_ENV

PROFILES = ("quick", "full")
SCALAR_TYPES = {"int": int, "float": float, "str": str, "bool": bool}
LIST_TYPES = {f"list[{t}]": t for t in SCALAR_TYPES if t != "bool"}
REQUIRED_PARAMETERS = ("seed", "profile", "interactive")
VERSIONED_PACKAGES = (
    "workbench", "jax", "jaxlib", "flax", "optax", "numpy", "scipy", "scikit-learn", "zarr",
    "matplotlib", "plotly", "papermill", "jupytext", "ipykernel",
)


class PaperError(ValueError):
    """A paper, parameter or run request that cannot be honoured; the message says why."""


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str
    default: Any
    help: str


@dataclass(frozen=True)
class Claim:
    """`metric` must satisfy `spec` (">x", "<x", ">=x", "<=x" or [lo, hi]) on `profiles`."""

    metric: str
    spec: Any
    profiles: tuple[str, ...] = PROFILES

    def bounds(self) -> tuple[float, float, bool, bool]:
        """(lo, hi, lo_inclusive, hi_inclusive)."""
        spec = self.spec
        if isinstance(spec, list | tuple) and len(spec) == 2:
            return float(spec[0]), float(spec[1]), True, True
        if isinstance(spec, str):
            text = spec.replace(" ", "")
            for op in (">=", "<=", ">", "<"):
                if text.startswith(op):
                    value = float(text[len(op):])
                    if op[0] == ">":
                        return value, math.inf, op == ">=", False
                    return -math.inf, value, False, op == "<="
        raise PaperError(f"claim on {self.metric!r}: expected '>x', '<x', '>=x', '<=x' or [lo, hi], "
                         f"got {spec!r}")

    def check(self, metrics: dict[str, Any]) -> ClaimResult:
        lo, hi, lo_in, hi_in = self.bounds()
        value = _lookup(metrics, self.metric)
        if value is _MISSING:
            return ClaimResult(self.metric, str(self.spec), None, False, "metric not recorded")
        values = value if isinstance(value, list) else [value]
        try:
            numbers = [float(v) for v in values]
        except (TypeError, ValueError):
            return ClaimResult(self.metric, str(self.spec), value, False, "metric is not numeric")
        ok = bool(numbers) and all(
            math.isfinite(v) and (v >= lo if lo_in else v > lo) and (v <= hi if hi_in else v < hi)
            for v in numbers)
        return ClaimResult(self.metric, str(self.spec), value, ok, "" if ok else "outside the claim")


_MISSING = object()


def _lookup(metrics: dict[str, Any], name: str) -> Any:
    """metrics[name], or for "a/b/c" the nested metrics["a"]["b"]["c"]."""
    if name in metrics:
        return metrics[name]
    value: Any = metrics
    for part in name.split("/"):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


@dataclass(frozen=True)
class ClaimResult:
    metric: str
    claim: str
    value: Any
    passed: bool
    reason: str = ""


def parse_claims(raw: Any, where: str) -> tuple[Claim, ...]:
    """The header's `claims` mapping as Claims (validated; see the module docstring)."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise PaperError(f"{where}: claims must map metric names to claims, got {raw!r}")
    claims = []
    for metric, spec in raw.items():
        if isinstance(spec, dict):
            unknown = [k for k in spec if k not in PROFILES]
            if unknown:
                raise PaperError(f"{where}: claim on {metric!r} names unknown profiles {unknown}")
            claims += [Claim(str(metric), s, (profile,)) for profile, s in spec.items()]
        else:
            claims.append(Claim(str(metric), spec))
    for claim in claims:
        claim.bounds()  # validate now, before anything runs
    return tuple(claims)


def check_claims(paper: Paper, profile: str, metrics: dict[str, Any]) -> list[ClaimResult]:
    """Every claim of `paper` that applies to `profile`, checked against `metrics`."""
    return [c.check(metrics) for c in paper.claims if profile in c.profiles]


@dataclass(frozen=True)
class Paper:
    name: str
    title: str
    source: Path
    quick_seconds: float | None
    full: dict[str, Any]
    parameters: dict[str, Parameter] = field(repr=False)
    claims: tuple[Claim, ...] = ()


# ----------------------------------------------------------------------------- discovery


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def notebooks_dir() -> Path:
    """WORKBENCH_NOTEBOOKS if set, else the repository's notebooks/ folder."""
    return Path(os.environ.get("WORKBENCH_NOTEBOOKS") or repo_root() / "notebooks")


def parse_parameters(cell_source: str, where: str = "parameters cell") -> dict[str, Parameter]:
    """Read `name: type = default  # help` lines of a parameters cell."""
    comments = {}
    for tok in tokenize.generate_tokens(io.StringIO(cell_source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    params: dict[str, Parameter] = {}
    for node in ast.parse(cell_source).body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value):
            raise PaperError(f"{where}, line {node.lineno}: expected `name: type = default  # help`")
        name, type_name = node.target.id, ast.unparse(node.annotation)
        if type_name not in SCALAR_TYPES and type_name not in LIST_TYPES:
            raise PaperError(f"{where}: parameter {name!r} has unsupported type {type_name!r}; use "
                             f"one of {sorted(SCALAR_TYPES) + sorted(LIST_TYPES)}")
        try:
            default = ast.literal_eval(node.value)
        except ValueError as err:
            raise PaperError(f"{where}: default of {name!r} must be a literal") from err
        params[name] = Parameter(name, type_name, coerce(name, type_name, default), comments.get(node.lineno, ""))
    return params


def load_paper(source: Path) -> Paper:
    import jupytext

    nb = jupytext.read(source)
    meta = nb.metadata.get("workbench", {})
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise PaperError(f"{source}: needs exactly one cell tagged 'parameters', found {len(cells)}")
    params = parse_parameters(cells[0].source, f"{source.name} parameters cell")
    missing = [p for p in REQUIRED_PARAMETERS if p not in params]
    if missing:
        raise PaperError(f"{source}: parameters cell lacks {missing}")
    full = dict(meta.get("full") or {})
    claims = parse_claims(meta.get("claims"), str(source))
    paper = Paper(source.stem, meta.get("title", source.stem), source, meta.get("quick_seconds"), full,
                  params, claims)
    unknown = [k for k in full if k not in params]
    if unknown:
        raise PaperError(f"{source}: full profile names unknown parameters {unknown}")
    for k, v in full.items():
        coerce(k, params[k].type, v)
    return paper


def discover(folder: Path | None = None) -> dict[str, Paper]:
    """Every paper in `folder` (default: notebooks/), by name."""
    folder = folder or notebooks_dir()
    return {p.stem: load_paper(p) for p in sorted(folder.glob("*.py"))}


def get_paper(name: str, papers: dict[str, Paper] | None = None) -> Paper:
    papers = papers if papers is not None else discover()
    if name not in papers:
        close = difflib.get_close_matches(name, papers, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise PaperError(f"no paper named {name!r}.{hint} Papers: {', '.join(papers)}")
    return papers[name]


# ----------------------------------------------------------------------------- parameters


def coerce(name: str, type_name: str, value: Any) -> Any:
    """`value` (a string from the command line or a YAML value) as the declared type, or an error."""

    def fail(detail=""):
        raise PaperError(f"parameter {name!r} expects {type_name}, got {value!r}{detail}")

    if type_name in LIST_TYPES:
        items = value
        if isinstance(value, str):
            text = value.strip()
            items = yaml.safe_load(text) if text.startswith("[") else [s for s in text.split(",") if s.strip()]
        if not isinstance(items, list | tuple):
            fail()
        try:
            return [coerce(name, LIST_TYPES[type_name], item) for item in items]
        except PaperError as err:
            raise PaperError(f"parameter {name!r} expects {type_name}, got {value!r} ({err})") from None
    if type_name == "str":
        if isinstance(value, bool | int | float) and not isinstance(value, str):
            return str(value)
        return value if isinstance(value, str) else fail()
    if type_name == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "yes", "1", "on"):
            return True
        if text in ("false", "no", "0", "off"):
            return False
        fail(" (use true or false)")
    if isinstance(value, bool):
        fail()
    if type_name == "int":
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value).strip().replace("_", ""))
        except ValueError:
            fail()
    if type_name == "float":
        try:
            number = float(value) if not isinstance(value, str) else float(value.strip())
        except ValueError:
            fail()
        if math.isnan(number):
            fail(" (NaN is not allowed)")
        return number
    fail()


def parse_assignments(pairs: list[str]) -> dict[str, str]:
    """`key=value` strings from `-p` into a dict (values stay strings until checked)."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise PaperError(f"-p expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value
    return out


def resolve_parameters(
    paper: Paper, overrides: dict[str, Any] | None = None, profile: str | None = None
) -> dict[str, Any]:
    """Defaults, then the full profile (if asked), then `overrides`; every value type-checked."""
    overrides = dict(overrides or {})
    unknown = [k for k in overrides if k not in paper.parameters]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, paper.parameters, n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise PaperError(f"unknown parameter(s) for paper {paper.name!r}: {', '.join(hints)}. "
                         f"Valid parameters: {', '.join(paper.parameters)}")
    if profile is None:
        profile = coerce("profile", "str", overrides.get("profile", paper.parameters["profile"].default))
    if profile not in PROFILES:
        raise PaperError(f"profile must be one of {PROFILES}, got {profile!r}")
    values = {name: p.default for name, p in paper.parameters.items()}
    if profile == "full":
        values.update(paper.full)
    values.update({k: coerce(k, paper.parameters[k].type, v) for k, v in overrides.items()})
    values["profile"] = profile
    return values


def load_parameter_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise PaperError(f"parameter file not found: {path}")
    content = yaml.safe_load(path.read_text()) or {}
    if not isinstance(content, dict):
        raise PaperError(f"{path}: expected a mapping of parameter names to values")
    return content


def params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]


# ----------------------------------------------------------------------------- running


@dataclass
class RunResult:
    paper: str
    ok: bool
    path: Path
    seconds: float
    error: str | None = None
    claims: tuple[ClaimResult, ...] = ()

    @property
    def claims_ok(self) -> bool:
        return all(c.passed for c in self.claims)


def _git_state(root: Path) -> dict[str, Any]:
    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = bool(git("status", "--porcelain").stdout.strip())
        return {"commit": head.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out = {}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _jax_devices() -> dict[str, Any]:
    try:
        import jax

        return {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()]}
    except Exception as err:  # the manifest records what it can; a broken JAX shows up in the run
        return {"backend": None, "devices": [], "error": repr(err)}


def _unique(path: Path) -> Path:
    candidate, i = path, 2
    while candidate.exists():
        candidate = path.with_name(f"{path.name}-{i}")
        i += 1
    return candidate


def one_blas_thread() -> None:
    """For a worker process running papers side by side (`workbench run --jobs N`): one BLAS
    thread per kernel unless the user set it, as the test workers do; several busy-waiting
    BLAS pools on few cores stall each other."""
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")


def run_paper(paper: Paper, params: dict[str, Any], runs_dir: Path | None = None, progress: bool = False) -> RunResult:
    """Execute `paper` with already-resolved `params` into a new run directory."""
    import jupytext
    import papermill

    runs_dir = Path(runs_dir) if runs_dir is not None else repo_root() / "runs"
    start = datetime.now(UTC)
    stem = f"{start.strftime('%Y%m%dT%H%M%SZ')}-{params_hash(params)}"
    paper_dir = runs_dir / paper.name
    paper_dir.mkdir(parents=True, exist_ok=True)
    tmp = paper_dir / f".tmp-{stem}-{os.getpid()}"
    tmp.mkdir()
    (tmp / FIGURES_DIR).mkdir()
    (tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=True))
    (tmp / METRICS_FILE).write_text("{}\n")
    output_nb = tmp / f"{paper.name}.ipynb"
    error = None
    saved_env = {k: os.environ.get(k) for k in (RUN_DIR_ENV, "MPLBACKEND", PROGRESS_ENV)}
    os.environ[RUN_DIR_ENV] = str(tmp.resolve())
    os.environ["MPLBACKEND"] = "Agg"
    os.environ[PROGRESS_ENV] = "log"  # long loops print one summary line each, not a widget bar
    t0 = time.perf_counter()
    try:
        papermill.execute_notebook(
            jupytext.read(paper.source), str(output_nb), parameters=params, kernel_name="python3",
            cwd=str(tmp), progress_bar=progress, log_output=False,
            # quiet the kernel's own start-up warnings (it listens on localhost only)
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
        )
    except Exception as err:  # any failure is recorded in the -failed directory
        error = "".join(traceback.format_exception_only(type(err), err)).strip()
        (tmp / "error.txt").write_text(traceback.format_exc())
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    seconds = time.perf_counter() - t0
    end = datetime.now(UTC)
    claims: list[ClaimResult] = []
    if not error:
        metrics = json.loads((tmp / METRICS_FILE).read_text())
        claims = check_claims(paper, str(params.get("profile")), metrics)
        (tmp / "claims.json").write_text(json.dumps(
            [c.__dict__ for c in claims], indent=2, default=str) + "\n")
    manifest = {
        "paper": paper.name,
        "title": paper.title,
        "status": "failed" if error else "ok",
        "params_hash": params_hash(params),
        "seed": params.get("seed"),
        "profile": params.get("profile"),
        "start": start.isoformat(),
        "end": end.isoformat(),
        "duration_seconds": round(seconds, 3),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git": _git_state(repo_root()),
        "jax": _jax_devices(),
        "packages": _versions(),
    }
    if error:
        manifest["error"] = error
    else:
        manifest["claims"] = {"passed": sum(c.passed for c in claims),
                              "failed": [c.metric for c in claims if not c.passed]}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    final = _unique(paper_dir / (f"{stem}-failed" if error else stem))
    tmp.rename(final)
    return RunResult(paper.name, error is None, final, seconds, error, tuple(claims))


def cleanup_stale_temporaries(runs_dir: Path) -> None:
    """Remove `.tmp-*` directories left by runs that were killed (never a finished run)."""
    for tmp in Path(runs_dir).glob("*/.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
