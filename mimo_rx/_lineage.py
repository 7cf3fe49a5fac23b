"""Lineage: which fetched messages every item in the graph derives from (contract section 12).

An acknowledged source (``_acksources.py``) may ack a message only once it, and every item
made from it anywhere in the graph, is *done*. This module keeps that account.

* **Ticket.** One per fetched message (or per ``inlet.send_and_wait`` item): a count of live
  references. At zero it is done, and it tells its *owner* (the source's ``Ledger``, or the
  waiting inlet call), which acks it (or nacks it, when a ``Failure`` derived from it was never
  taken by any stream).
* **Tag.** An item in the graph carries a tag: the tuple of tickets it derives from (``None``
  for an untracked item). Each buffered copy of an item holds one reference per ticket of its
  tag, so a fan-out to ``n`` inputs takes ``n`` references. Tags travel in a deque parallel to
  ``Input._items`` (``Input._tags``), only on tracked inputs.
* **Holder.** A stream that takes an item moves the copy's references from the buffer to the
  input's ``_held`` slot, part of the stream's :class:`Holder`. They are released when the
  stream next asks that input for more (``pop``/``pop_many``/the next step of ``async for`` or
  ``batches()``, before it waits; ``peek`` does not ask), when its run returns normally, or, for
  a plain ``def`` stream, when its call returns. ``ins.x.hold()`` returns a :class:`Held` that
  keeps the last take of ``x`` referenced until ``release()``. A push derives from everything
  the stream holds at that moment (the union of the tickets, :meth:`Holder.tag`). A stream that
  raises keeps what it holds: with ``on_error="resume"`` the pushed ``Failure`` derives from it,
  otherwise the run fails and nothing more is acked.
* **Explicit tags.** Streams that handle several items at once in their own code
  (``map_stream``'s jobs, operator stages) take the references out of the holder
  (:func:`detach`) and push their result with :meth:`TrackedOutput._push_tag`.

**Zero cost when unused.** Nothing here runs for a graph without acknowledged sources: at
wiring time (:func:`track`) the run switches the class of exactly the inputs and outputs
downstream of an acknowledged source (or of an inlet once ``send_and_wait`` is first called)
to the tracked variants below, which override the hot methods. Every other port keeps the
untracked class and runs today's code unchanged.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from ._errors import ClosedError, EndOfStream
from ._ports import Held as _Held
from ._ports import Input, Output

Tag = tuple["Ticket", ...] | None

_DIRTY: Any = object()
_EMPTY: tuple[Ticket, ...] = ()


class Owner(Protocol):
    """Who is told when a ticket is done (the source's ledger, a waiting inlet send)."""

    def done(self, ticket: Ticket) -> None: ...

    def failed(self, ticket: Ticket, failure: Any, taken: bool) -> None: ...


class Ticket:
    """One fetched message: the references to it still alive in the graph."""

    __slots__ = ("nack", "owner", "refs", "token")

    def __init__(self, owner: Owner, token: Any) -> None:
        self.owner = owner
        self.token = token
        self.refs = 1  # the creator's own reference, released once it has pushed the item
        self.nack = False  # a Failure derived from it that no stream took: nack, not ack

    def __repr__(self) -> str:
        return f"<Ticket {self.token!r} refs={self.refs}>"


def incref(tag: Tag) -> None:
    if tag:
        for ticket in tag:
            ticket.refs += 1


def decref(tickets: Iterable[Ticket]) -> None:
    for ticket in tickets:
        ticket.refs -= 1
        if ticket.refs == 0:
            ticket.owner.done(ticket)


def union(tickets: Iterable[Ticket]) -> Tag:
    return tuple(dict.fromkeys(tickets)) or None


class Holder:
    """What one stream holds: the last take of each of its inputs, its ``hold()`` handles
    and what its plain-``def`` call took (``loose``)."""

    __slots__ = ("_tag", "handles", "inputs", "loose", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.inputs: list[TrackedInput] = []
        self.handles: list[Held] = []
        self.loose: list[Ticket] = []
        self._tag: Tag = None

    def changed(self) -> None:
        self._tag = _DIRTY

    def tag(self) -> Tag:
        """The tickets a push derives from now."""
        tag = self._tag
        if tag is _DIRTY:
            inputs = self.inputs
            if len(inputs) == 1 and not self.handles and not self.loose:
                held = inputs[0]._held
                tag = held if len(held) <= 1 else union(held)
                tag = tag or None
            else:
                tag = union(self._all())
            self._tag = tag
        return tag

    def _all(self) -> Iterator[Ticket]:
        for port in self.inputs:
            yield from port._held
        for handle in self.handles:
            yield from handle.tickets
        yield from self.loose

    def holds(self) -> int:
        """How many distinct tickets it holds (for a deadlock report)."""
        return len(set(self._all()))

    def detach(self, port: TrackedInput) -> tuple[Ticket, ...]:
        """Take the references of ``port``'s last take out of the holder (the caller now
        owns them and must :func:`decref` them)."""
        held: tuple[Ticket, ...] = port._held
        port._held = _EMPTY
        self._tag = _DIRTY
        return held

    def release_loose(self) -> None:
        loose, self.loose = self.loose, []
        if loose:
            self._tag = _DIRTY
            decref(loose)

    def release_all(self) -> None:
        """The stream returned normally: everything it holds is done with."""
        for port in self.inputs:
            port._release_held()
        for handle in list(self.handles):
            handle.release()
        self.release_loose()


class Held(_Held):
    """What ``ins.x.hold()`` returns on a tracked input: the last take of ``x`` stays held
    until :meth:`release` (after which the ordinary rule applies to it again)."""

    __slots__ = ("_holder", "tickets")

    def __init__(self, holder: Holder | None, tickets: tuple[Ticket, ...]) -> None:
        self._holder = holder
        self.tickets = tickets
        incref(tickets)
        if holder is not None:
            holder.handles.append(self)
            holder.changed()

    def release(self) -> None:
        """Let go of the held item (or batch); releasing twice does nothing."""
        tickets, self.tickets = self.tickets, _EMPTY
        holder, self._holder = self._holder, None
        if holder is not None:
            holder.handles.remove(self)
            holder.changed()
        decref(tickets)


# -- tracked inputs ---------------------------------------------------------------------------


class TrackedInput(Input[Any]):
    """An input downstream of an acknowledged source: every buffered item has a tag in
    ``_tags`` and each take moves it into the stream's holder (see the module docstring)."""

    __slots__ = ()

    def _release_held(self) -> None:
        held = self._held
        if held:
            self._held = _EMPTY
            self._holder.changed()
            decref(held)

    def _take_tag(self, tag: Tag) -> None:
        self._held = tag or _EMPTY
        self._holder.changed()

    async def pop(self) -> Any:
        self._release_held()
        items = self._items
        if not items:
            await self._wait_for_item("pop()")
        item = items.popleft()
        self._take_tag(self._tags.popleft())
        if self._producers and len(items) <= self._low:
            self._release_producers()
        return item

    async def __anext__(self) -> Any:
        self._release_held()
        items = self._items
        if not items:
            try:
                await self._wait_for_item("async for")
            except EndOfStream:
                raise StopAsyncIteration from None
        item = items.popleft()
        self._take_tag(self._tags.popleft())
        if self._producers and len(items) <= self._low:
            self._release_producers()
        return item

    async def pop_many(self, max_items: int | None = None) -> list[Any]:
        if max_items is not None:
            self._check_max_items(max_items, "pop_many")
        self._release_held()
        if not self._items:
            await self._wait_for_item("pop_many()")
        return self._take_batch(max_items)

    def batches(self, max_items: int | None = None) -> Any:
        if max_items is not None:
            self._check_max_items(max_items, "batches")
        return _TrackedBatches(self, max_items)

    def _take_batch(self, max_items: int | None) -> list[Any]:
        tags = self._tags
        count = len(self._items) if max_items is None else min(max_items, len(self._items))
        taken: list[Ticket] = []
        for _ in range(count):
            tag = tags.popleft()
            if tag:
                taken.extend(tag)
        self._take_tag(tuple(taken))
        return Input._take_batch(self, max_items)

    def _take_all(self) -> list[Any]:
        # Rx operator streams: the caller (RxStream._feed) takes the tags with _take_tags.
        return Input._take_all(self)

    def _take_tags(self, count: int) -> list[Tag]:
        tags = self._tags
        return [tags.popleft() for _ in range(count)]

    def _give_back_tags(self, tags: list[Tag]) -> None:
        self._tags.extendleft(reversed(tags))

    def _take_now(self) -> Any:
        item = Input._take_now(self)
        tag = self._tags.popleft()
        if tag:
            self._holder.loose.extend(tag)
            self._holder.changed()
        return item

    def hold(self) -> Held:
        return Held(self._holder, self._held)

    def _deliver_tagged(self, item: Any, tag: Tag) -> None:
        if self._finished:
            self._items.append(item)  # the discard sink counts it
            return
        self._items.append(item)
        self._tags.append(tag)
        if tag:
            for ticket in tag:
                ticket.refs += 1
        self._arrived()

    def _deliver(self, item: Any) -> None:
        self._deliver_tagged(item, None)

    def _deliver_many(self, items: Any) -> None:
        for item in items:
            self._deliver_tagged(item, None)

    def _offer(self, item: Any, policy: str, source: str) -> None:
        self._offer_tagged(item, None, policy, source)

    def _offer_tagged(self, item: Any, tag: Tag, policy: str, source: str) -> None:
        if len(self._items) < self.threshold or policy == "buffer" or self._finished:
            self._deliver_tagged(item, tag)
        elif policy == "drop_newest":
            self.dropped += 1
        elif policy == "drop_oldest":
            self._items.popleft()
            old = self._tags.popleft()
            self.dropped += 1
            self._deliver_tagged(item, tag)
            if old:
                decref(old)
        elif policy == "latest":
            self.dropped += len(self._items)
            self._items.clear()
            old_tags = list(self._tags)
            self._tags.clear()
            self._deliver_tagged(item, tag)
            decref(t for tag_ in old_tags if tag_ for t in tag_)
        elif policy == "discard":
            self.discarded += 1
        else:
            Input._offer(self, item, policy, source)  # "error": raises

    def _release_buffered(self) -> None:
        tags = list(self._tags)
        self._tags.clear()
        decref(t for tag in tags if tag for t in tag)

    def _finish(self) -> None:
        if not self._finished:
            self._release_buffered()
        Input._finish(self)


class _TrackedBatches:
    """``batches()`` of a tracked input: each step releases the last batch before waiting."""

    __slots__ = ("_max_items", "_port")

    def __init__(self, port: TrackedInput, max_items: int | None) -> None:
        self._port = port
        self._max_items = max_items

    def __aiter__(self) -> _TrackedBatches:
        return self

    async def __anext__(self) -> list[Any]:
        port = self._port
        port._release_held()
        if not port._items:
            try:
                await port._wait_for_item("batches()")
            except EndOfStream:
                raise StopAsyncIteration from None
        return port._take_batch(self._max_items)


# -- tracked outputs --------------------------------------------------------------------------


class TrackedOutput(Output[Any]):
    """An output whose pushes carry a tag: by default what its stream holds (its holder's
    :meth:`Holder.tag`; ``None`` for a stream that is not tracked itself). Every blocking,
    lossy and switched input it feeds is tracked."""

    _holder: Holder | None = None
    # Called with (failure tag) when a Failure is pushed on an ``errors`` output (see
    # _supervision.report_failure); set by track() on such outputs.
    _is_errors = False

    def _use_lossy_push(self) -> None:
        pass  # the tracked push methods serve lossy pipes themselves

    def _use_plain_push(self) -> None:
        pass

    def _current_tag(self) -> Tag:
        holder = self._holder
        return None if holder is None else holder.tag()

    async def push(self, item: Any) -> bool:
        return await self._push_tag(item, self._current_tag())

    async def _push_tag(self, item: Any, tag: Tag) -> bool:
        """Push ``item`` as deriving from ``tag`` (which the caller keeps its own
        references to): the internal entry of map_stream's jobs and operator stages."""
        if self._lossy:
            self._since_yield += 1
            if self._since_yield > self._lossy[0][0].threshold:
                self._since_yield = 0
                await asyncio.sleep(0)  # before delivering: a cancelled push delivers nothing
        if self.closed:
            raise ClosedError(self.stream_name, self.name)
        for target in self.targets:
            if len(target._items) >= target.threshold:
                await self._wait_for_room()
                break
        self._deliver_all_tagged(item, tag)
        return True

    def _deliver_all_tagged(self, item: Any, tag: Tag) -> None:
        self.pushed += 1
        for target in self.targets:
            target._deliver_tagged(item, tag)  # type: ignore[attr-defined]
        if self._lossy:
            source = "pipe:" + self.stream_name
            for target, policy in self._lossy:
                target._offer_tagged(item, tag, policy, source)  # type: ignore[attr-defined]
        if self.observers:
            self._notify(item)

    async def push_many(self, items: Iterable[Any]) -> bool:
        if self.closed:
            raise ClosedError(self.stream_name, self.name)
        for item in items:
            await self.push(item)
        return True

    async def _push_many_tagged(self, items: list[Any], tags: list[Tag]) -> None:
        for item, tag in zip(items, tags, strict=True):
            await self._push_tag(item, tag)

    def _push_unpaused(self, item: Any, policy: str, source: str) -> None:
        if self.closed:
            raise ClosedError(self.stream_name, self.name)
        tag = self._current_tag()
        self.pushed += 1
        for target in self.targets:
            target._offer_tagged(item, tag, policy, source)  # type: ignore[attr-defined]
        if self._lossy:
            pipe = "pipe:" + self.stream_name
            for target, pipe_policy in self._lossy:
                target._offer_tagged(item, tag, pipe_policy, pipe)  # type: ignore[attr-defined]
        if self.observers:
            self._notify(item)


# -- wiring -----------------------------------------------------------------------------------

_classes: dict[type, type] = {}


def _tracked_class(cls: type, mixin: type) -> type:
    """``mixin`` over ``cls`` (an Input or Output subclass such as the outlet's input)."""
    if issubclass(cls, mixin):
        return cls
    if cls is Input or cls is Output:
        return mixin
    made = _classes.get(cls)
    if made is None:
        namespace: dict[str, Any] = {"__slots__": ()} if hasattr(cls, "__slots__") else {}
        made = _classes[cls] = type("Tracked" + cls.__name__, (mixin, cls), namespace)
    return made


def track_input(port: Input[Any], holder: Holder) -> None:
    """Switch ``port`` (before its first item arrives, or with untracked items buffered,
    which get ``None`` tags) to the tracked variant."""
    if isinstance(port, TrackedInput):
        return
    port.__class__ = _tracked_class(type(port), TrackedInput)
    port._tags = deque([None] * len(port._items))
    port._held = _EMPTY
    port._holder = holder
    holder.inputs.append(port)  # type: ignore[arg-type]


def track_output(port: Output[Any], holder: Holder | None) -> None:
    if isinstance(port, TrackedOutput):
        if holder is not None:
            port._holder = holder
        return
    for name in ("push", "push_many", "_push_unpaused"):  # the lossy variants, if any
        port.__dict__.pop(name, None)
    port.__class__ = _tracked_class(type(port), TrackedOutput)
    port._holder = holder  # type: ignore[attr-defined]
    port._fast_target = None
