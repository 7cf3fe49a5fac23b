"""examples/web_service.py, driven over real HTTP on 127.0.0.1 (CONTRACT 10 inside a server).

The server runs in-process on the test's loop (an ephemeral port) for the behaviour tests, and
as a child process for the SIGTERM drain. Every client is an ``aiohttp.ClientSession``; every
wait is bounded (``run_checked`` timeouts, ``asyncio.timeout``, process kill on hang).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

aiohttp = pytest.importorskip("aiohttp")

from harness import run_checked, until  # noqa: E402
from test_examples import EXAMPLES, load  # noqa: E402

web_service = load("web_service")

PADDING = "x" * 1000  # makes each upload line about 1 KiB: the byte buffers hold few records


def record(n: int, *, padded: bool = False) -> bytes:
    body: dict[str, Any] = {"id": n, "qty": n % 7, "price": 0.5}
    if padded:
        body["note"] = PADDING
    return json.dumps(body).encode() + b"\n"


def small_send_buffer(addr_info: Any) -> socket.socket:
    """A client socket with a small kernel send buffer, so the upload's bytes in flight are
    few and the server's pace shows at the client."""
    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family, type_, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
    return sock


async def read_ndjson(response: aiohttp.ClientResponse, into: list[Any]) -> list[Any]:
    async for line in response.content:
        into.append(json.loads(line))
    return into


def results_of(lines: list[Any]) -> list[Any]:
    return [line for line in lines if "end" not in line]


@dataclasses.dataclass
class WatchedService(web_service.Service):
    """The service, telling the test when ``lines_wanted`` lines of one request have entered
    its graph and when a request has ended."""

    lines_wanted: int = 0
    lines_in: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    ended: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    uploads: list[Any] = dataclasses.field(default_factory=list)

    @contextlib.contextmanager
    def upload(self) -> Iterator[Any]:
        with super().upload() as upload:
            self.uploads.append(upload)
            send = upload.lines.send

            async def counted(item: Any) -> None:
                await send(item)
                if upload.read + 1 >= self.lines_wanted:  # feed() counts it once send returns
                    self.lines_in.set()

            upload.lines.send = counted
            try:
                yield upload
            finally:
                self.ended.set()


# -- every record back exactly once ---------------------------------------------------------------


def test_every_record_comes_back_exactly_once_in_order_across_concurrent_uploads() -> None:
    uploads, per_upload = 4, 1500

    async def main() -> list[list[Any]]:
        service = web_service.Service(delay=0.0005, concurrency=4)
        async with web_service.serving(service) as server, aiohttp.ClientSession() as session:
            batches = [[record(u * per_upload + i) for i in range(per_upload)] for u in range(4)]
            return list(
                await asyncio.gather(
                    *(web_service.upload_records(session, server.url, b) for b in batches)
                )
            )

    replies = run_checked(main(), timeout=50)
    every_id = []
    for u, reply in enumerate(replies):
        ids = [r["id"] for r in results_of(reply)]
        assert ids == list(range(u * per_upload, (u + 1) * per_upload))  # once each, in order
        assert reply[-1] == {
            "end": {"records": per_upload, "results": per_upload, "errors": 0, "complete": True}
        }
        every_id += ids
    assert sorted(every_id) == list(range(uploads * per_upload))


def test_each_result_carries_the_enrichment_of_its_record() -> None:
    async def main() -> list[Any]:
        async with web_service.serving() as server, aiohttp.ClientSession() as session:
            lines = [b'{"id": "a1", "qty": 3, "price": 2.5}\n', b'{"id": 7, "qty": 0, "price": 9}']
            return await web_service.upload_records(session, server.url, lines)

    reply = run_checked(main(), timeout=20)
    assert results_of(reply) == [
        {"line": 1, "id": "a1", "total": 7.5},
        {"line": 2, "id": 7, "total": 0},
    ]


# -- back-pressure through TCP --------------------------------------------------------------------


