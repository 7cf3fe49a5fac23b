"""``record(workflow)``: what a run did, with virtual timestamps, and assertions that draw it.

Everything comes from public hooks: an Rx subscription on each output (items, close, error),
``workflow.events`` (``paused``/``resumed`` around every pause of a producer) and ``stats()``
(the peak of each input). Recording costs what any Rx subscriber and events listener cost.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .._workflow import Workflow
from ._marbles import (
    NS,
    Event,
    draw,
    draw_frames,
    draw_pressure,
    fitting_frame,
    frame_ns,
    seconds,
)


class Trace:
    """What a recorded run did; see :func:`record`. Ports are named ``"step.port"``."""

    def __init__(self, workflow: Workflow) -> None:
        self._workflow = workflow
        self._events: dict[str, list[tuple[int, Event]]] = {}
        self._pauses: dict[str, list[list[int | None]]] = {}
        self._open: dict[str, int] = {}  # pushes of an output paused right now
        self._base: float | None = None  # loop time of 0 (a real loop: the first event)
        self._end: int | None = None  # when the run ended
        for step in workflow.steps:
            for name in step.stream.outs:
                self._watch(f"{step.name}.{name}", step.stream.output(name))
        workflow.events.subscribe(on_next=self._on_event, on_completed=self._on_end)

    # -- recording ------------------------------------------------------------------------------

    def _now(self) -> int:
        loop = asyncio.get_running_loop()
        if self._base is None:
            from ._clock import VirtualLoop

            self._base = 0.0 if isinstance(loop, VirtualLoop) else loop.time()
        return round((loop.time() - self._base) * NS)

    def _watch(self, port: str, output: Any) -> None:
        events = self._events.setdefault(port, [])
        self._pauses.setdefault(port, [])

        def note(kind: str, value: Any = None) -> None:
            events.append((self._now(), (kind, value)))

        output.subscribe(
            on_next=lambda item: note("item", item),
            on_completed=lambda: note("close"),
            on_error=lambda error: note("error", error),
        )

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind not in ("paused", "resumed"):
            return
        port = f"{event['stream']}.{event['output']}"
        pauses = self._pauses.setdefault(port, [])
        count = self._open.get(port, 0)
        if kind == "paused":
            if count == 0:
                pauses.append([self._now(), None])
            self._open[port] = count + 1
        elif count > 0:
            self._open[port] = count - 1
            if count == 1 and pauses:
                pauses[-1][1] = self._now()

    def _on_end(self) -> None:
        with_loop = True
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            with_loop = False
        self._end = self._now() if with_loop else self._last()

    # -- reading --------------------------------------------------------------------------------

    def _port(self, port: str, table: dict[str, Any]) -> Any:
        if port not in table:
            known = ", ".join(sorted(table)) or "none"
            raise KeyError(
                f"{port!r} is not a recorded output; name it 'step.port' (recorded: {known})"
            )
        return table[port]

    def items(self, port: str) -> list[tuple[float, Any]]:
        """``(time, item)`` for each item pushed on output ``port``, the time being when the
        push returned (the item was accepted)."""
        return [(t / NS, ev[1]) for t, ev in self._port(port, self._events) if ev[0] == "item"]

    def completed(self, port: str) -> float | None:
        """When output ``port`` closed or failed, or ``None``."""
        events: list[tuple[int, Event]] = self._port(port, self._events)
        for t, (kind, _) in events:
            if kind != "item":
                return t / NS
        return None

    def _pause_ns(self, port: str) -> list[tuple[int, int]]:
        self._port(port, self._events)
        end = self._end if self._end is not None else self._last()
        return [
            (start, stop if stop is not None else max(end, start))
            for start, stop in self._pauses.get(port, [])
            if start is not None
        ]

    def pauses(self, port: str) -> list[tuple[float, float]]:
        """The ``(start, end)`` intervals during which pushes on output ``port`` were paused by
        a full input."""
        return [(a / NS, b / NS) for a, b in self._pause_ns(port)]

    def peak(self, port: str) -> int:
        """The most items input ``port`` ever held."""
        step, _, name = port.rpartition(".")
        streams = self._workflow.stats()["streams"]
        inputs = streams.get(step, {}).get("inputs", {})
        if name not in inputs:
            known = ", ".join(f"{s}.{i}" for s, v in streams.items() for i in v["inputs"])
            raise KeyError(f"{port!r} is not an input; name it 'step.port' (inputs: {known})")
        return int(inputs[name]["peak_buffered"])

    def marbles(self, port: str, frame: float) -> str:
        """Output ``port`` as a marble diagram, one character per ``frame`` seconds."""
        return draw(self._port(port, self._events), frame_ns(frame))

    def pressure(self, port: str, frame: float) -> str:
        """The frames of :meth:`marbles`, ``=`` where a push was paused, else ``-``."""
        size = frame_ns(frame)
        events = self._port(port, self._events)
        pauses = self._pause_ns(port)
        last = max([t for t, _ in events] + [b for _, b in pauses] + [0])
        frames = last // size + 1 if events or pauses else 0
        return draw_pressure(pauses, size, frames)

    # -- assertions -----------------------------------------------------------------------------

    def assert_never_paused(self, port: str) -> None:
        """Raises ``AssertionError`` (with the lanes drawn) if output ``port`` was ever paused."""
        pauses = self._pause_ns(port)
        if pauses:
            total = sum(b - a for a, b in pauses)
            raise AssertionError(
                f"{port} was paused {len(pauses)} time(s), {seconds(total)} s in total "
                f"(first at {seconds(pauses[0][0])} s); expected never paused\n" + self.lanes()
            )

    def assert_paused(self, port: str, at_least: float) -> None:
        """Raises ``AssertionError`` (with the lanes drawn) unless output ``port`` was paused
        for ``at_least`` seconds in total."""
        total = sum(b - a for a, b in self._pause_ns(port))
        if total < round(at_least * NS) or total == 0:
            raise AssertionError(
                f"{port} was paused {seconds(total)} s in total; expected at least "
                f"{seconds(round(at_least * NS))} s\n" + self.lanes()
            )

    def assert_peak(self, port: str, at_most: int) -> None:
        """Raises ``AssertionError`` (with the lanes drawn) if input ``port`` ever held more
        than ``at_most`` items."""
        peak = self.peak(port)
        if peak > at_most:
            raise AssertionError(
                f"{port} held up to {peak} items; expected at most {at_most}\n" + self.lanes()
            )

    def _last(self) -> int:
        times = [t for events in self._events.values() for t, _ in events]
        times += [t for pauses in self._pauses.values() for p in pauses for t in p if t]
        return max(times, default=0)

    def lanes(self) -> str:
        """Every recorded output drawn at a frame that fits the whole run in 80 characters:
        its items, and under them its pressure (``=`` paused)."""
        end = max(self._end or 0, self._last())
        frame = fitting_frame(end)
        width = max((len(port) for port in self._events), default=0) + 2
        lines = [f"frame = {seconds(frame)} s; '=' a push was paused by a full input"]
        for port, events in self._events.items():
            # Under a group (one frame drawn wider) its pressure mark is repeated, to line up.
            tokens = draw_frames(events, frame)
            pressure = self.pressure(port, frame / NS)
            tokens += ["-"] * (len(pressure) - len(tokens))
            under = "".join(mark * len(token) for mark, token in zip(pressure, tokens, strict=True))
            lines.append(f"  {port:<{width}}{''.join(tokens)}")
            lines.append(f"  {'':<{width}}{under}")
        return "\n".join(lines)


def record(workflow: Workflow) -> Trace:
    """Record ``workflow``'s next run (call it before the run starts).

    Returns:
        A :class:`Trace`, filled during the run with virtual timestamps (seconds since the
        loop started).
    """
    return Trace(workflow)
