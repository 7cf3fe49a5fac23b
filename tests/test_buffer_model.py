"""Stateful model: one input buffer, driven by random push, pop, peek, close, cancelled pop
and cancelled push, behaves like a bounded FIFO (a ``deque``).

The buffer is the input ``x`` of a consumer stream fed by the output ``y`` of a producer
stream, in a running workflow whose two streams just wait (so the workflow stays up). The
test drives the two port objects (``stream.output('y')``, ``stream.input('x')``) from tasks
of its own on the workflow's loop, one rule at a time, and checks after every step:

* what comes out is what went in, in order, each item once (the model's ``deque``);
* a push completes at once while the buffer is below its threshold, and otherwise waits:
  the buffer never holds more than the threshold; the statistics count every item received
  and taken, and the peak is the most items ever buffered at once;
* a pop/peek completes at once while items are buffered, waits while the buffer is empty
  and open, and raises ``EndOfStream`` once it is closed and empty;
* a cancelled pop loses no item and a cancelled push delivers nothing, also when the
  cancellation lands in the same tick as the item or the room it was waiting for;
* nothing waits when it need not: no pop is left waiting while items are buffered, and no
  push is left waiting once the buffer is empty.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import pytest
from harness import examples, yield_to_loop
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from mimo_rx import EndOfStream, Stream, Workflow

SETTLE = 10  # loop iterations that let every woken task take its next step
# Half the profile's examples (100 for "ci", 1000 for "deep"), with room for a loaded machine.
EXAMPLES = examples(2)
TIMEOUT_S = max(60, EXAMPLES * 0.3)


class OneInputBuffer(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.model: deque[Any] = deque()
        self.closed = False
        self.delivered = 0  # items the input received
        self.popped = 0  # items taken out of it
        self.peak = 0  # the most items buffered at once
        self.pending_pop: asyncio.Task[Any] | None = None
        self.pending_push: tuple[Any, asyncio.Task[Any]] | None = None
        self.workflow: Workflow | None = None

    # -- plumbing --------------------------------------------------------------------------

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def settle(self) -> None:
        self.run(yield_to_loop(SETTLE))

    def task(self, coro: Any) -> asyncio.Task[Any]:
        return self.loop.create_task(coro)

    def deliver(self, item: Any) -> None:
        self.model.append(item)
        self.delivered += 1
        self.peak = max(self.peak, len(self.model))

    def take(self) -> Any:
        self.popped += 1
        return self.model.popleft()

    def check_read(self, task: asyncio.Task[Any], remove: bool = True) -> None:
        """A finished pop/peek returned the model's head (or ended the stream correctly)."""
        assert task.done()
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            assert isinstance(error, EndOfStream), error
            assert self.closed and not self.model
            return
        expected = self.take() if remove else self.model[0]
        assert task.result() == expected

    @initialize(threshold=st.integers(1, 5))
    def start(self, threshold: int) -> None:
        self.threshold = threshold
        self.release = asyncio.Event()

        async def hold(ins: Any, outs: Any, state: Any) -> None:
            await self.release.wait()

        producer = Stream(outs=["y"], fn=hold, name="producer")
        consumer = Stream(["x"], fn=hold, name="consumer")
        self.workflow = Workflow(buffer_size=threshold)
        self.workflow.add_stream(producer).pipe(self.workflow.add_stream(consumer))
        self.out = producer.output("y")
        self.inp = consumer.input("x")
        self.running = self.task(self.workflow.start())
        self.settle()
        assert not self.running.done()

    # -- after every step: let woken tasks finish, then compare ----------------------------------

    def sync(self) -> None:
        self.settle()
        if self.pending_push is not None and self.pending_push[1].done():
            item, push = self.pending_push
            self.pending_push = None
            if not push.cancelled():
                assert push.result() is True
                self.deliver(item)
        if self.pending_pop is not None and self.pending_pop.done():
            pop, self.pending_pop = self.pending_pop, None
            self.check_read(pop)

    @invariant()
    def the_buffer_matches_the_model(self) -> None:
        if self.workflow is None:
            return
        assert len(self.inp) == len(self.model)
        assert len(self.inp) <= self.threshold
        assert self.inp.exhausted == (self.closed and not self.model)
        stats = self.workflow.stats()["streams"]["consumer"]["inputs"]["x"]
        assert stats["received"] == self.delivered
        assert stats["taken"] == self.popped
        assert stats["buffered"] == len(self.model)
        assert stats["peak_buffered"] == self.peak <= self.threshold

    @invariant()
    def nothing_waits_when_it_need_not(self) -> None:
        if self.pending_pop is not None:
            assert not self.model and not self.closed
        if self.pending_push is not None:
            assert self.model, "a push still waits while the buffer is empty"

    # -- push, pop, peek, close ------------------------------------------------------------------

    @precondition(lambda self: not self.closed and self.pending_push is None)
    @rule(item=st.integers())
    def push(self, item: int) -> None:
        had_room = len(self.model) < self.threshold
        push = self.task(self.out.push(item))
        self.settle()
        if had_room:
            assert push.done(), "a push below the threshold must not wait"
        else:
            assert not push.done(), "a push into a full buffer must wait"
        self.pending_push = (item, push)
        self.sync()

    @precondition(lambda self: self.pending_pop is None)
    @rule()
    def pop(self) -> None:
        had_items = bool(self.model)
        pop = self.task(self.inp.pop())
        self.settle()
        if had_items or self.closed:
            assert pop.done(), "a pop with items buffered (or at end of stream) must not wait"
            self.check_read(pop)
        else:
            assert not pop.done()
            self.pending_pop = pop
        self.sync()

    @precondition(lambda self: self.pending_pop is None and (self.model or self.closed))
    @rule()
    def peek(self) -> None:
        peek = self.task(self.inp.peek())
        self.settle()
        assert peek.done()
        self.check_read(peek, remove=False)
        self.sync()

    @precondition(lambda self: not self.closed and self.pending_push is None)
    @rule()
    def close(self) -> None:
        self.out.close()
        self.closed = True
        self.sync()

    # -- cancellations -------------------------------------------------------------------------

    @precondition(lambda self: self.pending_pop is None)
    @rule()
    def pop_cancelled_before_it_runs(self) -> None:
        pop = self.task(self.inp.pop())
        pop.cancel()
        self.settle()
        assert pop.cancelled()
        self.sync()

    @precondition(lambda self: self.pending_pop is not None)
    @rule()
    def pending_pop_cancelled(self) -> None:
        assert self.pending_pop is not None
        self.pending_pop.cancel()
        self.sync()

    @precondition(
        lambda self: self.pending_pop is not None and not self.closed and self.pending_push is None
    )
    @rule(item=st.integers(), cancel_first=st.booleans())
    def pending_pop_cancelled_in_the_same_tick_an_item_arrives(
        self, item: int, cancel_first: bool
    ) -> None:
        pop = self.pending_pop
        assert pop is not None

        async def race() -> None:
            if cancel_first:
                pop.cancel()
                await self.out.push(item)  # room: the buffer is empty, so no suspension
            else:
                await self.out.push(item)
                pop.cancel()

        self.run(race())
        self.deliver(item)
        self.sync()  # the pop either got the item or left it buffered

    @precondition(lambda self: not self.closed and self.pending_push is None)
    @rule(item=st.integers())
    def push_cancelled_before_it_runs(self, item: int) -> None:
        push = self.task(self.out.push(item))
        push.cancel()
        self.settle()
        assert push.cancelled()
        self.sync()

    @precondition(lambda self: self.pending_push is not None)
    @rule()
    def pending_push_cancelled(self) -> None:
        assert self.pending_push is not None
        self.pending_push[1].cancel()
        self.sync()

    @precondition(lambda self: self.pending_push is not None and self.pending_pop is None)
    @rule(cancel_first=st.booleans())
    def pending_push_cancelled_in_the_same_tick_room_appears(self, cancel_first: bool) -> None:
        assert self.pending_push is not None
        _, push = self.pending_push

        async def race() -> Any:
            if cancel_first:
                push.cancel()
                return await self.inp.pop()  # items buffered: no suspension
            item = await self.inp.pop()
            push.cancel()
            return item

        got = self.run(race())
        assert got == self.take()
        self.sync()  # the push either delivered its item or nothing at all

    # -- the end -----------------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            if self.workflow is not None:
                self._finish()
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def _finish(self) -> None:
        if self.pending_push is not None:  # make room: drain, then the push completes
            while self.pending_push is not None:
                pop = self.task(self.inp.pop())
                self.settle()
                self.check_read(pop)
                self.sync()
        if not self.closed:
            self.out.close()
            self.closed = True
            self.sync()
        while self.model:  # everything still buffered comes out in order
            pop = self.task(self.inp.pop())
            self.settle()
            self.check_read(pop)
        self.sync()
        assert self.pending_pop is None  # it saw the end of the stream
        self.release.set()
        self.run(self.running)
        left = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
        assert not left, left
        assert self.workflow is not None
        stats = self.workflow.stats()["streams"]
        assert {s["status"] for s in stats.values()} == {"done"}


TestOneInputBufferBehavesLikeABoundedDeque = OneInputBuffer.TestCase
TestOneInputBufferBehavesLikeABoundedDeque.__name__ = "TestOneInputBufferBehavesLikeABoundedDeque"
TestOneInputBufferBehavesLikeABoundedDeque.pytestmark = [pytest.mark.timeout(TIMEOUT_S)]
TestOneInputBufferBehavesLikeABoundedDeque.settings = settings(max_examples=EXAMPLES)
