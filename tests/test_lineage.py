"""Acknowledged sources and lineage (contract section 12), through the public API.

The property test builds random DAGs fed by an in-test AckSource and keeps its own account
(the oracle) of every live copy of every message: pushed copies waiting in buffers, items a
stream took and has not released by the hold rule, ``hold()`` handles. Every test stream
updates that account *before* the engine can act (it counts a push before awaiting it and a
release before asking for the next item), so an ack that comes while the oracle still counts a
live copy is an ack that came too early.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence
from typing import Any

import pytest
import reactivex.operators as ops
from harness import examples, run_checked
from hypothesis import given, settings
from hypothesis import strategies as st

import mimo_rx
from mimo_rx import (
    AckSource,
    ConfigError,
    DeadlockError,
    Failure,
    ItemFailed,
    Stream,
    StreamError,
    Workflow,
    map_stream,
    operator,
)


class Recorder:
    """An in-memory AckSource that records every call (and can check each ack)."""

    def __init__(
        self,
        count: int,
        *,
        batch: int | None = None,
        check: Any = None,
        end: bool = True,
    ) -> None:
        self.count = count
        self.next = 0
        self.batch = batch
        self.check = check  # called with the acked tokens before they are recorded
        self.end = end
        self.calls: list[Any] = []
        self.acked: list[Hashable] = []
        self.nacked: list[Hashable] = []
        self.fetch_sizes: list[int] = []
        self.max_unacked = 0
        self.fetching = False

    def item(self, token: int) -> Any:
        return token

    async def open(self) -> None:
        self.calls.append("open")

    async def fetch(self, max_items: int) -> Sequence[tuple[Hashable, Any]] | None:
        assert max_items >= 1
        self.fetch_sizes.append(max_items)
        if self.next >= self.count:
            if self.end:
                return None
            self.fetching = True
            try:
                await asyncio.Event().wait()  # never ends by itself: stop() cancels it
            finally:
                self.fetching = False
        size = min(max_items, self.batch or max_items, self.count - self.next)
        out = [(t, self.item(t)) for t in range(self.next, self.next + size)]
        self.next += size
        unacked = self.next - len(self.acked) - len(self.nacked)
        self.max_unacked = max(self.max_unacked, unacked)
        return out

    async def ack(self, tokens: Sequence[Hashable]) -> None:
        assert tokens
        if self.check is not None:
            self.check(tokens, "ack")
        self.calls.append(("ack", len(tokens)))
        self.acked.extend(tokens)

    async def nack(self, tokens: Sequence[Hashable]) -> None:
        assert tokens
        if self.check is not None:
            self.check(tokens, "nack")
        self.calls.append(("nack", len(tokens)))
        self.nacked.extend(tokens)

    async def close(self) -> None:
        self.calls.append("close")


async def collect(ins: Any, outs: Any, state: Any) -> None:
    async for item in ins.x:
        state.setdefault("items", []).append(item)


def delivery(workflow: Workflow, step: str = "source") -> dict[str, int]:
    return workflow.stats()["streams"][step]["delivery"]  # type: ignore[no-any-return]


# -- the protocol and its options ------------------------------------------------------------


def test_recorder_is_an_ack_source() -> None:
    assert isinstance(Recorder(1), AckSource)
    assert isinstance(Recorder(1), mimo_rx.AckSource)


@pytest.mark.parametrize(
    ("options", "word"),
    [
        ({"max_in_flight": 0}, "max_in_flight"),
        ({"max_in_flight": -3}, "max_in_flight"),
        ({"max_in_flight": 2.5}, "max_in_flight"),
        ({"max_in_flight": True}, "max_in_flight"),
        ({"commit_interval": 0}, "commit_interval"),
        ({"commit_interval": -1.0}, "commit_interval"),
        ({"commit_interval": "1"}, "commit_interval"),
    ],
)
def test_options_not_positive_are_config_errors(options: dict[str, Any], word: str) -> None:
    with pytest.raises(ConfigError, match=word) as info:
        Workflow().add_source(Recorder(3), name="orders", **options)
    assert "'orders'" in str(info.value)


@pytest.mark.parametrize("source", [[1, 2, 3], (x for x in range(3))])
def test_options_on_a_plain_source_are_config_errors(source: Any) -> None:
    with pytest.raises(ConfigError, match="max_in_flight") as info:
        Workflow().add_source(source, name="numbers", max_in_flight=10)
    assert "'numbers'" in str(info.value) and "AckSource" in str(info.value)
    with pytest.raises(ConfigError, match="commit_interval"):
        Workflow().add_source(source, commit_interval=1.0)


def test_add_source_shows_its_real_defaults_and_still_tells_them_from_given_values() -> None:
    import inspect

    parameters = inspect.signature(Workflow.add_source).parameters
    assert parameters["max_in_flight"].default == 1000
    assert parameters["commit_interval"].default == 0.5
    assert parameters["max_in_flight"].kind is inspect.Parameter.KEYWORD_ONLY
    assert parameters["commit_interval"].kind is inspect.Parameter.KEYWORD_ONLY
    from mimo_rx._acksources import DEFAULT_COMMIT_INTERVAL, DEFAULT_MAX_IN_FLIGHT

    # what an AckSource gets when neither is given is what the signature shows
    assert (DEFAULT_MAX_IN_FLIGHT, DEFAULT_COMMIT_INTERVAL) == (1000, 0.5)
    # the default values typed out are still given: a plain source refuses them
    in_flight, interval = int("1000"), float("0.5")  # not the signature's own objects
    with pytest.raises(ConfigError, match="max_in_flight does not apply") as info:
        Workflow().add_source([1, 2, 3], name="numbers", max_in_flight=1000)
    assert "'numbers'" in str(info.value) and "drop it" in str(info.value)
    with pytest.raises(ConfigError, match="max_in_flight and commit_interval do not apply"):
        Workflow().add_source(range(3), max_in_flight=in_flight, commit_interval=interval)
    with pytest.raises(ConfigError, match="commit_interval does not apply"):
        Workflow().add_source(iter([1]), commit_interval=0.5)
    # not given: a plain source is fine, and an AckSource gets 1000 and 0.5
    Workflow().add_source([1, 2, 3])
    wf = Workflow(buffer_size=5000)  # room for more than the cap: the cap decides
    src = Recorder(3000)
    wf.add_source(src).pipe(wf.add_stream(Stream(["x"], [], fn=collect)))
    run_checked(wf)
    assert sorted(src.acked) == list(range(3000))
    assert src.fetch_sizes[0] == 1000


def test_every_message_acked_once_open_before_close_after() -> None:
    src = Recorder(500, batch=7)
    wf = Workflow(buffer_size=16)
    sink = wf.add_stream(Stream(["x"], [], fn=collect, name="sink"))
    wf.add_source(src, max_in_flight=40, commit_interval=0.01).pipe(
        wf.add_stream(map_stream(lambda x: x + 1))
    ).pipe(sink)
    run_checked(wf)
    assert sorted(src.acked) == list(range(500))
    assert not src.nacked
    assert src.calls[0] == "open" and src.calls[-1] == "close"
    assert src.calls.count("open") == src.calls.count("close") == 1
    assert src.max_unacked <= 40
    assert delivery(wf) == {"fetched": 500, "acked": 500, "nacked": 0, "in_flight": 0}
    assert sink.stream.state["items"] == list(range(1, 501))


def test_fetch_asks_for_room_within_the_cap() -> None:
    src = Recorder(200)
    wf = Workflow(buffer_size=8)
    sink = wf.add_stream(Stream(["x"], [], fn=collect, name="sink"))
    wf.add_source(src, max_in_flight=5, commit_interval=0.01).pipe(sink)
    run_checked(wf)
    assert max(src.fetch_sizes) <= 5
    assert src.max_unacked <= 5
    assert sorted(src.acked) == list(range(200))


def test_acks_are_batched_by_commit_interval() -> None:
    src = Recorder(300)
    wf = Workflow(buffer_size=64)

    async def slow_sink(ins: Any, outs: Any, state: Any) -> None:
        async for _ in ins.x:
            await asyncio.sleep(0.0005)

    wf.add_source(src, max_in_flight=1000, commit_interval=0.05).pipe(
        wf.add_stream(Stream(["x"], [], fn=slow_sink))
    )
    run_checked(wf)
    acks = [n for call, n in (c for c in src.calls if isinstance(c, tuple)) if call == "ack"]
    assert sum(acks) == 300
    assert len(acks) < 300 // 5  # batched: far fewer calls than messages
    assert src.calls[-1] == "close"


def test_steady_run_fetches_and_acks_in_batches_not_one_by_one() -> None:
    # at the cap, each freed slot used to be fetched (and acked) alone: fetch(1) per message
    src = Recorder(20_000)
    wf = Workflow()

    async def sink(ins: Any, outs: Any, state: Any) -> None:
        async for _ in ins.x:
            await asyncio.sleep(0)  # a consumer slower than the source: the cap is reached

    wf.add_source(src, max_in_flight=1000, commit_interval=0.5).pipe(
        wf.add_stream(Stream(["x"], [], fn=sink))
    )
    run_checked(wf)
    sizes = sorted(src.fetch_sizes)
    assert sizes[len(sizes) // 2] >= 100, sizes[:50]  # the median fetch is a batch
    assert len(src.fetch_sizes) <= 20_000 // 100
    acks = [n for call, n in (c for c in src.calls if isinstance(c, tuple)) if call == "ack"]
    assert sum(acks) == 20_000
    assert len(acks) <= 20_000 // 100  # batched, not one token per call
    assert src.max_unacked <= 1000
    assert delivery(wf) == {"fetched": 20_000, "acked": 20_000, "nacked": 0, "in_flight": 0}


def test_low_water_mark_never_stalls_a_graph_that_needs_more() -> None:
    # a window of 7 with max_in_flight=10: below the low-water mark, yet only more helps
    src = Recorder(100)
    wf = Workflow(buffer_size=4)
    window = wf.add_stream(operator(ops.buffer_with_count(7), name="window"))
    sink = wf.add_stream(Stream(["x"], [], fn=collect, name="sink"))
    wf.add_source(src, max_in_flight=10, commit_interval=10.0).pipe(window).pipe(sink)
    run_checked(wf)
    assert sorted(src.acked) == list(range(100))
    assert src.max_unacked <= 10
    assert [len(batch) for batch in sink.stream.state["items"]] == [7] * 14 + [2]


def test_running_enters_after_open() -> None:
    src = Recorder(3)
    seen: list[Any] = []
    wf = Workflow()
    out = wf.add_outlet("out")
    wf.add_source(src).pipe(out)

    async def main() -> None:
        async with wf.running():
            seen.append(list(src.calls))
            assert [item async for item in out] == [0, 1, 2]

    run_checked(main())
    assert seen == [["open"]]
    assert sorted(src.acked) == [0, 1, 2]


# -- when a message is done ------------------------------------------------------------------


def test_sink_holds_its_item_until_it_asks_for_the_next() -> None:
    src = Recorder(3, batch=1)
    acked_when: dict[int, list[int]] = {}
    wf = Workflow()

    async def sink(ins: Any, outs: Any, state: Any) -> None:
        async for item in ins.x:
            await asyncio.sleep(0.05)  # several commit intervals while holding
            acked_when[item] = list(src.acked)

    wf.add_source(src, commit_interval=0.005).pipe(wf.add_stream(Stream(["x"], [], fn=sink)))
    run_checked(wf)
    for item, acked in acked_when.items():
        assert item not in acked  # never acked while the sink still held it
    assert sorted(src.acked) == [0, 1, 2]


def test_hold_keeps_a_window_held_until_released() -> None:
    src = Recorder(10, batch=1)
    acked_at_release: list[list[Hashable]] = []
    wf = Workflow()

    async def window(ins: Any, outs: Any, state: Any) -> None:
        handles = []
        async for _ in ins.x:
            handles.append(ins.x.hold())
            await asyncio.sleep(0.01)
            if len(handles) == 5:
                acked_at_release.append(list(src.acked))
                for held in handles:
                    held.release()
                handles.clear()

    wf.add_source(src, commit_interval=0.002).pipe(wf.add_stream(Stream(["x"], [], fn=window)))
    run_checked(wf)
    assert acked_at_release[0] == []  # nothing of the first window before its release
    assert set(acked_at_release[1]).isdisjoint(range(5, 10))
    assert sorted(src.acked) == list(range(10))


def test_hold_on_an_untracked_input_is_harmless() -> None:
    wf = Workflow()

    async def body(ins: Any, outs: Any, state: Any) -> None:
        async for _ in ins.x:
            with ins.x.hold():
                pass

    wf.add_source([1, 2]).pipe(wf.add_stream(Stream(["x"], [], fn=body)))
    run_checked(wf)


class SlowRecorder(Recorder):
    """A Recorder whose every fetch takes a few milliseconds, so that many commit intervals
    pass while a window fills."""

    async def fetch(self, max_items: int) -> Sequence[tuple[Hashable, Any]] | None:
        await asyncio.sleep(0.003)
        return await super().fetch(max_items)


def test_hold_on_the_sync_view_of_a_plain_def_keeps_a_window_across_calls() -> None:
    import threading

    src = SlowRecorder(20, batch=1)
    windows: list[list[int]] = []
    acked_at_release: list[list[Hashable]] = []
    threads: set[int] = set()
    wf = Workflow()

    def window(ins: Any, outs: Any, state: Any) -> bool:
        threads.add(threading.get_ident())
        handles, items = state.setdefault("handles", []), state.setdefault("items", [])
        if not ins.x.closed and len(ins.x) > 1:
            items.append(ins.x.pop())  # one item through pop, held past this call
            handles.append(ins.x.hold())
        for item in ins.x:  # the rest through iteration: hold() keeps the last one taken
            items.append(item)
            handles.append(ins.x.hold())
        if len(items) >= 5 or (ins.x.closed and items):
            acked_at_release.append(list(src.acked))
            windows.append(list(items))
            outs.y.push(sum(items))  # derives from the whole window
            for held in handles:
                held.release()
            handles.clear()
            items.clear()
        return False

    window_step = wf.add_stream(Stream(["x"], ["y"], fn=window, name="window"))
    wf.add_source(src, commit_interval=0.001).pipe(window_step)
    window_step.pipe(wf.add_stream(Stream(["x"], [], fn=collect, name="sink")))

    async def main() -> int:
        await wf.start()
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert threads == {loop_thread}  # a plain def's call, and its holds, run on the loop
    assert [item for w in windows for item in w] == list(range(20))
    assert len(windows) >= 3
    for window_items, acked in zip(windows, acked_at_release, strict=True):
        # no message of a window acked before it was released, however many calls it spanned
        assert set(window_items).isdisjoint(acked), (window_items, acked)
    assert sorted(src.acked) == list(range(20))
    assert not src.nacked


def test_hold_on_the_sync_view_holds_nothing_once_its_call_returned() -> None:
    src = SlowRecorder(6, batch=1)  # one item per call
    handles: list[Any] = []
    wf = Workflow()

    def late_hold(ins: Any, outs: Any, state: Any) -> bool:
        handles.append(ins.x.hold())  # before any take of this call: nothing to keep
        for _ in ins.x:
            pass
        return False

    wf.add_source(src, commit_interval=0.001).pipe(wf.add_stream(Stream(["x"], [], fn=late_hold)))
    run_checked(wf)
    assert len(handles) >= 3
    assert sorted(src.acked) == list(range(6))  # acked once each, none kept by a late hold
    for held in handles:
        held.release()  # nothing held: releasing acks nothing twice
    assert sorted(src.acked) == list(range(6))


def test_hold_on_the_sync_view_of_an_untracked_input_is_harmless() -> None:
    wf = Workflow()
    seen: list[int] = []

    def body(ins: Any, outs: Any, state: Any) -> bool:
        for item in ins.x:
            with ins.x.hold():
                seen.append(item)
        return False

    wf.add_source([1, 2, 3]).pipe(wf.add_stream(Stream(["x"], [], fn=body)))
    run_checked(wf)
    assert seen == [1, 2, 3]


def test_map_stream_out_of_order_jobs_keep_their_own_items() -> None:
    done_items: list[int] = []

    def check(tokens: Sequence[Hashable], kind: str) -> None:
        for token in tokens:
            assert token in done_items, f"{token} acked before its result was taken"

    src = Recorder(60, check=check)

    async def jitter(x: int) -> int:
        await asyncio.sleep(random.random() * 0.005)
        return x

    async def sink(ins: Any, outs: Any, state: Any) -> None:
        async for item in ins.x:
            await asyncio.sleep(0)
            done_items.append(item)  # the next step of the loop releases it

    wf = Workflow(buffer_size=4)
    wf.add_source(src, commit_interval=0.001).pipe(
        wf.add_stream(map_stream(jitter, concurrency=8, ordered=False))
    ).pipe(wf.add_stream(Stream(["x"], [], fn=sink)))
    run_checked(wf)
    assert sorted(src.acked) == list(range(60))


@pytest.mark.parametrize("fuse", [True, False])
def test_operator_filter_and_buffer_lose_nothing(fuse: bool) -> None:
    src = Recorder(100, batch=3)
    wf = Workflow(buffer_size=8)
    sink = wf.add_stream(Stream(["x"], [], fn=collect, name="sink"))
    keep = wf.add_stream(operator(ops.filter(lambda x: x % 4 == 0), name="keep"))
    window = wf.add_stream(operator(ops.buffer_with_count(3), name="window"))
    step = wf.add_source(src, commit_interval=0.005).pipe(keep)
    if not fuse:  # a plain relay between them prevents fusing
        step = step.pipe(wf.add_stream(Stream(["x"], ["y"], name="relay")))
    step.pipe(window).pipe(sink)
    run_checked(wf)
    assert sorted(src.acked) == list(range(100))
    assert [x for batch in sink.stream.state["items"] for x in batch] == list(range(0, 100, 4))


def test_plain_def_stream_releases_when_its_call_returns() -> None:
    src = Recorder(50, batch=5)
    wf = Workflow(buffer_size=8)
    sink = wf.add_stream(Stream(["x"], [], fn=collect, name="sink"))

    def double(ins: Any, outs: Any, state: Any) -> bool:
        more = False
        for item in ins.x:
            more = not outs.y.push(item * 2) or more
        return more

    wf.add_source(src, commit_interval=0.005).pipe(
        wf.add_stream(Stream(["x"], ["y"], fn=double))
    ).pipe(sink)
    run_checked(wf)
    assert sorted(src.acked) == list(range(50))
    assert sink.stream.state["items"] == [2 * x for x in range(50)]


def test_outlet_releases_when_the_application_reads_on() -> None:
    src = Recorder(4, batch=1, end=False)  # the run lasts until stop()
    wf = Workflow()
    out = wf.add_outlet("out")
    wf.add_source(src, commit_interval=0.002).pipe(out)
    acked: list[list[Hashable]] = []

    async def main() -> None:
        async with wf.running():
            assert await out.receive() == 0
            await asyncio.sleep(0.05)
            acked.append(list(src.acked))
            assert await out.receive() == 1
            await asyncio.sleep(0.05)
            acked.append(list(src.acked))
            wf.stop()
            assert [item async for item in out] == [2, 3]

    run_checked(main())
    assert acked[0] == []  # 0 is held by the application (and 1 to 3 buffered)
    assert acked[1] == [0]
    assert sorted(src.acked) == [0, 1, 2, 3]  # the run's end releases the rest


def test_pipe_policy_drop_releases() -> None:
    src = Recorder(200)
    wf = Workflow(buffer_size=2)

    async def slow(ins: Any, outs: Any, state: Any) -> None:
        async for _ in ins.x:
            await asyncio.sleep(0.001)

    fast = wf.add_stream(Stream(["x"], [], fn=collect, name="fast"))
    lossy = wf.add_stream(Stream(["x"], [], fn=slow, name="lossy"))
    source = wf.add_source(src, commit_interval=0.005)
    source.pipe(fast)
    source.pipe(lossy, policy="drop_oldest")
    run_checked(wf)
    assert sorted(src.acked) == list(range(200))
    assert wf.stats()["streams"]["lossy"]["inputs"]["x"]["dropped"] > 0


def test_finished_consumer_discards_and_releases() -> None:
    src = Recorder(100)
    wf = Workflow(buffer_size=4)

    async def first_three(ins: Any, outs: Any, state: Any) -> None:
        for _ in range(3):
            await ins.x.pop()

    wf.add_source(src, commit_interval=0.005).pipe(wf.add_stream(Stream(["x"], [], fn=first_three)))
    run_checked(wf)
    assert sorted(src.acked) == list(range(src.next))  # everything fetched is acked


def test_unpiped_failure_nacks_piped_failure_acks() -> None:
    def fragile(x: int) -> int:
        if x % 5 == 0:
            raise ValueError(x)
        return x

    for piped in (False, True):
        src = Recorder(20, batch=4)
        wf = Workflow()
        stage = wf.add_stream(map_stream(fragile, on_error="resume", name="fragile"))
        wf.add_source(src, commit_interval=0.005).pipe(stage).pipe(
            wf.add_stream(Stream(["x"], [], fn=collect, name="sink"))
        )
        if piped:
            dead = wf.add_stream(Stream(["x"], [], fn=collect, name="dead"))
            stage.pipe(dead, output="errors")
        run_checked(wf)  # unpiped failures are logged (caplog would show them)
        failed = [x for x in range(20) if x % 5 == 0]
        if piped:
            assert sorted(src.acked) == list(range(20)) and not src.nacked
            failures = dead.stream.state["items"]
            assert [f.item for f in failures] == failed
        else:
            assert sorted(src.nacked) == failed
            assert sorted(src.acked) == [x for x in range(20) if x % 5]
        assert delivery(wf)["in_flight"] == 0


def test_resuming_async_stream_failure_derives_from_what_it_held() -> None:
    src = Recorder(10, batch=2)
    wf = Workflow()

    async def picky(ins: Any, outs: Any, state: Any) -> None:
        async for item in ins.x:
            if item == 3:
                raise RuntimeError("three")
            await outs.y.push(item)

    stage = wf.add_stream(Stream(["x"], ["y"], fn=picky, name="picky", on_error="resume"))
    wf.add_source(src, commit_interval=0.005).pipe(stage).pipe(
        wf.add_stream(Stream(["x"], [], fn=collect, name="sink"))
    )
    run_checked(wf)
    assert src.nacked == [3]
    assert sorted(src.acked) == [x for x in range(10) if x != 3]


# -- how the run ends ------------------------------------------------------------------------


def test_stop_cancels_a_waiting_fetch_and_flushes() -> None:
    src = Recorder(30, end=False)
    wf = Workflow()
    sink = wf.add_stream(Stream(["x"], [], fn=collect, name="sink"))
    wf.add_source(src, commit_interval=10.0).pipe(sink)  # only the final flush acks

    async def main() -> None:
        task = await stop_once_fetching(wf, src)
        await task

    run_checked(main())
    assert sorted(src.acked) == list(range(30))
    assert src.calls[-1] == "close"
    assert delivery(wf) == {"fetched": 30, "acked": 30, "nacked": 0, "in_flight": 0}


def test_stop_while_the_source_opens_ends_the_run_before_anything_is_fetched() -> None:
    """stop() before the stream tasks exist (the source is still opening) was lost: the run
    then fetched on forever (seen with a RedisStreamSource whose worker got SIGTERM early)."""
    opening = asyncio.Event()
    release = asyncio.Event()

    class SlowOpen(Recorder):
        async def open(self) -> None:
            await super().open()
            opening.set()
            await release.wait()

    src = SlowOpen(30, end=False)
    wf = Workflow()
    wf.add_source(src).pipe(wf.add_stream(Stream(["x"], [], fn=collect, name="sink")))

    async def main() -> None:
        run = asyncio.ensure_future(wf.start())
        await opening.wait()
        wf.stop()
        await asyncio.sleep(0.01)  # the stop is handled while open() still waits
        release.set()
        await asyncio.wait_for(run, 10)

    run_checked(main())
    assert src.fetch_sizes == []
    assert src.calls == ["open", "close"]
    assert wf.stats()["streams"]["sink"]["status"] == "done"


def test_stop_cancels_a_waiting_fetch_that_feeds_an_operator_stage() -> None:
    # reported with a RedisStreamSource: stop() left the run waiting in fetch
    src = Recorder(30, end=False)
    wf = Workflow()
    double = wf.add_stream(operator(ops.map(lambda x: x * 2), name="double"))
    sink = wf.add_stream(Stream(["x"], [], fn=collect, name="sink"))
    wf.add_source(src, commit_interval=10.0).pipe(double).pipe(sink)

    async def main() -> None:
        task = asyncio.ensure_future(wf.start())
        while not src.fetching:  # noqa: ASYNC110 (polls the source the test wrote)
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.05)  # the graph is idle: no DeadlockError, the source awaits I/O
        wf.stop()
        await asyncio.wait_for(task, 5.0)

    run_checked(main())
    assert sink.stream.state["items"] == [2 * n for n in range(30)]
    assert sorted(src.acked) == list(range(30))
    assert src.calls[-1] == "close"


class StopCompletes(Recorder):
    """A never-ending Recorder with the optional ``fetch_at_stop``: at stop() it has ``extra``
    more messages to hand out (what the stop completes), then none; it never waits there."""

    def __init__(self, count: int, extra: int, *, fail: bool = False) -> None:
        super().__init__(count, end=False)
        self.extra = extra
        self.fail = fail
        self.at_stop: list[int] = []  # the max_items of each fetch_at_stop call

    async def fetch_at_stop(self, max_items: int) -> Sequence[tuple[Hashable, Any]] | None:
        assert max_items >= 1
        self.at_stop.append(max_items)
        if self.fail:
            raise OSError("the broker went away")
        if self.extra == 0:
            return None
        size = min(max_items, self.extra)
        self.extra -= size
        out = [(t, t) for t in range(self.next, self.next + size)]
        self.next += size
        unacked = self.next - len(self.acked) - len(self.nacked)
        self.max_unacked = max(self.max_unacked, unacked)
        return out


async def stop_once_fetching(wf: Workflow, src: Any) -> asyncio.Future[None]:
    """Start ``wf``, wait until ``src`` waits in ``fetch``, then ``stop()`` (which cancels
    that fetch; then ``fetch_at_stop`` is called until it returns None). Returns the run."""
    task = asyncio.ensure_future(wf.start())
    while not src.fetching:  # noqa: ASYNC110 (polls the source the test wrote)
        await asyncio.sleep(0.001)
    wf.stop()
    return task


def test_stop_asks_fetch_at_stop_within_the_cap_and_acks_what_it_hands_out() -> None:
    src = StopCompletes(10, extra=25)
    wf = Workflow(buffer_size=64)

    async def slow(ins: Any, outs: Any, state: Any) -> None:
        async for item in ins.x:
            await asyncio.sleep(0.001)
            state.setdefault("items", []).append(item)

    sink = wf.add_stream(Stream(["x"], [], fn=slow, name="sink"))
    wf.add_source(src, max_in_flight=4, commit_interval=10.0).pipe(sink)

    async def main() -> None:
        task = await stop_once_fetching(wf, src)
        await asyncio.wait_for(task, 5.0)

    run_checked(main())
    assert sink.stream.state["items"] == list(range(35))
    assert sorted(src.acked) == list(range(35))  # the final flush, before start() returned
    assert src.calls[-1] == "close"
    assert src.at_stop[-1] >= 1 and max(src.at_stop) <= 4  # room and max_in_flight hold
    assert src.max_unacked <= 4
    assert delivery(wf) == {"fetched": 35, "acked": 35, "nacked": 0, "in_flight": 0}


def test_a_fetch_at_stop_that_raises_fails_the_run_naming_the_source() -> None:
    src = StopCompletes(3, extra=5, fail=True)
    wf = Workflow()
    wf.add_source(src, name="orders", commit_interval=10.0).pipe(
        wf.add_stream(Stream(["x"], [], fn=collect, name="sink"))
    )

    async def main() -> None:
        task = await stop_once_fetching(wf, src)
        await asyncio.wait_for(task, 5.0)

    with pytest.raises(StreamError, match="orders") as info:
        run_checked(main())
    assert isinstance(info.value.error, OSError)
    assert src.calls[-1] == "close"
    assert sorted(src.acked) == [0, 1, 2]  # what was done is acked, however the run ended


def test_cancel_during_the_drain_of_fetch_at_stop_cancels_the_run() -> None:
    src = StopCompletes(3, extra=10_000)
    wf = Workflow(buffer_size=2)

    async def slow(ins: Any, outs: Any, state: Any) -> None:
        async for item in ins.x:
            state.setdefault("items", []).append(item)
            await asyncio.sleep(0.002)

    sink = wf.add_stream(Stream(["x"], [], fn=slow, name="sink"))
    wf.add_source(src, max_in_flight=4, commit_interval=10.0).pipe(sink)

    async def main() -> None:
        task = await stop_once_fetching(wf, src)
        while len(src.at_stop) < 5:  # noqa: ASYNC110 (polls the source the test wrote)
            await asyncio.sleep(0.001)
        wf.cancel()  # in the middle of the drain
        await asyncio.wait_for(task, 5.0)

    with pytest.raises(mimo_rx.WorkflowCancelled):
        run_checked(main())
    assert src.extra > 0  # the drain did not go on to the end
    assert src.calls[-1] == "close"
    taken = sink.stream.state["items"]
    assert set(src.acked) <= set(taken)  # nothing acked that the sink had not taken


def test_failure_acks_only_what_is_done() -> None:
    src = Recorder(20, batch=1)
    wf = Workflow(buffer_size=2)

    async def breaks(ins: Any, outs: Any, state: Any) -> None:
        async for item in ins.x:
            if item == 10:
                raise ValueError("boom")

    wf.add_source(src, commit_interval=10.0).pipe(
        wf.add_stream(Stream(["x"], [], fn=breaks, name="breaks"))
    )
    with pytest.raises(StreamError):
        run_checked(wf)
    assert sorted(src.acked) == list(range(10))  # 10 was held when it raised: not done
    assert not src.nacked
    assert src.calls[-1] == "close"
    stats = delivery(wf)
    assert stats["fetched"] == stats["acked"] + stats["nacked"] + stats["in_flight"]


def test_cancel_acks_the_done_ones_and_closes() -> None:
    src = Recorder(10**6, end=False)
    wf = Workflow(buffer_size=4)
    wf.add_source(src, commit_interval=10.0).pipe(
        wf.add_stream(Stream(["x"], [], fn=collect, name="sink"))
    )

    async def main() -> None:
        task = asyncio.ensure_future(wf.start())
        while len(src.fetch_sizes) < 20:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        wf.cancel()
        with pytest.raises(mimo_rx.WorkflowCancelled):
            await task

    run_checked(main())
    assert src.acked  # the done ones
    assert sorted(src.acked) == list(range(len(src.acked)))
    assert src.calls[-1] == "close" and src.calls.count("close") == 1


def test_cap_deadlock_names_the_holders() -> None:
    src = Recorder(100, end=False)
    wf = Workflow()

    async def wide_window(ins: Any, outs: Any, state: Any) -> None:
        handles = []
        async for _ in ins.x:
            handles.append(ins.x.hold())
            if len(handles) == 20:  # wider than max_in_flight: never reached
                for held in handles:
                    held.release()
                handles.clear()

    wf.add_source(src, max_in_flight=10, commit_interval=0.01).pipe(
        wf.add_stream(Stream(["x"], [], fn=wide_window, name="window"))
    )
    with pytest.raises(DeadlockError, match="max_in_flight") as info:
        run_checked(wf)
    assert "'window'" in str(info.value)
    assert src.calls[-1] == "close"
    assert not src.acked


def test_a_slow_ack_at_the_cap_is_not_a_deadlock() -> None:
    # seen in W8 on a loaded machine: the checkpoint's fsync took longer than the deadlock
    # monitor's grace, every message was done and queued behind that ack() call, and the run
    # failed with "the streams holding them: no stream"
    class SlowAck(Recorder):
        async def ack(self, tokens: Sequence[Hashable]) -> None:
            await super().ack(tokens)  # recorded as passed to ack() when the call is made
            await asyncio.sleep(0.4)  # longer than the monitor's two looks

    src = SlowAck(12, batch=4)
    wf = Workflow()
    wf.add_source(src, max_in_flight=4, commit_interval=0.001).pipe(
        wf.add_stream(Stream(["x"], [], fn=collect, name="sink"))
    )
    run_checked(wf)
    assert sorted(src.acked) == list(range(12))
    assert src.max_unacked <= 4


def test_open_failure_fails_the_run_naming_the_source() -> None:
    class Broken(Recorder):
        async def open(self) -> None:
            raise ConnectionError("no broker")

    src = Broken(3)
    wf = Workflow()
    wf.add_source(src, name="orders").pipe(wf.add_stream(Stream(["x"], [], fn=collect)))
    with pytest.raises(StreamError, match="orders"):
        run_checked(wf)


def test_untracked_graphs_keep_plain_ports() -> None:
    wf = Workflow()
    sink = wf.add_stream(Stream(["x"], [], fn=collect, name="sink"))
    source = wf.add_source([1, 2, 3])
    source.pipe(sink)
    run_checked(wf)
    assert type(sink.stream.input("x")) is mimo_rx.Input
    assert type(source.stream.output("out")) is mimo_rx.Output


def test_prometheus_families_follow_delivery_stats() -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    import mimo_rx.prometheus

    src = Recorder(30, batch=4)
    wf = Workflow()
    wf.add_source(src, name="orders", commit_interval=0.005).pipe(
        wf.add_stream(Stream(["x"], [], fn=collect, name="sink"))
    )
    registry = CollectorRegistry()
    mimo_rx.prometheus.instrument(wf, name="shop", registry=registry)
    run_checked(wf)
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }
    labels = (("stream", "orders"), ("workflow", "shop"))
    assert samples[("mimo_rx_source_acked_total", labels)] == 30
    assert samples[("mimo_rx_source_nacked_total", labels)] == 0
    assert samples[("mimo_rx_source_in_flight", labels)] == 0
    assert not any(name.startswith("mimo_rx_source") for name, lab in samples if lab != labels)


# -- send_and_wait ---------------------------------------------------------------------------


def finishing_sink(finished: list[int]) -> Stream:
    """A sink that handles each item for 10 ms and records it as finished before it asks for
    the next one (which releases it): an item in ``finished`` is done."""

    async def sink(ins: Any, outs: Any, state: Any) -> None:
        async for item in ins.x:
            await asyncio.sleep(0.01)
            finished.append(item)

    return Stream(["x"], [], fn=sink, name="sink")


def test_send_and_wait_returns_once_done_and_raises_item_failed() -> None:
    released: list[int] = []

    def check(x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        return x

    wf = Workflow()
    inlet = wf.add_inlet("orders")
    stage = wf.add_stream(map_stream(check, on_error="resume", name="check"))

    inlet.pipe(stage).pipe(wf.add_stream(finishing_sink(released)))

    async def main() -> None:
        async with wf.running():
            await inlet.send(1)  # before any send_and_wait: untracked, costs nothing
            await inlet.send_and_wait(2)
            assert 2 in released
            with pytest.raises(ItemFailed) as info:
                await inlet.send_and_wait(-1)
            assert isinstance(info.value, mimo_rx.MimoError)
            (failure,) = info.value.failures
            assert isinstance(failure, Failure) and failure.item == -1

    run_checked(main())


def test_send_and_wait_raises_what_receive_would_when_the_run_fails() -> None:
    wf = Workflow()
    inlet = wf.add_inlet("orders")

    async def breaks(ins: Any, outs: Any, state: Any) -> None:
        async for _ in ins.x:
            await asyncio.sleep(0.01)
            raise ValueError("boom")

    inlet.pipe(wf.add_stream(Stream(["x"], [], fn=breaks, name="breaks")))

    async def main() -> None:
        with pytest.raises(StreamError):
            async with wf.running():
                with pytest.raises(StreamError):
                    await inlet.send_and_wait(1)

    run_checked(main())


def test_an_operator_stage_that_was_waiting_is_tracked_by_the_first_send_and_wait() -> None:
    # It used to fail with TypeError: Rx holds the bound on_next of the collectors it
    # subscribed, so their class switch did not reach it and untagged items were pushed.
    finished: list[int] = []
    wf = Workflow()
    inlet = wf.add_inlet("orders")

    stage = wf.add_stream(operator(ops.map(lambda x: x * 10), name="times10"))
    inlet.pipe(stage).pipe(wf.add_stream(finishing_sink(finished)))

    async def main() -> None:
        async with wf.running():
            await inlet.send(1)  # untracked, through the chain before tracking began
            await inlet.send_and_wait(2)
            assert 20 in finished
            await inlet.send_and_wait(3)
            assert finished[-1] == 30

    run_checked(main())
    assert finished == [10, 20, 30]


def test_a_resuming_operator_stage_tracked_mid_run_reports_its_failure_to_send_and_wait() -> None:
    def check(x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        return x

    finished: list[int] = []
    wf = Workflow()
    inlet = wf.add_inlet("orders")

    stage = wf.add_stream(operator(ops.map(check), on_error="resume", name="check"))
    inlet.pipe(stage).pipe(wf.add_stream(finishing_sink(finished)))

    async def main() -> None:
        async with wf.running():
            await inlet.send(1)
            with pytest.raises(ItemFailed) as info:
                await inlet.send_and_wait(-1)
            (failure,) = info.value.failures
            assert failure.item == -1 and isinstance(failure.error, ValueError)
            await inlet.send_and_wait(2)  # the chain was built anew: tracked from the start
            assert finished[-1] == 2

    run_checked(main())
    assert finished == [1, 2]


def test_send_and_wait_waits_for_a_stream_that_was_already_waiting_for_the_item() -> None:
    # The relay's async for was waiting, untracked, when send_and_wait began tracking: it
    # used to take the item without its tag, so what it pushed derived from nothing and the
    # call returned while the sink still handled it.
    finished: list[int] = []
    wf = Workflow()
    inlet = wf.add_inlet("orders")

    async def relay(ins: Any, outs: Any, state: Any) -> None:
        async for item in ins.x:
            await outs.y.push(item)

    relayed = inlet.pipe(wf.add_stream(Stream(["x"], ["y"], fn=relay, name="relay")))
    relayed.pipe(wf.add_stream(finishing_sink(finished)))

    async def main() -> None:
        async with wf.running():
            await inlet.send_and_wait(1)
            assert finished == [1]

    run_checked(main())


@st.composite
def mid_run_switches(draw: Any) -> dict[str, Any]:
    return {
        "first": draw(st.sampled_from(["relay", "operator", "def", "async_map", "jobs"])),
        "second": draw(st.sampled_from(["none", "relay", "operator"])),
        "sizes": draw(st.lists(st.integers(1, 3), min_size=2, max_size=2)),
        "producers": draw(st.integers(1, 3)),
        "sends": draw(st.integers(0, 6)),
        "waits": draw(st.integers(1, 4)),
        "switch_after": draw(st.integers(0, 6)),
        "seed": draw(st.integers(0, 2**16)),
    }


@pytest.mark.timeout(max(60, examples(1) * 0.1))
@settings(max_examples=examples(1))  # 200 for "ci", 2000 for "deep"
@given(mid_run_switches())
def test_send_and_wait_begun_mid_run_returns_only_once_its_item_is_done(s: dict[str, Any]) -> None:
    """Untracked sends from several tasks fill small buffers (producers parked, streams
    waiting) when the first send_and_wait begins tracking: each call returns only once the
    sink has finished with its item, and every item arrives once."""
    rng = random.Random(s["seed"])
    finished: list[int] = []  # appended by the sink before it asks for more
    early: list[int] = []

    async def relay(ins: Any, outs: Any, state: Any) -> None:
        async for item in ins.x:
            for _ in range(rng.randrange(3)):
                await asyncio.sleep(0)
            await outs.y.push(item)

    async def relay_async(item: int) -> int:
        for _ in range(rng.randrange(3)):
            await asyncio.sleep(0)
        return item

    async def sink(ins: Any, outs: Any, state: Any) -> None:
        async for item in ins.x:
            for _ in range(rng.randrange(3)):
                await asyncio.sleep(0)
            finished.append(item)

    first = {
        "relay": lambda: Stream(["x"], ["y"], fn=relay, name="first"),
        "operator": lambda: operator(ops.map(lambda x: x), name="first"),
        "def": lambda: map_stream(lambda x: x, name="first"),
        "async_map": lambda: map_stream(relay_async, name="first"),
        "jobs": lambda: map_stream(relay_async, concurrency=2, name="first"),
    }[s["first"]]()
    wf = Workflow()
    inlet = wf.add_inlet("orders")
    step = inlet.pipe(wf.add_stream(first), buffer_size=s["sizes"][0])
    if s["second"] == "relay":
        step = step.pipe(wf.add_stream(Stream(["x"], ["y"], fn=relay, name="second")))
    elif s["second"] == "operator":
        step = step.pipe(wf.add_stream(operator(ops.filter(lambda x: True), name="second")))
    step.pipe(wf.add_stream(Stream(["x"], [], fn=sink, name="sink")), buffer_size=s["sizes"][1])

    async def produce(base: int) -> None:
        for i in range(s["sends"]):
            await inlet.send(base + i)
            if rng.random() < 0.3:
                await asyncio.sleep(0)

    async def wait_for(value: int) -> None:
        await inlet.send_and_wait(value)
        if value not in finished:
            early.append(value)

    async def main() -> None:
        async with wf.running():
            producers = [
                asyncio.ensure_future(produce(1000 * (p + 1))) for p in range(s["producers"])
            ]
            for _ in range(s["switch_after"]):
                await asyncio.sleep(0)
            waits = [asyncio.ensure_future(wait_for(-1 - w)) for w in range(s["waits"])]
            await asyncio.gather(*producers, *waits)

    run_checked(main(), timeout=20)
    assert early == []
    sent = [1000 * (p + 1) + i for p in range(s["producers"]) for i in range(s["sends"])]
    assert sorted(finished) == sorted(sent + [-1 - w for w in range(s["waits"])])


# -- the property ----------------------------------------------------------------------------

KINDS = ("relay", "filter", "batch", "window", "resume", "operator")


@st.composite
def graphs(draw: Any) -> dict[str, Any]:
    count = draw(st.integers(1, 6))
    nodes = []
    for index in range(count):
        kind = draw(st.sampled_from(KINDS))
        parents = draw(st.lists(st.integers(-1, index - 1), min_size=1, max_size=2, unique=True))
        nodes.append(
            {
                "kind": kind,
                "parents": parents,
                "piped_errors": draw(st.booleans()),
                "delay": draw(st.sampled_from([0.0, 0.0, 0.0005])),
            }
        )
    return {
        "nodes": nodes,
        "messages": draw(st.integers(1, 60)),
        "batch": draw(st.integers(1, 8)),
        "cap": draw(st.integers(20, 200)),
        "buffer": draw(st.integers(1, 8)),
        "seed": draw(st.integers(0, 2**16)),
    }


class Oracle:
    """The test's own account of live copies per message (see the module docstring)."""

    def __init__(self) -> None:
        self.live: Counter[int] = Counter()
        self.failed: set[int] = set()  # messages with a Failure no stream took
        self.errors: list[str] = []

    def add(self, origins: frozenset[int], copies: int) -> None:
        for m in origins:
            self.live[m] += copies

    def drop(self, origins: frozenset[int]) -> None:
        for m in origins:
            self.live[m] -= 1
            if self.live[m] < 0:
                self.errors.append(f"oracle: {m} released more often than taken")

    def check(self, tokens: Sequence[Hashable], kind: str) -> None:
        for m in tokens:
            assert isinstance(m, int)
            if self.live[m]:
                self.errors.append(f"{kind} of {m} while {self.live[m]} copies are live")


