"""A streaming HTTP service on mimo_rx: NDJSON in, NDJSON out, back-pressure through TCP.

``POST /process`` takes a streamed upload of NDJSON order records, one JSON object per line
(``{"id": "a1", "qty": 2, "price": 3.5}``), and streams one NDJSON result line back per record
as soon as it is ready, while the upload is still going on. Each request runs its own graph::

    lines (inlet)  ->  parse (operator(ops.map(parse)))  ->  enrich (map_stream, async,
    concurrency 8, a slow lookup)  ->  results (outlet)  ->  the HTTP response

* **Back-pressure reaches the client.** The handler reads the request body one line at a time
  and ``await lines.send(...)`` for each: when the graph is full, ``send`` waits, the handler
  stops reading, aiohttp stops reading the socket and TCP flow control slows the uploader.
  Memory per request stays bounded: buffers of 16 items, and a small socket receive buffer
  (``RECEIVE_BUFFER``) so the kernel does not queue megabytes of upload either.
* **Malformed lines do not fail the request.** A line that is not a JSON object with an ``id``,
  an integer ``qty >= 0`` and a number ``price >= 0`` gives an error line
  ``{"line": 3, "error": "line 3: ..."}`` in its place, and processing goes on. The status is
  200 either way: it was sent before the first result. The last line of every response is a
  summary, ``{"end": {"records": n, "results": n, "errors": n, "complete": true}}``;
  ``complete`` is ``false`` when the server stopped reading the upload because it shut down.
* ``GET /stats`` returns, for every request in flight, the lines read, the results written and
  its workflow's ``stats()``.
* **SIGTERM drains.** The server stops listening, every in-flight request's workflow gets
  ``workflow.stop()`` (its inlet closes: what was uploaded so far is processed and returned,
  the rest of the upload is not read), aiohttp waits for the handlers, and the process exits
  0. A second SIGTERM (or SIGINT) cancels the workflows still draining.
  Every in-flight response still ends with its summary line, also for a client that reads it
  only later: closing a socket whose receive queue holds unread upload bytes makes the kernel
  answer with a TCP reset, and the client would lose the end of the response it had not read
  yet. So once the summary is written, the server ends its side of the connection
  (``shutdown(SHUT_WR)``: the client sees the end of the response), then reads and drops the
  rest of the upload until the client closes or finishes it, for at most ``UNREAD_LINGER``
  seconds, and only then closes the socket.

Why one workflow per request rather than one shared workflow with per-request correlation: a
request's stream then has its own end (closing its inlet ends its outlet), its own
back-pressure (a client that reads its response slowly pauses only its own upload; with a
shared outlet it would stall every other request behind it), its own failure (a bug triggered
by one upload fails one response) and its own ``stats()``. What it costs is building a
four-step graph per request, which is small next to a streamed upload.

Run it: ``python examples/web_service.py --port 8080`` (``--port 0`` picks a free port; the
first line printed is ``listening on http://127.0.0.1:PORT``), then for example
``curl -X POST -T examples/orders.ndjson -H 'Transfer-Encoding: chunked'
http://127.0.0.1:8080/process`` (``examples/orders.ndjson`` is a sample upload, with one
malformed line).
``python examples/web_service.py --self-test`` runs a short client against itself.
Needs the extra ``mimo_rx[web]`` (aiohttp).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import itertools
import json
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import reactivex.operators as ops

try:
    from aiohttp import ClientSession, StreamReader, web
except ImportError:  # an optional dependency: say which extra brings it
    sys.exit('web_service.py needs aiohttp: pip install -e ".[web]"')

from mimo_rx import ClosedError, MimoError, Workflow, map_stream, operator

BUFFER_SIZE = 16  # items per buffer in each request's graph
CONCURRENCY = 8  # lookups in flight per request
DELAY = 0.002  # seconds per lookup: the slow part
RECEIVE_BUFFER = 64 * 1024  # kernel receive buffer per connection, in bytes (Linux doubles it)
SHUTDOWN_TIMEOUT = 30.0  # seconds a drain may take before aiohttp cancels the handlers
UNREAD_LINGER = 10.0  # seconds a drained request waits for its client to close (see the doc)


# -- the per-request graph ---------------------------------------------------------------------


def parse(numbered: tuple[int, bytes | None]) -> dict[str, Any]:
    """Parse and validate one line: ``{"line", "record"}``, or ``{"line", "error"}``."""
    line, raw = numbered
    if raw is None:
        return _error(line, "line too long; the rest of the upload was not read")
    try:
        record = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        return _error(line, f"not valid JSON ({exc})")
    if not isinstance(record, dict):
        return _error(line, f"expected a JSON object, got {type(record).__name__}")
    if not isinstance(record.get("id"), str | int):
        return _error(line, "'id' is missing (a string or an integer)")
    qty, price = record.get("qty"), record.get("price")
    if isinstance(qty, bool) or not isinstance(qty, int) or qty < 0:
        return _error(line, f"'qty' must be an integer >= 0, got {qty!r}")
    if isinstance(price, bool) or not isinstance(price, int | float) or price < 0:
        return _error(line, f"'price' must be a number >= 0, got {price!r}")
    return {"line": line, "record": record}


def _error(line: int, message: str) -> dict[str, Any]:
    return {"line": line, "error": f"line {line}: {message}"}


def make_enrich(delay: float) -> Callable[[dict[str, Any]], Any]:
    """The slow step: a lookup (a database, a model, another service) per valid record."""

    async def enrich(parsed: dict[str, Any]) -> dict[str, Any]:
        if "error" in parsed:
            return parsed
        await asyncio.sleep(delay)
        record = parsed["record"]
        return {
            "line": parsed["line"],
            "id": record["id"],
            "total": round(record["qty"] * record["price"], 2),
        }

    return enrich


class Upload:
    """One request: its workflow, and the counts ``GET /stats`` reports."""

    def __init__(self, delay: float, concurrency: int, buffer_size: int) -> None:
        self.workflow = Workflow(buffer_size=buffer_size)
        self.lines = self.workflow.add_inlet("lines")
        parsed = self.workflow.add_stream(operator(ops.map(parse), name="parse"))
        enriched = self.workflow.add_stream(
            map_stream(make_enrich(delay), concurrency=concurrency, name="enrich")
        )
        self.results = self.workflow.add_outlet("results")
        self.lines.pipe(parsed).pipe(enriched).pipe(self.results)
        self.read = 0  # lines handed to the graph
        self.written = 0  # result lines written to the response
        self.errors = 0  # of which error lines
        self.complete = False  # the whole upload was read

    async def feed(self, body: StreamReader) -> None:
        """Read the upload a line at a time, only as fast as the graph takes the lines."""
        try:
            for line in itertools.count(1):
                if self.lines.closed:
                    return  # the server is draining: leave the rest of the upload unread
                try:
                    raw: bytes | None = await body.readline()
                except ValueError:  # longer than aiohttp's buffer limit
                    raw = None
                if raw is not None and not raw:
                    self.complete = True  # end of the upload
                    return
                if raw is None or raw.strip():  # blank lines are skipped
                    await self.lines.send((line, raw))  # waits while the graph is full
                    self.read += 1
                if raw is None:
                    return
        except ClosedError:
            return  # the server is draining: workflow.stop() closed the inlet
        finally:
            self.lines.close()

    def stats(self) -> dict[str, Any]:
        return {
            "records": self.read,
            "results": self.written,
            "workflow": self.workflow.stats(),
        }


# -- the HTTP side -----------------------------------------------------------------------------


@dataclass
class Service:
    """The requests in flight, and the drain on shutdown."""

    delay: float = DELAY
    concurrency: int = CONCURRENCY
    buffer_size: int = BUFFER_SIZE
    live: dict[int, Upload] = field(default_factory=dict)
    draining: bool = False
    _numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @contextlib.contextmanager
    def upload(self) -> Iterator[Upload]:
        """Register a new request's graph for as long as the request runs."""
        number = next(self._numbers)
        upload = Upload(self.delay, self.concurrency, self.buffer_size)
        self.live[number] = upload
        try:
            yield upload
        finally:
            del self.live[number]

    def drain(self) -> None:
        """Stop every in-flight workflow gracefully: its inlet closes, the rest flows out."""
        self.draining = True
        for upload in list(self.live.values()):
            upload.workflow.stop()

    def abort(self) -> None:
        """Cancel every in-flight workflow (a second signal during the drain)."""
        for upload in list(self.live.values()):
            upload.workflow.cancel()

    def stats(self) -> dict[str, Any]:
        return {
            "draining": self.draining,
            "requests": {str(n): upload.stats() for n, upload in self.live.items()},
        }


