"""A class arriving at once: N browser tabs open the same workshop page together.

Serves a prepared workshop (`workbench.run.workshop`, recorded first and not timed) with voila,
then opens N tabs of one paper at the same moment in headless Chromium (one browser context per
tab, as N participants), and measures for each tab:
- `page_s`: from opening until the page is usable: its text and recorded figures shown and either
  the "Start the panel" button enabled or (a preheated kernel) the live panel's button;
- `panel_s`: from opening until the live panel's action button is enabled, when every participant
  clicks "Start the panel" once every tab shows its page (the worst case: all setups at once);
  with `--spread S` the tabs arrive evenly over S seconds instead, each clicks as soon as it can,
  and both times count from the tab's own arrival;
and the memory of voila's kernels (resident set size from /proc): once every page is shown and
again once every panel is live. Runs 1, 6 and 20 tabs without and with preheating by default.

The browser runs on the same machine as the server here, so its tabs take CPU from the kernels (in
a class each participant's browser runs on their own machine); `--http-tabs` also requests the page
N times at once without a browser, the server's share alone.

Usage: .venv/bin/python benchmarks/bench_workshop_class.py [--paper hessian_spectrum]
       [--tabs 1 6 20] [--preheat off on] [--pool-size 20] [--http-tabs 20] [--shots DIR]
Writes benchmarks/results/workshop_class.{json,md}. Needs Debian's chromium and playwright (the
dev extra) and voila (the workshop extra). Times depend on the machine and its load: the record
says which machine and what else ran.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
ACTION = "button.jupyter-button, button.widget-button"
START = "Start the panel"
TAB_TIMEOUT_MS = 240_000  # a tab not usable by then is recorded as failed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def kernel_memory(server_pid: int) -> dict:
    """RSS of each kernel process under the voila server (ipykernel launchers), and of voila."""
    kernels = []
    for pid in descendants(server_pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "ipykernel" in cmd:
            kernels.append(rss_mb(pid))
    return {"kernels": len(kernels), "total_mb": round(sum(kernels), 1),
            "per_kernel_mb_median": round(statistics.median(kernels), 1) if kernels else None,
            "per_kernel_mb_max": round(max(kernels), 1) if kernels else None,
            "voila_mb": round(rss_mb(server_pid), 1)}


async def open_tab(browser, url: str, start: float, shots: Path | None, index: int) -> dict:
    context = await browser.new_context(viewport={"width": 1300, "height": 900})
    page = await context.new_page()
    await page.goto(url, timeout=600_000, wait_until="commit")
    result = {"context": context, "page": page, "index": index}
    # usable: the first action button enabled (start button or a preheated live panel's)
    try:
        await page.wait_for_function(
            "(sel) => [...document.querySelectorAll(sel)].some(b => !b.disabled && b.offsetParent !== null)",
            arg=ACTION, timeout=TAB_TIMEOUT_MS, polling=100)
    except Exception:  # a tab that never became usable is a finding: kept, with what it showed
        result.update(failed="page", page_s=None, preheated=False, shown=(await page.inner_text("body"))[-400:])
        if shots is not None:
            await page.screenshot(path=str(shots / f"failed-tab-{index}.png"), full_page=True)
        return result
    result["page_s"] = time.perf_counter() - start
    start_button = page.get_by_role("button", name=START)
    result["preheated"] = await start_button.count() == 0
    if shots is not None and index == 0:
        await page.screenshot(path=str(shots / "page.png"))
    return result


async def start_panel(result: dict, start: float, shots: Path | None, index: int) -> dict:
    if result.get("failed"):
        result["panel_s"] = None
        return result
    page = result["page"]
    buttons = page.locator(ACTION)
    start_button = page.get_by_role("button", name=START)
    if not result["preheated"]:
        await start_button.first.click()
    try:
        await page.wait_for_function(
            "([sel, start]) => [...document.querySelectorAll(sel)].some(b => !b.disabled && b.offsetParent !== null"
            " && !b.innerText.includes(start) && !/clear/i.test(b.innerText))",
            arg=[ACTION, START], timeout=TAB_TIMEOUT_MS, polling=100)
    except Exception:
        result.update(failed="panel", panel_s=None, shown=(await page.inner_text("body"))[-400:])
        if shots is not None:
            await page.screenshot(path=str(shots / f"failed-panel-{index}.png"), full_page=True)
        return result
    result["panel_s"] = time.perf_counter() - start
    if shots is not None and index == 0:
        run = [b for b in await buttons.all() if START not in await b.inner_text()
               and "clear" not in (await b.inner_text()).lower()][0]
        await run.scroll_into_view_if_needed()
        await page.screenshot(path=str(shots / "panel-live.png"))
    return result


async def arrive_later(browser, url: str, delay: float, shots: Path | None, index: int) -> dict:
    """One participant arriving `delay` seconds after the first: opens the page, clicks Start as
    soon as it can; times from its own arrival."""
    await asyncio.sleep(delay)
    start = time.perf_counter()
    result = await open_tab(browser, url, start, shots, index)
    return await start_panel(result, start, shots, index)


async def class_arrives(base: str, paper: str, tabs: int, server_pid: int, shots: Path | None,
                        spread: float = 0.0) -> dict:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=os.environ.get("WORKBENCH_CHROMIUM", "/usr/bin/chromium"),
                                          headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"])
        start = time.perf_counter()
        url = f"{base}/voila/render/{paper}.ipynb"
        if spread > 0:  # arrivals spread evenly over `spread` seconds, each starting its panel at once
            results = await asyncio.gather(*(arrive_later(browser, url, i * spread / tabs, shots, i)
                                             for i in range(tabs)))
            pages_memory = {"kernels": None, "total_mb": None, "per_kernel_mb_median": None}
        else:
            results = await asyncio.gather(*(open_tab(browser, url, start, shots, i) for i in range(tabs)))
            pages_memory = kernel_memory(server_pid)  # every page shown, no panel started by a participant
            await asyncio.gather(*(start_panel(r, start, shots, i) for i, r in enumerate(results)))
        memory = kernel_memory(server_pid)
        for r in results:
            r.pop("page")
            await r.pop("context").close()
        await browser.close()
    failures = [{k: r[k] for k in ("index", "failed", "shown")} for r in results if r.get("failed")]
    page_s = sorted(r["page_s"] for r in results if r["page_s"] is not None) or [float("nan")]
    panel_s = sorted(r["panel_s"] for r in results if r["panel_s"] is not None) or [float("nan")]
    return {"tabs": tabs, "spread_s": spread, "failures": failures,
            "page_s_median": round(statistics.median(page_s), 2), "page_s_max": round(page_s[-1], 2),
            "panel_s_median": round(statistics.median(panel_s), 2), "panel_s_max": round(panel_s[-1], 2),
            "preheated_tabs": sum(r["preheated"] for r in results), "memory_with_pages": pages_memory,
            "memory_with_panels": memory}


def server_side(base: str, paper: str, tabs: int, server_pid: int) -> dict:
    """N plain HTTP requests of the page at once, no browser: the seconds until voila has sent each
    whole page (kernel started, every cell run), i.e. the server's share of a class arriving when
    the participants' browsers run on their own machines."""
    import concurrent.futures

    def fetch(_):
        with urllib.request.urlopen(f"{base}/voila/render/{paper}.ipynb", timeout=600) as response:
            body = response.read()
        return time.perf_counter() - start, len(body)

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(tabs) as pool:
        done = list(pool.map(fetch, range(tabs)))
    seconds = sorted(d[0] for d in done)
    return {"tabs": tabs, "served_s_median": round(statistics.median(seconds), 2), "served_s_max": round(seconds[-1], 2),
            "page_mb": round(statistics.median(d[1] for d in done) / 1e6, 2), "memory": kernel_memory(server_pid)}


