"""Claims: what a paper asserts about its metrics, checked after every run.

The header's `claims` maps a metric name (a key of `metrics.json`) to what the paper asserts
about it: ">0.95", "<0.01", ">=1", "<=0", a range [lo, hi], or per profile
`{quick: ..., full: ...}`; "a/b" names the entry b of a nested metric a. A list-valued metric
must satisfy the claim in every entry; a missing or non-finite metric fails its claim.

The header's `controls` maps the metric of a broken or trivial variant (a one-node SLQ, random
scores, a schedule that is not refined) to the claim it must FAIL: `{control_metric: claim_metric}`.
A control is checked like a claim and reported next to it; it holds when the control's value is
recorded, finite and outside the claim. A control that satisfies its claim means the claim cannot
tell the method from a broken one, and the run counts that as a failed claim.
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
        value, numbers, reason = self._numbers(metrics)
        if numbers is None:
            return ClaimResult(self.metric, str(self.spec), value, False, reason)
        ok = bool(numbers) and all(math.isfinite(v) and self._inside(v) for v in numbers)
        return ClaimResult(self.metric, str(self.spec), value, ok, "" if ok else "outside the claim",
                           margin=self._margin(numbers))

    def check_control(self, control_metric: str, metrics: dict[str, Any]) -> ClaimResult:
        """The control `control_metric` checked against this claim: it holds when the control's
        value is recorded, numeric, finite and fails the claim (some entry outside it)."""
        value, numbers, reason = Claim(control_metric, self.spec)._numbers(metrics)
        result = dict(metric=control_metric, claim=str(self.spec), value=value, control_of=self.metric)
        if numbers is None:
            return ClaimResult(passed=False, reason=reason.replace("metric", "control"), **result)
        if not numbers or not all(math.isfinite(v) for v in numbers):
            return ClaimResult(passed=False, reason="control is not finite", **result)
        ok = not all(self._inside(v) for v in numbers)
        return ClaimResult(passed=ok, reason="" if ok else "control satisfies the claim: the claim cannot "
                           "tell the method from a broken one", margin=self._margin(numbers), **result)

    def _numbers(self, metrics):
        value = _lookup(metrics, self.metric)
        if value is _MISSING:
            return None, None, "metric not recorded"
        values = value if isinstance(value, list) else [value]
        try:
            return value, [float(v) for v in values], ""
        except (TypeError, ValueError):
            return value, None, "metric is not numeric"

    def _inside(self, v: float) -> bool:
        lo, hi, lo_in, hi_in = self.bounds()
        return (v >= lo if lo_in else v > lo) and (v <= hi if hi_in else v < hi)

    def _margin(self, numbers: list[float]) -> float | None:
        """How far the value lies inside the claim (negative: outside), the worst entry of a list:
        the distance to the nearer bound, in the metric's units."""
        lo, hi, _, _ = self.bounds()
        gaps = [min(v - lo, hi - v) for v in numbers if math.isfinite(v)]
        return float(min(gaps)) if gaps and len(gaps) == len(numbers) else None


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
    """One checked claim or control: the metric, the claim as written, the value found (None when
    missing), whether it held, why not ("metric not recorded", "metric is not numeric", "outside
    the claim", "control satisfies the claim ..."; empty when it held), the margin (how far the
    value lies inside the claim, negative outside; None when not numeric) and, for a control, the
    metric of the claim it must fail (empty for a claim)."""

    metric: str
    claim: str
    value: Any
    passed: bool
    reason: str = ""
    margin: float | None = None
    control_of: str = ""

    @property
    def is_control(self) -> bool:
        """Whether this is a control (a broken variant that must fail `control_of`'s claim)."""
        return bool(self.control_of)


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


def parse_controls(raw: Any, claims: tuple[Claim, ...], where: str) -> dict[str, str]:
    """The header's `controls` mapping, validated against the paper's claims.

    Args:
        raw: `{control_metric: claim_metric}`: the metric of a broken or trivial variant and the
            metric of the claim it must fail; None for a paper without controls.
        claims: the paper's parsed claims (`parse_claims`).
        where: where `raw` comes from (the notebook path), named in error messages.

    Returns:
        The mapping as `{control_metric: claim_metric}` strings.

    Raises:
        PaperError: `raw` is not a mapping, or a control names a metric that has no claim.
    """
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise PaperError(f"{where}: controls must map a control's metric to the claim it must fail, got {raw!r}")
    known = {c.metric for c in claims}
    unknown = {str(k): str(v) for k, v in raw.items() if str(v) not in known}
    if unknown:
        raise PaperError(f"{where}: controls name metrics without a claim: {unknown} (claims: {sorted(known)})")
    return {str(k): str(v) for k, v in raw.items()}


def check_controls(controls: dict[str, str], claims: tuple[Claim, ...], profile: str,
                   metrics: dict[str, Any]) -> list[ClaimResult]:
    """Every control whose claim applies to `profile`, checked against `metrics`.

    Args:
        controls: the paper's controls (`Paper.controls`, `{control_metric: claim_metric}`).
        claims: the paper's claims.
        profile: the profile the run used.
        metrics: the run's metrics.

    Returns:
        One `ClaimResult` (with `control_of` set) per control and applicable claim; `passed` is
        True when the control failed the claim, as it must.
    """
    return [claim.check_control(control, metrics) for control, target in controls.items()
            for claim in claims if claim.metric == target and profile in claim.profiles]