def test_a_slow_pipeline_makes_a_fast_uploader_wait_with_bounded_buffers() -> None:
    """The client's upload generator can only finish once the server has taken almost all of
    it; meanwhile every buffer of the request's graph stays within its threshold."""
    total = 3000  # ~3 MiB of upload: far more than every byte buffer on the way can hold
    concurrency = 4

    async def main() -> dict[str, Any]:
        service = web_service.Service(delay=0.002, concurrency=concurrency)
        connector = aiohttp.TCPConnector(socket_factory=small_send_buffer)
        samples: list[dict[str, Any]] = []
        at_end: dict[str, Any] = {}
        async with (
            web_service.serving(service) as server,
            aiohttp.ClientSession(connector=connector) as session,
            aiohttp.ClientSession() as watcher,
        ):

            async def body() -> AsyncIterator[bytes]:
                for n in range(total):
                    if n and n % 250 == 0:  # sample the server's stats over HTTP, mid-upload
                        async with watcher.get(f"{server.url}/stats") as reply:
                            samples.append(await reply.json())
                    yield record(n, padded=True)
                # The uploader's last chunk is handed over: how far is the server?
                (upload,) = service.stats()["requests"].values()
                at_end.update(upload)

            received: list[Any] = []
            async with session.post(f"{server.url}/process", data=body()) as response:
                await read_ndjson(response, received)
        return {"samples": samples, "at_end": at_end, "received": received}

    outcome = run_checked(main(), timeout=50)
    results = results_of(outcome["received"])
    assert sorted(r["id"] for r in results) == list(range(total))

    # The upload finished only after the server had processed most of it: the bytes the
    # sockets and aiohttp can hold are a few hundred of these 1 KiB lines, not thousands.
    processed_when_upload_ended = outcome["at_end"]["results"]
    assert processed_when_upload_ended >= total // 2, outcome["at_end"]

    samples = outcome["samples"]
    assert len(samples) == total // 250 - 1
    capacity = 0
    for sample in samples:
        (upload,) = sample["requests"].values()
        streams = upload["workflow"]["streams"]
        capacity = 0
        for stream in streams.values():
            for port in stream["inputs"].values():
                assert port["buffered"] <= port["threshold"], sample
                assert port["peak_buffered"] <= port["threshold"], sample
                capacity += port["threshold"]
        # Lines read from the body but not yet written back: what the graph can hold.
        assert upload["records"] - upload["results"] <= capacity + concurrency + 1, upload
    # The inlet was held back: its pushes were paused by the full graph.
    final = samples[-1]["requests"]
    (upload,) = final.values()
    assert upload["workflow"]["streams"]["parse"]["inputs"]["x"]["paused_s"] > 0


# -- malformed input ------------------------------------------------------------------------------


def test_malformed_lines_come_back_as_error_lines_in_their_place_and_processing_goes_on() -> None:
    lines = [
        record(1),
        b"{not json\n",
        b"[1, 2]\n",
        b"\n",  # blank lines are skipped
        b'{"qty": 1, "price": 1}\n',
        b'{"id": 5, "qty": -1, "price": 1}\n',
        b'{"id": 6, "qty": 1, "price": "free"}\n',
        b"\xff\xfe\n",
        record(8),
    ]

    async def main() -> tuple[int, list[Any]]:
        async with web_service.serving() as server, aiohttp.ClientSession() as session:

            async def body() -> AsyncIterator[bytes]:
                for line in lines:
                    yield line

            async with session.post(f"{server.url}/process", data=body()) as response:
                return response.status, await read_ndjson(response, [])

    status, reply = run_checked(main(), timeout=20)
    assert status == 200
    assert [r["line"] for r in results_of(reply)] == [1, 2, 3, 5, 6, 7, 8, 9]
    errors = {r["line"]: r["error"] for r in reply if "error" in r}
    assert errors[2].startswith("line 2: not valid JSON")
    assert errors[3] == "line 3: expected a JSON object, got list"
    assert errors[5] == "line 5: 'id' is missing (a string or an integer)"
    assert errors[6] == "line 6: 'qty' must be an integer >= 0, got -1"
    assert errors[7] == "line 7: 'price' must be a number >= 0, got 'free'"
    assert errors[8].startswith("line 8: not valid JSON")
    assert [r["id"] for r in results_of(reply) if "id" in r] == [1, 8]
    assert reply[-1] == {"end": {"records": 8, "results": 8, "errors": 6, "complete": True}}


# -- /stats and shutdown --------------------------------------------------------------------------


def test_stats_is_json_with_no_request_listed_while_none_is_in_flight() -> None:
    async def main() -> Any:
        async with web_service.serving() as server, aiohttp.ClientSession() as session:
            await web_service.upload_records(session, server.url, [record(1)])
            async with session.get(f"{server.url}/stats") as reply:
                return reply.status, await reply.json()

    assert run_checked(main(), timeout=20) == (200, {"draining": False, "requests": {}})


def test_a_request_arriving_once_the_server_drains_is_refused_with_503() -> None:
    async def main() -> tuple[int, str]:
        server = web_service.Server()
        await server.start()
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{server.url}/stats") as reply:  # a kept-alive connection
                    await reply.read()
                await server.stop_listening()
                async with session.post(f"{server.url}/process", data=record(1)) as reply:
                    return reply.status, await reply.text()
        finally:
            await server.shutdown()

    status, text = run_checked(main(), timeout=20)
    assert status == 503
    assert "shutting down" in text