SERVICE = web.AppKey("service", Service)


def _ndjson(obj: Any) -> bytes:
    return json.dumps(obj).encode() + b"\n"


async def process(request: web.Request) -> web.StreamResponse:
    """``POST /process``: NDJSON records in, one NDJSON result per record out, streamed."""
    service = request.app[SERVICE]
    if service.draining:
        raise web.HTTPServiceUnavailable(text="the server is shutting down\n")
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    with service.upload() as upload:
        try:
            async with upload.workflow.running():
                reader = asyncio.create_task(upload.feed(request.content))
                try:
                    async for result in upload.results:
                        await response.write(_ndjson(result))
                        upload.written += 1
                        upload.errors += "error" in result
                finally:
                    reader.cancel()  # done already, unless a drain stopped the graph first
                    await asyncio.wait({reader})
                    failed = None if reader.cancelled() else reader.exception()
                if failed is not None:
                    raise failed
        except MimoError as exc:  # the graph failed: say so in the stream, then end it
            await response.write(_ndjson({"error": f"processing failed: {exc}"}))
        except ConnectionResetError:  # the client went away; running() cancelled its workflow
            return response
        summary = {
            "records": upload.read,
            "results": upload.written,
            "errors": upload.errors,
            "complete": upload.complete,
        }
    await response.write(_ndjson({"end": summary}))
    await response.write_eof()
    if not upload.complete:
        await drop_unread_upload(request)
    return response


