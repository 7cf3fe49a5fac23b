"""Every Python code block in README.md and docs/ runs, and every public name is documented.

Each fenced block whose language is ``python`` (or ``py``) is one test, with an id made of the
file and the heading it sits under (``docs/guides/rx.md::adding-sources``, ``-2``, ``-3`` for
further blocks under the same heading), so a failure points at the page a reader sees. A block
runs as a script of its own, in a fresh interpreter with warnings as errors, in an empty
temporary directory, with a timeout: a block that hangs fails instead of hanging the suite, a
block that calls ``workflow.run()`` (which installs signal handlers and owns its loop) is
isolated from pytest's, and no block can lean on state left by another. Blocks run without the
network; none may need it.

Marks, each with its reason: ``<!-- not-run: reason -->`` on the line right above a block keeps
it from running (a fragment, the shape of a result, an address of a cluster you do not have).
The reason is required and is shown as the skip reason. Every feature the pages document is in
the package, so every other block runs.

Why a collector of our own rather than pytest-markdown-docs or pytest-examples: both run blocks
in the pytest process (a block's ``workflow.run()`` would meet pytest's own signal handlers and
warnings filters, and a hang could not be stopped), and pytest-markdown-docs collects through a
command-line flag that the README's test command does not pass. What we need is ~100 lines of
stdlib.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import mimo_rx

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference"
BLOCK_TIMEOUT_S = 60  # a block is a small program; the slowest (a Dask cluster) takes ~5 s

# -- collecting --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    file: str  # relative to the repository root
    id: str  # the heading's slug, -2, -3 for further blocks under it
    line: int  # of the opening fence, 1-based
    code: str
    not_run: str | None  # the reason of a not-run mark


_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
_HEADING = re.compile(r"^#{1,6}\s+(?P<title>.+?)\s*#*\s*$")
_NOT_RUN = re.compile(r"^\s*<!--\s*not-run:\s*(?P<reason>.*?)\s*-->\s*$")


def slug(title: str) -> str:
    """The anchor MkDocs gives a heading (lower case, words joined by ``-``)."""
    title = re.sub(r"`([^`]*)`", r"\1", title)
    title = re.sub(r"[^\w\s-]", "", title.lower())
    return re.sub(r"[\s-]+", "-", title).strip("-")


def blocks_of(path: Path) -> Iterator[Block]:
    """The Python blocks of one Markdown file, in order."""
    rel = path.relative_to(ROOT).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    section, seen = "top", {}
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            heading = _HEADING.match(lines[i])
            if heading:
                section = slug(heading["title"])
            i += 1
            continue
        indent, fence = match["indent"], match["fence"]
        lang = match["info"].strip().split(" ")[0].lstrip("{.").lower()
        start = i
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1
        if lang not in ("python", "py", "python3"):
            continue
        seen[section] = seen.get(section, 0) + 1
        block_id = section if seen[section] == 1 else f"{section}-{seen[section]}"
        mark = _NOT_RUN.match(lines[start - 1]) if start > 0 else None
        reason = mark["reason"] if mark else None
        yield Block(rel, block_id, start + 1, "\n".join(body) + "\n", reason)


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


BLOCKS = [block for path in doc_files() for block in blocks_of(path)]


# -- running -----------------------------------------------------------------------------------


@pytest.mark.timeout(BLOCK_TIMEOUT_S + 30)
@pytest.mark.parametrize("block", BLOCKS, ids=[f"{b.file}::{b.id}" for b in BLOCKS])
def test_code_block_runs_as_a_program(block: Block, tmp_path: Path) -> None:
    if block.not_run is not None:
        if not block.not_run:
            pytest.fail(f"{block.file}:{block.line}: a not-run mark needs a reason")
        pytest.skip(f"not run: {block.not_run}")
    script = tmp_path / "block.py"
    script.write_text(block.code, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("TTY_INTERACTIVE", None)  # the progress view stays off, as off a terminal
    try:
        result = subprocess.run(
            [sys.executable, "-W", "error", str(script)],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{block.file}:{block.line} did not finish in {exc.timeout} s")
    assert result.returncode == 0, (
        f"{block.file}:{block.line} ({block.id}) exited {result.returncode}\n"
        f"--- stdout\n{result.stdout}--- stderr\n{result.stderr}"
    )


def test_block_ids_are_unique_so_that_marks_are_unambiguous() -> None:
    ids = [(b.file, b.id) for b in BLOCKS]
    assert len(ids) == len(set(ids))


# -- the API reference -------------------------------------------------------------------------


def public_names() -> dict[str, object]:
    """Every public name: ``mimo_rx.__all__`` and ``mimo_rx.prometheus.instrument``."""
    names: dict[str, object] = {f"mimo_rx.{n}": getattr(mimo_rx, n) for n in mimo_rx.__all__}
    prometheus = importlib.import_module("mimo_rx.prometheus")
    names["mimo_rx.prometheus.instrument"] = prometheus.instrument
    return names


def documented_names() -> dict[str, str]:
    """``mimo_rx.X`` -> the reference page (relative to docs/) whose ``::: mimo_rx.X`` shows it."""
    found = {}
    for page in sorted(REFERENCE.rglob("*.md")):
        for line in page.read_text(encoding="utf-8").splitlines():
            if line.startswith("::: "):
                found[line[4:].strip()] = page.relative_to(DOCS).as_posix()
    return found


@pytest.mark.parametrize("name", sorted(public_names()))
def test_every_public_name_has_a_docstring_with_a_summary_line(name: str) -> None:
    obj = public_names()[name]
    doc = obj.__doc__  # a class's own docstring: __doc__ is not inherited by classes
    assert doc and doc.strip(), f"{name} has no docstring"
    lines = inspect.cleandoc(doc).splitlines()
    assert lines[0].strip(), f"{name}: the docstring's first line must be its summary"
    assert len(lines) == 1 or not lines[1].strip(), (
        f"{name}: the summary must be one line, followed by a blank line"
    )


@pytest.mark.parametrize("name", sorted(public_names()))
def test_every_public_name_appears_in_a_published_api_reference_page(name: str) -> None:
    pages = documented_names()
    assert name in pages, f"{name} is in no docs/reference page; add '::: {name}' to one"
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert pages[name] in nav, f"{name} is documented on {pages[name]}, which is not in the nav"
