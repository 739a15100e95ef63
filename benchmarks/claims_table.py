"""Every paper's claims and controls by seed, from the JSON that `workbench run --summary` writes.

    python -m workbench run --all --seeds 0,1,2 --jobs 2 --summary /tmp/seeds.json
    python benchmarks/claims_table.py /tmp/seeds.json [--full /tmp/full.json] [--out benchmarks/results]

writes `claims_by_seed.md` (one table per paper: each claim and each control, its value at every
seed, the margin of the worst seed, and the full-profile value where a full run is given) and
`claims_by_seed.json` (the rows as read). Nothing here decides pass or fail: the runner did.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _label(c: dict) -> str:
    return f"{c['metric']} (control of {c['control_of']})" if c.get("control_of") else c["metric"]


def _cell(c: dict | None) -> str:
    if c is None:
        return "–"
    value = c["value"]
    text = (f"{value:.4g}" if isinstance(value, float) else
            "[" + ", ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in value) + "]"
            if isinstance(value, list) else str(value))
    return text + ("" if c["passed"] else " FAIL")


def tables(rows: list[dict], full: list[dict]) -> str:
    """The markdown: per paper, claims and controls (rows) by seed (columns)."""
    lines = ["# Claims and controls by seed", "",
             "Each paper's quick profile at every seed given (and its full profile where one was run). A control "
             "is a broken or trivial variant that must FAIL the claim it names; `margin` is how far the worst "
             "quick seed lies inside its claim (for a control, how far the nearest seed stays outside: "
             "negative). A cell marked FAIL is a claim that did not hold or a control that passed.", ""]
    full_by_paper = {r["paper"]: {_label(c): c for c in r["claims"]} for r in full}
    full_runs = {r["paper"]: r for r in full}
    for paper in dict.fromkeys(r["paper"] for r in rows):
        runs = [r for r in rows if r["paper"] == paper]
        seeds = [r["seed"] for r in runs]
        by_seed = [{_label(c): c for c in r["claims"]} for r in runs]
        has_full = paper in full_by_paper
        # the quick runs' claims and controls, then those checked on the full profile only
        labels = list(dict.fromkeys([label for s in by_seed for label in s] + list(full_by_paper.get(paper, {}))))
        labels.sort(key=lambda label: ("(control of" in label, label))
        lines += [f"## {paper}", "", "Quick runs: " + ", ".join(f"seed {s} {r['seconds']} s" for s, r in zip(seeds, runs))
                  + (" (all ran)" if all(r["ok"] for r in runs) else " (SOME FAILED TO RUN)")
                  + (f"; full profile, seed {full_runs[paper]['seed']}: {full_runs[paper]['seconds']} s"
                     + ("" if full_runs[paper]["ok"] else " (FAILED TO RUN)") if has_full else ""), "",
                  "| metric | claim | " + " | ".join(f"seed {s}" for s in seeds) + " | margin |"
                  + (" full |" if has_full else ""),
                  "|---|---|" + "---|" * len(seeds) + "---|" + ("---|" if has_full else "")]
        for label in labels:
            cells = [s.get(label) for s in by_seed]
            first = next((c for c in cells if c is not None), None) or full_by_paper[paper][label]
            claim = ("must fail " if first.get("control_of") else "") + first["claim"]
            margins = [c.get("margin") for c in cells if c is not None]
            margin = ("–" if not margins or any(m is None for m in margins) else
                      f"{(max(margins) if first.get('control_of') else min(margins)):.3g}")
            row = f"| {label} | `{claim}` | " + " | ".join(_cell(c) for c in cells) + f" | {margin} |"
            if has_full:
                row += f" {_cell(full_by_paper[paper].get(label))} |"
            lines.append(row)
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summary", type=Path, help="the --summary JSON of a `workbench run --seeds ...`")
    parser.add_argument("--full", type=Path, help="the --summary JSON of a `workbench run --profile full ...`")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    rows = json.loads(args.summary.read_text())
    full = json.loads(args.full.read_text()) if args.full else []
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "claims_by_seed.json").write_text(json.dumps({"quick": rows, "full": full}, indent=1) + "\n")
    (args.out / "claims_by_seed.md").write_text(tables(rows, full))
    print(f"wrote {args.out / 'claims_by_seed.md'}")


if __name__ == "__main__":
    main()
