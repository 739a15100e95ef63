"""Claims: what a paper asserts about its metrics, checked after every run.

The header's `claims` maps a metric name (a key of `metrics.json`) to what the paper asserts
about it: ">0.95", "<0.01", ">=1", "<=0", a range [lo, hi], or per profile
`{quick: ..., full: ...}`; "a/b" names the entry b of a nested metric a. A list-valued metric
must satisfy the claim in every entry; a missing or non-finite metric fails its claim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

PROFILES = ("quick", "full")


class PaperError(ValueError):
    """A paper, parameter or run request that cannot be honoured; the message says why."""


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
        """This claim checked against a run's `metrics` (the content of its `metrics.json`)."""
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
    """One checked claim: the metric, the claim as written, the value found (None when missing),
    whether it held, and why not ("metric not recorded", "metric is not numeric", "outside the
    claim"; empty when it held)."""

    metric: str
    claim: str
    value: Any
    passed: bool
    reason: str = ""


def parse_claims(raw: Any, where: str) -> tuple[Claim, ...]:
    """The header's `claims` mapping as Claims, each validated before anything runs.

    Args:
        raw: the `claims` value of a paper's jupytext header: a mapping of metric name to a claim
            (">x", "<x", ">=x", "<=x", [lo, hi]) or to `{quick: claim, full: claim}`; None for a
            paper without claims.
        where: where `raw` comes from (the notebook path), named in error messages.

    Returns:
        One `Claim` per metric and profile it applies to; an empty tuple when `raw` is None.

    Raises:
        PaperError: `raw` is not a mapping, names an unknown profile, or a claim is malformed.
    """
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


def check_claims(claims: tuple[Claim, ...], profile: str, metrics: dict[str, Any]) -> list[ClaimResult]:
    """Every claim of `claims` that applies to `profile`, checked against `metrics`.

    Args:
        claims: the paper's claims (`Paper.claims`).
        profile: the profile the run used, "quick" or "full"; claims of the other profile are
            skipped.
        metrics: the run's metrics (the content of its `metrics.json`; nested dicts allowed).

    Returns:
        One `ClaimResult` per applicable claim, in the order of `claims`.
    """
    return [c.check(metrics) for c in claims if profile in c.profiles]
