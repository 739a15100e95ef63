"""A paper's claims over several seeds: the value of every claim (controls included) at each seed
on the quick profile, and once on the full profile, with the spread that sets their margins.

Runs the paper through the runner (a fresh kernel per run, as `make papers` does) and writes
`benchmarks/results/claims_NAME.md` (and `.json`) for each paper named. Nothing is timed into a
verdict: the run seconds (wall, and the CPU seconds of the run's kernel, which a busy shared
machine moves less) are reported only. `-p KEY=VALUE` (a YAML value, repeatable) overrides a
parameter on the quick runs, to try a smaller quick profile on several seeds before writing it
into a paper's header (overrides apply to every paper named; one a paper lacks is refused).
Kernels use the user's persistent compilation cache, so a second run mostly skips XLA
compilation; `--fresh-cache` gives every run an empty cache of its own, as `make test` on a new
machine has, for seconds that include compiling.

    python benchmarks/claims_over_seeds.py task_switch [sketching ...] --seeds 0 1 2 [--full] [-p steps=100] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
from pathlib import Path

import numpy as np
import yaml

from workbench.run import papers, runner


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(name: str, seeds: list[int], full: bool, runs_dir: Path, overrides: dict | None = None,
        fresh_cache: bool = False) -> dict:
    paper = papers.get_paper(name)
    rows = {}
    for i, (profile, seed) in enumerate([("quick", s) for s in seeds] + ([("full", seeds[0])] if full else [])):
        given = {**(overrides or {}), "seed": seed} if profile == "quick" else {"seed": seed}
        params = papers.resolve_parameters(paper, given, profile=profile)
        saved = os.environ.get("WORKBENCH_JAX_CACHE")
        if fresh_cache:  # the kernel inherits it: an empty cache folder of this run's own
            os.environ["WORKBENCH_JAX_CACHE"] = str(runs_dir / f"jax-cache-{i}")
        cpu = _children_cpu()
        try:
            result = runner.run_paper(paper, params, runs_dir)
        finally:
            if fresh_cache and saved is None:
                del os.environ["WORKBENCH_JAX_CACHE"]
            elif fresh_cache:
                os.environ["WORKBENCH_JAX_CACHE"] = saved
        cpu = _children_cpu() - cpu  # the run's kernel (a finished child process)
        label = f"{profile} seed {seed}"
        rows[label] = {"ok": result.ok, "seconds": round(result.seconds, 1), "cpu_seconds": round(cpu, 1),
                       "overrides": (overrides or {}) if profile == "quick" else {}, "error": result.error,
                       "claims": {(f"{c.metric} (control of {c.control_of})" if c.is_control else c.metric):
                                  {"claim": ("must fail " if c.is_control else "") + c.claim, "value": c.value,
                                   "passed": c.passed, "margin": c.margin}
                                  for c in result.claims}}
        print(f"{name} {label}: {'ok' if result.ok else 'FAILED'} in {result.seconds:.1f} s ({cpu:.1f} s CPU), "
              f"{sum(c.passed for c in result.claims)}/{len(result.claims)} claims hold", flush=True)
    return rows


def markdown(name: str, rows: dict) -> str:
    labels = list(rows)
    metrics = sorted({m for r in rows.values() for m in r["claims"]})
    quick = [label for label in labels if label.startswith("quick")]
    lines = [f"# Claims of `{name}` over seeds", "",
             "Each column is one run of the paper (quick profile unless marked full); `spread` is the "
             "smallest and largest value over the quick seeds; `margin` how far the worst quick seed lies "
             "inside its claim (for a control, a broken or trivial variant that must fail the claim, how "
             "far the nearest seed stays outside it: negative); a cell is marked FAIL when its claim "
             "fails or its control passes.", "",
             "| claim | spec | " + " | ".join(labels) + " | quick spread | margin |",
             "|---|---|" + "---|" * len(labels) + "---|---|"]
    for m in metrics:
        spec = next(r["claims"][m]["claim"] for r in rows.values() if m in r["claims"])
        cells, values, margins = [], [], []
        for label in labels:
            c = rows[label]["claims"].get(m)
            if c is None or not isinstance(c["value"], int | float):
                cells.append("–")
                continue
            cells.append(f"{c['value']:.4g}" + ("" if c["passed"] else " FAIL"))
            if label in quick:
                values.append(c["value"])
                margins.append(c.get("margin"))
        spread = f"{min(values):.4g} .. {max(values):.4g}" if values else "–"
        known = [x for x in margins if x is not None]
        margin = "–" if not known else f"{(max(known) if spec.startswith('must fail') else min(known)):.3g}"
        lines.append(f"| {m} | `{spec}` | " + " | ".join(cells) + f" | {spread} | {margin} |")
    overrides = next((r["overrides"] for r in rows.values() if r.get("overrides")), None)
    if overrides:
        lines += ["", "Quick runs with " + ", ".join(f"`{k}={v!r}`" for k, v in overrides.items()) + "."]
    lines += ["", "| run | ok | seconds | kernel CPU seconds |", "|---|---|---|---|"]
    lines += [f"| {label} | {r['ok']} | {r['seconds']} | {r.get('cpu_seconds', '–')} |" for label, r in rows.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", metavar="name", help="papers, run one after the other")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter of the quick runs (a YAML value); repeatable")
    parser.add_argument("--fresh-cache", action="store_true",
                        help="an empty compilation cache for every run (seconds include compiling)")
    parser.add_argument("--full", action="store_true", help="also run the full profile once (first seed)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    overrides = {}
    for item in args.param:
        if "=" not in item:
            parser.error(f"-p expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key] = yaml.safe_load(value)
    args.out.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in args.names:
        with tempfile.TemporaryDirectory() as tmp:
            rows = run(name, args.seeds, args.full, Path(tmp), overrides, args.fresh_cache)
        (args.out / f"claims_{name}.json").write_text(json.dumps(rows, indent=1, default=float))
        (args.out / f"claims_{name}.md").write_text(markdown(name, rows))
        print(f"wrote {args.out / f'claims_{name}.md'}")
        failed += [f"{name} {label}" for label, r in rows.items()
                   if not r["ok"] or not all(c["passed"] for c in r["claims"].values())]
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
