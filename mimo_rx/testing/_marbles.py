"""The marble grammar of ``mimo_rx.testing``: parsing a diagram, drawing items and pressure.

One character per frame: ``-`` nothing happened; an item (its ``str`` when that is one
character, else ``*``); ``|`` the close; ``#`` an error; ``( )`` several events of one frame,
in order, still one frame. An event at time ``t`` falls in frame ``floor(t / frame)``. Times
are integer nanoseconds here, so frame boundaries are exact.
"""

from __future__ import annotations

import math
from typing import Any

from .._errors import ConfigError

NS = 1_000_000_000

# (kind, value): kind is "item", "close" or "error".
Event = tuple[str, Any]


def frame_ns(frame: float) -> int:
    """``frame`` seconds in nanoseconds; a frame must be positive."""
    if not isinstance(frame, int | float) or not math.isfinite(frame) or frame <= 0:
        raise ConfigError(f"a marble frame must be a positive number of seconds, got {frame!r}")
    return max(round(frame * NS), 1)


def parse(marbles: str, values: dict[str, Any] | None = None) -> list[tuple[int, list[Event]]]:
    """The frames of ``marbles`` that hold events: ``(frame index, events)``, in order.

    Raises:
        ConfigError: the diagram has ``#`` (an inlet cannot send an error), an unbalanced
            ``(`` or ``)``, an empty group, or an event after ``|``.
    """
    values = values or {}
    frames: list[tuple[int, list[Event]]] = []
    group: list[Event] | None = None
    index = 0
    closed = False
    for position, char in enumerate(marbles):
        where = f"at position {position} of {marbles!r}"
        if char == "#":
            raise ConfigError(
                f"'#' {where}: an inlet cannot send an error; end the diagram with '|' "
                "to close it, or raise in a stream to test failures"
            )
        if char == "(":
            if group is not None:
                raise ConfigError(f"'(' {where} opens a group inside a group")
            group = []
            continue
        if char == ")":
            if group is None:
                raise ConfigError(f"')' {where} closes no group")
            if not group:
                raise ConfigError(f"'()' {where} is an empty group; use '-' for an empty frame")
            frames.append((index, group))
            group = None
            index += 1
            continue
        if char == "-":
            if group is not None:
                raise ConfigError(f"'-' {where} inside a group; a group is one frame")
            index += 1
            continue
        if closed:
            raise ConfigError(f"{char!r} {where} comes after '|', which closed the inlet")
        event: Event = ("close", None) if char == "|" else ("item", values.get(char, char))
        closed = char == "|"
        if group is not None:
            group.append(event)
        else:
            frames.append((index, [event]))
            index += 1
    if group is not None:
        raise ConfigError(f"the group opened in {marbles!r} is never closed with ')'")
    return frames


def symbol(event: Event) -> str:
    kind, value = event
    if kind == "close":
        return "|"
    if kind == "error":
        return "#"
    text = str(value)
    return text if len(text) == 1 else "*"


def draw(events: list[tuple[int, Event]], frame: int) -> str:
    """The marble line of timed ``events`` (ns), ``frame`` ns per character, from time 0 up to
    the frame of the last event."""
    return "".join(draw_frames(events, frame))


def draw_frames(events: list[tuple[int, Event]], frame: int) -> list[str]:
    """:func:`draw`, one string per frame (a group is one frame)."""
    if not events:
        return []
    frames: dict[int, list[str]] = {}
    for t, event in events:
        frames.setdefault(t // frame, []).append(symbol(event))
    out = []
    for k in range(max(frames) + 1):
        marks = frames.get(k)
        if not marks:
            out.append("-")
        elif len(marks) == 1:
            out.append(marks[0])
        else:
            out.append("(" + "".join(marks) + ")")
    return out


def draw_pressure(pauses: list[tuple[int, int]], frame: int, frames: int) -> str:
    """``frames`` characters: ``=`` where the frame overlaps a pause by more than zero, else
    ``-``."""
    out = []
    for k in range(frames):
        start, end = k * frame, (k + 1) * frame
        paused = any(min(end, b) - max(start, a) > 0 for a, b in pauses)
        out.append("=" if paused else "-")
    return "".join(out)


def fitting_frame(duration: int, width: int = 80) -> int:
    """A round frame (1, 2 or 5 times a power of ten, in ns) that draws ``duration`` ns in at
    most ``width`` characters."""
    needed = max(duration // width + 1, 1)
    scale = 1
    while True:
        for step in (1, 2, 5):
            if step * scale >= needed:
                return step * scale
        scale *= 10


def seconds(ns: int) -> str:
    """``ns`` as seconds, without float noise (``0.3``, ``120``)."""
    return f"{ns / NS:.9f}".rstrip("0").rstrip(".")
