"""The paper registry: papers, their typed parameters and profiles, validated before anything runs.

A paper is a notebook pair `notebooks/NAME.py` (jupytext percent, the source) + `NAME.ipynb`.
Its jupytext header carries `workbench: {title, quick_seconds, full: {param: value}, claims: {...}}`
(claims: `workbench.run.claims`), and its cell tagged `parameters` declares typed defaults
(`name: type = default  # help; in ALLOWED`), which are the quick profile. Running a paper is
`workbench.run.runner`.

`ALLOWED`, at the end of a parameter's comment, says which values it takes (`Allowed`): an
interval `[1, inf)`, `(0, 1]`, `[-1, 1]` (square brackets closed, round ones open, `inf` and
`-inf` as ends) or a set of choices `{dense, srht, affd}` (items with commas or colons in double
quotes). A list parameter's declaration applies to every entry; a bool needs none. Every value a
run gets (defaults, the full profile, `-p` and `-f` overrides) is checked against it before
anything runs.
"""

from __future__ import annotations

import ast
import csv
import difflib
import hashlib
import io
import json
import math
import os
import re
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from workbench.run.claims import PROFILES, Claim, PaperError, parse_claims, parse_controls

SCALAR_TYPES = {"int": int, "float": float, "str": str, "bool": bool}
LIST_TYPES = {f"list[{t}]": t for t in SCALAR_TYPES if t != "bool"}
REQUIRED_PARAMETERS = ("seed", "profile", "interactive")


@dataclass(frozen=True)
class Allowed:
    """The values a parameter takes: the interval from `low` to `high` (each end closed or open,
    either may be infinite) or, when `choices` is not None, exactly those values. `text` is the
    declaration as written (`[1, inf)`, `{quick, full}`)."""

    text: str
    low: float = -math.inf
    high: float = math.inf
    low_closed: bool = False
    high_closed: bool = False
    choices: tuple | None = None

    def admits(self, value: Any) -> bool:
        """Whether one (scalar) value is allowed.

        Args:
            value: a value of the parameter's (scalar) type.

        Returns:
            True when `value` is one of `choices`, or lies in the interval.
        """
        if self.choices is not None:
            return value in self.choices
        above = value >= self.low if self.low_closed else value > self.low
        below = value <= self.high if self.high_closed else value < self.high
        return bool(above and below)


@dataclass(frozen=True)
class Parameter:
    """One typed parameter of a paper: its name, type name ("int", "list[float]", ...), quick-profile
    default (already of that type), the help text from its comment and the values it takes
    (`Allowed`, from the comment's trailing `in ...`; None when not declared)."""

    name: str
    type: str
    default: Any
    help: str
    allowed: Allowed | None = None


@dataclass(frozen=True)
class Paper:
    """A paper: its name (the notebook's stem), title, jupytext source, the expected quick-run time
    in seconds (None when unknown), the full profile's overrides, its parameters, its claims and
    controls, and a one-line summary for listings (empty when the title carries one after " - ")."""

    name: str
    title: str
    source: Path
    quick_seconds: float | None
    full: dict[str, Any]
    parameters: dict[str, Parameter] = field(repr=False)
    claims: tuple[Claim, ...] = ()
    controls: dict[str, str] = field(default_factory=dict)
    summary: str = ""


# ----------------------------------------------------------------------------- discovery


def repo_root() -> Path:
    """The repository's root folder (the one holding `workbench/` and `notebooks/`).

    Returns:
        The absolute path of the root of the checkout this package was imported from.
    """
    return Path(__file__).resolve().parents[2]


def notebooks_dir() -> Path:
    """The folder the papers are read from.

    Returns:
        `$WORKBENCH_NOTEBOOKS` if set (tests point it at a folder of their own), else the
        repository's `notebooks/`.
    """
    return Path(os.environ.get("WORKBENCH_NOTEBOOKS") or repo_root() / "notebooks")


# the comment's trailing declaration: "in [lo, hi)" (any brackets) or "in {a, b}", after "; " or
# at the start of the comment
_ALLOWED = re.compile(r"(?:^|[;,]?\s+)in\s+([\[(][^\[\]()]*[\])]|\{[^{}]*\})\s*$")


