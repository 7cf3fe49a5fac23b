"""Markdown rendering: one table per workload of ratios (never a lone absolute time), plus a
summary of the issue's targets.

Throughput ratios are ratios of median items/s, i.e. ``median_seconds(baseline) /
median_seconds(row)`` on the same `n`: above 1 means the row is faster than the baseline.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from common import Case, Outcome
from workloads import BASELINES, QUEUE, Target, Workload

Outcomes = Mapping[str, Outcome]


@dataclass(frozen=True)
class Verdict:
    """A target checked against the measurements."""

    workload: str
    target: Target
    measured: str
    met: bool | None  # None: could not be measured

    @property
    def status(self) -> str:
        return {True: "met", False: "NOT met", None: "not measured"}[self.met]

    @property
    def cell(self) -> str:
        return f"{self.target.text}: {self.measured}, {self.status}"


def ratio(outcomes: Outcomes, row: str, baseline: str) -> float | None:
    """Median items/s of `row` divided by that of `baseline` (same n), or None."""
    a, b = outcomes.get(row), outcomes.get(baseline)
    if a is None or b is None or not a.ok or not b.ok:
        return None
    return statistics.median(b.seconds) / statistics.median(a.seconds)


def spread(out: Outcome) -> str:
    """(slowest - fastest) / median run, in percent: how noisy the row is."""
    if len(out.seconds) < 2:
        return "-"
    med = statistics.median(out.seconds)
    return f"{100 * (max(out.seconds) - min(out.seconds)) / med:.0f}%"


def cpu_share(outcomes: Outcomes) -> str:
    """Median over all runs of CPU time / elapsed time: below ~95% means other processes
    competed for the CPU during the runs (the wall-clock ratios are then noisier)."""
    shares = [
        c / w
        for out in outcomes.values()
        for w, c in zip(out.extra.get("wall", []), out.extra.get("cpu", []), strict=True)
        if w > 0
    ]
    return f"{100 * statistics.median(shares):.0f}%" if shares else "-"


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _status_cell(out: Outcome) -> str | None:
    if out.skipped:
        return out.skipped
    if out.error:
        return f"error: {out.error}"
    return None


def _rss_mib(out: Outcome) -> float | None:
    values = out.extra.get("rss_mib") or []
    return max(values) if values else None


def evaluate(
    workload: str, target: Target, outcomes: Outcomes, scaling: float | None = None
) -> Verdict:
    """Check one target. `scaling` is the measured cost-per-item ratio for kind "scaling"."""
    if target.kind == "throughput":
        value = ratio(outcomes, target.case, target.baseline)
        measured = "-" if value is None else f"{value:.3f}x"  # 3 decimals: 1.499 is not 1.5
        met = None if value is None else value >= target.limit
    elif target.kind == "latency":
        value = latency_ratio(outcomes, target.case, target.baseline, "p99_us")
        measured = "-" if value is None else f"{value:.3f}x"
        met = None if value is None else value <= target.limit
    elif target.kind == "rss":
        out = outcomes.get(target.case)
        value = _rss_mib(out) if out is not None and out.ok else None
        measured = "-" if value is None else f"{value:.1f} MiB"
        met = None if value is None else value <= target.limit
    else:
        measured = "-" if scaling is None else f"{scaling:.3f}x"
        met = None if scaling is None else scaling <= target.limit
    return Verdict(workload, target, measured, met)


def _notes(cases: Sequence[Case]) -> list[str]:
    notes = [f"- {c.label}: {c.note}" for c in cases if c.note]
    return [*notes, ""] if notes else []


def size(n: int) -> str:
    """`10000` -> `1e4`; other numbers with thousands separators."""
    k = len(str(n)) - 1
    return f"1e{k}" if n == 10**k else f"{n:,}"


def throughput_section(
    w: Workload, n: int, repeat: int, outcomes: Outcomes, verdicts: list[Verdict]
) -> list[str]:
    """W1-W3: each row's median items/s as a ratio to asyncio.Queue, reactivex, generators."""
    lines = [
        f"### {w.key} {w.title}",
        "",
        f"n = {n:,}; ratio of median items/s over {repeat} runs (higher is faster); "
        f"CPU share {cpu_share(outcomes)}",
        "",
        "| implementation | vs " + " | vs ".join(BASELINES) + " | run spread | target |",
        "|---|" + "--:|" * len(BASELINES) + "--:|---|",
    ]
    for case in w.cases:
        out = outcomes[case.label]
        target = "; ".join(v.cell for v in verdicts if v.target.case == case.label)
        status = _status_cell(out)
        if status:
            cells = [status] + ["-"] * (len(BASELINES) - 1) + ["-"]
        else:
            cells = [fmt(ratio(outcomes, case.label, b)) for b in BASELINES] + [spread(out)]
        lines.append(f"| {case.label} | " + " | ".join(cells) + f" | {target} |")
    return [*lines, "", *_notes(w.cases)]


def rss_section(
    w: Workload, n: int, repeat: int, outcomes: Outcomes, verdicts: list[Verdict]
) -> list[str]:
    """W4: throughput vs asyncio.Queue and the worst peak RSS growth of a fresh process."""
    lines = [
        f"### {w.key} {w.title}",
        "",
        f"n = {n:,} items of 1 KiB; each run in a fresh process; {repeat} runs. RSS growth = "
        "peak RSS (VmHWM) minus the RSS measured in the same process, after imports, just "
        f"before the workload; worst run shown. CPU share {cpu_share(outcomes)}",
        "",
        f"| implementation | items/s vs {QUEUE} | peak RSS growth | run spread | target |",
        "|---|--:|--:|--:|---|",
    ]
    for case in w.cases:
        out = outcomes[case.label]
        target = "; ".join(v.cell for v in verdicts if v.target.case == case.label)
        status = _status_cell(out)
        if status:
            cells = [status, "-", "-"]
        else:
            mib = _rss_mib(out)
            rss = "-" if mib is None else f"{mib:.1f} MiB"
            cells = [fmt(ratio(outcomes, case.label, QUEUE)), rss, spread(out)]
        lines.append(f"| {case.label} | " + " | ".join(cells) + f" | {target} |")
    return [*lines, "", *_notes(w.cases)]


