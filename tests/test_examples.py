"""Every example runs, and does what its docstring says."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_quickstart_sums_the_squares(capsys: pytest.CaptureFixture[str]) -> None:
    totals = load("quickstart").main()
    assert totals["total"] == sum(n * n for n in range(10))
    assert "Numbers.a -> square.b" in capsys.readouterr().out


def test_merge_join_matches_keys_present_on_both_sides() -> None:
    module = load("merge_join")
    matched, unmatched = module.main()
    assert matched == [(1, "ada", "book"), (4, "cy", "pen"), (7, "dee", "mug"), (9, "eve", "hat")]
    assert sorted(unmatched) == [
        ("left only", (2, "bob")),
        ("right only", (3, "lamp")),
        ("right only", (8, "cup")),
    ]


def test_sensor_alerts_delivers_every_reading_the_thread_sent() -> None:
    report = asyncio.run(load("sensor_alerts").main())
    assert report["delivered"] == report["emitted"]  # the inlet holds the thread back instead
    assert report["dropped"] == 0
    assert report["alerts_stored"] > 0


def test_web_service_self_test_gets_every_record_back_exactly_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("aiohttp")
    report = asyncio.run(load("web_service").self_test())
    assert report["returned_once"]
    assert report["errors"] == report["uploads"]  # each upload ends with one malformed line
    assert report["complete"]
    assert "back exactly once" in capsys.readouterr().out


def test_every_example_has_a_test() -> None:
    tested = {
        "quickstart",
        "merge_join",
        "sensor_alerts",
        "scale_out",
        "web_service",
        "metrics_endpoint",
        "dead_letters",
        "orders_from_redis",
        "resumable_job",
    }
    assert {p.stem for p in EXAMPLES.glob("*.py")} <= tested


def test_scale_out_runs_the_heavy_stage_on_worker_processes_in_input_order() -> None:
    import subprocess

    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "scale_out.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "64/64" in result.stdout
    assert "in input order" in result.stdout


def test_dead_letters_accounts_for_every_record(capsys: pytest.CaptureFixture[str]) -> None:
    report = load("dead_letters").main()
    assert report["parsed"] + report["failed"] == report["read"] == 10
    assert len(report["orders"]) == report["parsed"]
    assert len(report["dead"]) == report["failed"]
    dead_lines = {line for line, _ in report["dead"]}
    assert {"not json at all", '{"id": 8, "amount": 2}'} <= dead_lines
    assert "parsed + failed == read is True" in capsys.readouterr().out


def test_metrics_endpoint_serves_prometheus_metrics_while_it_runs_then_stops_on_its_own() -> None:
    import re
    import subprocess
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    options = ["--port", "0", "--seconds", "1", "--linger", "0"]
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "metrics_endpoint.py"), *options],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = re.fullmatch(r"serving (http://\S+/metrics)\n", process.stdout.readline())
        assert url is not None
        with urllib.request.urlopen(url.group(1), timeout=10) as response:
            families = {f.name for f in text_string_to_metric_families(response.read().decode())}
        assert {"mimo_rx_input_paused_seconds", "mimo_rx_stream_status"} <= families
        rest, _ = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0
    final = re.search(r"^final: (\d+) orders, (\d+) stored", rest, re.MULTILINE)
    assert final is not None and final.group(1) == final.group(2) != "0", rest


def test_orders_from_redis_accounts_for_every_order_when_a_worker_is_killed() -> None:
    import inspect
    import os
    import re
    import shutil
    import subprocess

    from mimo_rx import Workflow

    if "max_in_flight" not in inspect.signature(Workflow.add_source).parameters:
        pytest.skip("needs the engine side of acknowledged sources: add_source(max_in_flight=)")
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; under CI it must be there (.ci/run installs it)")
        pytest.skip(message)
    options = ["--spawn-redis", "--workers", "3", "--orders", "3000", "--kill-one"]
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "orders_from_redis.py"), *options],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = re.search(
        r"(\d+) done, (\d+) failed, (\d+) missing, (\d+) still pending", result.stdout
    )
    assert summary is not None, result.stdout + result.stderr
    done, failed, missing, pending = map(int, summary.groups())
    assert (done + failed, missing, pending) == (3000, 0, 0), result.stdout
    assert failed == 60  # every 50th order is malformed: each reaches the failed stream once
    assert "one killed with SIGKILL" in result.stdout


def test_resumable_job_prices_every_order_then_a_rerun_finds_nothing_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = load("resumable_job")
    argv = ["--workdir", str(tmp_path), "--lines", "500"]
    report = job.main(argv)
    assert report["processed"] == 500 and report["finished"]
    assert report["resumed_at_line"] == 1
    assert "resumed at the first line (byte 0)" in capsys.readouterr().out
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert [int(row.split(",")[0]) for row in rows] == list(range(500))
    assert rows[3] == f"00000003,{(3 * 7 % 13 + 1) * (3 * 7919 % 99_991)}"

    again = job.main(argv)
    assert again["processed"] == 0 and again["finished"]
    assert "nothing left to do" in capsys.readouterr().out
    assert job.main([*argv, "--fresh"])["processed"] == 500


def start_metrics_endpoint(*args: str) -> tuple[Any, str]:
    """Start examples/metrics_endpoint.py on a free port; return the process and its URL."""
    import re
    import subprocess

    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "metrics_endpoint.py"), "--port", "0", *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    url = re.fullmatch(r"serving (http://\S+/metrics)\n", process.stdout.readline())
    assert url is not None
    return process, url.group(1)


def scrape_samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_endpoint_serves_the_final_counts_for_a_scrape_interval_after_the_run() -> None:
    """Issue 21, defect 4: after the run the endpoint lingers, so a last scrape sees every
    stream done and the final counts; SIGTERM during the linger ends it at once."""
    import re
    import signal
    import time

    process, url = start_metrics_endpoint("--seconds", "1", "--linger", "30")
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        while line.startswith("alert: "):  # the Rx alert on pauses, during the run
            line = process.stdout.readline()
        final = re.match(r"final: (\d+) orders, (\d+) stored", line)
        assert final is not None, line
        samples = scrape_samples(url)
        for stream in ("orders", "enrich", "store"):
            labels = frozenset({"workflow": "orders", "stream": stream, "status": "done"}.items())
            assert samples[("mimo_rx_stream_status", labels)] == 1.0
        store = frozenset({"workflow": "orders", "stream": "store", "port": "x"}.items())
        assert samples[("mimo_rx_input_taken_total", store)] == int(final.group(2))
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=20)
        assert time.monotonic() - started < 10  # not the 30 s linger
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0
    assert rest == ""


def test_metrics_endpoint_ends_normally_on_a_sigterm_sent_as_soon_as_its_final_line_is_read() -> (
    None
):
    """The linger's SIGTERM handler is in place before the final line is printed (it once was
    installed just after, and a supervisor answering the line at once killed the process)."""
    import signal

    for _ in range(3):
        process, _url = start_metrics_endpoint("--seconds", "0.3", "--linger", "30")
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            while line.startswith("alert: "):
                line = process.stdout.readline()
            assert line.startswith("final: "), line
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=20)
        finally:
            process.kill()
            process.communicate()  # and closes its pipes
        assert process.returncode == 0


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_metrics_endpoint_prints_its_final_line_on_sigterm_and_ctrl_c(signum: str) -> None:
    """SIGTERM drains the run (stored == orders) and exits 0; Ctrl-C cancels it, says so and
    exits 130; both print the final line (only the drained run lingers, here for 0 s)."""
    import re
    import signal
    import time
    import urllib.request

    process, url = start_metrics_endpoint("--seconds", "60", "--linger", "0")
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # the run is going on
            assert response.status == 200
        time.sleep(0.5)
        process.send_signal(getattr(signal, signum))
        rest, _ = process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait()
    final = re.search(r"^final( \(interrupted\))?: (\d+) orders, (\d+) stored", rest, re.M)
    assert final is not None, rest
    interrupted, orders, stored = final.group(1), int(final.group(2)), int(final.group(3))
    assert orders > 0
    if signum == "SIGTERM":
        assert (interrupted, stored, process.returncode) == (None, orders, 0)
    else:
        assert interrupted and process.returncode == 130