def test_shutdown_returns_what_was_read_of_an_unfinished_upload_and_marks_it_incomplete() -> None:
    """In-process form of the SIGTERM drain: the upload is still open when the server drains."""
    sent = 30

    async def main() -> list[Any]:
        service = WatchedService(delay=0.01, concurrency=2, lines_wanted=sent)
        server = web_service.Server(service)
        await server.start()
        release = asyncio.Event()
        try:
            async with aiohttp.ClientSession() as session:

                async def body() -> AsyncIterator[bytes]:
                    for n in range(sent):
                        yield record(n)
                    await release.wait()  # the upload stays open

                async with session.post(f"{server.url}/process", data=body()) as response:
                    received: list[Any] = []
                    reading = asyncio.create_task(read_ndjson(response, received))
                    await service.lines_in.wait()  # every line sent is inside the graph
                    assert len(results_of(received)) < sent  # some were still inside the graph
                    await server.shutdown()
                    try:
                        return await reading
                    finally:
                        release.set()
        finally:
            release.set()
            await server.shutdown()

    reply = run_checked(main(), timeout=30)
    assert [r["id"] for r in results_of(reply)] == list(range(sent))
    assert reply[-1] == {"end": {"records": sent, "results": sent, "errors": 0, "complete": False}}


# -- SIGTERM in a child process -------------------------------------------------------------------


async def read_line(stream: asyncio.StreamReader) -> str:
    async with asyncio.timeout(15):
        return (await stream.readline()).decode()


@contextlib.asynccontextmanager
async def service_process(delay: float) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """``examples/web_service.py`` in a child process on a free port (concurrency 2, ``delay``
    seconds per record): yields the process and its URL once it listens; killed at the end
    if it is still running."""
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES.parent)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / "web_service.py"),
        "--port",
        "0",
        "--delay",
        str(delay),
        "--concurrency",
        "2",
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        first = await read_line(proc.stdout)
        assert first.startswith("listening on http://127.0.0.1:"), first
        yield proc, first.split()[-1]
    finally:
        if proc.returncode is None:
            proc.kill()


async def until_records_read(url: str, wanted: Callable[[list[int]], bool]) -> None:
    """Polls ``GET /stats`` until ``wanted`` holds for the records read by each request."""
    async with aiohttp.ClientSession() as session:

        async def read_enough() -> bool:
            async with session.get(f"{url}/stats") as reply:
                requests = (await reply.json())["requests"]
            return wanted([r["records"] for r in requests.values()])

        await until(read_enough)


def test_sigterm_drains_every_record_read_before_the_signal_and_exits_0() -> None:
    sent = 20

    async def main() -> dict[str, Any]:
        release = asyncio.Event()
        async with service_process(delay=0.1) as (proc, url):
            assert proc.stdout is not None
            async with aiohttp.ClientSession() as session:

                async def body() -> AsyncIterator[bytes]:
                    for n in range(sent):
                        yield record(n)
                    await release.wait()  # a slow uploader: the rest never comes

                async with session.post(f"{url}/process", data=body()) as response:
                    received: list[Any] = []
                    reading = asyncio.create_task(read_ndjson(response, received))
                    await until_records_read(url, lambda read: read == [sent])  # every line sent
                    before_signal = len(results_of(received))
                    proc.send_signal(signal.SIGTERM)
                    draining = await read_line(proc.stdout)
                    # The listening socket is closed: a new connection is refused.
                    with pytest.raises(aiohttp.ClientConnectionError):
                        async with aiohttp.ClientSession() as fresh:
                            await fresh.get(f"{url}/stats")
                    async with asyncio.timeout(15):
                        await reading
                    release.set()
            async with asyncio.timeout(15):
                rest = (await proc.stdout.read()).decode()
                code = await proc.wait()
        return {
            "received": received,
            "before_signal": before_signal,
            "draining": draining,
            "rest": rest,
            "code": code,
        }

    outcome = run_checked(main(), timeout=55)
    assert outcome["before_signal"] < sent  # records were in flight when the signal came
    assert outcome["draining"] == "draining 1 request(s) in flight\n"
    reply = outcome["received"]
    assert [r["id"] for r in results_of(reply)] == list(range(sent))
    assert reply[-1] == {"end": {"records": sent, "results": sent, "errors": 0, "complete": False}}
    assert outcome["rest"] == "stopped\n"
    assert outcome["code"] == 0


