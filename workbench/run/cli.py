"""The command line, `python -m workbench` (or `workbench` once installed):

    list                                     every paper, its title and quick-run time
    describe NAME                            a paper's parameters, profiles and claims
    run NAME... [-p k=v] [-f params.yaml] [--profile quick|full] [--jobs N] [--runs-dir DIR]
        [--seeds 0,1,2] [--summary FILE.json]  each paper once per seed, claims tabulated by seed
    run --all [--jobs N]                     every paper
    lab copies | reset [NAME...] | save NAME JupyterLab working copies (`workbench.run.lab`)
    workshop [--profile P] [--parameters FILE] [--serve] [--preheat] [--pool-size N] [--preheat-panels]
             [--cull-minutes M] [--check] [--all-output] [--ip IP] [--port N] [NAME...]
                                             every paper as a voila page (`workbench.run.workshop`)

Errors in a request (unknown paper or parameter, a value of the wrong type or outside the range or
choices its paper declares) exit with status 2 and a message, before anything runs (no run
directory is made); argparse does the same for unknown flags.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from workbench.run import papers as registry
from workbench.run import runner


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def _seconds(value) -> str:
    return "?" if value is None else (f"~{value:.0f} s" if value < 120 else f"~{value / 60:.0f} min")


def cmd_list(args) -> int:
    """`workbench list`: print every paper with its title and quick-profile time.

    Args:
        args: the parsed command line (`argparse.Namespace` from `build_parser`); it has no
            options.

    Returns:
        The exit status: 0 on success.
    """
    papers = registry.discover()
    rows = [[p.name, p.title, _seconds(p.quick_seconds)] for p in papers.values()]
    print(_table(rows, ["paper", "title", "quick run"]))
    return 0


def cmd_describe(args) -> int:
    """`workbench describe NAME`: print a paper's source, profiles, parameters and claims.

    Args:
        args: the parsed command line (`argparse.Namespace` from `build_parser`); `args.name` is the paper.

    Returns:
        The exit status: 0 on success.
    """
    paper = registry.get_paper(args.name)
    print(f"{paper.name}: {paper.title}")
    print(f"source: {paper.source}")
    print(f"quick profile: {_seconds(paper.quick_seconds)}; full profile overrides: "
          + (", ".join(f"{k}={v}" for k, v in paper.full.items()) or "none"))
    print()
    rows = [[p.name, p.type, p.allowed.text if p.allowed else "", repr(p.default),
             repr(paper.full[p.name]) if p.name in paper.full else "", p.help]
            for p in paper.parameters.values()]
    print(_table(rows, ["parameter", "type", "allowed", "default (quick)", "full", "help"]))
    if paper.claims:
        print("\nclaims (checked after every run):")
        for c in paper.claims:
            print(f"  {c.metric} {c.spec}" + ("" if len(c.profiles) == 2 else f" ({c.profiles[0]} profile)"))
    if paper.controls:
        print("\ncontrols (broken or trivial variants; each must FAIL the claim it names):")
        for control, target in paper.controls.items():
            print(f"  {control} must fail the claim on {target}")
    print(f"\nexample: python -m workbench run {paper.name} -p seed=1 --profile quick")
    return 0


def cmd_run(args) -> int:
    """`workbench run`: validate every requested run, then execute the papers and report each.

    All names and parameters are checked before anything executes; the runs go to
    `runs/NAME/<time>-<hash>/` (or `--runs-dir`), `--jobs` at a time, and a summary table follows
    when there was more than one.

    Args:
        args: the parsed command line (`argparse.Namespace` from `build_parser`): `names` or
            `all`, `param` (KEY=VALUE strings), `file` (YAML parameter files), `profile`,
            `runs_dir`, `progress`, `jobs`, `seeds` ("0,1,2" or None) and `summary` (a JSON path
            or None).

    Returns:
        The exit status: 0 when every paper ran, every claim held and every control failed its
        claim (on every seed), 1 otherwise.

    Raises:
        PaperError: names and --all both or neither given, --jobs below 1, --seeds malformed or
            given together with -p seed=..., an unknown paper or
            parameter, or a value of the wrong type or outside its declared range or choices.
    """
    available = registry.discover()
    if args.all == bool(args.names):
        raise registry.PaperError("give paper names or --all (not both)")
    if args.jobs < 1:
        raise registry.PaperError(f"--jobs must be at least 1, got {args.jobs}")
    names = list(available) if args.all else args.names
    chosen = [registry.get_paper(n, available) for n in names]
    overrides = {}
    for path in args.file or []:
        overrides.update(registry.load_parameter_file(path))
    overrides.update(registry.parse_assignments(args.param or []))
    # validate every request before executing anything
    seeds = _parse_seeds(args.seeds, overrides)
    plans = [(paper, registry.resolve_parameters(paper, dict(overrides, **({"seed": s} if s is not None else {})),
                                                 args.profile))
             for paper in chosen for s in (seeds or [None])]
    runs_dir = Path(args.runs_dir) if args.runs_dir else registry.repo_root() / "runs"
    runner.cleanup_stale_temporaries(runs_dir)
    t0 = time.perf_counter()
    results = _run_plans(plans, runs_dir, args.progress, min(args.jobs, len(plans)))
    if len(results) > 1:
        print()
        rows = [[r.paper, "ok" if r.ok else "FAILED", _claims_cell(r), f"{r.seconds:.1f} s", str(r.path)]
                for r in results]
        print(_table(rows, ["paper", "status", "claims", "time", "run directory"]))
        failed = sum(not r.ok for r in results)
        bad_claims = sum(not c.passed for r in results for c in r.claims)
        print(f"\npapers: {len(results) - failed} ran, {failed} failed; claims: "
              f"{sum(c.passed for r in results for c in r.claims)} held, {bad_claims} did not; "
              f"{time.perf_counter() - t0:.0f} s")
    if seeds:
        print("\nclaims and controls by seed (margin: the smallest distance inside the claim over the "
              "seeds; for a control, how far it stays outside, negative):\n" + _seed_table(results, seeds))
    if args.summary:
        _write_summary(Path(args.summary), results)
    return 0 if all(r.ok and r.claims_ok for r in results) else 1


def _parse_seeds(text: str | None, overrides: dict) -> list[int] | None:
    """`--seeds 0,1,2` as a list of distinct ints (None when not given)."""
    if text is None:
        return None
    if "seed" in overrides:
        raise registry.PaperError("give the seed with --seeds or with -p seed=..., not both")
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise registry.PaperError(f"--seeds takes comma-separated integers such as 0,1,2, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise registry.PaperError(f"--seeds takes distinct non-negative integers such as 0,1,2, got {text!r}")
    return seeds


def _write_summary(path: Path, results) -> None:
    """Every run's paper, seed, status, time, directory and checked claims and controls as JSON."""
    import json

    rows = []
    for r in results:
        manifest = r.path / "manifest.json"
        seed = json.loads(manifest.read_text()).get("seed") if manifest.exists() else None
        rows.append({"paper": r.paper, "seed": seed, "ok": r.ok, "seconds": round(r.seconds, 1),
                     "path": str(r.path), "claims": [c.__dict__ for c in r.claims]})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(rows, indent=2, default=str) + "\n")
    tmp.replace(path)


