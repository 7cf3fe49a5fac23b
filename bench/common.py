"""Shared pieces of the benchmark: the per-item functions, case descriptions, result checks.

Every implementation of every workload calls the *same* module-level functions below
(`inc`, `is_even`, `dbl`, ...), so the libraries are compared on their plumbing, not on
how the arithmetic is spelled.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

# --- the per-item work, shared by every implementation ------------------------------------


def inc(x: int) -> int:
    """W1 stage 1 and W2 branch 1: x + 1."""
    return x + 1


def is_even(x: int) -> bool:
    """W1 stage 2: keep even numbers."""
    return x % 2 == 0


def dbl(x: int) -> int:
    """W1 stage 3 and W2 branch 2: x * 2."""
    return x * 2


def tpl(x: int) -> int:
    """W2 branch 3: x * 3."""
    return x * 3


def add(a: int, b: int) -> int:
    """W3: the map after the pairwise join."""
    return a + b


def add_pair(pair: tuple[int, int]) -> int:
    """W3 for libraries whose map takes the zipped tuple."""
    return pair[0] + pair[1]


ITEM_SIZE = 1024
"""W4 item size in bytes."""


def make_item(i: int) -> bytes:
    """W4: a fresh 1 KiB bytes object whose first 8 bytes encode `i` (so results are checkable)."""
    return i.to_bytes(8, "little") * (ITEM_SIZE // 8)


def item_id(item: bytes) -> int:
    """W4: recover `i` from `make_item(i)`."""
    return int.from_bytes(item[:8], "little")


class Acc:
    """A sink accumulator: counts items and sums them. The result is `(count, sum)`."""

    __slots__ = ("count", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0

    def __call__(self, x: int) -> None:
        self.count += 1
        self.total += x

    @property
    def result(self) -> tuple[int, int]:
        return (self.count, self.total)


# --- cases -------------------------------------------------------------------------------

Clock = Literal["wall", "cpu"]
"""Which time the ratios use: elapsed time, or this process's CPU time (robust to other load)."""

Fn = Callable[[int], Any] | Callable[[int], Awaitable[Any]]


@dataclass(frozen=True)
class Case:
    """One implementation of one workload.

    Attributes:
        label: the row label in the report, e.g. ``"asyncio.Queue"``.
        fn: ``fn(n)`` returning the result, or an ``async def`` returning it.
        requires: the module that must be importable for the case to run.
        note: a footnote shown under the table (how this peer was made to fit the workload).
    """

    label: str
    fn: Fn
    requires: str | None = None
    note: str = ""

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)


@dataclass
class Outcome:
    """What running one case several times produced."""

    label: str
    seconds: list[float] = field(default_factory=list)
    items: int = 0
    error: str | None = None
    skipped: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.skipped is None and bool(self.seconds)

    def record(self, wall: float, cpu: float, clock: Clock) -> None:
        """Keep one timed run; `seconds` gets the time of the chosen clock."""
        self.seconds.append(wall if clock == "wall" else cpu)
        self.extra.setdefault("wall", []).append(wall)
        self.extra.setdefault("cpu", []).append(cpu)


class WrongResult(Exception):
    """An implementation finished but returned the wrong answer."""


def check(got: Any, expected: Any) -> None:
    """Raise `WrongResult` unless `got == expected` (tuples and lists compare alike)."""
    if isinstance(got, list):
        got = tuple(got)
    if got != expected:
        raise WrongResult(f"wrong result: got {got!r}, expected {expected!r}")


def missing(module: str | None) -> str | None:
    """Return a skip reason if `module` cannot be found, else None (does not import it)."""
    if module is None:
        return None
    if module == "mimo_rx":
        # mimo_rx is the subject: an import failure is an error to show, not a skip.
        return None
    if importlib.util.find_spec(module) is None:
        return "skipped (not installed)"
    return None


def describe_error(exc: BaseException) -> str:
    """One line for a table cell: exception type and the start of its message."""
    if isinstance(exc, WrongResult):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
        cause = exc.__cause__
        if cause is not None:
            text += f" (caused by {type(cause).__name__}: {cause})"
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= 160 else text[:157] + "..."


def version_of(module: str) -> str:
    """The installed version of `module`, or a short reason why there is none."""
    try:
        mod = importlib.import_module(module)
    except Exception as exc:
        return f"not importable ({type(exc).__name__})"
    ver = getattr(mod, "__version__", None)
    if ver is None:
        try:
            from importlib.metadata import version

            ver = version(module)
        except Exception:
            ver = "?"
    return str(ver)


# --- W6 latency: events carry their emission time ------------------------------------------

RATE = 20_000
"""W6: events per second the producer is paced at."""

Event = tuple[float, int]
"""W6 item: (time.perf_counter() when emitted, value)."""


def ev_inc(e: Event) -> Event:
    """W6 stage 1: inc on the value, the emission time carried along."""
    return (e[0], inc(e[1]))


def ev_is_even(e: Event) -> bool:
    """W6 stage 2."""
    return is_even(e[1])


def ev_dbl(e: Event) -> Event:
    """W6 stage 3."""
    return (e[0], dbl(e[1]))


class Pacer:
    """Due times at a steady rate: event ``i`` is due ``i / rate`` seconds after the first.

    ``await pacer.wait(i)`` sleeps until event ``i`` is due (not at all when it is late). Every
    implementation's producer uses it, so all are paced alike. asyncio's timers have about a
    millisecond of resolution (epoll), so at 20,000 events/s the producer wakes about once a
    millisecond and emits the ~20 events then due back to back: a realistic arrival pattern
    for a service whose events arrive in network reads.
    """

    __slots__ = ("interval", "start")

    def __init__(self, rate: float = RATE) -> None:
        self.interval = 1.0 / rate
        self.start = -1.0

    async def wait(self, i: int) -> None:
        now = time.perf_counter()
        if self.start < 0:
            self.start = now
        delay = self.start + i * self.interval - now
        if delay > 0:
            await asyncio.sleep(delay)


@dataclass(frozen=True)
class Measured:
    """A case's result plus numbers to report: ``value`` is checked, ``extra`` recorded."""

    value: Any
    extra: dict[str, float]


class LatencyAcc:
    """W6 sink: counts and sums the values (the checked result) and records each event's
    latency, from its emission time to its arrival here."""

    __slots__ = ("count", "latencies", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0
        self.latencies: list[float] = []

    def __call__(self, e: Event) -> None:
        self.latencies.append(time.perf_counter() - e[0])
        self.count += 1
        self.total += e[1]

    @property
    def result(self) -> Measured:
        lat = sorted(self.latencies)
        if not lat:
            return Measured((self.count, self.total), {})
        return Measured(
            (self.count, self.total),
            {
                "p50_us": 1e6 * lat[len(lat) // 2],
                "p99_us": 1e6 * lat[min(len(lat) - 1, (99 * len(lat)) // 100)],
                "max_us": 1e6 * lat[-1],
            },
        )
