"""CONTRACT section 7: mimo_rx.prometheus.instrument, scraped as Prometheus would."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import prometheus_client
import pytest
from harness import Collector, linear, mapper, run_checked, source
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import mimo_rx.prometheus
from mimo_rx import ConfigError, Stream, Workflow

pytestmark = pytest.mark.timeout(30)

INPUT_COUNTERS = {
    "mimo_rx_input_received_total": "received",
    "mimo_rx_input_taken_total": "taken",
    "mimo_rx_input_dropped_total": "dropped",
    "mimo_rx_input_discarded_total": "discarded",
    "mimo_rx_input_paused_seconds_total": "paused_s",
}
INPUT_GAUGES = {"mimo_rx_input_buffered": "buffered", "mimo_rx_input_threshold": "threshold"}
STATUSES = ("pending", "running", "done", "failed", "cancelled")
FAMILIES = {
    **{name.removesuffix("_total"): "counter" for name in INPUT_COUNTERS},
    "mimo_rx_output_pushed": "counter",
    "mimo_rx_stream_failures": "counter",
    **{name: "gauge" for name in INPUT_GAUGES},
    "mimo_rx_stream_status": "gauge",
    # acknowledged sources (contract section 12); no sample unless the workflow has one
    "mimo_rx_source_acked": "counter",
    "mimo_rx_source_nacked": "counter",
    "mimo_rx_source_in_flight": "gauge",
}


def scrape(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, parsed back: (name, labels) -> value."""
    return parse(generate_latest(registry).decode())


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = sample.value
    return samples


def expected_samples(workflow: Workflow, name: str) -> dict[Any, float]:
    """What the exposition must hold for ``workflow``, computed from its stats()."""
    expected: dict[Any, float] = {}
    for stream, s in workflow.stats()["streams"].items():
        base = {"workflow": name, "stream": stream}
        expected[("mimo_rx_stream_failures_total", frozenset(base.items()))] = s["failures"]
        for status in STATUSES:
            labels = frozenset({**base, "status": status}.items())
            expected[("mimo_rx_stream_status", labels)] = float(s["status"] == status)
        for port, p in s["inputs"].items():
            labels = frozenset({**base, "port": port}.items())
            for metric, key in {**INPUT_COUNTERS, **INPUT_GAUGES}.items():
                expected[(metric, labels)] = p[key]
        for port, p in s["outputs"].items():
            labels = frozenset({**base, "port": port}.items())
            expected[("mimo_rx_output_pushed_total", labels)] = p["pushed"]
    return expected


def of_workflow(samples: dict[Any, float], name: str) -> dict[Any, float]:
    return {k: v for k, v in samples.items() if ("workflow", name) in k[1]}


def busy_workflow() -> Workflow:
    """Fan-out to a slow sink (pauses), and a sink that stops early (discards)."""

    async def slow(ins: Any, outs: Any, state: Any) -> None:
        async for _ in ins.x:
            await asyncio.sleep(0.0005)

    async def first_only(ins: Any, outs: Any, state: Any) -> None:
        await ins.x.pop()

    wf = Workflow(buffer_size=4)
    src = wf.add_stream(source(range(40), name="src"))
    src.pipe(wf.add_stream(Stream(["x"], fn=slow, name="slow")))
    src.pipe(wf.add_stream(Stream(["x"], fn=first_only, name="quitter")))
    return wf


def test_every_sample_equals_stats_for_every_stream_and_port() -> None:
    wf = busy_workflow()
    registry = CollectorRegistry()
    mimo_rx.prometheus.instrument(wf, name="busy", registry=registry)
    before = scrape(registry)
    assert before == expected_samples(wf, "busy")  # before the run: pending, thresholds known
    run_checked(wf)
    after = scrape(registry)
    assert after == expected_samples(wf, "busy")
    quitter = frozenset({"workflow": "busy", "stream": "quitter", "port": "x"}.items())
    assert after[("mimo_rx_input_discarded_total", quitter)] > 0
    slow = frozenset({"workflow": "busy", "stream": "slow", "port": "x"}.items())
    assert after[("mimo_rx_input_paused_seconds_total", slow)] > 0
    assert after[("mimo_rx_input_threshold", slow)] == 4


