"""Ports: the bounded input buffer with its back-pressure controller, and the output Subject.

One item's whole path lives in this module::

    await outs.y.push(item)        Output.push: if every connected input has room, deliver at
      -> Input._deliver(item)      once (no suspension); else park until the full ones drain
    await ins.x.pop()              Input.pop: take from the buffer (no suspension while it has
      -> Input._release_producers  items); at the low-water mark wake the paused producers

Design rules (after trio's channels):

* **The fast path does not suspend.** A push with room and a pop with items return without
  yielding to the loop, so a producer runs up to ``threshold`` items ahead of its consumer and
  each side yields once per buffer-full instead of once per item.
* **Hysteresis.** A paused producer is woken when the buffer has drained to half its threshold
  (the low-water mark), not after every pop. When the consumer itself has to wait for anything
  the producers are woken at once, so hysteresis never turns into a deadlock (see
  ``StepRuntime.park``).
* **Cancellation is atomic.** A cancelled ``pop``/``peek`` loses no item: items are taken from
  the buffer only after the wait is over, in the same step. A cancelled ``push`` delivers to no
  input at all: under fan-out it first waits until *every* connected input has room, then
  delivers to all of them without suspending.
* **Batches follow the same rules.** ``pop_many``/``batches()`` wait like ``pop`` and take
  what is buffered in one step; ``push_many`` delivers chunks as large as every connected input
  has room for, each chunk to all inputs without suspending, so a cancelled call has delivered
  a prefix (whole chunks) and nothing twice.
* **Never silently lost.** Every item an input receives is taken, dropped by a policy the user
  chose, discarded because its stream finished, or still buffered:
  ``received == taken + dropped + discarded + len(buffer)``. Each item is counted once on
  the hot path, where it is pushed (``Output.pushed``); an input derives ``received`` from its
  upstream outputs' counts and ``taken`` from the rest, so ``pop`` counts nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, Generic, Literal, TypeVar

from reactivex import abc as rx_abc
from reactivex.subject import Subject

from ._batches import Batches, IterChunks, SliceChunks
from ._errors import BufferOverflowError, ClosedError, ConfigError, EndOfStream, MimoError
from ._monitor import StepRuntime
from ._unawaited import recognise

T = TypeVar("T")

DEFAULT_BUFFER_SIZE = 1024

Policy = Literal["buffer", "drop_newest", "drop_oldest", "latest", "error"]
POLICIES: tuple[str, ...] = ("buffer", "drop_newest", "drop_oldest", "latest", "error")
# Per-pipe policies: "block" is back-pressure; the others never pause the pushing output.
# "discard" is internal (an outlet whose body has ended): a full input discards arrivals.
PIPE_POLICIES: tuple[str, ...] = ("block", *POLICIES)
_LOSSY_POLICIES: tuple[str, ...] = (*POLICIES, "discard")

# The runtime of ports that are not running in a workflow: nothing is tracked.
_IDLE = StepRuntime("", None, [])


def check_buffer_size(size: object, where: str) -> int:
    """Return ``size`` if it is a valid threshold, else raise ``ConfigError`` naming ``where``."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"buffer_size of {where} must be an integer >= 1, not {size!r}")
    return size


