"""The docstring convention, read off the package: every public function says what each argument
is and what it returns (Google style), and every capability's package docstring ends with a
runnable example that this file executes (doctest).
"""

import doctest
import importlib
import inspect
import pkgutil
import re

import pytest

import workbench

CAPABILITIES = ("spectrum", "sketch", "influence", "schedules", "convex", "icl", "unlearning", "continual",
                "distributed", "transport")
SECTION = re.compile(r"^\s*(Args|Arguments|Returns|Yields|Raises|Example|Examples|Note|Notes):\s*$")


def _modules() -> list[str]:
    names = ["workbench"]
    for info in pkgutil.walk_packages(workbench.__path__, "workbench."):
        if not info.name.endswith("__main__"):
            names.append(info.name)
    return sorted(names)


def _section(doc: str, title: str) -> str | None:
    """The text of section `title` (up to the next section header), or None."""
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == f"{title}:":
            body = []
            for nxt in lines[i + 1:]:
                if SECTION.match(nxt):
                    break
                body.append(nxt)
            return "\n".join(body)
    return None


def _documented_names(args_section: str) -> set[str]:
    """Argument names listed in an Args section (`name:`, `name (type):`, `*args:`, and
    `a, b, c: as in f` for arguments shared with a sibling function)."""
    names = set()
    for group in re.findall(r"^\s*((?:\*{0,2}\w+(?:\s*\([^)]*\))?\s*,\s*)*\*{0,2}\w+(?:\s*\([^)]*\))?)\s*:",
                            args_section, re.M):
        names |= {re.sub(r"\(.*\)", "", n).strip().lstrip("*") for n in group.split(",")}
    return names


def problems(func) -> list[str]:
    """What `func`'s docstring lacks under the convention (empty when it follows it)."""
    doc = inspect.getdoc(func) or ""
    if not doc:
        return ["no docstring"]
    found = []
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return found
    params = [p for p in sig.parameters.values() if p.name not in ("self", "cls")]
    if params:
        args = _section(doc, "Args")
        if args is None:
            found.append("no Args: section")
        else:
            missing = [p.name for p in params if p.name not in _documented_names(args)]
            if missing:
                found.append(f"Args: does not describe {missing}")
    returns_nothing = sig.return_annotation in (None, "None")
    if not returns_nothing and _section(doc, "Returns") is None and _section(doc, "Yields") is None:
        found.append("no Returns: section (annotate `-> None` if it returns nothing)")
    return found


def public_functions(module_name: str):
    module = importlib.import_module(module_name)
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or not inspect.isfunction(obj) or obj.__module__ != module_name:
            continue
        yield name, obj


@pytest.mark.parametrize("module_name", _modules())
def test_public_functions_document_args_and_returns(module_name):
    bad = {name: p for name, fn in public_functions(module_name) if (p := problems(fn))}
    assert not bad, "\n".join(f"{module_name}.{name}: {'; '.join(p)}" for name, p in bad.items())


def test_the_check_sees_a_missing_argument_and_a_missing_returns():
    def documented(x, key):
        """Do a thing.

        Args:
            x: the input.
            key (jax.Array): a PRNG key.

        Returns:
            The thing.
        """

    def stale(x, y):
        """Do a thing.

        Args:
            x: the input.
        """
        return x + y

    def quiet(x) -> None:
        """Do a thing.

        Args:
            x: the input.
        """

    def shared(x, key):
        """Do a thing.

        Args:
            x, key: as in `documented`.

        Returns:
            The thing.
        """

    assert problems(documented) == [] and problems(quiet) == [] and problems(shared) == []
    assert problems(stale) == ["Args: does not describe ['y']",
                               "no Returns: section (annotate `-> None` if it returns nothing)"]


@pytest.mark.parametrize("package", CAPABILITIES)
def test_each_capability_docstring_ends_with_an_example_that_runs(package):
    module = importlib.import_module(f"workbench.{package}")
    doc = module.__doc__ or ""
    assert "Examples:" in doc and ">>>" in doc.split("Examples:")[-1], (
        f"workbench/{package}/__init__.py: the docstring needs a closing `Examples:` with >>> lines")
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = finder.find(module, f"workbench.{package}", globs={})
    assert tests and tests[0].examples
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in workbench.{package} failed"