# -- a client that goes away ----------------------------------------------------------------------


def test_a_client_that_disconnects_mid_request_cancels_only_its_own_workflow() -> None:
    async def main() -> dict[str, Any]:
        service = WatchedService(delay=0.001, concurrency=2, lines_wanted=10)
        async with web_service.serving(service) as server, aiohttp.ClientSession() as session:
            gone, finish_other = asyncio.Event(), asyncio.Event()

            async def endless() -> AsyncIterator[bytes]:
                for n in itertools.count():
                    yield record(n, padded=True)
                    if gone.is_set():
                        return

            async def other_body() -> AsyncIterator[bytes]:
                for n in range(300):
                    yield record(n)
                await finish_other.wait()

            async def other() -> list[Any]:
                async with session.post(f"{server.url}/process", data=other_body()) as response:
                    return await read_ndjson(response, [])

            # A small send buffer: what the kernel still delivers after close() is little.
            connector = aiohttp.TCPConnector(socket_factory=small_send_buffer)
            async with aiohttp.ClientSession(connector=connector) as leaving:
                response = await leaving.post(f"{server.url}/process", data=endless())
                await service.lines_in.wait()
                (left,) = service.uploads
                staying = asyncio.create_task(other())
                await response.content.readline()
                response.close()  # the client goes away mid-request
                gone.set()
                await service.ended.wait()  # the other upload cannot end before finish_other
            outcome = {"left": left.workflow.stats(), "live": len(service.live)}
            finish_other.set()
            outcome["reply"] = await staying
            return outcome

    outcome = run_checked(main(), timeout=30)
    statuses = {name: s["status"] for name, s in outcome["left"]["streams"].items()}
    assert set(statuses.values()) <= {"cancelled", "done"}, statuses
    assert outcome["live"] == 1
    assert [r["id"] for r in results_of(outcome["reply"])] == list(range(300))


def dechunk(body: bytes) -> bytes:
    """The payload of an HTTP/1.1 chunked body (raises ValueError if it is cut short)."""
    payload, rest = b"", body
    while True:
        size_line, sep, rest = rest.partition(b"\r\n")
        if not sep:
            raise ValueError(f"chunked body cut short after {len(payload)} bytes")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return payload
        if len(rest) < size + 2:
            raise ValueError(f"chunked body cut short after {len(payload)} bytes")
        payload, rest = payload + rest[:size], rest[size + 2 :]


def test_sigterm_drain_ends_the_response_of_a_client_that_reads_only_after_it_began() -> None:
    """Issue 21, defect 3: a raw-socket client uploads far more than the server will read,
    reads nothing until the drain has begun, then reads the whole response: it ends with its
    summary line, and the connection is not reset (the server reads and drops the unread
    upload, and closes its side for writing, before it closes the socket)."""
    records = 600  # ~600 KiB: most of it is still unread in the sockets when the drain begins

    async def main() -> dict[str, Any]:
        async with service_process(delay=0.05) as (proc, url):
            assert proc.stdout is not None
            host, port = url.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                b"POST /process HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Type: application/x-ndjson\r\n\r\n"
            )
            for n in range(records):  # buffered by the transport: written as the server reads
                line = record(n, padded=True)
                writer.write(b"%x\r\n%s\r\n" % (len(line), line))
            await until_records_read(url, lambda read: any(n >= 20 for n in read))  # some lines
            proc.send_signal(signal.SIGTERM)
            draining = await read_line(proc.stdout)
            await asyncio.sleep(0.5)  # the drain ends the response meanwhile; nobody reads it
            received, reset = b"", None
            try:
                async with asyncio.timeout(15):
                    while chunk := await reader.read(65536):
                        received += chunk
            except ConnectionResetError as exc:
                reset = exc
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            async with asyncio.timeout(15):
                rest = (await proc.stdout.read()).decode()
                code = await proc.wait()
        return {
            "received": received,
            "reset": reset,
            "draining": draining,
            "rest": rest,
            "code": code,
        }

    outcome = run_checked(main(), timeout=55)
    assert outcome["reset"] is None, f"connection reset after {len(outcome['received'])} bytes"
    assert outcome["draining"] == "draining 1 request(s) in flight\n"
    head, _, body = outcome["received"].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    lines = [json.loads(line) for line in dechunk(body).splitlines()]
    summary = lines[-1]["end"]
    assert summary["complete"] is False
    assert 20 <= summary["records"] == summary["results"] < records
    assert [r["id"] for r in results_of(lines)] == list(range(summary["records"]))
    assert outcome["rest"] == "stopped\n"
    assert outcome["code"] == 0
