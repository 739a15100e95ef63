"""Running a paper end to end with papermill.

Each run goes to `runs/NAME/<UTC time>-<param hash>/` through a temporary directory renamed on
success; a failed run is kept as `...-failed/` with its traceback, and earlier runs are never
touched. After each run the paper's claims are checked (`workbench.run.claims`) and written to
`claims.json` and the manifest.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from workbench.core.progress import PROGRESS_ENV
from workbench.run.claims import ClaimResult, check_claims, check_controls
from workbench.run.papers import Paper, params_hash, repo_root
from workbench.run.results import FIGURES_DIR, METRICS_FILE, RUN_DIR_ENV

# Seconds one cell may run before the run is ended as failed (unset: no limit). A guard against a
# kernel that hangs, never a measure: the test suite sets it far above any cell's time.
CELL_TIMEOUT_ENV = "WORKBENCH_CELL_TIMEOUT"

VERSIONED_PACKAGES = (
    "workbench", "jax", "jaxlib", "flax", "optax", "numpy", "scipy", "scikit-learn", "zarr",
    "matplotlib", "plotly", "papermill", "jupytext", "ipykernel",
)


@dataclass
class RunResult:
    """One paper run: the paper's name, whether the notebook ran, its run directory (ending in
    `-failed` when it did not), the seconds it took, the error's last line (None when it ran) and
    the checked claims and controls (empty when it failed)."""

    paper: str
    ok: bool
    path: Path
    seconds: float
    error: str | None = None
    claims: tuple[ClaimResult, ...] = ()

    @property
    def claims_ok(self) -> bool:
        """Whether every checked claim held and every control failed its claim (True when there
        were none)."""
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
    BLAS pools on few cores stall each other. Sets OMP/OPENBLAS/MKL_NUM_THREADS where unset."""
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")


def cell_timeout() -> int | None:
    """The per-cell limit `$WORKBENCH_CELL_TIMEOUT` sets.

    Returns:
        The limit in whole seconds (at least 1), or None when the variable is unset or empty.

    Raises:
        ValueError: the variable is set to something other than a positive number.
    """
    setting = os.environ.get(CELL_TIMEOUT_ENV, "").strip()
    if not setting:
        return None
    try:
        seconds = float(setting)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"{CELL_TIMEOUT_ENV} must be a positive number of seconds, got {setting!r}")
    return max(1, round(seconds))


def run_paper(paper: Paper, params: dict[str, Any], runs_dir: Path | None = None, progress: bool = False,
              inline_figures: bool = False) -> RunResult:
    """Execute `paper` with already-resolved `params` into a new run directory.

    The notebook runs in a fresh kernel (papermill) inside `.tmp-<stem>-<pid>/`, with
    `WORKBENCH_RUN_DIR` pointing there (a cell running longer than `$WORKBENCH_CELL_TIMEOUT`
    seconds, when set, fails the run); afterwards its claims are checked against `metrics.json`,
    a `manifest.json` records parameters, times, git state, devices and package versions, and the
    folder is renamed to `<UTC time>-<params hash>` (or `...-failed`, with `error.txt`).

    Args:
        paper: the paper to run.
        params: its resolved parameters (`papers.resolve_parameters`), injected by papermill.
        runs_dir: the folder holding one subfolder per paper; None means `runs/` in the repository.
        progress: show papermill's per-cell progress bar (default off).
        inline_figures: keep matplotlib figures in the executed notebook as images (matplotlib's
            inline backend; a workshop page replays them); default off (the Agg backend: figures
            only in `figures/`).

    Returns:
        The `RunResult`; a failing notebook is reported in it, never raised.
    """
    import jupytext
    import papermill

    from workbench.run.kernel_client import SlicedPollKernelManager

    limit = cell_timeout()  # a bad setting is refused before anything runs
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
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline" if inline_figures else "Agg"
    os.environ[PROGRESS_ENV] = "log"  # long loops print one summary line each, not a widget bar
    t0 = time.perf_counter()
    try:
        papermill.execute_notebook(
            jupytext.read(paper.source), str(output_nb), parameters=params, kernel_name="python3",
            cwd=str(tmp), progress_bar=progress, log_output=False, execution_timeout=limit,
            kernel_manager_class=SlicedPollKernelManager,  # no cell waits on a missed wake-up
            # quiet the kernel's own log: its start-up warnings (it listens on localhost only) and the
            # "KeyboardInterrupt caught in kernel" jupyter_client's shutdown SIGINT can provoke; a
            # cell's error still reaches the run through papermill
            extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
        )
    except Exception as err:  # any failure is recorded in the -failed directory
        error = "".join(traceback.format_exception_only(type(err), err)).strip()
        if type(err).__name__ == "CellTimeoutError":  # nbclient's; say which setting ended it
            error = f"{error}\na cell ran past {CELL_TIMEOUT_ENV}={limit} s (the kernel was stopped)"
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
        profile = str(params.get("profile"))
        claims = (check_claims(paper.claims, profile, metrics)
                  + check_controls(paper.controls, paper.claims, profile, metrics))
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
                              "failed": [c.metric for c in claims if not c.passed],
                              "controls": sum(c.is_control for c in claims)}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    final = _unique(paper_dir / (f"{stem}-failed" if error else stem))
    tmp.rename(final)
    return RunResult(paper.name, error is None, final, seconds, error, tuple(claims))


def cleanup_stale_temporaries(runs_dir: Path) -> None:
    """Remove `.tmp-*` directories left by runs that were killed (never a finished run).

    A temporary directory is removed only when the process named in its suffix is gone, so runs
    in progress (other `--jobs` workers, another terminal) are left alone.

    Args:
        runs_dir: the runs folder (`runs/` or `--runs-dir`); a missing folder is fine.
    """
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
