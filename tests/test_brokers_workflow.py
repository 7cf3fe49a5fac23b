"""The broker sources in a workflow: acked only when the graph is done, failures nacked
(contract §12), against real servers (tests/servers.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from harness import run_checked, until

from mimo_rx import Failure, Stream, Workflow, map_stream

redis_asyncio = pytest.importorskip("redis.asyncio")
nats = pytest.importorskip("nats")

from mimo_rx.sources import NatsSource, RedisStreamSource  # noqa: E402


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def gated_sink(got: list[Any], gate: asyncio.Event) -> Stream:
    """A sink that takes one item and holds it until ``gate`` is set."""

    async def hold(ins: Any, outs: Any, state: dict[str, Any]) -> None:
        async for item in ins.x:
            got.append(item)
            await gate.wait()

    return Stream(ins=["x"], fn=hold, name="sink")


async def acked_only_once_done(
    got: list[Any], gate: asyncio.Event, state: Callable[[], Awaitable[Any]], held: Any, acked: Any
) -> None:
    """The gated sink takes its first item and holds it: six commit intervals later the broker
    still has every message unacked (``await state() == held``); once the gate opens, the
    sink takes the rest and the broker gets every ack (``await state() == acked``)."""
    await until(lambda: asyncio.sleep(0, len(got) == 1))
    await asyncio.sleep(0.3)  # six commit intervals: nothing done, nothing acked
    assert await state() == held
    gate.set()

    async def all_acked() -> bool:
        return await state() == acked

    await until(all_acked)


def test_redis_entries_are_acked_only_once_the_graph_is_done_with_them(redis_url: str) -> None:
    stream, group = unique("s"), unique("g")

    async def main() -> None:
        r = redis_asyncio.Redis.from_url(redis_url, decode_responses=True)
        try:
            for i in range(5):
                await r.xadd(stream, {"i": str(i)})
            got: list[Any] = []
            gate = asyncio.Event()
            workflow = Workflow()
            entries = workflow.add_source(
                RedisStreamSource(r, stream, group, "one"), commit_interval=0.05
            )
            entries.pipe(workflow.add_stream(map_stream(lambda e: e.fields["i"])))
            workflow.steps[-1].pipe(workflow.add_stream(gated_sink(got, gate)))
            async with workflow.running():  # a failure in the body cancels the run

                async def pending() -> int:
                    return int((await r.xpending(stream, group))["pending"])

                await acked_only_once_done(got, gate, pending, held=5, acked=0)
                assert got == ["0", "1", "2", "3", "4"]
                workflow.stop()
        finally:
            await r.aclose()

    run_checked(main(), timeout=20)


def test_redis_a_failure_no_stream_takes_is_nacked_and_dead_lettered_after_max_deliveries(
    redis_url: str,
) -> None:
    stream, group, dead = unique("s"), unique("g"), unique("dead")

    def price(entry: Any) -> float:
        return float(entry.fields["amount"])  # "oops" raises: a Failure

    async def main() -> None:
        r = redis_asyncio.Redis.from_url(redis_url, decode_responses=True)
        try:
            poison = await r.xadd(stream, {"amount": "oops"})
            await r.xadd(stream, {"amount": "2.5"})
            prices: list[float] = []
            workflow = Workflow()
            source = RedisStreamSource(
                r, stream, group, "one", claim_idle=0.2, max_deliveries=3, dead_letter=dead
            )
            entries = workflow.add_source(source, commit_interval=0.05)
            priced = workflow.add_stream(map_stream(price, on_error="resume"))  # errors unpiped

            async def keep(ins: Any, outs: Any, state: dict[str, Any]) -> None:
                async for x in ins.x:
                    prices.append(x)

            entries.pipe(priced).pipe(workflow.add_stream(Stream(ins=["x"], fn=keep)))
            async with workflow.running():  # a failure in the body cancels the run

                async def buried() -> bool:
                    return bool(await r.xlen(dead))

                await until(buried)
                workflow.stop()
            [(_, fields)] = await r.xrange(dead)
            assert fields == {"amount": "oops", "source_id": poison, "deliveries": "3"}
            assert prices == [2.5]
            assert (await r.xpending(stream, group))["pending"] == 0
        finally:
            await r.aclose()

    run_checked(main(), timeout=20)


def test_redis_a_failure_taken_by_a_dead_letter_stream_is_acked(redis_url: str) -> None:
    stream, group = unique("s"), unique("g")

    async def main() -> None:
        r = redis_asyncio.Redis.from_url(redis_url, decode_responses=True)
        try:
            await r.xadd(stream, {"amount": "oops"})
            failures: list[Failure] = []
            workflow = Workflow()
            entries = workflow.add_source(
                RedisStreamSource(r, stream, group, "one"), commit_interval=0.05
            )
            priced = workflow.add_stream(
                map_stream(lambda e: float(e.fields["amount"]), on_error="resume")
            )

            async def dead_letters(ins: Any, outs: Any, state: dict[str, Any]) -> None:
                async for failure in ins.x:
                    failures.append(failure)

            entries.pipe(priced)
            priced.pipe(workflow.add_stream(Stream(ins=["x"], fn=dead_letters)), output="errors")
            async with workflow.running():  # a failure in the body cancels the run

                async def acked() -> bool:
                    return bool(failures) and (await r.xpending(stream, group))["pending"] == 0

                await until(acked)
                workflow.stop()
            assert isinstance(failures[0].error, ValueError)
        finally:
            await r.aclose()

    run_checked(main(), timeout=20)


async def consumer_state(js: Any, stream: str, durable: str) -> tuple[int, int] | None:
    """(delivered and not acked, not yet delivered), or None before the source created it."""
    from nats.js.errors import NotFoundError

    try:
        info = await js.consumer_info(stream, durable)
    except NotFoundError:
        return None
    return info.num_ack_pending, info.num_pending


def test_nats_messages_are_acked_only_once_the_graph_is_done_with_them(nats_url: str) -> None:
    stream, durable = unique("S"), unique("d")

    async def main() -> None:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            await js.add_stream(name=stream, subjects=[f"{stream}.>"])
            for i in range(5):
                await js.publish(f"{stream}.x", b"%d" % i)
            got: list[Any] = []
            gate = asyncio.Event()
            workflow = Workflow()
            messages = workflow.add_source(
                NatsSource(nats_url, stream, durable), commit_interval=0.05
            )
            messages.pipe(workflow.add_stream(map_stream(lambda m: m.data)))
            workflow.steps[-1].pipe(workflow.add_stream(gated_sink(got, gate)))
            async with workflow.running():  # a failure in the body cancels the run

                async def state() -> tuple[int, int] | None:
                    return await consumer_state(js, stream, durable)

                await acked_only_once_done(got, gate, state, held=(5, 0), acked=(0, 0))
                assert got == [b"0", b"1", b"2", b"3", b"4"]
                workflow.stop()
        finally:
            await nc.close()

    run_checked(main(), timeout=20)


def test_nats_a_failure_no_stream_takes_is_nacked_and_comes_again_until_max_deliver(
    nats_url: str,
) -> None:
    stream, durable = unique("S"), unique("d")

    async def main() -> None:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            await js.add_stream(name=stream, subjects=[f"{stream}.>"])
            await js.publish(f"{stream}.x", b"oops")
            await js.publish(f"{stream}.x", b"2.5")
            attempts: list[bytes] = []
            prices: list[float] = []

            def price(msg: Any) -> float:
                attempts.append(msg.data)
                return float(msg.data)

            workflow = Workflow()
            messages = workflow.add_source(
                NatsSource(nats_url, stream, durable, max_deliver=3), commit_interval=0.05
            )
            priced = workflow.add_stream(map_stream(price, on_error="resume"))  # errors unpiped

            async def keep(ins: Any, outs: Any, state: dict[str, Any]) -> None:
                async for x in ins.x:
                    prices.append(x)

            messages.pipe(priced).pipe(workflow.add_stream(Stream(ins=["x"], fn=keep)))
            async with workflow.running():  # a failure in the body cancels the run

                async def settled() -> bool:
                    state = await consumer_state(js, stream, durable)
                    return attempts.count(b"oops") == 3 and state == (0, 0)

                await until(settled)
                workflow.stop()
            assert prices == [2.5]
            assert attempts.count(b"2.5") == 1  # acked: never again
        finally:
            await nc.close()

    run_checked(main(), timeout=20)


# -- stop() when the client loses the cancellation of a waiting read ----------------------------


class LosesOneCancellation:
    """Wraps a real client (or subscription) object: the first cancellation of a waiting
    ``method`` call comes back as what ``lost`` returns, as redis-py 8.1 did on Python 3.11
    with a cancelled XREADGROUP; everything else goes to the real object."""

    def __init__(self, real: Any, method: str, lost: Callable[[], Any]) -> None:
        self._real = real
        self._method = method
        self._lost = lost
        self.waiting = asyncio.Event()
        self.swallowed = 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._real, name)
        if name != self._method:
            return attribute

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.waiting.set()
            try:
                return await attribute(*args, **kwargs)
            except asyncio.CancelledError:
                if self.swallowed:
                    raise
                self.swallowed += 1
                return self._lost()

        return call


async def stop_while_waiting(
    workflow: Workflow, client: Callable[[], LosesOneCancellation | None]
) -> None:
    """Start the run, stop() it once the source waits in ``client()`` (``None`` until the
    source has opened), and require that the run ends: it went on forever when the lost
    cancellation was not noticed."""
    run = asyncio.ensure_future(workflow.start())
    await until(lambda: asyncio.sleep(0, client() is not None))
    wrapper = client()
    assert wrapper is not None
    await asyncio.wait_for(wrapper.waiting.wait(), 10)
    await asyncio.sleep(0.1)  # well inside the blocking read
    workflow.stop()
    await asyncio.wait_for(run, 10)
    assert wrapper.swallowed == 1


def test_redis_stop_ends_the_run_when_the_client_loses_the_cancellation(redis_url: str) -> None:
    stream, group = unique("s"), unique("g")

    async def main() -> None:
        r = redis_asyncio.Redis.from_url(redis_url, decode_responses=True)
        try:
            client = LosesOneCancellation(r, "xreadgroup", list)
            workflow = Workflow()
            got: list[Any] = []
            workflow.add_source(RedisStreamSource(client, stream, group)).pipe(
                workflow.add_stream(gated_sink(got, asyncio.Event()))
            )
            await stop_while_waiting(workflow, lambda: client)
            assert got == []
        finally:
            await r.aclose()

    run_checked(main(), timeout=30)


class LosingNatsSource(NatsSource):
    """A NatsSource whose pull subscription loses the first cancellation of a fetch."""

    wrapper: LosesOneCancellation | None = None

    async def open(self) -> None:
        await super().open()
        self.wrapper = LosesOneCancellation(self._sub, "fetch", list)
        self._sub = self.wrapper


def test_nats_stop_ends_the_run_when_the_client_loses_the_cancellation(nats_url: str) -> None:
    stream, durable = unique("S"), unique("d")

    async def main() -> None:
        nc = await nats.connect(nats_url)
        try:
            await nc.jetstream().add_stream(name=stream, subjects=[f"{stream}.>"])
            source = LosingNatsSource(nats_url, stream, durable)
            workflow = Workflow()
            got: list[Any] = []
            workflow.add_source(source).pipe(workflow.add_stream(gated_sink(got, asyncio.Event())))
            await stop_while_waiting(workflow, lambda: source.wrapper)
            assert got == []
        finally:
            await nc.close()

    run_checked(main(), timeout=30)