async def drop_unread_upload(request: web.Request, linger: float = UNREAD_LINGER) -> None:
    """The response is complete but the upload was not read to its end (a drain, or a line
    too long): end our side of the connection, so the client sees the end of the response,
    then read and drop what the client still sends until it finishes the upload or closes,
    for at most ``linger`` seconds. Closing the socket with unread bytes in it would make the
    kernel reset the connection, and a client that has not read the response yet would lose
    it. (aiohttp does such a lingering read itself, except while it shuts down.)"""
    transport = request.transport
    if transport is not None and transport.can_write_eof():
        transport.write_eof()  # FIN once the response's bytes are sent
    with contextlib.suppress(TimeoutError, ConnectionError, web.HTTPException):
        async with asyncio.timeout(linger):
            while await request.content.readany():
                pass


async def stats(request: web.Request) -> web.Response:
    """``GET /stats``: every in-flight request's counts and workflow ``stats()``."""
    return web.json_response(request.app[SERVICE].stats())


def make_app(service: Service) -> web.Application:
    app = web.Application()
    app[SERVICE] = service

    async def on_shutdown(app: web.Application) -> None:
        service.drain()

    app.on_shutdown.append(on_shutdown)
    app.router.add_post("/process", process)
    app.router.add_get("/stats", stats)
    return app


