"""Real broker servers for the tests: a redis-server and a nats-server with JetStream.

Each runs as a subprocess on 127.0.0.1, on a free port, with its data in a temporary directory
(Redis saves nothing), once per test session; the fixtures yield its URL and stop it by PID at
the end. Tests keep out of each other's way by naming their own streams and groups.

A missing binary skips the tests that need it, saying why, except under CI (the environment
variable ``CI`` is set): there ``.ci/run`` installs both servers, so a missing one is a failure.
The helpers ``start_redis``/``start_nats`` are also what ``--spawn-redis`` in
``examples/orders_from_redis.py`` mirrors.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

START_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _unavailable(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{message}; under CI it must be there (.ci/run installs it)")
    pytest.skip(message)


def client_or_skip(module: str, extra: str) -> None:
    """Skips (fails under CI) when a broker's client library is not installed."""
    try:
        __import__(module)
    except ImportError:
        _unavailable(f'{module} is not installed (pip install "mimo_rx[{extra}]")')


def binary_or_skip(name: str) -> str:
    """The path of a server binary; skips (fails under CI) when it is not installed."""
    # Debian puts nats-server in /usr/sbin, which a user's PATH may lack
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    if path is None:
        _unavailable(
            f"{name} is not installed (apt-get install {name}); the broker tests run against "
            "a real server"
        )
    assert path is not None
    return path


def _answers(port: int, greeting: bytes, expect: bytes) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            if greeting:
                conn.sendall(greeting)
            return conn.recv(64).startswith(expect)
    except OSError:
        return False


@contextmanager
def _server(
    argv: list[str], port: int, greeting: bytes, expect: bytes, tmp: str
) -> Iterator[subprocess.Popen[bytes]]:
    log = open(os.path.join(tmp, "server.log"), "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(port, greeting, expect):
            if process.poll() is not None or time.monotonic() > deadline:
                log.flush()
                with open(log.name, encoding="utf-8", errors="replace") as f:
                    output = f.read()
                raise RuntimeError(f"{argv[0]} did not start on port {port}:\n{output}")
            time.sleep(0.05)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@contextmanager
def start_redis(binary: str = "redis-server") -> Iterator[str]:
    """A throwaway redis-server; yields its URL."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="mimo-redis-") as tmp:
        argv = [binary, "--port", str(port), "--save", "", "--appendonly", "no"]
        argv += ["--dir", tmp, "--bind", "127.0.0.1"]
        with _server(argv, port, b"PING\r\n", b"+PONG", tmp):
            yield f"redis://127.0.0.1:{port}/0"


@contextmanager
def start_nats(binary: str = "nats-server") -> Iterator[str]:
    """A throwaway nats-server with JetStream; yields its URL."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="mimo-nats-") as tmp:
        argv = [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", tmp]
        with _server(argv, port, b"", b"INFO ", tmp):
            yield f"nats://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The URL of a redis-server shared by the session's tests."""
    client_or_skip("redis", "redis")
    with start_redis(binary_or_skip("redis-server")) as url:
        yield url


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """The URL of a nats-server with JetStream shared by the session's tests."""
    client_or_skip("nats", "nats")
    with start_nats(binary_or_skip("nats-server")) as url:
        yield url
