"""Lineage: which fetched messages every item in the graph derives from (contract section 12).

An acknowledged source (``_acksources.py``) may ack a message only once it, and every item
made from it anywhere in the graph, is *done*. This module keeps that account.

* **Ticket.** One per fetched message (or per ``inlet.send_and_wait`` item): a count of live
  references. At zero it is done, and it tells its *owner* (the source's ``Ledger``, or the
  waiting inlet call), which acks it (or nacks it, when a ``Failure`` derived from it was never
  taken by any stream).
* **Tag.** An item in the graph carries a tag: the one node it derives from (``None`` for an
  untracked item). A node is a ticket, or a *group*: a node that holds one reference to each
  of several nodes (what a stream holding several items at once pushes, or a batch it took)
  and lets them go when it is done itself. Each buffered copy of an item holds one reference to
  its tag, so a fan-out to ``n`` inputs takes ``n``. Tags travel in a deque parallel to
  ``Input._items`` (``Input._tags``), only on tracked inputs.
* **Holder.** A stream that takes an item moves the copy's reference from the buffer to the
  input's ``_held`` slot, part of the stream's :class:`Holder`. It is released when the
  stream next asks that input for more (``pop``/``pop_many``/the next step of ``async for`` or
  ``batches()``, before it waits; ``peek`` does not ask), when its run returns normally, or, for
  a plain ``def`` stream, when its call returns. ``ins.x.hold()`` returns a :class:`Held` that
  keeps the last take of ``x`` referenced until ``release()``. A push derives from everything
  the stream holds at that moment (one input's last take as it is, or a group of all it holds:
  :meth:`Holder.tag`). A stream that raises keeps what it holds: with ``on_error="resume"``
  the pushed ``Failure`` derives from it, otherwise the run fails and nothing more is acked.
* **Explicit tags.** Streams that handle several items at once in their own code
  (``map_stream``'s jobs, operator stages) take the references out of the holder
  (:func:`detach`) and push their result with :meth:`TrackedOutput._push_tag`.

**Representation.** A node is a list ``[refs, owner, payload, nack]`` (``REFS``, ``OWNER``,
``PAYLOAD``, ``NACK``): one is made per fetched message, and a list is three times cheaper to
make than an object with ``__init__``. A ticket's payload is its token; a group's owner is
:data:`GROUP` and its payload the list of its nodes. The hot paths below index nodes with
literals (``tag[0] += 1``) for speed; everything else goes through :func:`incref`,
:func:`decref`, :func:`group` and :func:`tickets_of`.

**Zero cost when unused.** Nothing here runs for a graph without acknowledged sources: at
wiring time (:func:`track`) the run switches the class of exactly the inputs and outputs
downstream of an acknowledged source (or of an inlet once ``send_and_wait`` is first called)
to the tracked variants below, which override the hot methods. Every other port keeps the
untracked class and runs today's code unchanged.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from operator import itemgetter
from typing import Any, Protocol

from ._batches import Batches
from ._errors import ClosedError, EndOfStream
from ._ports import Held as _Held
from ._ports import Input, Output
from ._unawaited import recognise

Ticket = list[Any]  # a node: [refs, owner, payload, nack]
Tag = Ticket | None

REFS, OWNER, PAYLOAD, NACK = 0, 1, 2, 3

_first, _second = itemgetter(0), itemgetter(1)  # of (token, item) pairs, at C speed


class Owner(Protocol):
    """Who is told when a ticket is done (the source's ledger, a waiting inlet send)."""

    def done(self, ticket: Ticket) -> None: ...

    def failed(self, ticket: Ticket, failure: Any, taken: bool) -> None: ...


def new_ticket(owner: Owner, token: Any) -> Ticket:
    """A ticket with one reference, its creator's (released once it has pushed the item)."""
    return [1, owner, token, False]


class _Group:
    """The owner of every group node: a group that is done lets go of its nodes."""

    def done(self, node: Ticket) -> None:
        for member in node[PAYLOAD]:
            decref(member)


GROUP = _Group()


def incref(tag: Tag) -> None:
    if tag is not None:
        tag[REFS] += 1


def decref(tag: Tag) -> None:
    if tag is not None:
        tag[REFS] -= 1
        if not tag[REFS]:
            # Looked up as an attribute, then called: a ledger's ``done`` is an attribute of
            # its own, which CPython's method-call cache cannot serve (it would look it up
            # the slow way for every message).
            done = tag[OWNER].done
            done(tag)


def group(nodes: Sequence[Ticket]) -> Tag:
    """A node deriving from every one of ``nodes``, with one reference of the caller's
    (release it with :func:`decref`): ``None`` for none, the node itself for one."""
    if not nodes:
        return None
    if len(nodes) == 1:
        node = nodes[0]
        node[REFS] += 1
        return node
    for node in nodes:
        node[REFS] += 1
    return [1, GROUP, list(nodes), False]


def _moved(nodes: list[Ticket]) -> Tag:
    """Like :func:`group`, but the caller's references to ``nodes`` move into it."""
    if not nodes:
        return None
    return nodes[0] if len(nodes) == 1 else [1, GROUP, nodes, False]


def tickets_of(tag: Tag) -> list[Ticket]:
    """The distinct tickets ``tag`` derives from."""
    found: dict[int, Ticket] = {}
    stack = [] if tag is None else [tag]
    while stack:
        node = stack.pop()
        if node[OWNER] is GROUP:
            stack.extend(node[PAYLOAD])
        else:
            found[id(node)] = node
    return list(found.values())


def fail(tag: Tag, failure: Any, taken: bool) -> None:
    """A ``Failure`` derived from ``tag`` was pushed (``taken``: to a stream): tell the
    owner of each of its tickets once."""
    for ticket in tickets_of(tag):
        ticket[OWNER].failed(ticket, failure, taken)


def switch_class(obj: Any, cls: type) -> None:
    """Give ``obj`` the class ``cls`` (a tracked variant of its own)."""
    obj.__class__ = cls
    if hasattr(obj, "__dict__"):
        # An object whose class was switched keeps its attribute values laid out for the
        # old class, which defeats CPython's attribute caches (each access 2-3x slower): a
        # fresh dict of the same attributes restores them. (What push reads are slots of
        # Output's and Input's, which a switch leaves as fast; the rest is in the dict.)
        obj.__dict__ = dict(obj.__dict__)


class _NothingHeld:
    """The ``single`` of a holder with no input: a push derives from nothing."""

    __slots__ = ()
    _held: Tag = None


_NOTHING_HELD: Any = _NothingHeld()


class Holder:
    """What one stream holds: the last take of each of its inputs, its ``hold()`` handles
    and what its plain-``def`` call or Rx chain took (``loose``).

    ``single`` is the stream's only input while it holds nothing else (a stand-in whose
    ``_held`` is ``None`` for a stream with no input): then a push derives from that input's
    last take as it is (the hot path reads it directly). Otherwise it is ``None``.
    """

    __slots__ = ("_only", "handles", "inputs", "loose", "name", "single")

    def __init__(self, name: str) -> None:
        self.name = name
        self.inputs: list[TrackedInput] = []
        self.handles: list[Held] = []
        self.loose: list[Ticket] = []
        self._only: Any = _NOTHING_HELD  # the one input, if there is exactly one
        self.single: Any = _NOTHING_HELD

    def add_input(self, port: TrackedInput) -> None:
        self.inputs.append(port)
        self._only = port if len(self.inputs) == 1 else None
        self.changed()

    def changed(self) -> None:
        """Handles or loose tickets came or went: recompute ``single``."""
        self.single = None if self.handles or self.loose else self._only

    def tag(self) -> Tag:
        """The node a push derives from now, with a reference of the caller's (release it
        with :func:`decref` once pushed)."""
        return group(list(self._all()))

    def _all(self) -> Iterator[Ticket]:
        for port in self.inputs:
            if port._held is not None:
                yield port._held
        for handle in self.handles:
            if handle.node is not None:
                yield handle.node
        yield from self.loose

    def holds(self) -> int:
        """How many distinct tickets it holds (for a deadlock report)."""
        return sum(len(tickets_of(node)) for node in self._all())

    def detach(self, port: TrackedInput) -> Tag:
        """Take the reference of ``port``'s last take out of the holder (the caller now
        owns it and must :func:`decref` it)."""
        held: Tag = port._held
        port._held = None
        return held

    def release_call(self) -> None:
        """A plain ``def``'s call returned (or raised, its ``Failure`` pushed): what it took
        is released, and its synchronous views forget their last takes (a ``hold()`` in a
        later call, before any take, holds nothing)."""
        for port in self.inputs:
            port._took = None
        self.release_loose()

    def release_loose(self) -> None:
        loose, self.loose = self.loose, []
        if loose:
            self.changed()
            for node in loose:
                decref(node)

    def release_all(self) -> None:
        """The stream returned normally: everything it holds is done with."""
        for port in self.inputs:
            port._release_held()
        for handle in list(self.handles):
            handle.release()
        self.release_call()


_UNTRACKED = Holder("")  # the holder of an untracked stream's outputs: it holds nothing


class Held(_Held):
    """What ``ins.x.hold()`` returns on a tracked input: the last take of ``x`` stays held
    until :meth:`release` (after which the ordinary rule applies to it again)."""

    __slots__ = ("_holder", "node")

    def __init__(self, holder: Holder | None, node: Tag) -> None:
        self._holder = holder
        self.node = node
        incref(node)
        if holder is not None:
            holder.handles.append(self)
            holder.changed()

    def release(self) -> None:
        """Let go of the held item (or batch); releasing twice does nothing."""
        node, self.node = self.node, None
        holder, self._holder = self._holder, None
        if holder is not None:
            holder.handles.remove(self)
            holder.changed()
        decref(node)


class Waiter:
    """The owner of the ticket of one ``inlet.send_and_wait(item)``: resolves ``future``
    once the item is done, with the Failures derived from it (contract section 12)."""

    __slots__ = ("failures", "future", "stopped")

    def __init__(self, future: asyncio.Future[list[Any]], stopped: Any) -> None:
        self.future = future
        self.failures: list[Any] = []
        self.stopped = stopped  # true once the run failed or was cancelled: never done then

    def done(self, ticket: Ticket) -> None:
        if not self.future.done() and not self.stopped():
            self.future.set_result(self.failures)

    def failed(self, ticket: Ticket, failure: Any, taken: bool) -> None:
        self.failures.append(failure)


# -- tracked inputs ---------------------------------------------------------------------------


class TrackedInput(Input[Any]):
    """An input downstream of an acknowledged source: every buffered item has a tag in
    ``_tags`` and each take moves it into the stream's holder (see the module docstring)."""

    __slots__ = ()
    _late = False  # see LateTrackedInput

    def _release_held(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            decref(held)

    def _take_tag(self, tag: Tag) -> None:
        held = self._held
        if held is not None:  # a take not preceded by a release (an iterator made before tracking)
            self._held = None
            decref(held)
        self._held = tag

    async def pop(self) -> Any:
        items = self._items
        if not items:  # asking for more releases the last take, before waiting
            self._release_held()
            await self._wait_for_item("pop()")
        held = self._held
        item = items.popleft()
        self._held = self._tags.popleft()
        if held is not None:  # the last take is let go (decref, inlined)
            held[0] -= 1
            if not held[0]:
                done = held[1].done  # not held[1].done(held): see decref
                done(held)
        if self._producers and len(items) <= self._low:
            self._release_producers()
        return item

    async def __anext__(self) -> Any:
        items = self._items
        if not items:  # as pop
            self._release_held()
            try:
                await self._wait_for_item("async for")
            except EndOfStream:
                raise StopAsyncIteration from None
        held = self._held
        item = items.popleft()
        self._held = self._tags.popleft()
        if held is not None:
            held[0] -= 1
            if not held[0]:
                done = held[1].done  # not held[1].done(held): see decref
                done(held)
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
        count = len(self._items) if max_items is None else min(max_items, len(self._items))
        popleft = self._tags.popleft
        taken = [tag for tag in [popleft() for _ in range(count)] if tag is not None]
        self._take_tag(_moved(taken))
        return Input._take_batch(self, max_items)

    def _take_all(self) -> list[Any]:
        # Rx operator streams: the caller (RxStream._feed) takes the tags with _take_tags.
        return Input._take_all(self)

    def _take_tags(self, count: int) -> list[Tag]:
        popleft = self._tags.popleft
        return [popleft() for _ in range(count)]

    def _give_back_tags(self, tags: list[Tag]) -> None:
        self._tags.extendleft(reversed(tags))

    def _take_now(self) -> Any:
        item = Input._take_now(self)
        tag = self._tags.popleft()
        self._took = tag  # the view's hold() keeps it (until the call returns: release_call)
        if tag is not None:
            self._holder.loose.append(tag)
            self._holder.single = None
        return item

    def hold(self) -> Held:
        return Held(self._holder, self._held)

    def _hold_sync(self) -> Held:
        # the last synchronous take, still referenced by the holder's ``loose`` (the call
        # that took it has not returned) or nothing (_took is cleared when it returns)
        return Held(self._holder, self._took)

    def _adopt_orphan(self) -> Tag:
        """The tag of the item a stream's untracked loop took as tracking began (its waiting
        ``pop()`` woke into the tracked class, which holds it), if any: the caller now owns
        the reference."""
        held: Tag = self._held
        self._held = None
        return held

    def _deliver_tagged(self, item: Any, tag: Tag) -> None:
        """Buffer ``item`` with ``tag`` (TrackedOutput's push inlines this: keep in step)."""
        if self._finished:
            self._items.append(item)  # the discard sink counts it
            return
        self._items.append(item)
        self._tags.append(tag)
        if tag is not None:
            tag[0] += 1
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
            decref(old)
        elif policy == "latest":
            self.dropped += len(self._items)
            self._items.clear()
            old_tags = list(self._tags)
            self._tags.clear()
            self._deliver_tagged(item, tag)
            for old in old_tags:
                decref(old)
        elif policy == "discard":
            self.discarded += 1
        else:
            Input._offer(self, item, policy, source)  # "error": raises

    def _release_buffered(self) -> None:
        """Let go of every buffered item (they stay buffered, untracked: an outlet's)."""
        tags = self._tags
        if any(tag is not None for tag in tags):
            self._tags = deque([None] * len(tags))
            for tag in tags:
                decref(tag)

    def _finish(self) -> None:
        if not self._finished:
            self._release_buffered()
            self._tags.clear()
        Input._finish(self)


class LateTrackedInput(TrackedInput):
    """An input switched to tracking while its run was going (an inlet's first
    ``send_and_wait``). A ``pop()`` or ``async for`` that was waiting takes through this class
    once woken (``Input.pop``), but a push that was already parked still delivers its item
    without a tag: it derives from nothing tracked (its stream took what it pushes before
    tracking began). Every take and delivery here first gives such items their ``None``
    tags: they are the newest, at the back."""

    __slots__ = ()
    _late = True

    def _realign(self) -> None:
        missing = len(self._items) - len(self._tags)
        if missing > 0 and not self._finished:
            self._tags.extend([None] * missing)

    async def _wait_for_item(self, what: str) -> None:
        await TrackedInput._wait_for_item(self, what)
        self._realign()  # what arrived meanwhile may include such items

    async def pop(self) -> Any:
        self._realign()
        return await TrackedInput.pop(self)

    async def __anext__(self) -> Any:
        self._realign()
        return await TrackedInput.__anext__(self)

    def _take_batch(self, max_items: int | None) -> list[Any]:
        self._realign()
        return TrackedInput._take_batch(self, max_items)

    def _take_all(self) -> list[Any]:
        self._realign()
        return TrackedInput._take_all(self)

    def _take_now(self) -> Any:
        self._realign()
        return TrackedInput._take_now(self)

    def _deliver_tagged(self, item: Any, tag: Tag) -> None:
        self._realign()
        TrackedInput._deliver_tagged(self, item, tag)


class _TrackedBatches(Batches[Any]):
    """``batches()`` of a tracked input: each step releases the last batch before waiting."""

    __slots__ = ()

    async def __anext__(self) -> list[Any]:
        self._port._release_held()  # type: ignore[attr-defined]
        return await Batches.__anext__(self)


# -- tracked outputs --------------------------------------------------------------------------


class TrackedOutput(Output[Any]):
    """An output whose pushes carry a tag: by default what its stream holds (its holder's
    :meth:`Holder.tag`; nothing for a stream that is not tracked itself). Every blocking,
    lossy and switched input it feeds is tracked."""

    _holder: Holder  # a slot of Output's: set by track_output
    # Called with (failure tag) when a Failure is pushed on an ``errors`` output (see
    # _supervision.report_failure); set by track() on such outputs.
    _is_errors = False

    def _use_lossy_push(self) -> None:
        pass  # the tracked push methods serve lossy pipes themselves

    def _use_plain_push(self) -> None:
        pass

    _tfast: TrackedInput | None  # push's fast path (a slot of Output's): see _refresh_fast_path

    def _refresh_fast_path(self) -> None:
        # Output.push's fast path (and an inlet's send) carries no tag: never used here.
        self._fast_target = None
        # Ours, on the same terms: one blocking input, no lossy one, no Rx subscriber, open.
        fast = len(self.targets) == 1 and not self.closed and not self.observers
        target: Any = self.targets[0] if fast and not self._lossy else None
        late = getattr(target, "_late", True)  # an input not tracked yet: not fast (yet)
        self._tfast = None if target is None or target._finished or late else target

    def _subscribe_core(self, observer: Any, scheduler: Any = None) -> Any:
        self._tfast = None  # every push must now reach the Rx subscriber too
        return super()._subscribe_core(observer, scheduler)

    def close(self) -> None:
        self._tfast = None
        super().close()

    def _fail(self, error: Exception) -> None:
        self._tfast = None
        super()._fail(error)

    async def push(self, item: Any) -> bool:
        # The hot path of a tracked graph: the stream holds one input's last take (or
        # nothing), which the item derives from as it is; one input with room takes it.
        single = self._holder.single
        if single is None:  # the stream holds several things: the item derives from all
            tag = self._holder.tag()
            try:
                return await self._push_tag(item, tag)
            finally:
                decref(tag)
        tag = single._held
        fast = self._tfast
        if fast is not None:  # one input, below its peak so far: nothing else to check
            buffered = fast._items
            if len(buffered) < fast._mark:
                buffered.append(item)
                fast._tags.append(tag)
                if tag is not None:
                    tag[0] += 1
                self.pushed += 1
                if fast._getter is not None:
                    fast._wake_getter()
                return True
        if self._lossy or self.closed:
            return await self._push_tag(item, tag)
        # _push_tag without lossy pipes, inlined: a bulk run comes here for every push that
        # meets a full input or a new peak (a third of them in W8)
        targets = self.targets
        for target in targets:
            if len(target._items) >= target.threshold:
                await self._wait_for_room()
                break
        self.pushed += 1
        for target in targets:  # TrackedInput._deliver_tagged, inlined: keep in step
            if target._finished or target._late:  # type: ignore[attr-defined]
                target._deliver_tagged(item, tag)  # type: ignore[attr-defined]
                continue
            items = target._items
            items.append(item)
            target._tags.append(tag)
            if tag is not None:
                tag[0] += 1
            if len(items) > target.peak:
                target._note_peak(len(items))
            if target._getter is not None:
                target._wake_getter()
        if self.observers:
            self._notify(item)
        return True

    async def _push_tag(self, item: Any, tag: Tag) -> bool:
        """Push ``item`` as deriving from ``tag`` (which the caller keeps its own
        reference to): the general path of ``push``, and the entry of map_stream's jobs,
        operator stages and inlets."""
        await self._before_delivery()
        self._deliver_all_tagged(item, tag)
        return True

    async def _push_fetched(self, pairs: Sequence[tuple[Any, Any]], owner: Owner) -> None:
        """Push fetched ``(token, item)`` pairs, each with a new ticket owned by ``owner``,
        in chunks as large as every blocking input has room for (as ``push_many`` does):
        an acknowledged source's hot path. A cancelled call has delivered a prefix."""
        position = 0
        total = len(pairs)
        while position < total:
            if self.closed:
                raise ClosedError(self.stream_name, self.name)
            targets = self.targets
            room = self._room() if targets else total - position
            if room <= 0:
                await self._wait_for_room("push()")
                continue
            if self._lossy:
                room = 1  # lossy inputs: one by one, yielding as _push_tag does
            chunk = pairs[position : position + room]
            position += len(chunk)
            items = list(map(_second, chunk))
            plain = [t for t in targets if not t._finished and not t._late]  # type: ignore[attr-defined]
            if len(plain) == len(targets) and plain and not self._lossy:
                # The common case: each ticket starts with one reference per buffered copy.
                copies = len(plain)
                tickets = [[copies, owner, token, False] for token in map(_first, chunk)]
                for target in plain:
                    target._items.extend(items)
                    target._tags.extend(tickets)
                    target._arrived()
                self.pushed += len(items)
                if self.observers:
                    for item in items:
                        self._notify(item)
                continue
            tickets = [[1, owner, token, False] for token in map(_first, chunk)]  # the creator's
            for target in targets:
                if target._finished:
                    target._items.extend(items)  # the discard sink counts them
                else:
                    for item, ticket in zip(items, tickets, strict=True):
                        target._deliver_tagged(item, ticket)  # type: ignore[attr-defined]
            self.pushed += len(items)
            if self._lossy:
                source = "pipe:" + self.stream_name
                for target, policy in self._lossy:
                    target._offer_tagged(items[0], tickets[0], policy, source)  # type: ignore[attr-defined]
                if self._yield_due():
                    await asyncio.sleep(0)  # lossy inputs never pause us: let others run
            if self.observers:
                for item in items:
                    self._notify(item)
            for ticket in tickets:
                decref(ticket)

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
        tag = self._holder.tag()
        self.pushed += 1
        try:  # a policy "error" raises: the reference of ours is let go all the same
            for target in self.targets:
                target._offer_tagged(item, tag, policy, source)  # type: ignore[attr-defined]
            if self._lossy:
                pipe = "pipe:" + self.stream_name
                for target, pipe_policy in self._lossy:
                    target._offer_tagged(item, tag, pipe_policy, pipe)  # type: ignore[attr-defined]
        finally:
            decref(tag)
        if self.observers:
            self._notify(item)


# -- wiring -----------------------------------------------------------------------------------

_classes: dict[tuple[type, type], type] = {}


def _tracked_class(cls: type, mixin: type) -> type:
    """``mixin`` over ``cls`` (an Input or Output subclass such as the outlet's input)."""
    if issubclass(cls, mixin):
        return cls
    if cls is Input or cls is Output:
        return mixin
    made = _classes.get((cls, mixin))
    if made is None:
        namespace: dict[str, Any] = {"__slots__": ()} if hasattr(cls, "__slots__") else {}
        made = type(mixin.__name__ + "_" + cls.__name__, (mixin, cls), namespace)
        _classes[(cls, mixin)] = made
    return made


def track_input(port: Input[Any], holder: Holder, late: bool = False) -> None:
    """Switch ``port`` to the tracked variant: before the run (``late`` false), or while it
    runs, with untracked items buffered, which get ``None`` tags."""
    if isinstance(port, TrackedInput):
        return
    switch_class(port, _tracked_class(type(port), LateTrackedInput if late else TrackedInput))
    port._tags = deque([None] * len(port._items))
    port._held = None
    port._holder = holder
    holder.add_input(port)  # type: ignore[arg-type]


def track_output(port: Output[Any], holder: Holder | None) -> None:
    """Switch ``port`` to the tracked variant; ``holder`` is its stream's (``None``: the
    stream is not tracked, its pushes derive from nothing)."""
    if isinstance(port, TrackedOutput):
        if holder is not None:
            port._holder = holder
        return
    for name in ("push", "push_many", "_push_unpaused"):  # the lossy variants, if any
        port.__dict__.pop(name, None)
    switch_class(port, _tracked_class(type(port), TrackedOutput))
    port._holder = _UNTRACKED if holder is None else holder
    port._refresh_fast_path()


# A tracked push or push_many called without await fails the run too (see _unawaited).
recognise("push", TrackedOutput.push)
recognise("push_many", TrackedOutput.push_many)