def build(spec: dict[str, Any], oracle: Oracle, src: Recorder) -> Workflow:
    rng = random.Random(spec["seed"])
    nodes = spec["nodes"]
    children: dict[int, list[int]] = defaultdict(list)
    for index, node in enumerate(nodes):
        for parent in node["parents"]:
            children[parent].append(index)
    fanout = {index: len(children[index]) for index in range(-1, len(nodes))}
    dead_copies = {
        index: (1 if node["piped_errors"] else 0)
        for index, node in enumerate(nodes)
        if node["kind"] == "resume"
    }

    def item(token: int) -> tuple[int, frozenset[int]]:
        oracle.add(frozenset([token]), fanout[-1])
        return (token, frozenset([token]))

    src.item = item  # type: ignore[method-assign]
    wf = Workflow(buffer_size=spec["buffer"])
    steps: dict[int, Any] = {
        -1: wf.add_source(src, max_in_flight=spec["cap"], commit_interval=0.002)
    }

    def make(index: int, node: dict[str, Any]) -> Stream:
        copies = fanout[index]
        delay = node["delay"]
        kind = node["kind"]

        async def push(outs: Any, value: int, origins: frozenset[int]) -> None:
            oracle.add(origins, copies)
            await outs.y.push((value, origins))

        async def pause() -> None:
            if delay and rng.random() < 0.5:
                await asyncio.sleep(delay)

        if kind == "relay":

            async def body(ins: Any, outs: Any, state: Any) -> None:
                async for value, origins in ins.x:
                    await pause()
                    await push(outs, value, origins)
                    oracle.drop(origins)  # released at the next step of the loop

        elif kind == "filter":

            async def body(ins: Any, outs: Any, state: Any) -> None:
                async for value, origins in ins.x:
                    await pause()
                    if value % 3:
                        await push(outs, value, origins)
                    oracle.drop(origins)

        elif kind == "batch":

            async def body(ins: Any, outs: Any, state: Any) -> None:
                async for batch in ins.x.batches(max_items=3):
                    await pause()
                    union = frozenset().union(*(o for _, o in batch))
                    await push(outs, batch[0][0], union)
                    for _, origins in batch:
                        oracle.drop(origins)

        elif kind == "window":

            async def body(ins: Any, outs: Any, state: Any) -> None:
                held: list[tuple[Any, frozenset[int]]] = []
                async for value, origins in ins.x:
                    oracle.add(origins, 1)  # the handle's own reference
                    held.append((ins.x.hold(), origins))
                    union = frozenset().union(*(o for _, o in held))
                    await pause()
                    await push(outs, value, union)
                    if len(held) >= 3:
                        handle, old = held.pop(0)
                        oracle.drop(old)
                        handle.release()
                    oracle.drop(origins)
                for handle, old in held:  # returning releases everything too
                    oracle.drop(old)
                    handle.release()

        elif kind == "resume":
            errors_copies = dead_copies[index]

            async def body(ins: Any, outs: Any, state: Any) -> None:
                pending = state.pop("failed", None)
                if pending is not None:
                    oracle.drop(pending)  # the failed item: released at the next step
                async for value, origins in ins.x:
                    await pause()
                    if value % 7 == 3:
                        if errors_copies:
                            oracle.add(origins, errors_copies)
                        else:
                            oracle.failed.update(origins)
                        state["failed"] = origins
                        raise ValueError(value)
                    await push(outs, value, origins)
                    oracle.drop(origins)

        else:  # "operator": a filter, then the oracle's account at each emission
            dropped: list[frozenset[int]] = []

            def keep(pair: tuple[int, frozenset[int]]) -> bool:
                if pair[0] % 4 == 1:
                    dropped.append(pair[1])  # released when the chain next emits
                    return False
                return True

            def emitted(pair: tuple[int, frozenset[int]]) -> tuple[int, frozenset[int]]:
                # The emission derives from the dropped items too (the engine's rule).
                derived = pair[1].union(*dropped)
                oracle.add(derived, copies)
                oracle.drop(pair[1])
                for origins in dropped:
                    oracle.drop(origins)
                dropped.clear()
                return (pair[0], derived)

            def completed() -> None:
                for origins in dropped:
                    oracle.drop(origins)
                dropped.clear()

            return operator(
                lambda feed: feed.pipe(
                    ops.filter(keep), ops.map(emitted), ops.do_action(on_completed=completed)
                ),
                name=f"n{index}",
            )

        return Stream(
            ["x"],
            ["y"],
            fn=body,
            name=f"n{index}",
            on_error="resume" if kind == "resume" else "fail",
        )

    async def dead(ins: Any, outs: Any, state: Any) -> None:
        async for failure in ins.x:
            oracle.drop(failure.item[1])

    for index, node in enumerate(nodes):
        steps[index] = wf.add_stream(make(index, node))
        for parent in node["parents"]:
            steps[parent].pipe(steps[index], output="out" if parent == -1 else "y")
        if node["kind"] == "resume" and node["piped_errors"]:
            steps[index].pipe(
                wf.add_stream(Stream(["x"], [], fn=dead, name=f"dead{index}")),
                output="errors",
            )
    return wf


