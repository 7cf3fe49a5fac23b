"""``feed(inlet, marbles)``: send a marble diagram through an inlet in virtual time."""

from __future__ import annotations

import asyncio
from typing import Any

from .._service import Inlet
from ._marbles import NS, frame_ns, parse


async def feed(
    inlet: Inlet, marbles: str, frame: float = 1.0, values: dict[str, Any] | None = None
) -> None:
    """Send ``marbles`` through ``inlet``: the item of frame ``k`` at ``k * frame`` seconds
    after the call.

    ``values`` maps characters to items (a character it does not map is sent as itself);
    ``( )`` sends several items in one frame; ``|`` closes the inlet. A send that must wait
    for room waits; later sends keep their times but never go before an earlier one.

    Raises:
        ConfigError: the diagram has ``#`` or is malformed (checked before anything is sent),
            or ``frame`` is not positive.
    """
    size = frame_ns(frame)
    frames = parse(marbles, values)
    loop = asyncio.get_running_loop()
    start = round(loop.time() * NS)
    for index, events in frames:
        delay = start + index * size - round(loop.time() * NS)
        if delay > 0:
            await asyncio.sleep(delay / NS)
        for kind, value in events:
            if kind == "close":
                inlet.close()
            else:
                await inlet.send(value)