class Input(Generic[T]):
    """A stream's input port: a bounded FIFO buffer fed by one or more outputs.

    Inside ``async def run`` use ``await ins.x.pop()``, ``await ins.x.peek()`` or
    ``async for item in ins.x``. ``len(ins.x)`` is the number of buffered items. Streams make
    their ports; reach one from outside a run with ``stream.input('x')``.
    """

    __slots__ = (
        "_closed",
        "_feeders",
        "_finished",
        "_getter",
        "_held",
        "_holder",
        "_items",
        "_low",
        "_mark",
        "_more_getters",
        "_open_upstreams",
        "_paused_done",
        "_pausing",
        "_producers",
        "_rt",
        "_tags",
        "_took",
        "_upstreams",
        "discarded",
        "dropped",
        "name",
        "peak",
        "stream_name",
        "threshold",
    )

    def __init__(self, name: str, stream_name: str) -> None:
        self.name = name
        self.stream_name = stream_name
        self._items: deque[T] = deque()
        self.threshold = DEFAULT_BUFFER_SIZE
        self._low = DEFAULT_BUFFER_SIZE // 2
        self._open_upstreams = 0
        self._closed = False
        self._finished = False  # the consuming stream returned: arrivals are discarded
        self._getter: asyncio.Future[None] | None = None
        self._more_getters: list[asyncio.Future[None]] = []  # other tasks popping this input
        self._producers: deque[asyncio.Future[None]] = deque()  # paused, first paused first
        self._rt = _IDLE
        self._upstreams: list[Output[T]] = []  # connected outputs
        self._feeders: list[Output[T]] = []  # outputs whose ``pushed`` counts our arrivals
        self.dropped = 0
        self.discarded = 0
        self.peak = 0
        self._mark = 0  # min(peak, threshold): below it, Output.push needs no other check
        self._paused_done = 0.0  # seconds of the pauses that have ended
        self._pausing: list[float] = []  # perf_counter() at the start of each pause going on
        # Lineage (contract section 12, see _lineage.py): set only on tracked inputs. _tags
        # (the tags of the buffered items) is None while untracked. An input tracked mid-run
        # (an inlet's first send_and_wait) may have a pop() or async for waiting: once woken
        # it takes through the tracked class, so the item's tag is held while it is handled.
        self._tags: Any = None
        self._held: Any = None
        self._holder: Any = None
        self._took: Any = None  # the last take of a synchronous view (a plain def's call)

    # -- consumer side -------------------------------------------------------------------

    async def pop(self) -> T:
        """Remove and return the next item, waiting while the buffer is empty.

        Raises:
            EndOfStream: the input is closed (every upstream closed) and nothing is buffered.
        """
        items = self._items
        if not items:
            await self._wait_for_item("pop()")
            if self._tags is not None:  # tracked since (see ``_tags``): the tracked take
                return await self.pop()
        item = items.popleft()
        if self._producers and len(items) <= self._low:
            self._release_producers()
        return item

    async def peek(self) -> T:
        """Return the next item without removing it, waiting while the buffer is empty.

        Raises:
            EndOfStream: the input is closed (every upstream closed) and nothing is buffered.
        """
        if not self._items:
            await self._wait_for_item("peek()")
        return self._items[0]

    async def pop_many(self, max_items: int | None = None) -> list[T]:
        """Remove and return the buffered items, in order, waiting while there are none.

        One call takes what a buffer-full of ``pop()`` calls would, at the cost of one: for
        code that handles items in bulk. Like ``pop()`` it takes nothing until the wait is
        over, so a cancelled call loses no item.

        Args:
            max_items: take at most this many (the oldest first); ``None`` takes them all.

        Returns:
            A non-empty list of items.

        Raises:
            ConfigError: ``max_items`` is not an integer >= 1 (or ``None``).
            EndOfStream: the input is closed (every upstream closed) and nothing is buffered.
        """
        if max_items is not None:
            self._check_max_items(max_items, "pop_many")
        if not self._items:
            await self._wait_for_item("pop_many()")
        return self._take_batch(max_items)

    def batches(self, max_items: int | None = None) -> Batches[T]:
        """Iterate lists of items until end of stream: ``async for batch in ins.x.batches():``.

        Each step is ``await pop_many(max_items)``. The iterator is a plain object (no task,
        no async generator to finalise), so leaving the loop early needs no clean-up.

        Raises:
            ConfigError: ``max_items`` is not an integer >= 1 (or ``None``), at the call.
        """
        if max_items is not None:
            self._check_max_items(max_items, "batches")
        return Batches(self, max_items)

    def _check_max_items(self, max_items: object, method: str) -> None:
        if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
            raise ConfigError(
                f"{method}(max_items={max_items!r}) on input {self.name!r} of stream "
                f"{self.stream_name!r}: max_items must be an integer >= 1, or None to take "
                "everything buffered"
            )

    def _take_batch(self, max_items: int | None) -> list[T]:
        """Take up to ``max_items`` buffered items (all when ``None``); the caller has waited
        until at least one is buffered."""
        items = self._items
        if max_items is None or max_items >= len(items):
            batch = list(items)
            items.clear()
        else:
            popleft = items.popleft
            batch = [popleft() for _ in range(max_items)]
        if self._producers and len(items) <= self._low:
            self._release_producers()
        return batch

    def hold(self) -> Held:
        """Keep the item (or batch) last taken from this input held past the next take,
        until ``release()`` on what this returns (contract section 12: for state kept across
        items, such as windows or buffered writes). It matters only downstream of an
        acknowledged source; elsewhere the handle does nothing."""
        return Held()

    def _hold_sync(self) -> Held:
        """``hold()`` of a plain ``def``'s synchronous view: the item it last took with the
        view during the call under way (the lineage module's tracked input does the holding)."""
        return Held()

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        items = self._items
        if not items:
            try:
                await self._wait_for_item("async for")
            except EndOfStream:
                raise StopAsyncIteration from None
            if self._tags is not None:  # tracked since (see ``_tags``): the tracked take
                return await self.__anext__()
        item = items.popleft()
        if self._producers and len(items) <= self._low:
            self._release_producers()
        return item

    def __len__(self) -> int:
        return len(self._items)

    @property
    def buffered(self) -> int:
        """Items waiting in the buffer now."""
        return 0 if self._finished else len(self._items)

    @property
    def received(self) -> int:
        """Items delivered to this input so far: every item its upstream outputs pushed."""
        total = 0
        for feeder in self._feeders:  # a loop, not sum(genexpr): plain-def steps read it per call
            total += feeder.pushed
        return total

    @property
    def taken(self) -> int:
        """Items the stream took: whatever was received and is not dropped, discarded or
        still buffered (derived, so that ``pop`` counts nothing).

        Read from another thread while the run goes on, it may count a few items short, not
        over: ``received`` is read first and every write counts an item in ``buffered``,
        ``dropped`` or ``discarded`` before ``received`` counts it, and in ``dropped`` or
        ``discarded`` before it leaves ``buffered``. (One exception: an Rx operator stage whose
        chain fails or completes mid-batch gives the rest of the batch back with
        ``_give_back``; a read in between counted it taken.) ``Workflow.stats()`` reads on
        the loop, where none of this applies.
        """
        received = self.received
        buffered = self.buffered
        return received - buffered - self.dropped - self.discarded

    @property
    def paused_s(self) -> float:
        """Seconds producers spent paused by this full input (summed over producers),
        including the pauses still going on: it grows while a stall lasts."""
        done = self._paused_done  # read before the pauses: an ending one is counted once
        now = time.perf_counter()
        going_on = tuple(self._pausing)
        return done + sum(now - start for start in going_on if start < now)

    @property
    def exhausted(self) -> bool:
        """True once the input is closed and nothing is left buffered."""
        return self._closed and not self._items

    @property
    def closed(self) -> bool:
        """True once every upstream output has closed (items may still be buffered)."""
        return self._closed

    def __repr__(self) -> str:
        return (
            f"<Input {self.stream_name}.{self.name} {len(self._items)}/{self.threshold}"
            f"{' closed' if self._closed else ''}>"
        )

    async def _wait_for_item(self, what: str) -> None:
        """Wait until an item is buffered; raise ``EndOfStream`` if none ever will be."""
        while not self._items:
            if self._closed:
                raise EndOfStream(self.stream_name, self.name)
            getter: asyncio.Future[None] = (
                self._rt.loop or asyncio.get_running_loop()
            ).create_future()
            primary = self._getter is None or self._getter.done()  # done: a stale slot
            if primary:
                self._getter = getter  # woken by _deliver / _upstream_closed
            else:
                self._more_getters.append(getter)  # woken by the primary waiter
            parked = self._rt.park(what, self, getter)
            try:
                await getter
            finally:
                if parked is not None:
                    self._rt.unpark(parked)
                if primary:
                    if self._getter is getter:  # not woken (cancelled): forget it
                        self._getter = None
                    if self._more_getters:
                        # Whether woken or cancelled, hand over: every other waiter re-checks.
                        more, self._more_getters = self._more_getters, []
                        for other in more:
                            if not other.done():
                                other.set_result(None)
                elif getter in self._more_getters:
                    self._more_getters.remove(getter)

    def _take_all(self) -> list[T]:
        """Take everything buffered at once (Rx operator streams feed their chain in batches)."""
        batch = list(self._items)
        self._items.clear()
        if self._producers:
            self._release_producers()
        return batch

    def _give_back(self, items: list[T]) -> None:
        """Return items taken by ``_take_all`` but not consumed, to the front of the buffer."""
        self._items.extendleft(reversed(items))
        if len(self._items) > self.peak:
            self._note_peak(len(self._items))

    def _take_now(self) -> T:
        """Synchronous pop for the mimo 1.0 protocol (``IndexError`` when empty)."""
        item = self._items.popleft()
        if self._producers and len(self._items) <= self._low:
            self._release_producers()
        return item

    # -- producer side (called by Output) -------------------------------------------------

    def _has_room(self) -> bool:
        return len(self._items) < self.threshold

    def _deliver(self, item: T) -> None:
        """Buffer one item; the caller has checked there is room (or does not need it).

        ``Output.push`` inlines this: keep the two in step.
        """
        self._items.append(item)
        self._arrived()

    def _deliver_many(self, items: Sequence[T]) -> None:
        """Buffer several items at once; the caller has checked there is room."""
        self._items.extend(items)
        self._arrived()

    def _arrived(self) -> None:
        """After items were buffered: track the peak and wake a waiting consumer."""
        size = len(self._items)
        if size > self.peak:
            self._note_peak(size)
        if self._getter is not None:
            self._wake_getter()

    def _note_peak(self, size: int) -> None:
        """``size`` items are buffered, more than ever before: the new peak, and the new mark
        below which ``Output.push`` needs no other check."""
        if self._finished:  # the length of a _DiscardSink counts discards, not buffered items
            return
        self.peak = size
        self._mark = size if size < self.threshold else self.threshold

    def _wake_getter(self) -> None:
        """Wake the consumer waiting for an item and clear the slot: until it waits again,
        a push sees ``_getter is None`` and skips this call."""
        getter = self._getter
        self._getter = None
        if getter is not None and not getter.done():
            getter.set_result(None)

    def _offer(self, item: T, policy: str, source: str) -> None:
        """Deliver from a source that cannot be paused, applying its overflow ``policy``."""
        if len(self._items) < self.threshold or policy == "buffer" or self._finished:
            self._deliver(item)  # a finished input's sink counts it as discarded
            return
        if policy == "drop_newest":
            self.dropped += 1
        elif policy == "drop_oldest":
            self.dropped += 1  # before it leaves the buffer: see ``taken``
            self._items.popleft()
            self._deliver(item)
        elif policy == "latest":
            self.dropped += len(self._items)
            self._items.clear()
            self._deliver(item)
        elif policy == "discard":
            self.discarded += 1
        elif policy == "error" and source.startswith("pipe:"):
            raise BufferOverflowError(
                self.stream_name, self.name, self.threshold, source[5:], pipe=True
            )
        else:
            raise BufferOverflowError(self.stream_name, self.name, self.threshold, source)

    def _release_producers(self) -> None:
        """Wake paused producers, first paused first, as many as there is room for.

        Waking them all would make a wide fan-in thrash: hundreds of producers woken for a
        few free places, most of them only to pause again.
        """
        producers = self._producers
        room = self.threshold - len(self._items)
        woken = 0
        while producers and woken < room:
            fut = producers.popleft()
            if not fut.done():
                fut.set_result(None)
                woken += 1

    def _release_all_producers(self) -> None:
        producers, self._producers = self._producers, deque()
        for fut in producers:
            if not fut.done():
                fut.set_result(None)

    def _upstream_closed(self) -> None:
        self._open_upstreams -= 1
        if self._open_upstreams <= 0 and not self._closed:
            self._closed = True
            self._wake_getter()

    def _finish(self) -> None:
        """The consuming stream is done: discard what is left and never block producers."""
        if self._finished:
            return
        self.discarded += len(self._items)  # before ``buffered`` reads 0: see ``taken``
        self._finished = True
        # From now on every arrival is counted and dropped on the floor, with no branch on
        # the producers' fast path: the buffer is replaced by a sink that is always empty.
        self._items = _DiscardSink(self)
        self._release_all_producers()
        for upstream in self._upstreams:
            upstream._live_targets -= 1
            upstream._refresh_fast_path()

    def _describe_wait(self) -> str:
        state = "closed" if self._closed else "empty" if not self._items else "has items"
        return f"input {self.name!r} ({state}, {len(self._items)}/{self.threshold} buffered)"

    def _feeding_steps(self) -> set[StepRuntime]:
        """The steps that can still push here (through an open output)."""
        return {out._rt for out in self._upstreams if not out.closed}

    def _wait_can_end(self, stuck: set[StepRuntime]) -> bool:
        # An empty input gets an item (or its end) from any feeder that can move.
        feeders = self._feeding_steps()
        return not feeders or not feeders <= stuck

    def _configure(self, threshold: int, upstreams: int, runtime: StepRuntime) -> None:
        self.threshold = threshold
        self._low = threshold // 2
        self._mark = min(self.peak, threshold)
        self._open_upstreams = upstreams
        self._closed = upstreams == 0
        self._rt = runtime


