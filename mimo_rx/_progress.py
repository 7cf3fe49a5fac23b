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

Cost: a task on the workflow's event loop redraws ``REFRESH_HZ`` times a second from
``workflow.stats()`` (a few microseconds per port), so the overhead is bounded whatever the
item rate: ``bench/bench_progress.py`` measures it.

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
import warnings
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.live import Live

    from ._workflow import Workflow

REFRESH_HZ = 5.0
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
        warnings.warn(MISSING_RICH, RuntimeWarning, stacklevel=2)
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
        console = Console(force_terminal=True, force_interactive=True)
        self._live: Live = Live(console=console, auto_refresh=False, transient=False)
        # The first frame is drawn at the first tick, once the run has configured its ports.
        self._live.start(refresh=False)
        self._task = asyncio.get_running_loop().create_task(
            self._refresh(), name="mimo_rx:progress"
        )

    def _frame(self) -> RenderableType:
        return render_frame(self._workflow.stats(), time.perf_counter() - self._t0)

    async def _refresh(self) -> None:
        period = 1.0 / REFRESH_HZ
        while True:
            await asyncio.sleep(period)
            try:
                self._live.update(self._frame(), refresh=True)
            except Exception as exc:  # a broken display must not break the workflow
                self._failure = exc
                return

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
        try:
            if self._failure is None:
                self._live.update(self._frame())
        except Exception as exc:
            self._failure = exc
        finally:
            self._live.stop()
        if self._failure is not None:
            warnings.warn(
                f"the progress display stopped: {self._failure!r}", RuntimeWarning, stacklevel=2
            )
        if cancelled:
            raise asyncio.CancelledError


# -- the frame -----------------------------------------------------------------------------

_STATUS_STYLES = {
    "pending": "dim",
    "running": "cyan",
    "done": "green",
    "failed": "bold red",
    "cancelled": "yellow",
}


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


def _buffer_cell(inputs: dict[str, Any]) -> Any:
    from rich.text import Text

    cell = Text()
    for i, (name, port) in enumerate(inputs.items()):
        buffered, threshold = port["buffered"], port.get("threshold")
        fill = min(buffered / threshold, 1.0) if threshold else 0.0
        style = "red" if fill >= 1.0 else "yellow" if fill >= 0.5 else "green"
        cells = round(fill * _BAR_CELLS)
        if i:
            cell.append("  ")
        if len(inputs) > 1:
            cell.append(f"{name} ")
        cell.append("█" * cells, style=style)
        cell.append("░" * (_BAR_CELLS - cells), style="dim")
        cell.append(f" {_count(buffered)}")
        if threshold:
            cell.append(f"/{_count(threshold)}")
    return cell


def render_frame(stats: dict[str, Any], elapsed_s: float) -> RenderableType:
    """One frame of the display, built from a ``workflow.stats()`` snapshot."""
    from rich.table import Table
    from rich.text import Text

    streams: dict[str, Any] = stats["streams"]
    state = _overall([s["status"] for s in streams.values()])
    table = Table(
        title=Text.assemble(
            ("mimo_rx", "bold"),
            f" · {len(streams)} streams · ",
            (state, _STATUS_STYLES[state]),
            f" · {elapsed_s:.1f} s",
        ),
        title_justify="left",
        caption="paused: time its producers waited on its full inputs",
        caption_justify="left",
        box=None,
        padding=(0, 1),
        header_style="bold",
    )
    table.add_column("stream", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("in", justify="right", no_wrap=True)
    table.add_column("out", justify="right", no_wrap=True)
    table.add_column("buffer", no_wrap=True)
    table.add_column("dropped", justify="right", no_wrap=True)
    table.add_column("paused", justify="right", no_wrap=True)
    for name, s in streams.items():
        inputs: dict[str, Any] = s["inputs"]
        outputs: dict[str, Any] = s["outputs"]
        dropped = sum(p["dropped"] for p in inputs.values())
        discarded = sum(p["discarded"] for p in inputs.values())
        lost = _count(dropped) if inputs else "-"
        if discarded:
            lost += f" +{_count(discarded)} discarded"
        table.add_row(
            Text(name),  # a Text: stream names are not rich markup
            Text(s["status"], style=_STATUS_STYLES.get(s["status"], "")),
            _count(sum(p["taken"] for p in inputs.values())) if inputs else "-",
            _count(sum(p["pushed"] for p in outputs.values())) if outputs else "-",
            _buffer_cell(inputs) if inputs else "-",
            lost,
            f"{sum(p['paused_s'] for p in inputs.values()):.2f} s" if inputs else "-",
        )
    return table