def cmd_lab(args) -> int:
    """`workbench lab copies | reset [NAME...] | save NAME`: manage the JupyterLab working copies.

    Args:
        args: the parsed command line (`argparse.Namespace` from `build_parser`); `args.lab_command`
            is "copies", "reset" (with `args.names`, empty for all) or "save" (with `args.name`).

    Returns:
        The exit status: 0 on success.
    """
    from workbench.run import lab

    if args.lab_command == "copies":
        lab.prepare_copies()
    elif args.lab_command == "reset":
        lab.reset_copies(args.names)
    else:
        print(f"saved lab/{args.name}.py -> {lab.save_copy(args.name)} (and its .ipynb)")
    return 0


def cmd_workshop(args) -> int:
    """`workbench workshop`: record the papers, write their pages to `workshop/` and, with
    `--serve`, serve them with voila, saying when the workshop is ready.

    Args:
        args: the parsed command line (`argparse.Namespace` from `build_parser`); `args.extra` holds
            flags passed on to voila.

    Returns:
        The exit status: 0 on success (after the server stops, with `--serve`).

    Raises:
        PaperError: a paper or parameter refused, or a recording that failed.
    """
    from workbench.run import workshop

    values = workshop.load_workshop_file(args.parameters) if args.parameters else None
    written = workshop.prepare_workshop(names=args.names, profile=args.profile, parameters=values,
                                        presentation=not args.all_output, preheat_panels=args.preheat_panels)
    folder = workshop.workshop_dir()
    print(f"workshop: {len(written)} pages in {folder}", flush=True)
    if args.check:
        failed = {}
        for name, check in workshop.check_pages(folder, [p.stem for p in written]).items():
            print(f"check {name}: " + (f"panel starts and runs; its kernel then holds {check.memory_mb:.0f} MB "
                                       f"({check.seconds:.0f} s)" if check.error is None
                                       else f"FAILED: {check.error}"), flush=True)
            if check.error is not None:
                failed[name] = check.error
        if failed:
            return 1
    if not args.serve:
        return 0
    cmd = workshop.voila_command(folder, args.ip, args.port, args.preheat, args.extra,
                                 pool_size=args.pool_size, cull_minutes=args.cull_minutes)
    return workshop.serve(cmd, folder, [p.stem for p in written], args.port,
                          args.pool_size if args.preheat else 0)