class Held:
    """What ``Input.hold()`` returns; ``release()`` (or leaving a ``with`` block) lets the
    held item go. The lineage module returns a subclass that does the holding."""

    __slots__ = ()

    def release(self) -> None:
        """Let go of the held item (or batch); releasing twice does nothing."""

    def __enter__(self) -> Held:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class AnyInput:
    """Several inputs waited on together (a step function or an Rx operator stream)."""

    def __init__(self, inputs: list[Input[Any]]) -> None:
        self.inputs = inputs

    def _describe_wait(self) -> str:
        return "any of " + ", ".join(port._describe_wait() for port in self.inputs)

    def _wait_can_end(self, stuck: set[StepRuntime]) -> bool:
        # Any feeder of any of the inputs that can move ends the wait.
        feeders = set().union(*(port._feeding_steps() for port in self.inputs))
        return not feeders or not feeders <= stuck


class _DiscardSink(deque[T]):
    """The buffer of an input whose stream has finished: counts each arrival as discarded.

    It reports the arrivals since the producer last yielded as its length, so a producer
    feeding only finished consumers still finds it "full" every ``threshold`` items and
    yields to the loop (``Output._wait_for_room``) instead of monopolising it.
    """

    def __init__(self, port: Input[T]) -> None:
        super().__init__()
        self._port = port
        self.since_yield = 0

    def append(self, item: T) -> None:
        self._port.discarded += 1
        self.since_yield += 1

    def extend(self, items: Iterable[T]) -> None:
        count = len(list(items))
        self._port.discarded += count
        self.since_yield += count

    def __len__(self) -> int:
        return self.since_yield

    def __bool__(self) -> bool:
        return False