def test_families_have_the_documented_types_and_each_appears_once() -> None:
    registry = CollectorRegistry()
    mimo_rx.prometheus.instrument(busy_workflow(), name="one", registry=registry)
    mimo_rx.prometheus.instrument(busy_workflow(), name="two", registry=registry)
    text = generate_latest(registry).decode()
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families == FAMILIES
    help_lines = Counter(line.split()[2] for line in text.splitlines() if line.startswith("# "))
    assert set(help_lines.values()) == {2}  # one HELP and one TYPE per family, not per workflow


def test_stream_status_is_one_for_the_current_status_and_zero_for_the_others() -> None:
    wf, _ = linear(source(range(3)), Collector())
    registry = CollectorRegistry()
    mimo_rx.prometheus.instrument(wf, registry=registry)
    run_checked(wf)
    samples = scrape(registry)
    for stream in ("source", "sink"):
        values = {
            status: samples[
                (
                    "mimo_rx_stream_status",
                    frozenset({"workflow": "workflow", "stream": stream, "status": status}.items()),
                )
            ]
            for status in STATUSES
        }
        assert values == {"pending": 0, "running": 0, "done": 1, "failed": 0, "cancelled": 0}


def test_several_workflows_share_a_registry_under_different_names() -> None:
    first, second = busy_workflow(), Workflow()
    second.add_stream(source(range(7), name="lonely"))
    registry = CollectorRegistry(auto_describe=True)  # as the default REGISTRY
    mimo_rx.prometheus.instrument(first, name="first", registry=registry)
    mimo_rx.prometheus.instrument(second, name="second", registry=registry)
    run_checked(first)
    run_checked(second)
    samples = scrape(registry)
    assert of_workflow(samples, "first") == expected_samples(first, "first")
    assert of_workflow(samples, "second") == expected_samples(second, "second")
    assert len(samples) == len(expected_samples(first, "first")) + len(
        expected_samples(second, "second")
    )


def test_unregister_removes_that_workflow_and_keeps_the_others() -> None:
    first, second, third = busy_workflow(), busy_workflow(), busy_workflow()
    registry = CollectorRegistry(auto_describe=True)
    one = mimo_rx.prometheus.instrument(first, name="first", registry=registry)
    mimo_rx.prometheus.instrument(second, name="second", registry=registry)
    registry.unregister(one)  # the collector that wrote the families for both
    samples = scrape(registry)
    assert of_workflow(samples, "first") == {}
    assert of_workflow(samples, "second") == expected_samples(second, "second")
    # Both the name and the workflow are free again; a third one joins the same exposition.
    mimo_rx.prometheus.instrument(first, name="first", registry=registry)
    mimo_rx.prometheus.instrument(third, name="third", registry=registry)
    samples = scrape(registry)
    assert {labels for _, k in samples for labels in k if labels[0] == "workflow"} == {
        ("workflow", "first"),
        ("workflow", "second"),
        ("workflow", "third"),
    }


def test_instrumenting_the_same_workflow_twice_in_one_registry_is_a_config_error() -> None:
    wf, other = busy_workflow(), busy_workflow()
    registry = CollectorRegistry()
    mimo_rx.prometheus.instrument(wf, name="orders", registry=registry)
    with pytest.raises(ConfigError, match="already instrumented in this registry as 'orders'"):
        mimo_rx.prometheus.instrument(wf, name="orders", registry=registry)
    with pytest.raises(ConfigError, match="already instrumented"):
        mimo_rx.prometheus.instrument(wf, name="other-name", registry=registry)
    with pytest.raises(ConfigError, match=r"another workflow .* as 'orders'"):
        mimo_rx.prometheus.instrument(other, name="orders", registry=registry)
    mimo_rx.prometheus.instrument(wf, name="orders", registry=CollectorRegistry())  # elsewhere: ok


def test_the_default_registry_is_prometheus_clients_global_one() -> None:
    wf = busy_workflow()
    collector = mimo_rx.prometheus.instrument(wf, name="test-default-registry")
    try:
        samples = of_workflow(scrape(prometheus_client.REGISTRY), "test-default-registry")
        assert samples == expected_samples(wf, "test-default-registry")
    finally:
        prometheus_client.REGISTRY.unregister(collector)
    assert of_workflow(scrape(prometheus_client.REGISTRY), "test-default-registry") == {}


