"""Run mimo_rx and its peers on the same workloads and print a markdown table of ratios.

Usage::

    python bench/run.py                  # full run: W1-W6, medians of 5 runs (~15-30 min)
    python bench/run.py --quick          # small sizes, 3 runs: checks everything works (< 60 s)
    python bench/run.py --only W1,W3 --repeat 7 --output results.md
    python bench/run.py --clock cpu      # ratios of CPU time: steadier on a shared machine

The table goes to stdout (and to --output); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # mimo_rx from the repo, bench modules by name

import report  # noqa: E402
import workloads as wl  # noqa: E402
from common import Case, Clock, Outcome, missing, version_of  # noqa: E402
from rss import run_fresh  # noqa: E402
from timing import run_cases, timeout_for  # noqa: E402

CLOCK_TEXT = {
    "wall": "elapsed time (perf_counter)",
    "cpu": "this process's CPU time (process_time), so that other load on the machine does not "
    "count against a case; all cases are single-threaded",
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_throughput(
    w: wl.Workload, n: int, repeat: int, clock: Clock
) -> tuple[list[str], list[report.Verdict]]:
    """W1-W3: all cases in this process, interleaved."""
    log(f"{w.key}: n={n:,}, {repeat} runs + 1 warm-up per case ...")
    t0 = time.perf_counter()
    outcomes = run_cases(w.cases, n, w.expected(n), repeat, timeout=timeout_for(n), clock=clock)
    log(f"{w.key}: done in {time.perf_counter() - t0:.0f} s")
    verdicts = [report.evaluate(w.key, t, outcomes) for t in w.targets]
    return report.throughput_section(w, n, repeat, outcomes, verdicts), verdicts


def run_latency(
    w: wl.Workload, n: int, repeat: int, clock: Clock
) -> tuple[list[str], list[report.Verdict]]:
    """W6: all cases in this process, interleaved; each run reports its latency percentiles."""
    log(f"{w.key}: n={n:,} events at 20,000/s, {repeat} runs + 1 warm-up per case ...")
    t0 = time.perf_counter()
    outcomes = run_cases(w.cases, n, w.expected(n), repeat, timeout=timeout_for(n), clock=clock)
    log(f"{w.key}: done in {time.perf_counter() - t0:.0f} s")
    verdicts = [report.evaluate(w.key, t, outcomes) for t in w.targets]
    return report.latency_section(w, n, repeat, outcomes, verdicts), verdicts


def run_rss(
    w: wl.Workload, n: int, repeat: int, clock: Clock
) -> tuple[list[str], list[report.Verdict]]:
    """W4: every run of every case in a fresh process, interleaved round by round."""
    log(f"{w.key}: n={n:,}, {repeat} fresh-process runs per case ...")
    t0 = time.perf_counter()
    outcomes = {c.label: Outcome(c.label, items=n, skipped=missing(c.requires)) for c in w.cases}
    cases: list[Case] = list(w.cases)
    for rnd in range(repeat):
        shift = rnd % len(cases)
        for case in [*cases[shift:], *cases[:shift]]:
            out = outcomes[case.label]
            if out.error or out.skipped:
                continue
            result = run_fresh(w.key, case.label, n, timeout=timeout_for(n) + 30)
            if "error" in result:
                out.error = result["error"]
                continue
            out.record(result["wall"], result["cpu"], clock)
            out.extra.setdefault("rss_mib", []).append(result["growth_kib"] / 1024)
        log(f"{w.key}: round {rnd + 1}/{repeat} done")
    log(f"{w.key}: done in {time.perf_counter() - t0:.0f} s")
    verdicts = [report.evaluate(w.key, t, outcomes) for t in w.targets]
    return report.rss_section(w, n, repeat, outcomes, verdicts), verdicts


def run_scaling(
    sizes: tuple[int, ...], repeat: int, clock: Clock
) -> tuple[list[str], list[report.Verdict]]:
    """W5: W1 at each size, `repeat` timed samples per size and case.

    Every sample covers the same number of items, the largest size: at a smaller size it is
    (largest / size) back-to-back runs, their times summed. On a shared VM whose speed comes in
    bursts, a median of short runs dodges the slow spells a long run cannot, which made even
    plain generators look 1.4-1.7x costlier per item at 1e6 than at 1e4; samples of one length
    meet the bursts alike. Sizes are interleaved round by round, like the cases within a size,
    so a drift during the run slows every size alike instead of one block.
    """
    cases = [wl.W1.case(label) for label in wl.W5_CASES]
    largest = max(sizes)
    by_size: dict[int, dict[str, Outcome]] = {}
    log(f"W5: N={', '.join(f'{s:,}' for s in sizes)} interleaved, {repeat} rounds ...")
    for rnd in range(repeat + 1):  # round 0 is each size's warm-up
        for size in sizes:
            runs = largest // size  # back-to-back runs per sample
            shift = rnd % len(cases)
            got = run_cases(
                [*cases[shift:], *cases[:shift]],
                size,
                wl.W1.expected(size),
                1,
                warmup=0,
                timeout=timeout_for(size),
                clock=clock,
                runs_per_sample=runs,
            )
            merged = by_size.setdefault(size, {})
            for label, outcome in got.items():
                if label not in merged:
                    merged[label] = Outcome(label, items=size * runs, skipped=outcome.skipped)
                into = merged[label]
                if outcome.error and not into.error:
                    into.error = outcome.error
                if rnd > 0 and not into.error:
                    into.seconds += outcome.seconds
                    for key, values in outcome.extra.items():
                        into.extra.setdefault(key, []).extend(values)
    small, large = min(sizes), max(sizes)
    verdicts = [
        report.evaluate(
            "W5", t, by_size[large], scaling=report.cost_ratio(by_size, t.case, small, large)
        )
        for t in wl.W5_TARGETS
    ]
    return report.scaling_section(wl.W5_CASES, by_size, repeat, verdicts), verdicts


def header(args: argparse.Namespace, argv: list[str], repeat: int) -> list[str]:
    versions = ", ".join(
        f"{m} {version_of(m)}" for m in ("mimo_rx", "reactivex", "aiostream", "streamz")
    )
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    mode = "quick (small sizes; for checking, not for publication)" if args.quick else "full"
    return [
        "## mimo_rx benchmark",
        "",
        f"- command: `python bench/run.py {' '.join(argv)}`".replace("run.py `", "run.py`"),
        f"- mode: {mode}; {repeat} timed runs per case after 1 warm-up (W4: no warm-up, fresh "
        "process per run); cases interleaved round by round",
        f'- clock: {CLOCK_TEXT[args.clock]}. "CPU share" = median CPU time / elapsed time '
        "of the runs: well below 100% means other processes competed for the CPU",
        f"- machine: {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}; load average at start {load}",
        f"- libraries: {versions}",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "- every result is checked against a value computed in plain Python; a wrong result or "
        "an exception is shown as an error, never as a number",
        *busy_warning(),
        "",
    ]


def busy_warning() -> list[str]:
    """A warning line when other processes are already loading the machine."""
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if load <= 0.5 * cpus:
        return []
    return [f"- warning: machine busy (load {load:.2f} on {cpus} CPUs); ratios are noisier"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes and 3 runs (< 60 s)")
    parser.add_argument("--only", default=",".join(wl.ALL_KEYS), help="e.g. W1,W3 (default: all)")
    parser.add_argument("--repeat", type=int, help="timed runs per case (default 5, quick 3)")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="time the ratios use: elapsed (default) or this process's CPU time, which other "
        "processes on a shared machine cannot inflate (every case here is single-threaded)",
    )
    parser.add_argument("--output", type=Path, help="also write the markdown to this file")
    args = parser.parse_args(argv)

    by_upper = {k.upper(): k for k in wl.ALL_KEYS}
    asked = [k.strip().upper() for k in args.only.split(",") if k.strip()]
    unknown = sorted(set(asked) - set(by_upper))
    if unknown:
        parser.error(
            f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(wl.ALL_KEYS)}"
        )
    keys = [by_upper[k] for k in asked]
    repeat = args.repeat or (3 if args.quick else 5)
    if repeat < 1:
        parser.error("--repeat must be at least 1")

    t0 = time.perf_counter()
    lines = header(args, argv, repeat)
    verdicts: list[report.Verdict] = []
    for key in keys:
        if key == "W5":
            sizes = wl.W5_QUICK_SIZES if args.quick else wl.W5_SIZES
            section, found = run_scaling(sizes, repeat, args.clock)
        else:
            w = wl.WORKLOADS[key]
            n = w.quick_n if args.quick else w.n
            runner = run_rss if w.fresh_process else run_latency if w.latency else run_throughput
            section, found = runner(w, n, repeat, args.clock)
        lines += section
        verdicts += found
    if verdicts:
        lines += report.targets_section(verdicts)
    lines += [
        f"Total wall time {time.perf_counter() - t0:.0f} s; load average at end "
        + " / ".join(f"{x:.2f}" for x in os.getloadavg()),
        *busy_warning(),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    met = [v.met for v in verdicts]
    log(f"targets: {met.count(True)} met, {met.count(False)} not met, {met.count(None)} unmeasured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
