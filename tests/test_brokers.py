"""RedisStreamSource and NatsSource through their AckSource methods, against real servers.

No workflow here: each test drives open/fetch/ack/nack/close itself, as the engine would, and
checks what the broker then holds (the group's pending list, the consumer's ack state). The
servers come from tests/servers.py; every test names its own stream, group and durable.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Hashable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
from harness import run_checked

from mimo_rx import AckSource, ConfigError

redis_asyncio = pytest.importorskip("redis.asyncio")
nats = pytest.importorskip("nats")

from mimo_rx.sources import NatsMessage, NatsSource, RedisStreamSource, StreamEntry  # noqa: E402


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@asynccontextmanager
async def opened(source: Any) -> AsyncIterator[Any]:
    await source.open()
    try:
        yield source
    finally:
        await source.close()


async def fetch_within(source: Any, max_items: int, seconds: float) -> list[tuple[Hashable, Any]]:
    async with asyncio.timeout(seconds):
        batch = await source.fetch(max_items)
    assert batch is not None and 1 <= len(batch) <= max_items
    return list(batch)


async def fetch_all(source: Any, count: int) -> list[tuple[Hashable, Any]]:
    """``count`` messages, over as many fetches as the server hands them out in."""
    batch: list[tuple[Hashable, Any]] = []
    while len(batch) < count:
        batch += await fetch_within(source, count - len(batch), 5)
    return batch


async def nothing_within(source: Any, seconds: float) -> None:
    """``fetch`` is still waiting after ``seconds``: nothing is available to this source."""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(seconds):
            await source.fetch(100)


# -- Redis ---------------------------------------------------------------------------------------


@asynccontextmanager
async def redis_client(url: str) -> AsyncIterator[Any]:
    client = redis_asyncio.Redis.from_url(url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def pending_ids(client: Any, stream: str, group: str) -> list[str]:
    rows = await client.xpending_range(stream, group, "-", "+", 10_000)
    return [row["message_id"] for row in rows]


def test_redis_source_is_an_ack_source_and_delivers_stream_entries_as_str(redis_url: str) -> None:
    stream, group = unique("orders"), unique("billing")

    async def main() -> None:
        async with redis_client(redis_url) as r:
            ids = [await r.xadd(stream, {"n": str(i), "kind": "order"}) for i in range(5)]
            source = RedisStreamSource(redis_url, stream, group)
            assert isinstance(source, AckSource)
            async with opened(source):
                batch = await fetch_within(source, 10, 5)
                assert [token for token, _ in batch] == ids
                assert batch[0][1] == StreamEntry(ids[0], {"n": "0", "kind": "order"})
                assert await pending_ids(r, stream, group) == ids
                await source.ack([ids[3], ids[1]])  # any order
                assert await pending_ids(r, stream, group) == [ids[0], ids[2], ids[4]]

    run_checked(main(), timeout=20)


def test_redis_fetch_returns_at_most_max_items_and_waits_while_the_stream_is_empty(
    redis_url: str,
) -> None:
    stream, group = unique("s"), unique("g")

    async def main() -> None:
        async with redis_client(redis_url) as r, opened(RedisStreamSource(r, stream, group)) as s:
            await nothing_within(s, 0.3)
            for i in range(7):
                await r.xadd(stream, {"i": str(i)})
            first = await fetch_within(s, 3, 5)
            second = await fetch_within(s, 10, 5)
            assert [e.fields["i"] for _, e in first + second] == [str(i) for i in range(7)]
            assert len(first) == 3

            waiting = asyncio.ensure_future(s.fetch(10))
            await asyncio.sleep(0.1)
            assert not waiting.done()
            await r.xadd(stream, {"i": "late"})
            async with asyncio.timeout(5):
                [(_, entry)] = await waiting
            assert entry.fields == {"i": "late"}

    run_checked(main(), timeout=20)


def test_redis_a_cancelled_fetch_loses_nothing_and_the_source_goes_on(redis_url: str) -> None:
    stream, group = unique("s"), unique("g")

    async def main() -> None:
        async with redis_client(redis_url) as r, opened(RedisStreamSource(r, stream, group)) as s:
            waiting = asyncio.ensure_future(s.fetch(10))  # as stop() does
            await asyncio.sleep(0.1)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await r.xadd(stream, {"i": "0"})
            [(token, entry)] = await fetch_within(s, 10, 5)
            assert entry.fields == {"i": "0"}
            await s.ack([token])

    run_checked(main(), timeout=20)


def test_redis_group_is_created_at_start_and_an_existing_group_is_kept(redis_url: str) -> None:
    stream = unique("s")

    async def main() -> None:
        async with redis_client(redis_url) as r:
            await r.xadd(stream, {"old": "1"})
            # start="$": a new group sees only what is added from now on
            async with opened(RedisStreamSource(r, stream, "fresh", start="$")) as s:
                await nothing_within(s, 0.2)
                await r.xadd(stream, {"new": "1"})
                [(token, entry)] = await fetch_within(s, 10, 5)
                assert entry.fields == {"new": "1"}
                await s.ack([token])
            # opening again (BUSYGROUP) keeps the group and its position
            async with opened(RedisStreamSource(r, stream, "fresh", start="0")) as s:
                await nothing_within(s, 0.2)

    run_checked(main(), timeout=20)


def test_redis_a_consumer_that_comes_back_gets_its_own_pending_entries_first(
    redis_url: str,
) -> None:
    stream, group = unique("s"), unique("g")

    async def main() -> None:
        async with redis_client(redis_url) as r:
            for i in range(5):
                await r.xadd(stream, {"i": str(i)})
            async with opened(RedisStreamSource(r, stream, group, "worker-1")) as s:
                taken = await fetch_within(s, 3, 5)
                await s.ack([taken[1][0]])  # 0 and 2 stay pending: the process "dies"
            for i in range(5, 8):
                await r.xadd(stream, {"i": str(i)})
            async with opened(RedisStreamSource(r, stream, group, "worker-1")) as s:
                again = await fetch_within(s, 10, 5)
                assert [e.fields["i"] for _, e in again] == ["0", "2"]
                rest = await fetch_within(s, 10, 5)
                assert [e.fields["i"] for _, e in rest] == ["3", "4", "5", "6", "7"]

    run_checked(main(), timeout=20)


def test_redis_entries_of_a_dead_consumer_are_claimed_within_claim_idle_plus_one_second(
    redis_url: str,
) -> None:
    stream, group = unique("s"), unique("g")

    async def main() -> None:
        async with redis_client(redis_url) as r:
            for i in range(4):
                await r.xadd(stream, {"i": str(i)})
            dead = RedisStreamSource(r, stream, group, "dead", claim_idle=0.5)
            async with opened(dead):
                held = await fetch_within(dead, 10, 5)  # never acked: "kill -9"
            died = time.monotonic()
            async with opened(RedisStreamSource(r, stream, group, "alive", claim_idle=0.5)) as s:
                claimed = await fetch_within(s, 10, 5)
                took = time.monotonic() - died
                assert [t for t, _ in claimed] == [t for t, _ in held]
                assert 0.5 <= took <= 1.5, took
                await s.ack([t for t, _ in claimed])
            assert await pending_ids(r, stream, group) == []

    run_checked(main(), timeout=20)


def test_redis_a_source_never_claims_back_what_it_holds_itself(redis_url: str) -> None:
    stream, group = unique("s"), unique("g")

    async def main() -> None:
        async with (
            redis_client(redis_url) as r,
            opened(RedisStreamSource(r, stream, group, "one", claim_idle=0.2)) as s,
        ):
            await r.xadd(stream, {"i": "0"})
            await fetch_within(s, 10, 5)
            await nothing_within(s, 0.8)  # idle for 4 x claim_idle, but in flight here

    run_checked(main(), timeout=20)


def test_redis_a_nacked_entry_is_delivered_again_after_claim_idle(redis_url: str) -> None:
    stream, group = unique("s"), unique("g")

    async def main() -> None:
        async with (
            redis_client(redis_url) as r,
            opened(RedisStreamSource(r, stream, group, "one", claim_idle=0.4)) as s,
        ):
            entry_id = await r.xadd(stream, {"i": "0"})
            [(token, _)] = await fetch_within(s, 10, 5)
            await s.nack([token])
            nacked = time.monotonic()
            [(again, entry)] = await fetch_within(s, 10, 5)
            assert again == entry_id and entry.fields == {"i": "0"}
            assert 0.3 <= time.monotonic() - nacked <= 1.4
            await s.ack([again])
            assert await pending_ids(r, stream, group) == []

    run_checked(main(), timeout=20)


def test_redis_an_entry_delivered_max_deliveries_times_goes_to_dead_letter_and_is_acked(
    redis_url: str,
) -> None:
    stream, group, dead = unique("s"), unique("g"), unique("dead")

    async def main() -> None:
        async with redis_client(redis_url) as r:
            poison = await r.xadd(stream, {"body": "poison"})
            good = await r.xadd(stream, {"body": "fine"})
            source = RedisStreamSource(
                r, stream, group, "one", claim_idle=0.2, max_deliveries=2, dead_letter=dead
            )
            async with opened(source) as s:
                first = await fetch_within(s, 10, 5)
                assert [t for t, _ in first] == [poison, good]
                await s.ack([good])
                await s.nack([poison])
                [(second, _)] = await fetch_within(s, 10, 5)  # delivery 2
                await s.nack([second])
                await nothing_within(s, 1.0)  # due again: buried instead
            [(_, fields)] = await r.xrange(dead)
            assert fields == {"body": "poison", "source_id": poison, "deliveries": "2"}
            assert await pending_ids(r, stream, group) == []

    run_checked(main(), timeout=20)


def test_redis_max_deliveries_counts_deliveries_to_a_consumer_that_died(redis_url: str) -> None:
    stream, group, dead = unique("s"), unique("g"), unique("dead")

    async def main() -> None:
        async with redis_client(redis_url) as r:
            poison = await r.xadd(stream, {"body": "kills its worker"})
            for name in ("w1", "w2"):  # each takes it and "dies" with it
                worker = RedisStreamSource(
                    r, stream, group, name, claim_idle=0.2, max_deliveries=2, dead_letter=dead
                )
                async with opened(worker):
                    await fetch_within(worker, 10, 5)
            # w1 comes back: its own pending entry is due a third time -> dead letter
            worker = RedisStreamSource(
                r, stream, group, "w2", claim_idle=0.2, max_deliveries=2, dead_letter=dead
            )
            async with opened(worker):
                await nothing_within(worker, 0.6)
            [(_, fields)] = await r.xrange(dead)
            assert fields["source_id"] == poison and fields["deliveries"] == "2"
            assert await pending_ids(r, stream, group) == []

    run_checked(main(), timeout=20)


def test_redis_a_client_without_decoded_responses_still_gives_str(redis_url: str) -> None:
    stream, group = unique("s"), unique("g")

    async def main() -> None:
        raw = redis_asyncio.Redis.from_url(redis_url)  # bytes replies
        try:
            entry_id = (await raw.xadd(stream, {"k": "v"})).decode()
            async with opened(RedisStreamSource(raw, stream, group)) as s:
                [(token, entry)] = await fetch_within(s, 10, 5)
                assert token == entry_id and entry == StreamEntry(entry_id, {"k": "v"})
                await s.ack([token])
            assert await raw.xpending(stream, group) == {
                "pending": 0,
                "min": None,
                "max": None,
                "consumers": [],
            }
            assert await raw.ping()  # a client passed in stays open
        finally:
            await raw.aclose()

    run_checked(main(), timeout=20)


def test_redis_a_consumer_named_for_the_process_leaves_the_group_when_it_holds_nothing(
    redis_url: str,
) -> None:
    stream, group = unique("s"), unique("g")

    async def main() -> None:
        async with redis_client(redis_url) as r:
            await r.xadd(stream, {"i": "0"})
            async with opened(RedisStreamSource(r, stream, group)) as s:
                [(token, _)] = await fetch_within(s, 10, 5)
                await s.ack([token])
            assert await r.xinfo_consumers(stream, group) == []

    run_checked(main(), timeout=20)


def test_redis_close_after_a_failed_open_only_releases_the_client() -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    async def main() -> None:
        source = RedisStreamSource("redis://127.0.0.1:1/0", "s", "g")  # nothing listens
        with pytest.raises(RedisConnectionError):
            await source.open()
        await source.close()

    run_checked(main(), timeout=20)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"claim_idle": 0}, "claim_idle must be positive"),
        ({"max_deliveries": 0, "dead_letter": "d"}, "max_deliveries must be a positive int"),
        ({"max_deliveries": 3}, "max_deliveries and dead_letter go together"),
        ({"dead_letter": "d"}, "max_deliveries and dead_letter go together"),
        ({"max_deliveries": 3, "dead_letter": "orders"}, "dead_letter must be another stream"),
    ],
)
def test_redis_source_rejects_bad_settings_naming_stream_and_group(
    kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        RedisStreamSource("redis://127.0.0.1:1/0", "orders", "billing", **kwargs)
    assert "stream='orders', group='billing'" in str(info.value)


# -- NATS ----------------------------------------------------------------------------------------


@asynccontextmanager
async def jetstream(url: str, stream: str, subjects: Sequence[str]) -> AsyncIterator[Any]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=list(subjects))
        yield js
    finally:
        await nc.close()


async def ack_pending(js: Any, stream: str, durable: str) -> tuple[int, int]:
    """(messages delivered and not acked, messages not yet delivered) of the consumer."""
    info = await js.consumer_info(stream, durable)
    return info.num_ack_pending, info.num_pending


def test_nats_source_is_an_ack_source_and_delivers_nats_messages(nats_url: str) -> None:
    stream, durable = unique("ORDERS"), unique("billing")

    async def main() -> None:
        async with jetstream(nats_url, stream, [f"{stream}.>"]) as js:
            await js.publish(f"{stream}.eu", b"one", headers={"kind": "order"})
            for i in range(4):
                await js.publish(f"{stream}.us", b"n%d" % i)
            source = NatsSource(nats_url, stream, durable)
            assert isinstance(source, AckSource)
            async with opened(source):
                batch = await fetch_within(source, 3, 5)
                assert batch[0][1] == NatsMessage(f"{stream}.eu", b"one", {"kind": "order"})
                assert batch[1][1] == NatsMessage(f"{stream}.us", b"n0", None)
                assert len(batch) == 3
                rest = await fetch_within(source, 10, 5)
                assert [m.data for _, m in rest] == [b"n2", b"n3"]
                await source.ack([t for t, _ in rest + batch])
                await nothing_within(source, 0.5)
            # close() flushed the acks (a round trip): the server has them all
            assert await ack_pending(js, stream, durable) == (0, 0)

    run_checked(main(), timeout=20)


def test_nats_a_cancelled_fetch_loses_nothing_and_the_source_goes_on(nats_url: str) -> None:
    stream = unique("S")

    async def main() -> None:
        async with (
            jetstream(nats_url, stream, [f"{stream}.>"]) as js,
            opened(NatsSource(nats_url, stream, "d")) as s,
        ):
            waiting = asyncio.ensure_future(s.fetch(10))  # as stop() does
            await asyncio.sleep(0.1)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await js.publish(f"{stream}.x", b"after")
            [(token, msg)] = await fetch_within(s, 10, 5)
            assert msg.data == b"after"
            await s.ack([token])

    run_checked(main(), timeout=20)


def test_nats_subject_filters_the_stream(nats_url: str) -> None:
    stream = unique("S")

    async def main() -> None:
        async with jetstream(nats_url, stream, [f"{stream}.>"]) as js:
            await js.publish(f"{stream}.a", b"a")
            await js.publish(f"{stream}.b", b"b")
            async with opened(NatsSource(nats_url, stream, "only-b", f"{stream}.b")) as s:
                [(_, msg)] = await fetch_within(s, 10, 5)
                assert msg.data == b"b"

    run_checked(main(), timeout=20)


def test_nats_a_nacked_message_comes_again_until_max_deliver(nats_url: str) -> None:
    stream = unique("S")

    async def main() -> None:
        async with jetstream(nats_url, stream, [f"{stream}.>"]) as js:
            await js.publish(f"{stream}.x", b"poison")
            async with opened(NatsSource(nats_url, stream, "d", max_deliver=3)) as s:
                for _ in range(3):
                    [(token, msg)] = await fetch_within(s, 10, 5)
                    assert msg.data == b"poison"
                    await s.nack([token])
                await nothing_within(s, 1.0)  # delivered 3 times: JetStream stops

    run_checked(main(), timeout=20)


def test_nats_a_held_message_is_kept_alive_past_ack_wait(nats_url: str) -> None:
    # The keep-alive refreshes a held message at the latest 3/4 ack_wait after the last time:
    # the quarter left is what a busy loop may be late by, 0.5 s here (0.25 s with 1 s was
    # not enough on a loaded CI machine).
    stream, durable, ack_wait = unique("S"), unique("d"), 2.0

    async def main() -> None:
        async with jetstream(nats_url, stream, [f"{stream}.>"]) as js:
            await js.publish(f"{stream}.x", b"slow")
            async with opened(NatsSource(nats_url, stream, durable, ack_wait=ack_wait)) as slow:
                [(token, _)] = await fetch_within(slow, 10, 5)
                async with opened(
                    NatsSource(nats_url, stream, durable, ack_wait=ack_wait)
                ) as other:
                    await nothing_within(other, 2.25 * ack_wait)  # not given to other
                    await slow.ack([token])
                    await nothing_within(other, 1.25 * ack_wait)  # acked: never again

    run_checked(main(), timeout=30)


def test_nats_messages_of_a_process_that_died_come_back_within_ack_wait(nats_url: str) -> None:
    stream, durable = unique("S"), unique("d")

    async def main() -> None:
        async with jetstream(nats_url, stream, [f"{stream}.>"]) as js:
            for i in range(3):
                await js.publish(f"{stream}.x", b"%d" % i)
            async with opened(NatsSource(nats_url, stream, durable, ack_wait=1.0)) as dead:
                held = await fetch_all(dead, 3)
            died = time.monotonic()  # closed without acking: the keep-alive stopped with it
            async with opened(NatsSource(nats_url, stream, durable, ack_wait=1.0)) as s:
                # The server redelivers each message as its own ack_wait runs out, so they
                # come back over several fetches, in any order, and at least once each (a
                # rehearsal saw 0, 2, 1): gather until every held message has come back.
                want = {m.data for _, m in held}
                came: set[bytes] = set()
                while not want <= came:
                    came |= {m.data for _, m in await fetch_within(s, 10, 5)}
                assert time.monotonic() - died <= 1.5
                assert came == want

    run_checked(main(), timeout=20)


def test_nats_an_existing_durable_gets_the_sources_settings(nats_url: str) -> None:
    stream, durable = unique("S"), unique("d")

    async def main() -> None:
        async with jetstream(nats_url, stream, [f"{stream}.>"]) as js:
            async with opened(NatsSource(nats_url, stream, durable, ack_wait=5.0)):
                pass
            async with opened(NatsSource(nats_url, stream, durable, ack_wait=2.0, max_deliver=4)):
                info = await js.consumer_info(stream, durable)
                assert (info.config.ack_wait, info.config.max_deliver) == (2.0, 4)

    run_checked(main(), timeout=20)


def test_nats_a_missing_stream_is_a_config_error_saying_to_create_it(nats_url: str) -> None:
    async def main() -> None:
        source = NatsSource(nats_url, "NO-SUCH-STREAM", "d")
        with pytest.raises(ConfigError, match="the stream does not exist; create it first"):
            await source.open()
        await source.close()

    run_checked(main(), timeout=20)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ack_wait": 0}, "ack_wait must be positive"),
        ({"max_deliver": 0}, "max_deliver must be a positive int"),
    ],
)
def test_nats_source_rejects_bad_settings_naming_stream_and_durable(
    kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        NatsSource("nats://127.0.0.1:1", "ORDERS", "billing", **kwargs)
    assert "stream='ORDERS', durable='billing'" in str(info.value)


# -- imports ---------------------------------------------------------------------------------


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=60
    )


def test_importing_mimo_rx_and_its_sources_imports_no_broker_client() -> None:
    result = run_python(
        "import sys, mimo_rx, mimo_rx.sources\n"
        "from mimo_rx.sources import StreamEntry, NatsMessage\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('redis', 'nats')))\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_missing_client_library_names_the_extra_to_install() -> None:
    result = run_python(
        "import asyncio, sys\n"
        "sys.modules['redis'] = sys.modules['nats'] = None  # not installed\n"
        "from mimo_rx.sources import NatsSource, RedisStreamSource, StreamEntry\n"
        "StreamEntry('1-0', {})\n"
        "for make in (lambda: RedisStreamSource('redis://x', 's', 'g'),\n"
        "             lambda: asyncio.run(NatsSource('nats://x', 'S', 'd').open())):\n"
        "    try:\n"
        "        make()\n"
        "    except ImportError as exc:\n"
        "        print(exc)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "RedisStreamSource needs the optional dependency 'redis': pip install \"mimo_rx[redis]\"",
        "NatsSource needs the optional dependency 'nats-py': pip install \"mimo_rx[nats]\"",
    ]