def test_a_real_http_scrape_during_and_after_the_run() -> None:
    registry = CollectorRegistry()
    server, thread = prometheus_client.start_http_server(0, addr="127.0.0.1", registry=registry)
    url = f"http://127.0.0.1:{server.server_port}/metrics"

    def get() -> dict[Any, float]:
        with urllib.request.urlopen(url, timeout=10) as response:
            return parse(response.read().decode())

    during: list[dict[Any, float]] = []

    async def scraper(ins: Any, outs: Any, state: Any) -> None:
        async for item in ins.x:
            if item == 5:  # mid-run, from the server's thread, while the loop goes on
                during.append(await asyncio.to_thread(get))

    wf, _ = linear(source(range(10)), Stream(["x"], fn=scraper, name="scraper"), buffer_size=2)
    mimo_rx.prometheus.instrument(wf, name="live", registry=registry)
    try:
        run_checked(wf)
        after = get()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    running = frozenset({"workflow": "live", "stream": "scraper", "status": "running"}.items())
    assert during[0][("mimo_rx_stream_status", running)] == 1
    port = frozenset({"workflow": "live", "stream": "scraper", "port": "x"}.items())
    assert 1 <= during[0][("mimo_rx_input_taken_total", port)] < 10
    assert after == expected_samples(wf, "live")


def test_importing_mimo_rx_does_not_import_prometheus_client() -> None:
    code = "import sys, mimo_rx; assert 'prometheus_client' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def test_without_prometheus_client_the_module_raises_import_error_naming_the_extra() -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "try:\n"
        "    import mimo_rx.prometheus\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert "pip install 'mimo_rx[prometheus]'" in result.stdout


# -- counters a machine can trust: read from another thread, they never go down ---------------


def churning_workflow() -> Workflow:
    """A fast endless run: a counter source feeds a mapper in chunks, which broadcasts to a
    blocking path and to a ``drop_oldest`` branch; both consumers yield after every item, so
    items are pushed, paused, popped and dropped all the time. ``stop()`` ends it."""

    async def lagging(ins: Any, outs: Any, state: Any) -> None:
        async for _ in ins.x:
            await asyncio.sleep(0)

    wf = Workflow(buffer_size=64)
    src = wf.add_source(itertools.count(), name="src")  # pushes in chunks (push_many)
    double = src.pipe(wf.add_stream(mapper(lambda x: 2 * x, name="double")))
    double.pipe(wf.add_stream(Stream(["x"], fn=lagging, name="sink")), buffer_size=16)
    double.pipe(
        wf.add_stream(Stream(["x"], fn=lagging, name="lagging")),
        policy="drop_oldest",
        buffer_size=8,
    )
    return wf


def counters_of(
    snapshot: dict[str, Any], path: tuple[str, ...] = ()
) -> Iterator[tuple[Any, float]]:
    """Every counter of a stats() snapshot, keyed by where it is."""
    for key, value in snapshot.items():
        if isinstance(value, dict):
            yield from counters_of(value, (*path, key))
        elif key in COUNTER_KEYS:
            yield (*path, key), value


COUNTER_KEYS = {*INPUT_COUNTERS.values(), "pushed", "failures", "peak_buffered"}


def identity_breaks(snapshot: dict[str, Any]) -> list[Any]:
    """The inputs of ``snapshot`` where received != taken + dropped + discarded + buffered."""
    return [
        (step, port, p)
        for step, s in snapshot["streams"].items()
        for port, p in s["inputs"].items()
        if p["received"] != p["taken"] + p["dropped"] + p["discarded"] + p["buffered"]
    ]


# How long the reader may take for its 10^5 values: each read waits for the busy loop's
# answer, so the pace follows the machine's load (5-10 s on a quiet 2-core machine, 35 s with
# two other busy processes on it). The run and the test get their timeouts from it.
READ_CAP_S = 100