class Output(Subject[T]):
    """A stream's output port: an Rx ``Subject`` whose ``push`` is back-pressured.

    ``await outs.y.push(item)`` delivers ``item`` to every connected input (each gets every
    item, in push order) and to every Rx subscriber. It suspends while any connected input is
    full. Subscribe with Rx as usual: ``stream.output('y').pipe(ops.map(str)).subscribe(print)``.
    Streams make their ports; reach one from outside a run with ``stream.output('y')``.
    """

    # Slots for what push reads (Subject's own attributes stay in the instance dict): a slot
    # is read as fast after the lineage module switches the class (see _lineage.switch_class).
    __slots__ = (
        "_fast_target",
        "_holder",
        "_live_targets",
        "_lossy",
        "_rt",
        "_since_yield",
        "_switched",
        "_tfast",
        "closed",
        "name",
        "pushed",
        "stream_name",
        "targets",
    )

    def __init__(self, name: str, stream_name: str) -> None:
        super().__init__()
        self.name = name
        self.stream_name = stream_name
        self._holder: Any = None  # the lineage module's (tracked outputs only)
        self._tfast: Any = None
        self.targets: list[Input[T]] = []  # the inputs pushes wait for (policy "block")
        # Inputs piped with another policy, which a push never waits for; while there is
        # any, the instance's push methods are the _lossy variants (see _use_lossy_push).
        self._lossy: list[tuple[Input[T], str]] = []
        self._since_yield = 0  # lossy pushes since the producer last yielded
        # Inputs switched to a lossy policy during the run (_set_policy): an internal Rx
        # observer delivers to them, so that every push (also a push method a producer
        # looked up before the switch) reaches them.
        self._switched: _SwitchedInputs[T] | None = None
        self._fast_target: Input[T] | None = None  # see _refresh_fast_path
        self._live_targets = 0  # connected inputs whose stream has not finished
        self.pushed = 0
        self.closed = False
        self._rt = _IDLE

    async def push(self, item: T) -> bool:
        """Deliver ``item`` to every connected input, waiting while any of them is full.

        Returns:
            ``True`` once the item is accepted.

        Raises:
            ClosedError: the output was closed before.
        """
        # This is the hottest code in mimo_rx. The common case (one connected input with
        # room, below its peak so far, no Rx subscriber, not closed) takes one comparison;
        # everything else takes the general path below. See ``_refresh_fast_path``.
        target = self._fast_target
        if target is not None:
            items = target._items
            if len(items) < target._mark:
                items.append(item)
                self.pushed += 1
                if target._getter is not None:
                    target._wake_getter()
                return True
        if self.closed:
            raise ClosedError(self.stream_name, self.name)
        targets = self.targets
        for target in targets:
            if len(target._items) >= target.threshold:
                await self._wait_for_room()
                break
        for target in targets:  # Input._deliver, inlined (fan-out is hot too)
            items = target._items
            items.append(item)
            if len(items) > target.peak:
                target._note_peak(len(items))
            if target._getter is not None:
                target._wake_getter()
        self.pushed += 1  # once buffered: see ``Input.taken``
        if self.observers:
            self._notify(item)
        return True

    def _refresh_fast_path(self) -> None:
        """Enable ``push``'s one-comparison path only where it needs to do nothing else:
        exactly one connected input, whose stream has not finished, no lossy pipe, no Rx
        subscriber, and the output still open. Connecting and a consumer finishing recompute
        it; closing and subscribing clear ``_fast_target`` themselves (an unsubscribe does not
        re-enable it). Code that inlines the fast path (``InletStream.send``, the hot
        source's ``_SourceObserver.on_next``) relies on ``_fast_target`` being ``None``
        whenever ``push`` has more to do, also when ``push`` is swapped for a variant
        (``_use_lossy_push``)."""
        fast = len(self.targets) == 1 and not self._lossy and not self.closed and not self.observers
        target = self.targets[0] if fast else None
        self._fast_target = None if target is None or target._finished else target

    def _subscribe_core(
        self, observer: rx_abc.ObserverBase[T], scheduler: rx_abc.SchedulerBase | None = None
    ) -> rx_abc.DisposableBase:
        self._fast_target = None  # every push must now reach the Rx subscriber too
        return super()._subscribe_core(observer, scheduler)

    def _room_limit(self) -> int:
        """The smallest threshold among the connected inputs (how much one batch may hold)."""
        return min((t.threshold for t in self.targets), default=DEFAULT_BUFFER_SIZE)

    def _room(self) -> int:
        """How many items every connected input can take right now without waiting."""
        return min((t.threshold - len(t._items) for t in self.targets), default=DEFAULT_BUFFER_SIZE)

    async def push_many(self, items: Iterable[T]) -> bool:
        """Push the items of ``items`` in order, as successive ``push`` calls would.

        Every connected input gets every item and Rx subscribers see each one; no buffer
        holds more than its threshold because of it. The items go out in chunks as large as
        every connected input has room for, so the call suspends only when an input is full.
        Other iterables than a list, tuple or range are pulled only as far as there is room
        (plus the one item a loop of ``push`` calls would be holding while it waits).

        Cancelled, it has delivered a prefix of the items, each to every connected input,
        and no item twice: a chunk is pulled only once there is room for it, and delivered
        to all inputs without suspending.

        Returns:
            ``True`` once every item is accepted.

        Raises:
            ClosedError: the output was closed before.
        """
        if self.closed:
            raise ClosedError(self.stream_name, self.name)
        chunks: SliceChunks[T] | IterChunks[T] = (
            SliceChunks(items)
            if isinstance(items, list | tuple | range)  # slicing them is cheaper than islice
            else IterChunks(iter(items))
        )
        targets = self.targets
        while True:
            # One input and no Rx subscriber: skip the general case. With no input at all,
            # _room() makes chunks of DEFAULT_BUFFER_SIZE (for Rx subscribers).
            target = self._fast_target
            room = target.threshold - len(target._items) if target is not None else self._room()
            if room <= 0:
                if chunks.exhausted():  # return as the last push would, without waiting
                    return True
                await self._wait_for_room("push_many()")
                continue
            chunk = chunks.take(room)
            if not chunk:
                return True
            for target in targets:
                target._deliver_many(chunk)
            self.pushed += len(chunk)  # once buffered: see ``Input.taken``
            if self.observers:
                for item in chunk:
                    self._notify(item)

    def close(self) -> None:
        """End the output: connected inputs see end of stream after the items already pushed.

        Closing twice is harmless. Rx subscribers receive ``on_completed``.
        """
        if self.closed:
            return
        self.closed = True
        self._fast_target = None
        for target in self.targets:
            target._upstream_closed()
        for target, _ in self._lossy:
            target._upstream_closed()
        if self._switched is not None:
            for target, _ in self._switched.inputs:
                target._upstream_closed()
        Subject.on_completed(self)

    # Subject is also an Observer; feeding it with on_next would bypass back-pressure.
    def on_next(self, value: T) -> None:
        raise MimoError(
            f"output {self.name!r} of stream {self.stream_name!r} is fed only by its stream: "
            "use 'await push(item)' inside run(), or add an observable to the workflow with "
            "workflow.add_source(observable) and pipe it"
        )

    def _notify(self, item: T) -> None:
        for observer in list(self.observers):
            observer.on_next(item)

    def _fail(self, error: Exception) -> None:
        """Tell Rx subscribers the run ended without closing this output."""
        if not self.closed:
            self.closed = True
            self._fast_target = None
            Subject.on_error(self, error)

    def _push_unpaused(self, item: T, policy: str, source: str) -> None:
        """Deliver from a source that cannot be paused: each full input applies ``policy``."""
        if self.closed:
            raise ClosedError(self.stream_name, self.name)
        try:
            for target in self.targets:
                target._offer(item, policy, source)
        finally:  # once buffered (see ``Input.taken``), also when a policy raises
            self.pushed += 1
        if self.observers:
            self._notify(item)

    async def _wait_for_room(self, what: str = "push()") -> None:
        """Park until every connected input has room (or has finished); ``what`` names the
        wait in a deadlock report."""
        loop = self._rt.loop or asyncio.get_running_loop()
        while True:
            full = next((t for t in self.targets if not t._has_room()), None)
            if full is None:
                return
            if full._finished:  # nobody will drain it: just let the others run once
                full._items.since_yield = 0  # type: ignore[attr-defined]
                await asyncio.sleep(0)
                continue
            waiter: asyncio.Future[None] = loop.create_future()
            full._producers.append(waiter)
            parked = self._rt.park(what, self, waiter)
            events = self._rt.events  # workflow.events: None while nobody listens
            if events is not None:
                event = {"stream": self.stream_name, "output": self.name}
                event["target"] = f"{full.stream_name}.{full.name}"
                events({"event": "paused", **event})
            started = time.perf_counter()
            full._pausing.append(started)  # paused_s counts it while it lasts
            try:
                await waiter
            finally:
                paused = time.perf_counter() - started
                full._pausing.remove(started)  # first: a reader never counts it twice
                full._paused_done += paused
                if parked is not None:
                    self._rt.unpark(parked)
                if not waiter.done():  # cancelled: do not leave a dead waiter behind
                    full._producers.remove(waiter)
                if events is not None:  # also when cancelled: every pause ends
                    events({"event": "resumed", **event, "paused_s": round(paused, 6)})

    @property
    def abandoned(self) -> bool:
        """True when nothing will ever see another push (sources stop pulling then).

        That is: every connected input's stream has finished and no Rx observer is subscribed.
        """
        switched = self._switched
        own = 0 if switched is None else 1  # the internal observer of switched inputs
        connected = bool(self.targets or self._lossy or (switched and switched.inputs))
        return self._live_targets <= 0 and connected and len(self.observers) <= own

    def _connect(self, target: Input[T], policy: str = "block") -> None:
        if policy == "block":
            self.targets.append(target)
        else:
            self._lossy.append((target, policy))
            self._use_lossy_push()
        self._refresh_fast_path()
        self._live_targets += 1
        target._upstreams.append(self)
        target._feeders.append(self)

    # -- per-pipe policies -----------------------------------------------------------------
    #
    # A pipe with a policy other than "block" never pauses this output. Rather than a branch
    # per item in push() for a feature most graphs do not use, an output that gets such a
    # pipe swaps its push methods for the variants below on the instance: they deliver to
    # the blocking targets exactly as before, then offer the item to each lossy input.

    def _use_lossy_push(self) -> None:
        self.push = self._push_lossy  # type: ignore[method-assign]
        self.push_many = self._push_many_lossy  # type: ignore[method-assign]
        self._push_unpaused = self._push_unpaused_lossy  # type: ignore[method-assign]

    def _use_plain_push(self) -> None:
        for name in ("push", "push_many", "_push_unpaused"):
            self.__dict__.pop(name, None)

    async def _push_lossy(self, item: T) -> bool:
        """``push`` of an output with lossy pipes (see :meth:`_use_lossy_push`): waits for
        the blocking inputs only.

        A lossy input never pauses the producer, so the producer yields to the loop once
        per threshold's worth of items instead: it must not monopolise the loop (a
        generator source feeding only lossy pipes would otherwise never let anyone run).
        """
        await self._before_delivery()
        self._deliver_all(item)
        return True

    async def _before_delivery(self) -> None:
        """What a push does before it delivers, on every path but the plain one: yield to
        the loop when lossy pipes make it due (before delivering: a cancelled push delivers
        nothing), refuse when closed, wait while a blocking input is full."""
        if self._lossy and self._yield_due():
            await asyncio.sleep(0)
        if self.closed:
            raise ClosedError(self.stream_name, self.name)
        for target in self.targets:
            if len(target._items) >= target.threshold:
                await self._wait_for_room()
                break

    def _yield_due(self) -> bool:
        """Count one lossy push; true once per threshold's worth of them (the producer
        then yields to the loop)."""
        self._since_yield += 1
        if self._since_yield > self._lossy[0][0].threshold:
            self._since_yield = 0
            return True
        return False

    def _deliver_all(self, item: T) -> None:
        """Deliver one item to every input (each lossy one applying its policy) and to the
        Rx subscribers; the blocking inputs have room."""
        try:
            for target in self.targets:
                target._deliver(item)
            self._offer_lossy(item)
        finally:  # once buffered (see ``Input.taken``), also when a policy raises
            self.pushed += 1
        if self.observers:
            self._notify(item)

    async def _push_many_lossy(self, items: Iterable[T]) -> bool:
        """``push_many`` with lossy pipes: item by item, pulled as they go, so a cancelled
        call has delivered a prefix of the items to every input."""
        if self.closed:
            raise ClosedError(self.stream_name, self.name)
        for item in items:
            await self._push_lossy(item)
        return True

    def _push_unpaused_lossy(self, item: T, policy: str, source: str) -> None:
        """``_push_unpaused`` with lossy pipes: each pipe's own policy applies at its input."""
        Output._push_unpaused(self, item, policy, source)
        self._offer_lossy(item)

    def _offer_lossy(self, item: T) -> None:
        source = "pipe:" + self.stream_name
        for target, policy in self._lossy:
            target._offer(item, policy, source)

    def _set_policy(self, target: Input[T], policy: str) -> None:
        """Switch the connected input ``target`` to ``policy`` during a run.

        Producers parked on it are released: they look again, and no longer wait for it
        when it is not ``"block"``. A blocking input switched to a lossy policy is served
        by an internal Rx observer (see ``_switched``), a lossy one keeps its push methods.
        """
        if policy not in PIPE_POLICIES and policy not in _LOSSY_POLICIES:
            raise ConfigError(f"unknown policy {policy!r} for input {target.name!r}")
        switched = self._switched
        if target in self.targets:
            self.targets.remove(target)  # in place: a push suspended meanwhile sees it
        elif any(t is target for t, _ in self._lossy):
            self._lossy[:] = [(t, p) for t, p in self._lossy if t is not target]
            if policy != "block":  # it stays where it was, with its new policy
                self._lossy.append((target, policy))
            elif not self._lossy:
                self._use_plain_push()
        elif switched is not None:
            switched.inputs[:] = [(t, p) for t, p in switched.inputs if t is not target]
        if policy == "block":
            self.targets.append(target)
        elif not any(t is target for t, _ in self._lossy):
            if switched is None:
                switched = self._switched = _SwitchedInputs(self)
                self.subscribe(switched)  # also turns the fast path off
            switched.inputs.append((target, policy))
        self._refresh_fast_path()
        target._release_all_producers()

    def _describe_wait(self) -> str:
        full = [
            f"input {t.name!r} of stream {t.stream_name!r} ({len(t._items)}/{t.threshold} full)"
            for t in self.targets
            if not t._has_room()
        ]
        return f"output {self.name!r} -> " + ", ".join(full or ["(no full input)"])

    def _wait_can_end(self, stuck: set[StepRuntime]) -> bool:
        # A push waits until every full input has room: each full input's consumer must move.
        consumers = {t._rt for t in self.targets if not t._has_room() and not t._finished}
        return not consumers or consumers.isdisjoint(stuck)

    def __repr__(self) -> str:
        return f"<Output {self.stream_name}.{self.name} -> {len(self.targets)} inputs>"


class _SwitchedInputs(rx_abc.ObserverBase[T]):
    """The inputs of one output switched to a lossy policy during a run (``_set_policy``).

    Subscribed to the output like any Rx observer, it gets every item whichever push method
    delivered it, also one a producer looked up before the switch, and offers it to each
    input under that input's policy.
    """

    def __init__(self, output: Output[T]) -> None:
        self.source = "pipe:" + output.stream_name
        self.inputs: list[tuple[Input[T], str]] = []

    def on_next(self, value: T) -> None:
        for target, policy in self.inputs:
            target._offer(value, policy, self.source)

    def on_error(self, error: Exception) -> None:
        pass  # the run failed: the inputs are not told (as with blocking pipes)

    def on_completed(self) -> None:
        pass  # close() has closed the inputs


# A push or push_many called without await fails the run (see _unawaited), also through the
# variants an output with lossy pipes uses.
recognise("push", Output.push, Output._push_lossy)
recognise("push_many", Output.push_many, Output._push_many_lossy)
