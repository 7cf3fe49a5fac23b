"""The acknowledged-source protocol (contract section 12): what a durable source implements.

A workflow fed by an :class:`AckSource` delivers **at least once**: each message is fetched with
a token, travels through the graph, and is passed to :meth:`AckSource.ack` only once it and
every item derived from it are done (see ``_lineage.py``), or to :meth:`AckSource.nack` when it
must come again. What the engine calls, in order::

    await open()                         once, when the run starts
    await fetch(n) -> [(token, item)]    n >= 1 (room downstream, capped by max_in_flight);
                 ...  or None            waits while nothing is available; None: the source ended
    await ack([token, ...])              batched, every commit_interval; tokens in any order
    await nack([token, ...])             messages that must be delivered again
    await close()                        once, however the run ends, after the last ack

One method is optional (not part of the ``isinstance`` check)::

    await fetch_at_stop(n) -> [(token, item)] or None

When ``stop()`` (or SIGTERM) ends the run gracefully, the engine cancels a waiting ``fetch``
and, if the source has ``fetch_at_stop``, calls it in place of ``fetch`` (same ``n``: room and
cap) until it returns ``None``: the messages that ``stop()`` completes (``FileSource``: a
followed file's last line without an ending). It must not wait. Those messages are handled
and acked in the drain, before ``start()`` returns, like every other. Without it, a source
simply stops being fetched.

This module only names the protocol; it imports nothing of the engine, so a source (the shipped
ones in :mod:`mimo_rx.sources`, or a user's) depends on nothing private.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Sequence
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class AckSource(Protocol):
    """A source whose messages are acknowledged once the workflow is done with them.

    ``isinstance(obj, AckSource)`` is true for any object with these five methods, so a source
    need not inherit from this class. Tokens are whatever hashable value the source chooses
    (an offset, a message id, the message object itself).

    A source may also have ``async fetch_at_stop(max_items)``: called by ``stop()`` in place
    of ``fetch`` until it returns ``None``, never waiting, for the messages that the stop
    itself completes (see the module docstring).
    """

    async def open(self) -> None:
        """Connect; called once when the run starts, before the first ``fetch``."""

    async def fetch(self, max_items: int) -> Sequence[tuple[Hashable, Any]] | None:
        """Return between 1 and ``max_items`` ``(token, item)`` pairs, waiting while none is
        available, or ``None`` once the source has ended. ``stop()`` cancels a waiting call."""

    async def ack(self, tokens: Sequence[Hashable]) -> None:
        """The messages of ``tokens`` are done: never deliver them again."""

    async def nack(self, tokens: Sequence[Hashable]) -> None:
        """The messages of ``tokens`` were not handled: deliver them again (later, or to
        another process)."""

    async def close(self) -> None:
        """Release the connection; called once when the run ends, after the last ``ack``."""


def raise_if_cancel_pending() -> None:
    """Raise ``CancelledError`` if the current task was asked to cancel and the request was
    lost on its way: a client library whose read raced its own timeout turned it into a
    timeout or an empty reply.

    ``stop()`` cancels a waiting ``fetch``. A ``fetch`` that loops over a client's reads until
    something comes calls this after each read that brought nothing, so that such a loss
    cannot keep the run going forever. Seen with redis-py 8.1 on Python 3.11: after
    ``stop()`` had cancelled it, a worker's ``XREADGROUP`` went on returning empty replies.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
