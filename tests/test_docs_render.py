"""Every diagram of the docs site renders in a real browser with no network: mermaid comes with the site.

The site is built with ``mkdocs build``; each page that holds a diagram is opened by headless Chromium (the OS
package, ``apt-get install chromium``) with every host name unresolvable, so nothing can be fetched from outside.
Material replaces a diagram's ``<pre class="mermaid">`` by its rendered ``<div class="mermaid">`` only once
mermaid has parsed and drawn it: a diagram left as ``<pre>`` failed (mermaid not loaded, or a syntax error;
checked by hand: without the site's mermaid every diagram stays text).
Skipped where no Chromium is installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
BROWSER = next((path for name in BROWSERS if (path := shutil.which(name))), None)
SOURCE = re.compile(r'<pre class="mermaid"><code>(.*?)</code></pre>', re.S)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(BROWSER is None, reason=f"no headless browser ({', '.join(BROWSERS)}) installed"),
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "-q", "-d", str(out)], cwd=ROOT, check=True, timeout=300)
    return out


def rendered_dom(page: Path) -> str:
    """The page's DOM after its scripts ran, offline."""
    command = [
        str(BROWSER), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=20000", "--dump-dom", page.as_uri(),
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout


def pages_with_diagrams(site: Path) -> dict[Path, int]:
    return {
        page: len(SOURCE.findall(page.read_text()))
        for page in sorted(site.rglob("*.html"))
        if SOURCE.search(page.read_text())
    }


def test_every_diagram_renders_offline(site):
    pages = pages_with_diagrams(site)
    assert len(pages) >= 2 and sum(pages.values()) >= 4  # concepts and architecture, at least
    failed = []
    for page, count in pages.items():
        assert "javascripts/mermaid/mermaid.min.js" in page.read_text(), f"{page}: mermaid not served with the site"
        dom = rendered_dom(page)
        drawn = dom.count('<div class="mermaid"></div>')  # the drawing lives in a closed shadow root
        if drawn != count or "Syntax error" in dom:
            failed.append(f"{page.relative_to(site)}: {drawn} of {count} diagrams rendered")
    assert not failed, "\n".join(failed)


def test_a_broken_diagram_is_caught(site, tmp_path):
    # The check above must be able to fail: the same page with a diagram mermaid cannot parse.
    page, count = next(iter(pages_with_diagrams(site).items()))
    broken = page.parent / "broken-diagram.html"
    html = page.read_text()
    first = SOURCE.search(html)
    assert first is not None
    broken.write_text(html.replace(first.group(1), "flowchart LR\n  A -->> B((", 1))
    try:
        dom = rendered_dom(broken)
    finally:
        broken.unlink()
    assert dom.count('<div class="mermaid"></div>') == count - 1