def parse_allowed(name: str, type_name: str, text: str) -> Allowed:
    """A declaration of allowed values, `[lo, hi]`/`(lo, hi)`/mixed or `{a, b, ...}`, for one parameter.

    Args:
        name: the parameter's name, used in error messages.
        type_name: its declared type (a key of `SCALAR_TYPES` or `LIST_TYPES`); a list's
            declaration applies to each entry, so choices are read as the entry type.
        text: the declaration, e.g. "[1, inf)", "(0, 1]", "{quick, full}" or
            '{"a, b", c}' (double quotes around items holding commas).

    Returns:
        The `Allowed` values.

    Raises:
        PaperError: malformed declaration, an end that is not a number, an empty interval,
            an interval on a str or bool parameter, or a choice not of the parameter's type.
    """
    scalar = LIST_TYPES.get(type_name, type_name)
    if text.startswith("{"):
        items = next(csv.reader([text[1:-1]], skipinitialspace=True), [])
        items = [item.strip() for item in items if item.strip()]
        if not items:
            raise PaperError(f"parameter {name!r}: empty set of choices {text}")
        return Allowed(text, choices=tuple(coerce(name, scalar, item) for item in items))
    if scalar not in ("int", "float"):
        raise PaperError(f"parameter {name!r} is {type_name}: declare a set of choices, not {text}")
    ends = text[1:-1].split(",")
    try:
        low, high = (float(end.strip()) for end in ends)
    except ValueError:
        raise PaperError(f"parameter {name!r}: expected an interval such as [0, 1] or (0, inf), "
                         f"got {text}") from None
    if math.isnan(low) or math.isnan(high) or low > high:
        raise PaperError(f"parameter {name!r}: empty interval {text}")
    return Allowed(text, low, high, text[0] == "[" and math.isfinite(low),
                   text[-1] == "]" and math.isfinite(high))


def check_allowed(param: Parameter, value: Any) -> None:
    """Refuse a value outside a parameter's declared range or choices (every entry of a list).

    Args:
        param: the parameter, with its `allowed` declaration (None: nothing to check).
        value: a value already of the parameter's type (see `coerce`).

    Raises:
        PaperError: `value` (or an entry of it) is not allowed; the message names the parameter,
            the value and the allowed range or choices.
    """
    if param.allowed is None:
        return
    entries = value if param.type in LIST_TYPES else [value]
    bad = [v for v in entries if not param.allowed.admits(v)]
    if not bad:
        return
    what = f"one of {param.allowed.text}" if param.allowed.choices is not None else f"in {param.allowed.text}"
    if param.type in LIST_TYPES:
        raise PaperError(f"parameter {param.name!r}: every entry must be {what}, got {bad[0]!r} in {value!r}")
    raise PaperError(f"parameter {param.name!r} must be {what}, got {value!r}")


def parse_parameters(cell_source: str, where: str = "parameters cell") -> dict[str, Parameter]:
    """Read the `name: type = default  # help; in ALLOWED` lines of a paper's parameters cell.

    Args:
        cell_source: the source of the cell tagged `parameters`; every statement must be an
            annotated assignment of a literal, with a type of `SCALAR_TYPES` or `LIST_TYPES`;
            the comment may end with a declaration of the values allowed (`parse_allowed`).
        where: what to call the cell in error messages (default "parameters cell").

    Returns:
        The parameters by name, in the order declared, defaults coerced to their types.

    Raises:
        PaperError: a statement that is not `name: type = literal`, an unsupported type, a
            malformed declaration of allowed values, or a default outside it.
    """
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
        help_text, allowed = comments.get(node.lineno, ""), None
        match = _ALLOWED.search(help_text)
        if match:
            try:
                allowed = parse_allowed(name, type_name, match.group(1))
            except PaperError as err:
                raise PaperError(f"{where}: {err}") from None
            help_text = help_text[:match.start()].rstrip(" ;,")
        param = Parameter(name, type_name, coerce(name, type_name, default), help_text, allowed)
        try:
            check_allowed(param, param.default)
        except PaperError as err:
            raise PaperError(f"{where}: default of {err}") from None
        params[name] = param
    return params


def load_paper(source: Path) -> Paper:
    """Read one paper from its jupytext source and validate its header and parameters.

    Args:
        source: the notebook's `.py` (jupytext percent) file.

    Returns:
        The `Paper`, with its parameters, full-profile overrides and claims.

    Raises:
        PaperError: not exactly one `parameters` cell, a required parameter (`seed`, `profile`,
            `interactive`) missing, a full-profile override naming an unknown parameter, of the
            wrong type or outside its allowed values, or a malformed claim.
    """
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
    controls = parse_controls(meta.get("controls"), claims, str(source))
    paper = Paper(source.stem, meta.get("title", source.stem), source, meta.get("quick_seconds"), full,
                  params, claims, controls, str(meta.get("summary") or ""))
    unknown = [k for k in full if k not in params]
    if unknown:
        raise PaperError(f"{source}: full profile names unknown parameters {unknown}")
    for k, v in full.items():
        try:
            check_value(params[k], v)
        except PaperError as err:
            raise PaperError(f"{source}: full profile: {err}") from None
    return paper