def listening_socket(port: int) -> socket.socket:
    """A socket bound to 127.0.0.1:``port`` whose connections get a small receive buffer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)  # inherited on accept
    sock.bind(("127.0.0.1", port))
    return sock


class Server:
    """The service on 127.0.0.1, started with ``await start()`` and drained with
    ``await shutdown()``."""

    def __init__(self, service: Service | None = None, port: int = 0) -> None:
        self.service = service or Service()
        self.runner = web.AppRunner(make_app(self.service), shutdown_timeout=SHUTDOWN_TIMEOUT)
        self._sock = listening_socket(port)
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._site: web.SockSite | None = None

    async def start(self) -> None:
        await self.runner.setup()
        self._site = web.SockSite(self.runner, self._sock)
        await self._site.start()

    async def stop_listening(self) -> None:
        """Refuse new connections; requests in flight go on."""
        self.service.draining = True
        if self._site is not None:
            await self._site.stop()
            self._site = None

    async def shutdown(self) -> None:
        """Stop listening, drain every request in flight, then close every connection.
        Calling it again does nothing."""
        await self.stop_listening()
        if self.runner.server is not None:
            await self.runner.cleanup()  # on_shutdown drains, then aiohttp awaits the handlers


@contextlib.asynccontextmanager
async def serving(service: Service | None = None, port: int = 0) -> AsyncIterator[Server]:
    """``async with serving() as server:`` runs the service for the body, then drains it."""
    server = Server(service, port)
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown()


async def serve(port: int, service: Service) -> None:
    """Serve until SIGTERM or SIGINT, then drain and return."""
    loop = asyncio.get_running_loop()
    signalled = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, signalled.set)
    try:
        async with serving(service, port) as server:
            print(f"listening on {server.url}", flush=True)
            await signalled.wait()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, service.abort)  # a second signal: give up
            await server.stop_listening()
            print(f"draining {len(service.live)} request(s) in flight", flush=True)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    print("stopped", flush=True)


# -- a short client, for --self-test -----------------------------------------------------------


async def upload_records(session: ClientSession, url: str, lines: list[bytes]) -> list[Any]:
    """POST ``lines`` as a streamed upload and return the response's parsed lines."""

    async def body() -> AsyncIterator[bytes]:
        for line in lines:
            yield line

    async with session.post(f"{url}/process", data=body()) as response:
        response.raise_for_status()
        return [json.loads(line) async for line in response.content]


async def self_test(uploads: int = 3, records: int = 500) -> dict[str, Any]:
    """Serve on a free port, run ``uploads`` concurrent uploads, check every record comes back
    exactly once and a malformed line is reported, then drain."""
    async with serving() as server, ClientSession() as session:
        batches = [
            [_ndjson({"id": f"{u}-{i}", "qty": i % 5, "price": 1.25}) for i in range(records)]
            + [b"{not json\n"]
            for u in range(uploads)
        ]
        replies = await asyncio.gather(*(upload_records(session, server.url, b) for b in batches))
    ids = [r["id"] for reply in replies for r in reply if "id" in r]
    errors = [r for reply in replies for r in reply if "error" in r]
    report = {
        "uploads": uploads,
        "records": uploads * records,
        "returned_once": len(ids) == len(set(ids)) == uploads * records,
        "errors": len(errors),
        "complete": all(reply[-1]["end"]["complete"] for reply in replies),
    }
    print(
        f"self-test: {uploads} concurrent uploads, {len(ids)} of {uploads * records} records "
        f"back {'exactly once' if report['returned_once'] else 'NOT exactly once'}, "
        f"{len(errors)} malformed line(s) reported"
    )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--delay", type=float, default=DELAY, help="seconds per lookup")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--buffer-size", type=int, default=BUFFER_SIZE)
    parser.add_argument("--self-test", action="store_true", help="run a client against itself")
    args = parser.parse_args(argv)
    if args.self_test:
        report = asyncio.run(self_test())
        return 0 if report["returned_once"] and report["errors"] == report["uploads"] else 1
    service = Service(args.delay, args.concurrency, args.buffer_size)
    try:
        asyncio.run(serve(args.port, service))
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        sys.exit(f"port {args.port} is busy: choose another, or --port 0 for a free one")
    return 0


if __name__ == "__main__":
    sys.exit(main())
