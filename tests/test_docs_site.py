"""The documentation site works offline: it loads no script, stylesheet or font from elsewhere.

The site is built once (``mkdocs build --strict``, ~3 s) into a temporary directory and its
pages are read. Skipped where the docs extra (``pip install -e ".[docs]"``) is not installed;
``.ci/run`` installs it.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import mimo_rx

ROOT = Path(__file__).resolve().parent.parent
MERMAID = "assets/javascripts/mermaid-11.17.2.min.js"

# <script src=...>, <link href=...> and <img src=...> pointing at another host (also "//host").
_EXTERNAL = re.compile(
    r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=\"(?P<url>(?:https?:)?//[^\"]+)\"", re.I
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert build.returncode == 0, build.stderr
    return out


def test_no_page_of_the_built_site_loads_anything_from_another_host(site: Path) -> None:
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 10
    external = {
        f"{page.relative_to(site)}: {match['url']}"
        for page in pages
        for match in _EXTERNAL.finditer(page.read_text(encoding="utf-8"))
    }
    assert not external, "\n".join(sorted(external))


def test_mermaid_is_bundled_and_material_then_fetches_none(site: Path) -> None:
    bundled = site / MERMAID
    assert bundled.stat().st_size > 1_000_000  # the real library, not a placeholder
    assert (
        (ROOT / "docs" / MERMAID.replace(".min.js", ".LICENSE"))
        .read_text()
        .startswith("The MIT License")
    )
    page = (site / "getting-started" / "index.html").read_text(encoding="utf-8")
    assert f'src="../{MERMAID}"' in page
    # Material loads mermaid from unpkg only when no global `mermaid` exists; the bundled
    # script defines it. If a Material release drops that guard, this fails. (Its other
    # unpkg address, resize-observer-polyfill, is only for browsers without ResizeObserver.)
    bundles = list((site / "assets" / "javascripts").glob("bundle.*.min.js"))
    assert len(bundles) == 1
    code = bundles[0].read_text(encoding="utf-8")
    if "https://unpkg.com/mermaid@" in code:
        assert 'typeof mermaid=="undefined"' in code


def test_the_api_reference_shows_default_values_not_constant_names(site: Path) -> None:
    page = (site / "reference" / "workflow" / "index.html").read_text(encoding="utf-8")
    text = re.sub(r"<[^>]+>", "", page)  # the signature is split into highlighted spans
    assert "buffer_size: int = 1024, *, cancel_timeout: float = 5.0" in text
    assert re.search(r"max_in_flight: int = 1000,\s*commit_interval: float = 0\.5", text)
    for reference in sorted((site / "reference").rglob("*.html")):
        text = re.sub(r"<[^>]+>", "", reference.read_text(encoding="utf-8"))
        constant = re.search(r"\w+: [^=\n]+ = _?[A-Z][A-Z0-9_]{3,}\b", text)
        assert constant is None, f"{reference.relative_to(site)}: {constant and constant[0]}"


def test_workflows_default_buffer_size_is_the_inputs_default() -> None:
    from mimo_rx._ports import DEFAULT_BUFFER_SIZE

    default = inspect.signature(mimo_rx.Workflow).parameters["buffer_size"].default
    assert default == DEFAULT_BUFFER_SIZE