def discover(folder: Path | None = None) -> dict[str, Paper]:
    """Every paper in a folder, by name.

    Args:
        folder: where the `NAME.py` sources are; None means `notebooks_dir()`.

    Returns:
        The papers by name, sorted by name.

    Raises:
        PaperError: a source in `folder` is not a valid paper (see `load_paper`).
    """
    folder = folder or notebooks_dir()
    return {p.stem: load_paper(p) for p in sorted(folder.glob("*.py"))}


def get_paper(name: str, papers: dict[str, Paper] | None = None) -> Paper:
    """The paper called `name`, or an error that suggests the closest name.

    Args:
        name: the paper's name (its notebook's stem).
        papers: the registry to look in, as `discover()` returns it; None discovers it anew.

    Returns:
        The `Paper`.

    Raises:
        PaperError: no paper has that name (the message lists them).
    """
    papers = papers if papers is not None else discover()
    if name not in papers:
        close = difflib.get_close_matches(name, papers, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise PaperError(f"no paper named {name!r}.{hint} Papers: {', '.join(papers)}")
    return papers[name]


# ----------------------------------------------------------------------------- parameters


def coerce(name: str, type_name: str, value: Any) -> Any:
    """`value` (a string from the command line or a YAML value) as the declared type, or an error.

    Strings are parsed ("1_000" as an int, "true"/"no" as a bool, "1,2" or "[1, 2]" as a list);
    bools are never taken for numbers, floats only for ints when integral, NaN never.

    Args:
        name: the parameter's name, used in error messages.
        type_name: its declared type, a key of `SCALAR_TYPES` or `LIST_TYPES` ("int", "list[float]").
        value: the value given.

    Returns:
        `value` as an `int`, `float`, `str`, `bool` or list of these.

    Raises:
        PaperError: `value` cannot be read as `type_name` (the message names the parameter).
    """

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


def check_value(param: Parameter, value: Any) -> Any:
    """`value` as `param`'s type (`coerce`), refused when outside its allowed values (`check_allowed`).

    Args:
        param: the parameter.
        value: the value given (a string from the command line, a YAML or Python value).

    Returns:
        `value` as the parameter's type.

    Raises:
        PaperError: `value` has the wrong type or is not allowed (the message names the
            parameter, the value and what is allowed).
    """
    value = coerce(param.name, param.type, value)
    check_allowed(param, value)
    return value


def parse_assignments(pairs: list[str]) -> dict[str, str]:
    """`key=value` strings from `-p` into a dict (values stay strings until checked).

    Args:
        pairs: the `-p` arguments, each "key=value" (the value may itself contain "=").

    Returns:
        The values by key (whitespace stripped from keys); a later key wins.

    Raises:
        PaperError: an item without "=".
    """
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
    """A paper's parameters for one run: defaults, then the full profile (if asked), then `overrides`.

    Args:
        paper: the paper.
        overrides: values by parameter name (strings from the command line or YAML values);
            None for none.
        profile: "quick" or "full"; None takes `overrides["profile"]`, else the notebook's default.

    Returns:
        Every parameter by name, each of its declared type, with `profile` set.

    Raises:
        PaperError: an override names an unknown parameter (with the closest valid name), a value
            has the wrong type or lies outside the parameter's allowed values, or the profile is
            unknown.
    """
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
    values.update({k: check_value(paper.parameters[k], v) for k, v in overrides.items()})
    values["profile"] = profile
    return values


def load_parameter_file(path: str | Path) -> dict[str, Any]:
    """The parameter overrides in a YAML file (`workbench run -f params.yaml`).

    Args:
        path: the YAML file: a mapping of parameter names to values (empty means none).

    Returns:
        The mapping, values as YAML read them (checked later by `resolve_parameters`).

    Raises:
        PaperError: the file does not exist or does not hold a mapping.
    """
    path = Path(path)
    if not path.exists():
        raise PaperError(f"parameter file not found: {path}")
    content = yaml.safe_load(path.read_text()) or {}
    if not isinstance(content, dict):
        raise PaperError(f"{path}: expected a mapping of parameter names to values")
    return content


def params_hash(params: dict[str, Any]) -> str:
    """A short hash of a run's resolved parameters, the suffix of its run directory's name.

    Args:
        params: the resolved parameters (JSON-serialisable values); key order does not matter.

    Returns:
        The first 8 hexadecimal digits of the SHA-256 of `params` as sorted JSON.
    """
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