@pytest.mark.timeout(max(60, examples(4) * 0.5))
@settings(max_examples=examples(4))  # 50 for "ci", 500 for "deep"
@given(graphs())
def test_property_every_message_acked_once_never_early(spec: dict[str, Any]) -> None:
    oracle = Oracle()
    src = Recorder(spec["messages"], batch=spec["batch"], check=oracle.check)
    wf = build(spec, oracle, src)
    identity_errors: list[dict[str, int]] = []

    async def main() -> None:
        task = asyncio.ensure_future(wf.start())
        while not task.done():
            stats = delivery(wf)
            if stats["fetched"] != stats["acked"] + stats["nacked"] + stats["in_flight"]:
                identity_errors.append(stats)
            await asyncio.sleep(0.001)
        await task

    import logging

    logging.getLogger("mimo_rx").setLevel(logging.ERROR)  # unpiped failures are logged
    try:
        run_checked(main(), timeout=30)
    finally:
        logging.getLogger("mimo_rx").setLevel(logging.NOTSET)
    assert not oracle.errors, oracle.errors[:5]
    assert not identity_errors
    done = Counter(src.acked) + Counter(src.nacked)
    assert sorted(done) == list(range(spec["messages"]))
    assert all(count == 1 for count in done.values())
    assert set(src.nacked) == oracle.failed
    assert delivery(wf)["in_flight"] == 0


def test_a_forgotten_await_on_a_tracked_push_fails_the_run() -> None:
    wf = Workflow()

    async def forgetful(ins: Any, outs: Any, state: Any) -> None:
        async for item in ins.x:
            outs.y.push(item)  # type: ignore[unused-coroutine]  # the mistake under test

    stage = wf.add_stream(Stream(["x"], ["y"], fn=forgetful, name="forgetful"))
    wf.add_source(Recorder(3)).pipe(stage).pipe(
        wf.add_stream(Stream(["x"], [], fn=collect, name="sink"))
    )
    with pytest.raises(StreamError) as info:
        run_checked(wf)
    assert isinstance(info.value.__cause__, mimo_rx.MissingAwaitError)
