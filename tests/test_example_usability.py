"""The examples fail helpfully: a missing extra names itself, a busy port says so in one line,
a stopped metrics endpoint still reports, and the sample upload the web example curls exists."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
}


def _run_without(module: str, example: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``example`` as ``__main__`` in a fresh interpreter where ``module`` cannot import."""
    script = (
        "import runpy, sys\n"
        f"sys.modules[{module!r}] = None\n"  # import -> ImportError, as when not installed
        f"sys.argv = [{str(EXAMPLES / example)!r}, *{list(args)!r}]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=ENV
    )


@pytest.mark.parametrize(
    ("example", "args", "module", "extra"),
    [
        ("web_service.py", [], "aiohttp", "web"),
        ("metrics_endpoint.py", [], "prometheus_client", "prometheus"),
        ("scale_out.py", ["--dask"], "distributed", "dask"),
    ],
)
def test_an_example_without_its_extra_says_which_to_install(
    example: str, args: list[str], module: str, extra: str
) -> None:
    result = _run_without(module, example, *args)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f'pip install -e ".[{extra}]"' in result.stderr.strip().splitlines()[-1]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize(
    ("example", "args", "module"),
    [("web_service.py", [], "aiohttp"), ("metrics_endpoint.py", ["--seconds", "1"], None)],
)
def test_an_example_on_a_busy_port_says_so_in_one_line(
    busy_port: int, example: str, args: list[str], module: str | None
) -> None:
    if module is not None:
        pytest.importorskip(module)
    pytest.importorskip("prometheus_client")
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / example), "--port", str(busy_port), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"port {busy_port} is busy: choose another, or --port 0 for a free one"
    )


@pytest.mark.parametrize(
    ("signum", "returncode", "label"),
    [(signal.SIGTERM, 0, "final"), (signal.SIGINT, 130, "final (interrupted)")],
)
def test_metrics_endpoint_prints_a_final_line_when_stopped(
    signum: int, returncode: int, label: str
) -> None:
    pytest.importorskip("prometheus_client")
    # --linger 0: the drained run would keep serving its final counts 15 s more (the linger
    # and a SIGTERM during it are tested in test_examples.py)
    options = ["--port", "0", "--seconds", "30", "--linger", "0"]
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "metrics_endpoint.py"), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        # Ctrl-C reaches it even when the test runs where SIGINT is ignored (a background job).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().startswith("serving ")
        assert process.stdout.readline().startswith("alert: ")  # the run is under way
        process.send_signal(signum)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == returncode, err
    assert "Traceback" not in err
    assert out.strip().splitlines()[-1].startswith(f"{label}: ")


def test_the_sample_upload_the_web_example_curls_is_processed() -> None:
    pytest.importorskip("aiohttp")
    import aiohttp

    spec = importlib.util.spec_from_file_location(
        "example_web_usability", EXAMPLES / "web_service.py"
    )
    assert spec is not None and spec.loader is not None
    web_service = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = web_service  # its dataclasses look their module up
    spec.loader.exec_module(web_service)
    sample = EXAMPLES / "orders.ndjson"
    assert "examples/orders.ndjson" in (web_service.__doc__ or "")
    lines = sample.read_bytes().splitlines(keepends=True)

    async def upload() -> list[dict[str, object]]:
        service = web_service.Service(delay=0.0005, concurrency=4)
        async with web_service.serving(service) as server, aiohttp.ClientSession() as session:
            replies: list[dict[str, object]] = await web_service.upload_records(
                session, server.url, lines
            )
            return replies

    replies = asyncio.run(upload())
    assert len(lines) == 9
    assert [r["line"] for r in replies if "error" in r] == [6]  # the one malformed line
    assert len([r for r in replies if "id" in r]) == 8
    assert replies[-1] == {"end": {"records": 9, "results": 9, "errors": 1, "complete": True}}
