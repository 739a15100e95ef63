"""The documentation site: `mkdocs build --strict` (what `make docs` runs) passes, its API pages
hold the docstrings, and neither the pages nor the README link outside the repository."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# Markdown links and images: [text](target) / ![alt](target)
MARKDOWN_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)[^)]*\)")
HREF = re.compile(r"""(?:href|src)="([^"]+)\"""")
DOC_SOURCES = [*sorted((REPO / "docs").rglob("*.md")), REPO / "README.md"]


def _outside(target: str, page: Path, root: Path) -> str | None:
    """Why a link target from `page` leaves `root` (None when it stays inside)."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("//"):
        return "an external address"
    path = target.split("#", 1)[0].split("?", 1)[0]
    if not path:
        return None  # an anchor on the same page
    if path.startswith("/"):
        return "an absolute path"
    resolved = (page.parent / path).resolve()
    if not resolved.is_relative_to(root):
        return f"a path outside {root.name}/"
    if not resolved.exists():
        return "a missing file"
    return None


def test_pages_and_readme_link_only_inside_the_repository():
    bad = []
    for page in DOC_SOURCES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
        for target in MARKDOWN_LINK.findall(text):
            why = _outside(target, page, REPO)
            if why:
                bad.append(f"{page.relative_to(REPO)}: {target} ({why})")
    assert not bad, "links that leave the repository: " + "; ".join(bad)
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]
    listed = set(re.findall(r"[\w/]+\.md", str(nav)))
    assert {"index.md", "architecture.md", "tutorial.md"} <= listed
    assert all((REPO / "docs" / page).exists() for page in listed)


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("mkdocs", "material", "mkdocstrings_handlers.python")),
    reason="mkdocs, mkdocs-material or mkdocstrings-python is not installed (pip install -e '.[docs]')")
def test_site_builds_strictly_with_api_pages_from_the_docstrings(tmp_path):
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                         cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr  # --strict: any warning fails the build
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]
    api_pages = re.findall(r"api/\w+\.md", str(nav))
    assert len(api_pages) >= 15
    for page in api_pages:
        html = (site / page).with_suffix(".html").read_text()
        # each page renders its module's docstring and its public functions with their Args
        assert html.count('class="doc doc-heading"') >= 3 and "Parameters:" in html, page
    spectrum = (site / "api" / "spectrum.html").read_text()
    assert "top_eigenpairs" in spectrum and "thick-restart Lanczos" in spectrum
    bad = []
    for html_file in site.rglob("*.html"):
        if html_file.name == "404.html":
            continue  # a server's error page: its links are from the site's root by design
        for target in HREF.findall(html_file.read_text()):
            why = _outside(target, html_file, site.resolve())
            if why:
                bad.append(f"{html_file.relative_to(site)}: {target} ({why})")
    assert not bad, "the built site links outside itself: " + "; ".join(bad[:10])


def test_tutorial_page_shows_the_papers_own_code():
    """Every line of code on the tutorial page is a line of the paper it walks through, so the page
    cannot drift from what `make test` runs (the paper `your_own_model` runs in the suite)."""
    page = (REPO / "docs" / "tutorial.md").read_text()
    paper = (REPO / "notebooks" / "your_own_model.py").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    assert len(blocks) >= 6
    missing = [line for block in blocks for line in block.splitlines() if line.strip() and line.strip() not in paper]
    assert not missing, f"tutorial lines not in notebooks/your_own_model.py: {missing}"