class MonotonicReader(threading.Thread):
    """Reads ``stats()`` and the exposition in a tight loop, counting every counter value
    read and every one lower than the last value read at the same place; once it has read
    ``enough`` values (and for at least ``min_s`` seconds) it stops the run.
    """

    def __init__(self, wf: Workflow, registry: CollectorRegistry, enough: int, min_s: float):
        super().__init__(daemon=True)
        self.wf, self.registry, self.enough, self.min_s = wf, registry, enough, min_s
        self.reads = 0
        self.decreases: list[Any] = []
        self.broken: list[Any] = []  # stats() snapshots where the identity did not hold
        self.error: BaseException | None = None
        self._last: dict[Any, float] = {}

    def see(self, where: Any, value: float) -> None:
        self.reads += 1
        last = self._last.get(where)
        if last is not None and value < last:
            self.decreases.append((where, last, value))
        self._last[where] = value

    def run(self) -> None:
        started = time.monotonic()
        try:
            while self.reads < self.enough or time.monotonic() - started < self.min_s:
                if time.monotonic() - started > READ_CAP_S:
                    break  # the test fails on the count; never hang the run
                snapshot = self.wf.stats()
                self.broken += identity_breaks(snapshot)
                for where, value in counters_of(snapshot):
                    self.see(("stats", where), value)
                for line in generate_latest(self.registry).decode().splitlines():
                    if line.startswith("mimo_rx_") and "_total{" in line:
                        sample, value = line.rsplit(" ", 1)  # name{labels} value
                        self.see(("exposition", sample), float(value))
        except BaseException as exc:
            self.error = exc
        finally:
            self.wf.stop()


@pytest.mark.timeout(READ_CAP_S + 30)
def test_no_counter_read_from_another_thread_ever_decreases() -> None:
    """Issue 21, defect 1: 10^5 counter values read by a thread from stats() and the
    exposition beside a fast run, the interpreter switching threads every 10 microseconds:
    not one is lower than the one read before it, and every snapshot (the thread's, answered
    by the loop, and metrics()'s) keeps received == taken + dropped + discarded + buffered."""
    wf = churning_workflow()
    registry = CollectorRegistry()
    mimo_rx.prometheus.instrument(wf, name="churn", registry=registry)
    on_loop: list[Any] = []
    wf.metrics(0.02).subscribe(on_loop.append)
    reader = MonotonicReader(wf, registry, enough=100_000, min_s=1.0)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:

        async def main() -> None:
            reader.start()
            await wf.start()

        run_checked(main(), timeout=READ_CAP_S + 10, workflows=[wf])
    finally:
        sys.setswitchinterval(interval)
        wf.stop()
        reader.join(timeout=10)
    assert reader.error is None, reader.error
    final = wf.stats()["streams"]
    assert final["lagging"]["inputs"]["x"]["dropped"] > 0  # the lossy branch did drop
    assert final["sink"]["inputs"]["x"]["paused_s"] > 0  # the blocking path did pause
    assert reader.reads >= 100_000, reader.reads
    assert reader.decreases == []
    assert reader.broken == []
    assert len(on_loop) > 10
    assert [b for snapshot in on_loop for b in identity_breaks(snapshot)] == []


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_the_exposition_passes_promtool_check_metrics_before_during_and_after_a_run() -> None:
    """Prometheus's own linter (promtool, from the system package ``prometheus``) accepts
    the exposition of two instrumented workflows at every stage of a run."""
    wf = Workflow(buffer_size=2)
    orders = wf.add_inlet("orders")
    orders.pipe(wf.add_stream(Collector()))
    registry = CollectorRegistry()
    mimo_rx.prometheus.instrument(wf, name="live", registry=registry)
    mimo_rx.prometheus.instrument(busy_workflow(), name="idle", registry=registry)
    texts = [generate_latest(registry).decode()]

    async def main() -> None:
        async with wf.running():
            for n in range(5):
                await orders.send(n)
            texts.append(await asyncio.to_thread(lambda: generate_latest(registry).decode()))

    run_checked(main(), workflows=[wf])
    texts.append(generate_latest(registry).decode())
    for text in texts:
        result = subprocess.run(
            ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stdout + result.stderr
    running = 'mimo_rx_stream_status{status="running",stream="sink",workflow="live"} 1.0'
    assert running in texts[1]  # scraped from another thread during the run
