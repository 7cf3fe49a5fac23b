"""Live progress of a running workflow on a terminal: ``run(progress=True)``.

What is drawn: one row per stream with its status, the items it took from its inputs (``in``)
and pushed to its outputs (``out``), the fill of each input buffer (a bar and
``buffered/threshold``, yellow from half full, red when full: that is where items pile up),
the items dropped by a policy or discarded after the stream finished, and ``paused``: the
seconds the producers feeding this stream spent paused because its inputs were full (a
stream with a large ``paused`` is holding its upstream back). A last frame is drawn when the
run ends, so the final counts and statuses stay on screen. Lines printed by streams while the
display is live appear above it.

When: only when standard output is a terminal (``isatty()``) whose ``TERM`` is not ``dumb``;
otherwise nothing is drawn and no task is started. Following rich's convention, the
environment variable ``TTY_INTERACTIVE=1`` forces the display on (``0`` forces it off).

Cost: a task on the workflow's event loop redraws at most ``REFRESH_HZ`` times a second from
``workflow.stats()``, so the cost does not grow with the item rate. A frame costs about a
millisecond per stream shown, so the task also times each frame and waits long enough that
drawing takes at most ``MAX_LOOP_SHARE`` of the loop's time (big graphs refresh more slowly),
and live frames show only the streams that fit the terminal's height (the final frame shows
them all). ``bench/bench_progress.py`` measures the overhead.

Without rich: the display is an optional extra, ``pip install 'mimo_rx[progress]'``. When
``rich`` cannot be imported and the display would have been drawn, ``progress=True`` issues
one ``RuntimeWarning`` naming that extra and the workflow runs exactly as without progress.
A missing display never stops a pipeline, and the user who asked for it is told why it is
not there. When output is not a terminal, nothing is drawn anyway, so nothing is said.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Protocol

from ._errors import warn_user

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.live import Live

    from ._workflow import Workflow

REFRESH_HZ = 5.0
# The most of the event loop's time that drawing may take: frames are spaced to stay below.
MAX_LOOP_SHARE = 0.02
MISSING_RICH = (
    "progress=True needs the optional dependency 'rich': pip install 'mimo_rx[progress]'; "
    "running without a progress display"
)
_BAR_CELLS = 8


class ProgressHandle(Protocol):
    """What ``start_progress`` returns: ``await stop()`` once the run has ended."""

    async def stop(self) -> None: ...


class _NoProgress:
    """Nothing to draw (not a terminal, or rich is missing)."""

    async def stop(self) -> None:
        return None


def _should_draw() -> bool:
    forced = os.environ.get("TTY_INTERACTIVE")
    if forced in ("0", "1"):
        return forced == "1"
    if os.environ.get("TERM") == "dumb":
        return False
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


def start_progress(workflow: Workflow) -> ProgressHandle:
    """Start drawing ``workflow``'s progress on the terminal, if standard output is one.

    Must be called with the workflow's event loop running. Always pair with
    ``await handle.stop()``, which ends the refresh task and draws the final frame.
    """
    if not _should_draw():
        return _NoProgress()
    try:
        import rich  # noqa: F401
    except ImportError:
        warn_user(MISSING_RICH)
        return _NoProgress()
    return _LiveProgress(workflow)


class _LiveProgress:
    """A rich ``Live`` display redrawn by a task on the running loop at ``REFRESH_HZ``."""

    def __init__(self, workflow: Workflow) -> None:
        from rich.console import Console
        from rich.live import Live

        self._workflow = workflow
        self._t0 = time.perf_counter()
        self._stopped = False
        self._failure: BaseException | None = None
        # The decision to draw is ours (_should_draw): tell rich it is a live terminal.
        self._console = console = Console(force_terminal=True, force_interactive=True)
        self._live: Live = Live(console=console, auto_refresh=False, transient=False)
        # The first frame is drawn at the first tick, once the run has configured its ports.
        self._live.start(refresh=False)
        self._task = asyncio.get_running_loop().create_task(
            self._refresh(), name="mimo_rx:progress"
        )

    def _frame(self, final: bool = False) -> RenderableType:
        # Title, header and caption take 4 lines; rows past the screen are not worth drawing.
        max_rows = None if final else max(self._console.height - 5, 3)
        return render_frame(self._workflow.stats(), time.perf_counter() - self._t0, max_rows)

    async def _refresh(self) -> None:
        period = delay = 1.0 / REFRESH_HZ
        while True:
            await asyncio.sleep(delay)
            started = time.perf_counter()
            try:
                self._live.update(self._frame(), refresh=True)
            except Exception as exc:  # a broken display must not break the workflow
                self._failure = exc
                return
            cost = time.perf_counter() - started
            delay = max(period, cost / MAX_LOOP_SHARE - cost)

    async def stop(self) -> None:
        """Cancel and await the refresh task, then draw the final frame and leave it."""
        if self._stopped:
            return
        self._stopped = True
        task = self._task
        task.cancel()
        cancelled = False
        # The task is sleeping and ends at the next loop step; wait for it even if we are
        # cancelled meanwhile, so that no task is left behind, then pass the cancel on.
        while not task.done():
            try:
                await asyncio.wait({task})
            except asyncio.CancelledError:
                cancelled = True
        # stop() runs in start()'s finally: it must not replace the run's own outcome.
        if self._failure is None:
            try:
                self._live.update(self._frame(final=True))
            except Exception as exc:
                self._failure = exc
        try:
            self._live.stop()  # draws the final frame, shows the cursor, restores stdout
        except Exception as exc:
            self._failure = self._failure or exc
        if self._failure is not None:
            warn_user(f"the progress display stopped: {self._failure!r}")
        if cancelled:
            raise asyncio.CancelledError


# -- the frame -----------------------------------------------------------------------------
#
# Laid out by hand rather than with rich's Table: a Table measures every cell on every frame
# and costs about a millisecond per row; fixed columns cost a tenth of that.

_STATUS_STYLES = {
    "pending": "dim",
    "running": "cyan",
    "done": "green",
    "failed": "bold red",
    "cancelled": "yellow",
}
_HEADERS = ("stream", "status", "in", "out", "buffer", "dropped", "paused")
_RIGHT = frozenset({"in", "out", "dropped", "paused"})
# Minimum widths, so that columns do not jump about as counts grow and statuses change.
_MIN_WIDTHS = {"status": len("cancelled"), "in": 7, "out": 7, "paused": 7}
_CAPTION = "paused: time its producers waited on its full inputs"

# A cell is a list of (text, style) pieces.
Cell = list[tuple[str, str]]


def _overall(statuses: list[str]) -> str:
    if "failed" in statuses:
        return "failed"
    if "cancelled" in statuses:
        return "cancelled"
    if statuses and all(s == "done" for s in statuses):
        return "done"
    if all(s == "pending" for s in statuses):
        return "pending"
    return "running"


def _count(n: int) -> str:
    return f"{n:,}"


def _buffer_cell(inputs: dict[str, Any]) -> Cell:
    cell: Cell = []
    for i, (name, port) in enumerate(inputs.items()):
        buffered, threshold = port["buffered"], port.get("threshold")
        fill = min(buffered / threshold, 1.0) if threshold else 0.0
        style = "red" if fill >= 1.0 else "yellow" if fill >= 0.5 else "green"
        cells = round(fill * _BAR_CELLS)
        if i:
            cell.append(("  ", ""))
        if len(inputs) > 1:
            cell.append((f"{name} ", ""))
        cell.append(("█" * cells, style))
        cell.append(("░" * (_BAR_CELLS - cells), "dim"))
        cell.append((f" {_count(buffered)}" + (f"/{_count(threshold)}" if threshold else ""), ""))
    return cell


def _row(name: str, s: dict[str, Any]) -> list[Cell]:
    inputs: dict[str, Any] = s["inputs"]
    outputs: dict[str, Any] = s["outputs"]
    if inputs:
        taken = _count(sum(p["taken"] for p in inputs.values()))
        lost = _count(sum(p["dropped"] for p in inputs.values()))
        discarded = sum(p["discarded"] for p in inputs.values())
        if discarded:
            lost += f" +{_count(discarded)} discarded"
        paused = f"{sum(p['paused_s'] for p in inputs.values()):.2f} s"
        buffer = _buffer_cell(inputs)
    else:
        taken = lost = paused = "-"
        buffer = [("-", "")]
    pushed = _count(sum(p["pushed"] for p in outputs.values())) if outputs else "-"
    status = s["status"]
    return [
        [(name, "")],
        [(status, _STATUS_STYLES.get(status, ""))],
        [(taken, "")],
        [(pushed, "")],
        buffer,
        [(lost, "")],
        [(paused, "")],
    ]


def render_frame(
    stats: dict[str, Any], elapsed_s: float, max_rows: int | None = None
) -> RenderableType:
    """One frame of the display, built from a ``workflow.stats()`` snapshot.

    With ``max_rows``, at most that many rows: streams not yet done come first, and one
    last row counts the streams left out.
    """
    from rich.cells import cell_len
    from rich.text import Text

    streams: dict[str, Any] = stats["streams"]
    state = _overall([s["status"] for s in streams.values()])
    shown = list(streams.items())
    hidden = 0
    if max_rows is not None and len(shown) > max_rows:
        # Keep the graph's order among the streams shown, preferring those not finished.
        keep = sorted(range(len(shown)), key=lambda i: (shown[i][1]["status"] == "done", i))
        chosen = sorted(keep[: max_rows - 1])
        hidden = len(shown) - len(chosen)
        shown = [shown[i] for i in chosen]
    rows: list[list[Cell]] = [[[(h, "bold")] for h in _HEADERS]]
    rows.extend(_row(name, s) for name, s in shown)
    widths = [
        max(_MIN_WIDTHS.get(header, 0), *(sum(cell_len(t) for t, _ in row[col]) for row in rows))
        for col, header in enumerate(_HEADERS)
    ]
    frame = Text(no_wrap=True, overflow="ellipsis")
    frame.append("mimo_rx", "bold")
    frame.append(f" · {len(streams)} streams · ")
    frame.append(state, _STATUS_STYLES[state])
    frame.append(f" · {elapsed_s:.1f} s\n")
    for row in rows:
        for header, width, cell in zip(_HEADERS, widths, row, strict=True):
            pad = " " * (width - sum(cell_len(text) for text, _ in cell))
            frame.append("  " if header != "stream" else " ")
            if header in _RIGHT:
                frame.append(pad)
            for text, style in cell:
                frame.append(text, style)  # Text.append: names are not read as markup
            if header not in _RIGHT:
                frame.append(pad)
        frame.append("\n")
    if hidden:
        frame.append(f" … {hidden} more streams\n", "dim")
    frame.append(_CAPTION, "dim")
    return frame
