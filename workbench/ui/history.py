"""What a panel keeps of its runs: figure thumbnails, the problems a run has, warnings in plain
words, the history table and its CSV download."""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from numbers import Real
from typing import Any

THUMBNAIL_HEIGHT = 90  # px on the page; the PNG has twice as many rows, sharp on HiDPI screens

# An absolute path (POSIX, or Windows with a drive letter): at least two segments, not inside a
# word, so "2/lr" or "km/h" stay.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.])(?:/[\w.\-]+){2,}|\b[A-Za-z]:\\(?:[\w.\-]+\\)*[\w.\-]+")


def figure_png(fig: Any) -> str:
    """A base64 PNG thumbnail of a matplotlib figure, `2 * THUMBNAIL_HEIGHT` pixels high with the
    figure's aspect ratio.

    Call it before the figure is displayed: the inline backend's display draws it again with a
    tight bounding box and may close it, and what is left is not what was shown. No tight
    bounding box here either: a second layout pass, too slow for a live panel.

    Args:
        fig: a matplotlib `Figure`.

    Returns:
        The PNG, base64-encoded.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=2 * THUMBNAIL_HEIGHT / fig.get_figheight())
    return base64.b64encode(buf.getvalue()).decode("ascii")


def non_finite(numbers: Mapping[str, Any]) -> str | None:
    """Which headline numbers are NaN or infinite, as a clause, or None when all are finite.

    Args:
        numbers: the headline numbers by label (non-numbers are skipped).

    Returns:
        e.g. "the final loss is not finite", or None.
    """
    bad = [k for k, v in numbers.items() if isinstance(v, Real) and not math.isfinite(v)]
    if not bad:
        return None
    return f"the {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not finite"


def plain_warnings(caught: Iterable[Any]) -> list[str]:
    """The messages of recorded warnings, each once, without category or file paths.

    Args:
        caught: `warnings.WarningMessage`s (from `warnings.catch_warnings(record=True)`).

    Returns:
        The distinct messages in order of first appearance, any absolute path in them reduced to
        its file name.
    """
    messages = (_ABSOLUTE_PATH.sub(lambda m: re.split(r"[/\\]", m.group())[-1], str(c.message)) for c in caught)
    return list(dict.fromkeys(messages))


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _columns(history: Sequence[Mapping]) -> tuple[list[str], list[str]]:
    """The argument names (of the newest run) and the headline labels (of any run)."""
    return list(history[0]["values"]), list(dict.fromkeys(k for h in history for k in h["numbers"]))


def history_table(history: Sequence[Mapping], labels: Mapping[str, str]) -> str:
    """The history as an HTML table, newest first; a run with a problem is marked ⚠ and tinted.

    Args:
        history: the panel's entries ("values", "numbers", "seconds", "figure", "problem").
        labels: the column header of each argument name (the control's label).

    Returns:
        HTML, or "" for an empty history.
    """
    if not history:
        return ""
    params, numbers = _columns(history)
    head = "".join(f"<th>{html.escape(c)}</th>"
                   for c in ["", *(labels.get(p, p) for p in params), *numbers, "time (s)", "figure"])
    rows = []
    for h in history:
        cells = [h["values"].get(p, "") for p in params] + [h["numbers"].get(k, "") for k in numbers]
        img = (f"<img src='data:image/png;base64,{h['figure']}' alt='figure of this run'"
               f" style='height:{THUMBNAIL_HEIGHT}px;width:auto'>" if h["figure"] else "")
        problem = h.get("problem")
        mark = f"<td title='{html.escape(problem, quote=True)}'>⚠</td>" if problem else "<td></td>"
        style = " class='wb-flagged' style='background:#fff0e0'" if problem else ""
        rows.append(f"<tr{style}>{mark}" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in cells)
                    + f"<td>{h['seconds']:.1f}</td><td>{img}</td></tr>")
    return ("<details open><summary>earlier results (newest first)</summary>"
            "<table style='border-collapse:collapse' border='1' cellpadding='3'>"
            f"<tr>{head}</tr>{''.join(rows)}</table></details>")


def history_csv(history: Sequence[Mapping], labels: Mapping[str, str]) -> str:
    """The history as CSV: one row per run, newest first, headed by the controls' labels, the
    headline numbers, the finishing time, the duration and the problem (empty when fine).

    Args:
        history: the panel's entries.
        labels: the column header of each argument name.

    Returns:
        The CSV text (just the header when the history is empty).
    """
    params, numbers = _columns(history) if history else ([], [])
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([*(labels.get(p, p) for p in params), *numbers, "finished at", "time (s)", "problem"])
    for h in history:
        writer.writerow([*(h["values"].get(p, "") for p in params), *(h["numbers"].get(k, "") for k in numbers),
                         h.get("finished", ""), f"{h['seconds']:.2f}", h.get("problem") or ""])
    return buf.getvalue()


def download_link(text: str, filename: str) -> str:
    """An HTML link that saves `text` as a CSV file, with no server round trip (a data URL).

    Args:
        text: the CSV text.
        filename: the name the browser saves it under.

    Returns:
        An `<a download>` element.
    """
    data = base64.b64encode(text.encode("utf-8")).decode("ascii")
    return (f"<a download='{html.escape(filename, quote=True)}' href='data:text/csv;base64,{data}'>"
            "⬇ download these results (CSV)</a>")