def serve(folder: Path, port: int, preheat: bool, pool_size: int, log: Path):
    from workbench.run import workshop

    cmd = workshop.voila_command(folder, port=port, preheat=preheat, pool_size=pool_size)
    proc = subprocess.Popen(cmd, env=workshop.voila_environment(folder), stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            return proc
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"voila did not answer; see {log}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paper", default="hessian_spectrum")
    parser.add_argument("--tabs", type=int, nargs="+", default=[1, 6, 20])
    parser.add_argument("--preheat", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--pool-size", type=int, default=1)
    parser.add_argument("--preheat-panels", action="store_true",
                        help="preheated kernels start their panel too (`workshop --preheat-panels`)")
    parser.add_argument("--spread", type=float, default=0.0,
                        help="arrivals spread evenly over this many seconds (each tab timed from its arrival) "
                             "instead of all at once")
    parser.add_argument("--http-tabs", type=int, nargs="*", default=[20],
                        help="also request the page this many times at once without a browser")
    parser.add_argument("--folder", type=Path, default=REPO / "workshop-bench")
    parser.add_argument("--shots", type=Path, default=None)
    parser.add_argument("--out", default="workshop_class")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from workbench.run import workshop

    workshop.prepare_workshop(args.folder, [args.paper], preheat_panels=args.preheat_panels)  # recorded once
    rows, http_rows = [], []
    for preheat in args.preheat:
        for tabs in args.tabs:
            port = free_port()
            log = args.folder / f"voila-{preheat}-{tabs}.log"
            proc = serve(args.folder, port, preheat == "on", args.pool_size, log)
            try:
                if preheat == "on":  # the teacher waits for the readiness line before the class comes
                    t0 = time.perf_counter()
                    ready = workshop.wait_for_pool(args.folder, [args.paper], args.pool_size, echo=lambda _: None,
                                                   poll_seconds=0.5, stalled_seconds=60)
                    preheat_s = time.perf_counter() - t0
                idle = kernel_memory(proc.pid)
                shots = None
                if args.shots is not None:
                    shots = args.shots / f"{args.paper}-{tabs}-preheat-{preheat}"
                    shots.mkdir(parents=True, exist_ok=True)
                row = asyncio.run(class_arrives(f"http://127.0.0.1:{port}", args.paper, tabs, proc.pid, shots,
                                                args.spread))
                row.update(preheated_ready=ready if preheat == "on" else 0,
                           preheat=preheat + (" with panels" if preheat == "on" and args.preheat_panels else ""),
                           pool_size=args.pool_size if preheat == "on" else 0,
                           memory_before_class=idle, preheat_s=round(preheat_s, 1) if preheat == "on" else None)
                rows.append(row)
                print(json.dumps(row), flush=True)
            finally:
                os.killpg(proc.pid, 15)
                proc.wait()
        for tabs in args.http_tabs:
            port = free_port()
            proc = serve(args.folder, port, preheat == "on", args.pool_size, args.folder / f"voila-http-{preheat}-{tabs}.log")
            try:
                if preheat == "on":
                    workshop.wait_for_pool(args.folder, [args.paper], args.pool_size, echo=lambda _: None,
                                           poll_seconds=0.5, stalled_seconds=60)
                row = server_side(f"http://127.0.0.1:{port}", args.paper, tabs, proc.pid)
                row.update(preheat=preheat, pool_size=args.pool_size if preheat == "on" else 0)
                http_rows.append(row)
                print(json.dumps(row), flush=True)
            finally:
                os.killpg(proc.pid, 15)
                proc.wait()
    record = {"paper": args.paper, "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "load_before": os.getloadavg(), "rows": rows, "server_side": http_rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(record, indent=2) + "\n")
    when = f"arriving over {args.spread:g} s, each timed from its arrival" if args.spread else "at once"
    lines = [f"# A class opening `{args.paper}` {when} ({os.cpu_count()} cores)", "",
             "| tabs | preheat (pool) | failed tabs | page usable s (median / max) | panel live s (median / max) | "
             "kernels | MB per kernel, pages only (median) | MB per kernel, panels live (median / max) | "
             "total MB, pages only | total MB, panels live |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m, q = r["memory_with_panels"], r["memory_with_pages"]
        lines.append(f"| {r['tabs']} | {r['preheat']} ({r['pool_size']}) | {len(r['failures'])} | "
                     f"{r['page_s_median']} / {r['page_s_max']} | "
                     f"{r['panel_s_median']} / {r['panel_s_max']} | {m['kernels']} | {q['per_kernel_mb_median']} | "
                     f"{m['per_kernel_mb_median']} / {m['per_kernel_mb_max']} | {q['total_mb']} | {m['total_mb']} |")
    lines += ["", "Server side only (plain HTTP requests at once, no browser on this machine):", "",
              "| requests | preheat (pool) | whole page sent s (median / max) | page MB | kernels | total MB |",
              "|---|---|---|---|---|---|"]
    for r in http_rows:
        lines.append(f"| {r['tabs']} | {r['preheat']} ({r['pool_size']}) | {r['served_s_median']} / {r['served_s_max']} | "
                     f"{r['page_mb']} | {r['memory']['kernels']} | {r['memory']['total_mb']} |")
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
