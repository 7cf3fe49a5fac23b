"""Prometheus metrics for workflows: ``instrument(workflow, name="workflow", registry=None)``.

Needs the extra ``mimo_rx[prometheus]`` (the package ``prometheus_client``); ``import mimo_rx``
alone never imports it. ``instrument`` registers a collector that reads ``workflow.stats()``
at each scrape, so nothing is counted twice and the hot path is untouched::

    from prometheus_client import start_http_server
    import mimo_rx.prometheus

    mimo_rx.prometheus.instrument(workflow, name="orders")
    start_http_server(8000, addr="127.0.0.1")     # GET /metrics during and after the run

Families (every sample has the labels ``workflow`` and ``stream``; ``port`` where a port is
meant): counters ``mimo_rx_input_received``, ``mimo_rx_input_taken``,
``mimo_rx_input_dropped``, ``mimo_rx_input_discarded``, ``mimo_rx_input_paused_seconds``,
``mimo_rx_output_pushed``, ``mimo_rx_stream_failures`` (exposed as ``..._total``); gauges
``mimo_rx_input_buffered``, ``mimo_rx_input_threshold`` and ``mimo_rx_stream_status``
(label ``status``: 1 for the stream's current status, 0 for the other four). An acknowledged
source (contract section 12) adds the counters ``mimo_rx_source_acked``,
``mimo_rx_source_nacked`` and the gauge ``mimo_rx_source_in_flight`` (labels ``workflow`` and
``stream``).

Several workflows in one registry: an exposition may name each family once (a second
``# HELP``/``# TYPE`` for the same name is rejected by Prometheus), so the collectors of one
registry form a group, and the first of them still registered writes every family with the
samples of all of them; the others write nothing. Only that first one declares the family
names (``describe()``) when it is registered, which keeps prometheus_client's duplicate
check (``Duplicated timeseries``) for collectors that are not ours. ``registry.unregister``
works on any of them; the group notices at the next scrape.

A scrape runs on the HTTP server's thread while the run goes on: ``stats()`` hands the read
to the run's loop, so the values of one scrape are of one moment, and no counter is ever lower
than in a scrape before (Prometheus would take a decrease for a reset). A pause still going on
counts in ``mimo_rx_input_paused_seconds_total``: it grows while a stall lasts.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from typing import Any

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        "mimo_rx.prometheus needs the optional dependency 'prometheus_client': "
        "pip install 'mimo_rx[prometheus]'"
    ) from exc

from ._errors import ConfigError
from ._workflow import Workflow

__all__ = ["STATUSES", "WorkflowCollector", "instrument"]

STATUSES = ("pending", "running", "done", "failed", "cancelled")

# (stats key, family name, help) of the per-input families.
_INPUT_COUNTERS = (
    ("received", "mimo_rx_input_received", "Items delivered to the input by its upstreams."),
    ("taken", "mimo_rx_input_taken", "Items the stream took from the input."),
    ("dropped", "mimo_rx_input_dropped", "Items dropped at the input by an overflow policy."),
    ("discarded", "mimo_rx_input_discarded", "Items discarded: the stream had finished."),
    (
        "paused_s",
        "mimo_rx_input_paused_seconds",
        "Seconds producers spent paused because the input was full (summed over producers).",
    ),
)
_INPUT_GAUGES = (
    ("buffered", "mimo_rx_input_buffered", "Items buffered at the input now."),
    ("threshold", "mimo_rx_input_threshold", "The input's buffer size (threshold)."),
)
_PORT_LABELS = ("workflow", "stream", "port")


def instrument(
    workflow: Workflow, name: str = "workflow", registry: CollectorRegistry | None = None
) -> WorkflowCollector:
    """Expose ``workflow``'s statistics to Prometheus, read at each scrape.

    Args:
        workflow: the workflow to watch (before, during or after its run).
        name: the value of the ``workflow`` label; unique in ``registry``.
        registry: where to register (default ``prometheus_client.REGISTRY``).

    Returns:
        The registered collector; ``registry.unregister(collector)`` removes it.

    Raises:
        ConfigError: ``workflow`` is already instrumented in ``registry``, or another
            workflow there already uses ``name``.
    """
    if not isinstance(workflow, Workflow):
        raise ConfigError(f"instrument() takes a mimo_rx.Workflow, not {type(workflow).__name__}")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"instrument(name=...) must be a non-empty string, not {name!r}")
    target = REGISTRY if registry is None else registry
    with _lock:
        group = _groups.setdefault(target, _Group(target))
        live = group.live()
        for member in live:
            if member.workflow is workflow:
                raise ConfigError(
                    f"this workflow is already instrumented in this registry as {member.name!r}; "
                    "registry.unregister() that collector first to instrument it again"
                )
            if member.name == name:
                raise ConfigError(
                    f"another workflow is already instrumented in this registry as {name!r}; "
                    "give each workflow its own name=..."
                )
        collector = WorkflowCollector(workflow, name, group)
        collector._declares = not any(member._declares for member in live)
        target.register(collector)
        group.members.append(collector)
    return collector


class WorkflowCollector:
    """The collector ``instrument`` registers: one workflow under one ``workflow`` label."""

    def __init__(self, workflow: Workflow, name: str, group: _Group) -> None:
        self.workflow = workflow
        self.name = name
        self._group = group
        self._declares = False  # whether describe() names the families (see module doc)

    def describe(self) -> list[Metric]:
        """The families' names, for the registry's duplicate check (see the module doc)."""
        return _families([]) if self._declares else []

    def collect(self) -> list[Metric]:
        """Every family, with the samples of every workflow of the group, if this collector
        is the group's first one still registered; else nothing (the first one wrote it)."""
        with _lock:
            live = self._group.live()
        if not live or live[0] is not self:
            return []
        return _families(live)

    def __repr__(self) -> str:
        return f"<WorkflowCollector {self.name!r}>"