def median_extra(out: Outcome | None, key: str) -> float | None:
    """Median over the runs of one reported number (W6: "p50_us", "p99_us", "max_us")."""
    if out is None or not out.ok:
        return None
    values = out.extra.get(key) or []
    return statistics.median(values) if values else None


def latency_ratio(outcomes: Outcomes, row: str, baseline: str, key: str) -> float | None:
    """Median latency `key` of `row` over that of `baseline` (below 1: `row` is quicker)."""
    a, b = median_extra(outcomes.get(row), key), median_extra(outcomes.get(baseline), key)
    if a is None or b is None or b <= 0:
        return None
    return a / b


LATENCIES = (("p50_us", "p50"), ("p99_us", "p99"), ("max_us", "max"))


def latency_section(
    w: Workload, n: int, repeat: int, outcomes: Outcomes, verdicts: list[Verdict]
) -> list[str]:
    """W6: latency percentiles per implementation (medians over runs) and p99 vs the queue."""
    lines = [
        f"### {w.key} {w.title}",
        "",
        f"n = {n:,} events paced at 20,000/s ({n // 2:,} reach the sink); latency = arrival at "
        "the sink minus the emission time the event carries (elapsed time, whatever the clock); "
        "each number is the median over "
        f"{repeat} runs of that run's percentile, in microseconds (lower is better). "
        f"CPU share {cpu_share(outcomes)}",
        "",
        "| implementation | p50 µs | p99 µs | max µs | p50 vs "
        + QUEUE
        + " | p99 vs "
        + QUEUE
        + " | p99 run spread | target |",
        "|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    for case in w.cases:
        out = outcomes[case.label]
        target = "; ".join(v.cell for v in verdicts if v.target.case == case.label)
        status = _status_cell(out)
        if status:
            cells = [status] + ["-"] * 6
        else:
            cells = []
            for key, _ in LATENCIES:
                value = median_extra(out, key)
                cells.append("-" if value is None else f"{value:,.0f}")
            cells += [
                fmt(latency_ratio(outcomes, case.label, QUEUE, "p50_us")),
                fmt(latency_ratio(outcomes, case.label, QUEUE, "p99_us")),
                _extra_spread(out, "p99_us"),
            ]
        lines.append(f"| {case.label} | " + " | ".join(cells) + f" | {target} |")
    return [*lines, "", *_notes(w.cases)]


def _extra_spread(out: Outcome, key: str) -> str:
    values = out.extra.get(key) or []
    if len(values) < 2:
        return "-"
    med = statistics.median(values)
    return f"{100 * (max(values) - min(values)) / med:.0f}%" if med > 0 else "-"


def cost_ratio(by_size: Mapping[int, Outcomes], label: str, small: int, large: int) -> float | None:
    """Cost per item at `large` divided by cost per item at `small` (1.0 = perfectly linear)."""
    a, b = by_size[small].get(label), by_size[large].get(label)
    if a is None or b is None or not a.ok or not b.ok:
        return None
    per_item = [statistics.median(o.seconds) / o.items for o in (a, b)]
    return per_item[1] / per_item[0]


def scaling_section(
    labels: Sequence[str],
    by_size: Mapping[int, Outcomes],
    repeat: int,
    verdicts: list[Verdict],
) -> list[str]:
    """W5: W1 at several sizes; cost per item relative to the smallest size."""
    sizes = sorted(by_size)
    small, large = sizes[0], sizes[-1]
    lines = [
        "### W5 scaling: W1 at " + ", ".join(f"N = {size(s)}" for s in sizes),
        "",
        f"cost per item (median seconds of {repeat} samples / items per sample) relative to "
        f"N = {size(small)}; every sample covers {size(large)} items: one run of N = "
        f"{size(large)}, or back-to-back runs of a smaller N. Below 1 means fixed start-up costs "
        "amortised; above 1 means per-item cost grows with N. "
        f"CPU share {cpu_share(by_size[large])}",
        "",
        "| implementation | "
        + " | ".join(f"cost/item {size(s)} vs {size(small)}" for s in sizes[1:])
        + f" | items/s at {size(large)} vs {QUEUE} | target |",
        "|---|" + "--:|" * len(sizes) + "---|",
    ]
    for label in labels:
        out = by_size[large].get(label)
        target = "; ".join(v.cell for v in verdicts if v.target.case == label)
        errors = [o for s in sizes if (o := by_size[s].get(label)) is not None and not o.ok]
        if errors or out is None:
            status = _status_cell(errors[0]) if errors else "not run"
            cells = [status or "no runs"] + ["-"] * (len(sizes) - 1)
        else:
            cells = [fmt(cost_ratio(by_size, label, small, s)) for s in sizes[1:]]
            cells.append(fmt(ratio(by_size[large], label, QUEUE)))
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {target} |")
    return [*lines, ""]


def targets_section(verdicts: Sequence[Verdict]) -> list[str]:
    """All targets of the issue in one table."""
    lines = [
        "### Targets",
        "",
        "| workload | implementation | target | measured | status |",
        "|---|---|---|--:|---|",
    ]
    for v in verdicts:
        lines.append(
            f"| {v.workload} | {v.target.case} | {v.target.text} | {v.measured} | {v.status} |"
        )
    return [*lines, ""]
