"""Shared pieces of the benchmark: the per-item functions, case descriptions, result checks.

Every implementation of every workload calls the *same* module-level functions below
(`inc`, `is_even`, `dbl`, ...), so the libraries are compared on their plumbing, not on
how the arithmetic is spelled.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
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