class _Group:
    """The collectors that ``instrument`` registered in one registry, in registration order."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = weakref.ref(registry)
        self.members: list[WorkflowCollector] = []

    def live(self) -> list[WorkflowCollector]:
        """The members still registered (forgetting the others); the caller holds ``_lock``."""
        registry = self._registry()
        # prometheus_client has no unregister hook: read its map of registered collectors.
        registered = getattr(registry, "_collector_to_names", None)
        if registered is not None:
            self.members = [m for m in self.members if m in registered]
        return list(self.members)


_lock = threading.Lock()
_groups: weakref.WeakKeyDictionary[CollectorRegistry, _Group] = weakref.WeakKeyDictionary()


def _families(members: Iterable[WorkflowCollector]) -> list[Metric]:
    """The metric families with the samples of ``members``' workflows, from ``stats()``."""
    counters = {
        key: CounterMetricFamily(family, doc, labels=_PORT_LABELS)
        for key, family, doc in _INPUT_COUNTERS
    }
    gauges = {
        key: GaugeMetricFamily(family, doc, labels=_PORT_LABELS)
        for key, family, doc in _INPUT_GAUGES
    }
    pushed = CounterMetricFamily(
        "mimo_rx_output_pushed", "Items the stream pushed to the output.", labels=_PORT_LABELS
    )
    failures = CounterMetricFamily(
        "mimo_rx_stream_failures",
        "Failures the stream resumed from (on_error='resume').",
        labels=("workflow", "stream"),
    )
    status = GaugeMetricFamily(
        "mimo_rx_stream_status",
        "1 for the stream's current status, 0 for the others.",
        labels=("workflow", "stream", "status"),
    )
    # Acknowledged sources (contract section 12): from their "delivery" stats.
    acked = CounterMetricFamily(
        "mimo_rx_source_acked",
        "Messages of an acknowledged source passed to its ack().",
        labels=("workflow", "stream"),
    )
    nacked = CounterMetricFamily(
        "mimo_rx_source_nacked",
        "Messages of an acknowledged source passed to its nack().",
        labels=("workflow", "stream"),
    )
    in_flight = GaugeMetricFamily(
        "mimo_rx_source_in_flight",
        "Messages of an acknowledged source fetched and not yet acked or nacked.",
        labels=("workflow", "stream"),
    )
    for member in members:
        streams: dict[str, Any] = member.workflow.stats()["streams"]
        for stream, s in streams.items():
            failures.add_metric([member.name, stream], s["failures"])
            delivery = s.get("delivery")
            if delivery is not None:
                acked.add_metric([member.name, stream], delivery["acked"])
                nacked.add_metric([member.name, stream], delivery["nacked"])
                in_flight.add_metric([member.name, stream], delivery["in_flight"])
            for value in STATUSES:
                status.add_metric(
                    [member.name, stream, value], 1.0 if s["status"] == value else 0.0
                )
            for port, p in s["inputs"].items():
                labels = [member.name, stream, port]
                for key, family in counters.items():
                    family.add_metric(labels, p[key])
                for key, gauge in gauges.items():
                    gauge.add_metric(labels, p[key])
            for port, p in s["outputs"].items():
                pushed.add_metric([member.name, stream, port], p["pushed"])
    return [
        *counters.values(),
        pushed,
        failures,
        acked,
        nacked,
        *gauges.values(),
        status,
        in_flight,
    ]
