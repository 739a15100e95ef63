"""A paper's claims over several seeds: the value of every claim (controls included) at each seed
on the quick profile, and once on the full profile, with the spread that sets their margins.

Runs the paper through the runner (a fresh kernel per run, as `make papers` does) and writes
`benchmarks/results/claims_NAME.md` (and `.json`). Nothing is timed into a verdict: the run
seconds are reported only.

    python benchmarks/claims_over_seeds.py task_switch --seeds 0 1 2 [--full] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from workbench.run import papers, runner


def run(name: str, seeds: list[int], full: bool, runs_dir: Path) -> dict:
    paper = papers.get_paper(name)
    rows = {}
    for profile, seed in [("quick", s) for s in seeds] + ([("full", seeds[0])] if full else []):
        result = runner.run_paper(paper, papers.resolve_parameters(paper, {"seed": seed}, profile=profile), runs_dir)
        label = f"{profile} seed {seed}"
        rows[label] = {"ok": result.ok, "seconds": round(result.seconds, 1), "error": result.error,
                       "claims": {c.metric: {"claim": c.claim, "value": c.value, "passed": c.passed}
                                  for c in result.claims}}
        print(f"{label}: {'ok' if result.ok else 'FAILED'} in {result.seconds:.1f} s, "
              f"{sum(c.passed for c in result.claims)}/{len(result.claims)} claims hold", flush=True)
    return rows


def markdown(name: str, rows: dict) -> str:
    labels = list(rows)
    metrics = sorted({m for r in rows.values() for m in r["claims"]})
    quick = [label for label in labels if label.startswith("quick")]
    lines = [f"# Claims of `{name}` over seeds", "",
             "Each column is one run of the paper (quick profile unless marked full); `spread` is the "
             "smallest and largest value over the quick seeds; a cell is marked FAIL when its claim fails.", "",
             "| claim | spec | " + " | ".join(labels) + " | quick spread |",
             "|---|---|" + "---|" * len(labels) + "---|"]
    for m in metrics:
        spec = next(r["claims"][m]["claim"] for r in rows.values() if m in r["claims"])
        cells, values = [], []
        for label in labels:
            c = rows[label]["claims"].get(m)
            if c is None or not isinstance(c["value"], int | float):
                cells.append("–")
                continue
            cells.append(f"{c['value']:.4g}" + ("" if c["passed"] else " FAIL"))
            if label in quick:
                values.append(c["value"])
        spread = f"{min(values):.4g} .. {max(values):.4g}" if values else "–"
        lines.append(f"| {m} | `{spec}` | " + " | ".join(cells) + f" | {spread} |")
    lines += ["", "| run | ok | seconds |", "|---|---|---|"]
    lines += [f"| {label} | {r['ok']} | {r['seconds']} |" for label, r in rows.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--full", action="store_true", help="also run the full profile once (first seed)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = run(args.name, args.seeds, args.full, Path(tmp))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"claims_{args.name}.json").write_text(json.dumps(rows, indent=1, default=float))
    (args.out / f"claims_{args.name}.md").write_text(markdown(args.name, rows))
    print(f"wrote {args.out / f'claims_{args.name}.md'}")
    failed = [label for label, r in rows.items() if not r["ok"] or not all(c["passed"] for c in r["claims"].values())]
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
