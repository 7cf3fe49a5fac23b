"""The ordered, thread-safe hand-off from other threads to the workflow's event loop.

Items produced off the loop (a cold observable emitting inside ``subscribe()`` on its worker
thread, a hot ``Subject`` fed by application threads) travel through one :class:`Handoff`, so
they reach the loop in the order they were emitted, whatever thread emitted them. A producer
that may be paused (``block=True``) waits while the hand-off is full: that is how back-pressure
reaches a foreign thread. The loop side takes everything that arrived in one batch, so the
loop is woken once per batch, not once per item.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

# How many items a cold observable may run ahead of the loop before its thread is paused.
HANDOFF_ITEMS = 1024


def _default_capacity() -> int:
    return HANDOFF_ITEMS


class Handoff:
    """The ordered, thread-safe hand-off from other threads to the loop.

    Entries are ``(kind, value)``. An observable source puts ``"cold"`` items (pushed with
    back-pressure), ``"hot"`` items (pushed with the overflow policy), then one terminal
    ``"completed"`` or ``"error"``; an inlet puts ``"cold"`` items sent by
    ``send_threadsafe``. A producer that may be paused (``block=True``) waits while the
    hand-off holds ``capacity()`` entries: a constant for cold observables, the room left
    downstream for inlets. While a producer waits, ``blocked`` is positive and the loop side
    is woken, so it can wait for room downstream on the producer's behalf and ``notify()`` it.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, capacity: Callable[[], int] | None = None
    ) -> None:
        self.loop = loop
        self.capacity = capacity or _default_capacity
        self.entries: deque[tuple[str, Any]] = deque()
        self.lock = threading.Condition(threading.Lock())
        self.waiter: asyncio.Future[None] | None = None  # the source task, waiting for entries
        self.wake_scheduled = False
        self.stopped = False  # the source task ended: producers must stop
        self.sealed = False  # no new producer may put (an inlet was closed)
        self.blocked = 0  # producers waiting for room
        self.credit = 0  # puts that capacity() allowed at its last look and are not made yet
        self.terminated = False  # a terminal signal was received: ignore anything after it
        self.settled = threading.Event()  # subscribe() returned, or its thread is paused
        self.returned = False  # subscribe() has returned or raised
        self.late_error: Exception | None = None  # subscribe() raised after completing

    def put(self, kind: str, value: Any, block: bool, deadline: float | None = None) -> bool:
        """Append an entry (from any thread); block a pausable producer while the hand-off is
        full, until ``deadline`` (``time.monotonic()``) if given.

        Returns ``False`` when the entry was refused: the loop side has stopped, or the
        hand-off was sealed before this call.

        Raises:
            TimeoutError: ``deadline`` passed while the producer was waiting; nothing was put.
        """
        with self.lock:
            if self.stopped or self.sealed:
                return False
            if self.terminated:
                return True  # a misbehaving source: nothing after the terminal signal counts
            if kind in ("completed", "error"):
                self.terminated = True
            if block:
                if self.credit <= 0:
                    # Entries move downstream only as room is used, so what capacity() allows
                    # now stays allowed: look again only once this credit is spent.
                    self.credit = self.capacity() - len(self.entries)
                    while self.credit <= 0 and not self.stopped:
                        self._wait_for_room(deadline)
                        self.credit = self.capacity() - len(self.entries)
                    if self.stopped:
                        return False
                self.credit -= 1
            self.entries.append((kind, value))
            # One wake-up per batch: the loop takes everything that arrived in the meantime.
            self._schedule_wake()
            return True

    def _wait_for_room(self, deadline: float | None) -> None:
        # Called with the lock held.
        self.settled.set()
        self.blocked += 1
        self._schedule_wake()  # the loop side waits for room downstream, then notifies
        try:
            if deadline is None:
                self.lock.wait()
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out waiting for room downstream; nothing was sent")
            self.lock.wait(remaining)
        finally:
            self.blocked -= 1

    def notify(self) -> None:
        """Room appeared downstream: let waiting producers look again (from the loop)."""
        with self.lock:
            self.lock.notify_all()

    def seal(self) -> None:
        """Refuse every later ``put`` (producers already waiting go on), and wake the loop."""
        with self.lock:
            self.sealed = True
            self._schedule_wake()

    def subscribe_failed(self, error: Exception) -> None:
        """subscribe() raised: an error entry, or a late error once the source completed."""
        with self.lock:
            if self.terminated:
                self.late_error = error
                return
        self.put("error", error, block=False)

    def subscribe_returned(self) -> None:
        """subscribe() has returned (or raised): wake the loop, which may be waiting for it."""
        with self.lock:
            self.returned = True
            self.settled.set()
            self._schedule_wake()

    async def wait(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait until something is put or subscribe() returns.

        A hot source or a thread makes progress without us, so this wait is never a
        deadlock candidate (it is not parked).
        """
        waiter: asyncio.Future[None] = loop.create_future()
        self.waiter = waiter
        try:
            await waiter
        finally:
            self.waiter = None

    def _schedule_wake(self) -> None:
        # Called with the lock held; at most one wake-up is in flight at a time.
        if self.wake_scheduled:
            return
        self.wake_scheduled = True
        if on_loop_thread(self.loop):
            self._wake()
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the run is over
                self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take_all(self) -> list[tuple[str, Any]]:
        with self.lock:
            batch = list(self.entries)
            self.entries.clear()
            self.wake_scheduled = False
            self.lock.notify_all()
        return batch

    def stop(self) -> None:
        """The loop side stops: refuse every later ``put``, release waiting producers (their
        ``put`` returns ``False``) and wake the loop side to take what is left."""
        with self.lock:
            self.stopped = True
            self.lock.notify_all()
            self._schedule_wake()


def _nothing() -> None:
    pass


def thread_work(loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """Tell ``loop`` that work was sent to another thread; call the returned function (from
    any thread) once the work's result has been handed to the loop.

    Only ``mimo_rx.testing``'s virtual-time loop counts it (its clock then runs at real speed
    rather than jumping past the thread); on any other loop this is one ``getattr``.
    """
    begin = getattr(loop, "mimo_thread_work", None)
    return _nothing if begin is None else begin()


def on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
