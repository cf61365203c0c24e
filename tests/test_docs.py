"""The documentation holds together: README.md and docs/*.md link to files that exist (and to headings that
exist), the README keeps the headline markers a script fills, and every page of docs/ (subfolders included) is in
the site's nav."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted([ROOT / "README.md", *DOCS.rglob("*.md")])
HEADLINE_MARKERS = ("<!-- headline:start -->", "<!-- headline:end -->")

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.S)
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", re.M)


def _prose(text: str) -> str:
    """Markdown without fenced code blocks and code spans, where nothing is a link or a heading."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase, punctuation other than - dropped, spaces to -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors by its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, repeated headings numbered as GitHub numbers them."""
    seen: Counter[str] = Counter()
    found = set()
    for match in HEADING.finditer(FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = slug(match.group(2))
        found.add(f"{base}-{seen[base]}" if seen[base] else base)
        seen[base] += 1
    return found


def links(path: Path) -> list[str]:
    """Relative link targets of a Markdown file (external URLs left out)."""
    prose = _prose(path.read_text(encoding="utf-8"))
    targets = [m.group(1) for m in INLINE_LINK.finditer(prose)]
    targets += [m.group(1) for m in REFERENCE_DEFINITION.finditer(prose)]
    return [t for t in targets if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^//", t)]


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """Each relative link of ``path`` whose file, or heading in a Markdown file, does not exist under ``root``."""
    problems = []
    for target in links(path):
        file_part, _, anchor = target.partition("#")
        file_part = unquote(file_part.split("?", 1)[0])
        if file_part.startswith("/"):
            problems.append(f"{target}: absolute path (use a relative link)")
            continue
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.is_relative_to(root.resolve()):
            problems.append(f"{target}: points outside the repository")
        elif not resolved.exists():
            problems.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and unquote(anchor).lower() not in anchors(resolved):
            problems.append(f"{target}: no heading with anchor #{anchor} in {resolved.relative_to(root.resolve())}")
    return problems


class _MkdocsLoader(yaml.SafeLoader):
    """mkdocs.yml's YAML: tags such as ``!!python/name:`` (a mermaid fence's formatter) read as plain values."""


_MkdocsLoader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: suffix)


def _nav_pages(nav) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [page for item in nav for page in _nav_pages(item)]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in _nav_pages(value)]
    return []


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    assert broken_links(path) == []


def test_link_check_catches_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# A page\n\n## Its part\n\n[ok](page.md#its-part) [self](#a-page) [web](https://example.org/x.md)\n"
        "`[code](nowhere.md)`\n\n```\n[fenced](nowhere.md)\n```\n"
        "[file](missing.md) [anchor](page.md#no-such-part) ![figure](missing.png)\n"
    )
    problems = broken_links(page, root=tmp_path)
    assert len(problems) == 3, problems
    assert any("missing.md" in p for p in problems)
    assert any("#no-such-part" in p for p in problems)
    assert any("missing.png" in p for p in problems)


def test_slug_follows_github():
    assert slug("Cost: the deployment benchmark") == "cost-the-deployment-benchmark"
    assert slug("Real model, real data on 2 CPU cores") == "real-model-real-data-on-2-cpu-cores"
    assert slug("Exact speed-ups (`speed.*`, all on by default)") == "exact-speed-ups-speed-all-on-by-default"


def test_readme_keeps_the_headline_markers():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start, end = HEADLINE_MARKERS
    assert text.count(start) == 1
    assert text.count(end) == 1
    assert text.index(start) < text.index(end)


def test_every_docs_page_is_in_the_nav():
    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_MkdocsLoader)
    assert config["docs_dir"] == "docs"
    nav = _nav_pages(config["nav"])
    assert sorted(nav) == sorted(set(nav)), "a page is listed twice in the nav"
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert pages - set(nav) == set(), "pages missing from mkdocs.yml's nav"
    assert {p for p in nav if not (DOCS / p).is_file()} == set(), "nav entries without a page"


ARXIV_LINK = re.compile(r"\[[^\]]*\]\(https://arxiv\.org/abs/(\d{4}\.\d{4,5})\)")
ARXIV_CITATION = re.compile(r"\barXiv:?\s+(\d{4}\.\d{4,5})")


def bare_arxiv_citations(text: str) -> list[str]:
    """arXiv identifiers cited in the prose of a Markdown text without a link to their abstract page."""
    prose = _prose(text)
    for link in ARXIV_LINK.finditer(prose):
        cited = ARXIV_CITATION.findall(link.group(0))
        assert cited in ([], [link.group(1)]), f"link text and target differ: {link.group(0)}"
    return ARXIV_CITATION.findall(ARXIV_LINK.sub("", prose))


@pytest.mark.parametrize("path", sorted(DOCS.rglob("*.md")), ids=lambda p: str(p.relative_to(ROOT)))
def test_arxiv_citations_link_to_the_paper(path):
    assert bare_arxiv_citations(path.read_text(encoding="utf-8")) == []


def test_arxiv_check_catches_a_bare_citation():
    assert bare_arxiv_citations("(Li et al., arXiv 1812.06127)") == ["1812.06127"]
    assert bare_arxiv_citations("[arXiv\n1812.06127](https://arxiv.org/abs/1812.06127)") == []
    assert bare_arxiv_citations("`arXiv 1812.06127` in code") == []


def test_page_titles_are_unique():
    titles: dict[str, list[str]] = {}
    for path in sorted(DOCS.rglob("*.md")):
        first = HEADING.search(FENCE.sub("", path.read_text(encoding="utf-8")))
        if first and first.group(1) == "#":
            titles.setdefault(first.group(2), []).append(path.relative_to(DOCS).as_posix())
    assert {title: pages for title, pages in titles.items() if len(pages) > 1} == {}