def _report(i: int, total: int, result) -> None:
    status = "ok" if result.ok else "FAILED"
    print(f"[{i}/{total}] {result.paper}: {status} in {result.seconds:.1f} s -> {result.path}", flush=True)
    for c in result.claims:
        mark = "pass" if c.passed else "FAIL"
        if c.is_control:
            print(f"    control {mark}: {c.metric} must fail {c.control_of} {c.claim} (value {_short(c.value)})"
                  + (f" - {c.reason}" if c.reason else ""), flush=True)
        else:
            print(f"    claim {mark}: {c.metric} {c.claim} (value {_short(c.value)})"
                  + (f" - {c.reason}" if c.reason else ""), flush=True)
    if not result.ok:
        print(f"    {result.error.splitlines()[-1] if result.error else ''}\n"
              f"    traceback: {result.path / 'error.txt'}", file=sys.stderr)


def _run_plans(plans, runs_dir: Path, progress: bool, jobs: int) -> list:
    """Run the papers, `jobs` at a time (each in its own worker process and kernel; the longest
    quick runs start first), reporting each as it ends; results in the order asked."""
    total = len(plans)
    if jobs <= 1:
        results = []
        for i, (paper, params) in enumerate(plans, 1):
            print(f"[{i}/{total}] {paper.name} ({params['profile']}) ...", flush=True)
            results.append(runner.run_paper(paper, params, runs_dir, progress=progress))
            _report(i, total, results[-1])
        return results
    import concurrent.futures
    import multiprocessing

    order = sorted(range(total), key=lambda i: -(plans[i][0].quick_seconds or 0))
    results = [None] * total
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context, initializer=runner.one_blas_thread) as pool:
        futures = {pool.submit(runner.run_paper, *plans[i], runs_dir, False): i for i in order}
        print(f"running {total} papers, {jobs} at a time ...", flush=True)
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            results[futures[future]] = future.result()
            _report(done, total, results[futures[future]])
    return results


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _claims_cell(result) -> str:
    if not result.claims:
        return "-"
    held = sum(c.passed for c in result.claims)
    controls = sum(c.is_control for c in result.claims)
    return (f"{held}/{len(result.claims)}" + (f" ({controls} controls)" if controls else "")
            + ("" if held == len(result.claims) else " FAILED"))


def _seed_table(results, seeds: list[int]) -> str:
    """Per paper, each claim and control (rows) at each seed (columns), and the smallest margin."""
    lines = []
    for name in dict.fromkeys(r.paper for r in results):
        runs = [r for r in results if r.paper == name]
        rows = {}
        for seed, run in zip(seeds, runs, strict=True):
            for c in run.claims:
                label = f"{c.metric} (control of {c.control_of})" if c.is_control else c.metric
                row = rows.setdefault(label, {"claim": ("must fail " if c.is_control else "") + c.claim, "cells": {}, "margins": []})
                row["cells"][seed] = ("" if c.passed else "FAIL ") + _short(_rounded(c.value))
                row["margins"].append(c.margin)
        table = [[label, row["claim"], *[row["cells"].get(s, "not run") for s in seeds],
                  _short(_rounded(_worst_margin(row["margins"], "must fail" in row["claim"])))]
                 for label, row in rows.items()]
        lines.append(f"{name}:\n" + _table(table, ["metric", "claim", *[f"seed {s}" for s in seeds], "margin"]))
    return "\n\n".join(lines)


def _worst_margin(margins, control: bool):
    """The margin nearest to failing: the smallest for a claim, the largest (least negative) for
    a control; None when any seed's value was not numeric."""
    if not margins or any(m is None for m in margins):
        return None
    return max(margins) if control else min(margins)


