"""The ledger of one acknowledged source: done messages batched into acks, and the cap.

* Each fetched message gets a ticket (``_lineage.py``) owned by the ledger. When it
  is done the ledger queues its token for ``ack()`` (or ``nack()``: a ``Failure`` derived from
  it was never taken by a stream).
* A flusher task, owned by the run (started by :meth:`start`, ended by :meth:`finish`, so no
  task outlives ``start()``), passes the queued tokens to the source every
  ``commit_interval`` seconds, and at once when a message is done while the cap is reached.
* At most ``max_in_flight`` messages are fetched and not yet passed to ``ack``/``nack``: the
  source step waits in :meth:`wait_for_room`, a mimo_rx wait the deadlock monitor knows (it can
  end only when a stream downstream moves; the report names the streams holding messages).
* ``fetched == acked + nacked + in_flight`` always (``acked``/``nacked`` count what was passed
  to the source).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from ._lineage import NACK, PAYLOAD, Holder, Ticket

_token = itemgetter(PAYLOAD)  # of a ticket, at C speed

if TYPE_CHECKING:
    from ._acksource import AckSource
    from ._monitor import StepRuntime


class Ledger:
    """Acks and the in-flight cap of one acknowledged source (see the module docstring)."""

    def __init__(
        self, source: AckSource, name: str, max_in_flight: int, commit_interval: float
    ) -> None:
        self.source = source
        self.name = name
        self.max_in_flight = max_in_flight
        self.commit_interval = commit_interval
        self.fetched = 0
        self.acked = 0
        self.nacked = 0
        self._done: list[Ticket] = []  # done, not yet passed to ack()/nack()
        self._flagged = 0  # tickets flagged to be nacked (``failed``) not yet passed on
        # The owner's callback of every ticket, once per message. While the source does not
        # wait for it, it only queues the ticket (a C call: no per-message Python frame);
        # _set_done swaps in the variants that wake the source or, at the end, ignore it.
        self.done: Callable[[Ticket], None] = self._done.append
        self._room: asyncio.Future[None] | None = None  # the source waits for the cap
        self._more: asyncio.Future[None] | None = None  # ... for the low-water mark
        self._need = 0  # the room the source waits for in ``wait_for_more``
        self._short = 0  # ... how many more messages must be done for it (while it waits)
        self._wake: asyncio.Future[None] | None = None  # the flusher waits for its timer
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False
        self._finished = False
        self.error: BaseException | None = None  # ack()/nack() raised: the run fails
        self.on_error: Callable[[BaseException], None] | None = None
        self.holders: list[tuple[Holder, StepRuntime]] = []  # the tracked streams downstream
        self.opened = False

    @property
    def in_flight(self) -> int:
        return self.fetched - self.acked - self.nacked

    def stats(self) -> dict[str, int]:
        return {
            "fetched": self.fetched,
            "acked": self.acked,
            "nacked": self.nacked,
            "in_flight": self.in_flight,
        }

    # -- tickets ---------------------------------------------------------------------------

    def freeze(self) -> None:
        """The run fails or is cancelled: what is done from now on (buffers discarded by
        the shutdown) is not handled; it comes again next time. What was done is acked."""
        self._finished = True
        self._set_done()

    def _set_done(self) -> None:
        """Pick ``done`` for the source's state (see ``__init__``)."""
        if self._finished:  # the run failed, or has ended and closed the source: it comes again
            self.done = _ignore
        elif self._room is not None:
            self.done = self._done_at_cap
        elif self._more is not None:
            self.done = self._done_counted
        else:
            self.done = self._done.append

    def _done_at_cap(self, ticket: Ticket) -> None:
        """``done`` while the cap is reached: pass it on at once. Once the flusher is
        woken, what is done next only queues: the flush takes it too, or flushes again."""
        self._done.append(ticket)
        self._kick()
        self.done = self._done.append

    def _done_counted(self, ticket: Ticket) -> None:
        """``done`` while the source waits for its low-water mark."""
        self._done.append(ticket)
        self._short -= 1
        if not self._short:  # enough is done for the source's low-water mark: one ack
            self._kick()
            self.done = self._done.append  # as _done_at_cap

    def failed(self, ticket: Ticket, failure: Any, taken: bool) -> None:
        if not taken and not ticket[NACK]:
            ticket[NACK] = True
            self._flagged += 1

    # -- the cap ---------------------------------------------------------------------------

    def room(self) -> int:
        return self.max_in_flight - self.in_flight

    def _room_after_flush(self) -> int:
        return self.room() + len(self._done)

    async def wait_for_more(self, need: int, delay: float) -> None:
        """The room is below the source's low-water mark ``need``: wait until the messages
        done free that much (passed to ``ack``/``nack`` in one call), or at most ``delay``
        seconds (then what is done so far is passed on), so that the source fetches in batches
        instead of one message per freed slot. Never a deadlock: the wait always ends."""
        loop = asyncio.get_running_loop()
        self._need = need
        # only done() changes room + queued while the source waits (a flush keeps the sum)
        self._short = need - self._room_after_flush()
        if self._short <= 0:
            self._kick()
        waiter: asyncio.Future[None] = loop.create_future()
        self._more = waiter
        self._set_done()
        timer = loop.call_later(delay, _resolve, waiter)
        try:
            await waiter
            if self.room() < need and self._done and not self._closing:
                # the timer: pass on what is done so far, and fetch as soon as it is
                self._need = 1
                self._short = 0  # due: flushed at once, even after a flush under way
                waiter = loop.create_future()
                self._more = waiter
                self._kick()
                await waiter
        finally:
            timer.cancel()
            self._more = None
            self._need = 0
            self._set_done()

    async def wait_for_room(self, runtime: StepRuntime) -> None:
        """Wait until fewer than ``max_in_flight`` messages are in flight (fetched and not
        yet passed to ``ack``/``nack``)."""
        while self.room() <= 0:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._room = waiter
            self._set_done()
            if self._done:  # done before we waited: send them now
                self._kick()
            parked = runtime.park("fetch()", _CapWait(self), waiter)
            try:
                await waiter
            finally:
                self._room = None
                self._set_done()
                if parked is not None:
                    runtime.unpark(parked)

    # -- the flusher -----------------------------------------------------------------------

    def start(self) -> None:
        self._flusher = asyncio.get_running_loop().create_task(
            self._flush_loop(), name=f"mimo_rx:{self.name}:acks"
        )

    def _kick(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self.commit_interval
        while True:
            if not self._closing and not self._due():
                wake: asyncio.Future[None] = loop.create_future()
                self._wake = wake
                timer = loop.call_later(delay, _resolve, wake)
                try:
                    await wake
                finally:
                    timer.cancel()
                    self._wake = None
            started = loop.time()
            await self._flush(once=not self._closing)
            # what was done during that ack() call is due commit_interval after it began
            delay = self.commit_interval
            if self._done:
                delay = max(0.0, delay - (loop.time() - started))
            if self._closing:
                return

    def _due(self) -> bool:
        """Tokens are queued and the source waits for them (at the cap, or its low-water
        mark is reached): flush again at once rather than at the next commit tick."""
        return bool(self._done) and (
            self._room is not None or (self._more is not None and self._short <= 0)
        )

    async def _flush(self, once: bool = False) -> None:
        """Pass every queued token to the source; counted as passed when the call is made
        (which is when the source waiting for the cap may fetch again). ``once``: one batch
        (what is done meanwhile waits for the next wake, so a slow ``ack()`` is not called
        for every message or two done during the previous call)."""
        while self._done and self.error is None:
            done = self._done[:]
            self._done.clear()  # the same list: ``done`` may be its append
            if self._flagged:  # some are to be nacked
                acks = [ticket[PAYLOAD] for ticket in done if not ticket[NACK]]
                nacks = [ticket[PAYLOAD] for ticket in done if ticket[NACK]]
                self._flagged -= len(nacks)
            else:
                acks, nacks = list(map(_token, done)), []
            self.acked += len(acks)
            self.nacked += len(nacks)
            room = self._room
            if room is not None and not room.done():
                room.set_result(None)
            more = self._more
            if more is not None and not more.done() and self.room() >= self._need:
                more.set_result(None)
            try:
                if acks:
                    await self.source.ack(acks)
                if nacks:
                    await self.source.nack(nacks)
            except Exception as exc:
                self.error = exc
                if self.on_error is not None:
                    self.on_error(exc)
            if once:
                return

    async def finish(self) -> None:
        """The run has ended: send every pending ack (the done ones, however the run
        ended), stop the flusher, then ``close()`` the source."""
        self._closing = True
        self._kick()
        flusher, self._flusher = self._flusher, None
        try:
            if flusher is not None:
                try:
                    await asyncio.shield(flusher)
                except asyncio.CancelledError:
                    flusher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await flusher
                    raise
            await self._flush()
        finally:
            self._finished = True
            self._set_done()
            if self.opened:
                self.opened = False
                await self.source.close()

    def describe_holders(self) -> str:
        held = [
            f"{holder.name!r} ({count})" for holder, _ in self.holders if (count := holder.holds())
        ]
        return ", ".join(held) or "no stream (the messages are buffered)"


class _CapWait:
    """The wait of a source whose ``max_in_flight`` is reached (for the deadlock monitor)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def _describe_wait(self) -> str:
        ledger = self.ledger
        return (
            f"max_in_flight ({ledger.max_in_flight} messages fetched and not yet done); "
            f"the streams holding them: {ledger.describe_holders()}"
        )

    def _wait_can_end(self, stuck: set[StepRuntime]) -> bool:
        """The deadlock monitor's question: can a step outside ``stuck`` free a message?
        Any tracked stream downstream that can move may. Messages done and queued for the
        flusher free room by themselves (it passes them on as soon as an ``ack()`` under way,
        a source's own I/O, has returned), so the wait is not a deadlock then either."""
        ledger = self.ledger
        if ledger._done:
            return True
        return not {runtime for _, runtime in ledger.holders} <= stuck


def _ignore(ticket: Ticket) -> None:
    pass


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