def _rounded(value):
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `python -m workbench` (subcommands list, describe, run, lab, workshop).

    Returns:
        An `argparse.ArgumentParser` whose subcommands set `func` to the `cmd_*` that handles them.
    """
    parser = argparse.ArgumentParser(prog="workbench", description="Run the workbench's paper notebooks.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every paper with its title and quick-profile time").set_defaults(func=cmd_list)
    d = sub.add_parser("describe", help="a paper's parameters: type, default, help")
    d.add_argument("name")
    d.set_defaults(func=cmd_describe)
    r = sub.add_parser("run", help="execute papers into runs/NAME/<time>-<hash>/")
    r.add_argument("names", nargs="*", metavar="NAME")
    r.add_argument("--all", action="store_true", help="run every paper")
    r.add_argument("-p", "--param", action="append", metavar="KEY=VALUE", help="override a parameter")
    r.add_argument("-f", "--file", action="append", metavar="PARAMS.yaml", help="parameters from a YAML file")
    r.add_argument("--profile", choices=registry.PROFILES, help="quick (CI-sized, the default) or full (paper-sized)")
    r.add_argument("--runs-dir", help="where run directories go (default: runs/ in the repository)")
    r.add_argument("--progress", action="store_true", help="show papermill's per-cell progress bar")
    r.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="run N papers at a time, each in its own process (default 1)")
    r.add_argument("--seeds", metavar="S,S,...",
                   help="run each paper once per seed (for example 0,1,2) and tabulate every claim by seed")
    r.add_argument("--summary", metavar="FILE.json", help="also write every run's claims and controls to this JSON file")
    r.set_defaults(func=cmd_run)
    lab_parser = sub.add_parser("lab", help="JupyterLab working copies of the papers (lab/)")
    lab_sub = lab_parser.add_subparsers(dest="lab_command", required=True)
    lab_sub.add_parser("copies", help="create or refresh the lab/ working copies")
    reset = lab_sub.add_parser("reset", help="discard lab/ working copies (all, or the papers named)")
    reset.add_argument("names", nargs="*", metavar="NAME")
    save = lab_sub.add_parser("save", help="make the lab copy of a paper the committed paper")
    save.add_argument("name")
    lab_parser.set_defaults(func=cmd_lab)
    shop = sub.add_parser("workshop", help="record the papers, write their pages to workshop/ and serve them")
    shop.add_argument("names", nargs="*", metavar="NAME")
    shop.add_argument("--profile", default="quick", choices=registry.PROFILES)
    shop.add_argument("--parameters", metavar="FILE",
                      help="YAML: the day's values per paper ({paper: {parameter: value}}); its papers are "
                           "served when no NAME is given")
    shop.add_argument("--serve", action="store_true", help="then serve them with voila")
    shop.add_argument("--ip", default="127.0.0.1", help="address to listen on (0.0.0.0: every network)")
    shop.add_argument("--port", type=int, default=8866)
    shop.add_argument("--preheat", action="store_true", help="keep kernels with the page executed ready per paper")
    shop.add_argument("--pool-size", type=int, default=1, help="preheated kernels per paper (with --preheat)")
    shop.add_argument("--preheat-panels", action="store_true",
                      help="preheated kernels start their panel too (memory: the panel's, per kernel)")
    shop.add_argument("--cull-minutes", type=float, default=10,
                      help="shut down kernels of closed pages idle this long (0: never)")
    shop.add_argument("--check", action="store_true",
                      help="start and run every page's panel once, as a rehearsal, before serving")
    shop.add_argument("--all-output", action="store_true",
                      help="show every recorded output (raw dicts, logs, warnings) instead of the participants' view")
    shop.set_defaults(func=cmd_workshop)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` and run the subcommand; a `PaperError` becomes a message and status 2.

    Only `workshop` accepts flags it does not know (they are passed to voila); for any other
    subcommand an unknown flag is argparse's usage error.

    Args:
        argv: the arguments after the program name; None reads `sys.argv[1:]`.

    Returns:
        The exit status: 0 on success, 1 when a paper failed or a claim did not hold, 2 for an
        invalid request.

    Raises:
        SystemExit: from argparse, with status 2 and a usage message, for a malformed command line
            (and status 0 for `--help`).
    """
    args, extra = build_parser().parse_known_args(argv)
    if extra and args.command != "workshop":  # only voila takes flags of its own
        build_parser().parse_args(argv)  # exits with argparse's message for the unknown flags
    args.extra = extra
    try:
        return args.func(args)
    except registry.PaperError as err:
        print(f"workbench: error: {err}", file=sys.stderr)
        return 2

