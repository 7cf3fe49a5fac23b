"""The step of an acknowledged source (contract section 12): fetch, push with a ticket each.

``add_source(ack_source, max_in_flight=..., commit_interval=...)`` makes an
:class:`AckSourceStream`: a stream with no input and one output ``out``. The run opens the
source before any step starts (``Run.run``), this step fetches as much as there is room for
(``min(room, max_in_flight - in flight)``, room being the smallest free room among the inputs
it feeds through blocking pipes) and pushes each item with a fresh ticket; the ledger
(``_ledger.py``) acks the tickets once done, and closes the source when the run has ended.

``stop()`` cancels a waiting ``fetch``. A source with the optional ``fetch_at_stop`` method
(``_acksource.py``; ``FileSource`` has one, for a followed file's unended last line) is then
asked for what ``stop()`` completes: the step catches that one cancellation and calls
``fetch_at_stop`` in place of ``fetch``, with the same room and cap, until it returns ``None``,
so those messages are pushed, handled and acked in the drain like every other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from ._acksource import AckSource
from ._errors import ConfigError
from ._ledger import Ledger
from ._lineage import Holder, TrackedOutput, track_input, track_output
from ._stream import Ports, Stream

if TYPE_CHECKING:
    from ._monitor import StepRuntime

DEFAULT_MAX_IN_FLIGHT = 1000
DEFAULT_COMMIT_INTERVAL = 0.5
LOW_WATER_DELAY = 0.005  # the longest a source waits for its low-water mark, in seconds


def check_ack_options(
    source: object, name: str, max_in_flight: object, commit_interval: object
) -> None:
    """Raise ``ConfigError`` for options that are not positive, or given to a source that
    is not an :class:`~mimo_rx.AckSource` (``None`` means not given)."""
    if not isinstance(source, AckSource):
        given = [
            option
            for option, value in (
                ("max_in_flight", max_in_flight),
                ("commit_interval", commit_interval),
            )
            if value is not None
        ]
        if given:
            raise ConfigError(
                f"source {name!r} is a {type(source).__name__}, not an acknowledged source "
                f"(mimo_rx.AckSource), so {' and '.join(given)} "
                f"{'do' if len(given) > 1 else 'does'} not apply to it; drop "
                f"{'them' if len(given) > 1 else 'it'}"
            )
        return
    if max_in_flight is not None and (
        isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1
    ):
        raise ConfigError(
            f"max_in_flight of source {name!r} must be an integer >= 1, not {max_in_flight!r}"
        )
    if commit_interval is not None and (
        isinstance(commit_interval, bool)
        or not isinstance(commit_interval, int | float)
        or not commit_interval > 0
        or commit_interval == float("inf")
    ):
        raise ConfigError(
            f"commit_interval of source {name!r} must be a positive number of seconds, "
            f"not {commit_interval!r}"
        )


class AckSourceStream(Stream):
    """Fetches an :class:`~mimo_rx.AckSource` as fast as downstream takes, within the cap."""

    OUT = ("out",)

    def __init__(
        self, source: AckSource, name: str, max_in_flight: int, commit_interval: float
    ) -> None:
        super().__init__(name=name)
        self.source = source
        self.ledger = Ledger(source, name, max_in_flight, float(commit_interval))
        self._stopping = False
        self._fetching = False
        at_stop = getattr(source, "fetch_at_stop", None)
        self._fetch_at_stop: Callable[[int], Awaitable[Any]] | None = (
            at_stop if callable(at_stop) else None
        )

    def _stop_source(self, cancel: Callable[[], None]) -> None:
        # A waiting fetch loses nothing when cancelled; a fetched batch is pushed first.
        self._stopping = True
        if self._fetching:
            cancel()

    def _extra_stats(self) -> dict[str, Any]:
        return {"delivery": self.ledger.stats()}

    async def run(self, ins: Ports, outs: Ports) -> None:
        out: Any = outs.out
        assert isinstance(out, TrackedOutput)
        ledger = self.ledger
        source = self.source
        runtime = out._rt
        # The low-water mark: while messages are in flight, fetch only once this much room
        # is free, so that a steady run fetches (and acks) in batches, not one by one.
        thresholds = [target.threshold for target in out.targets]
        low = max(1, min([ledger.max_in_flight, *thresholds]) // 2)
        delay = min(ledger.commit_interval, LOW_WATER_DELAY)
        waited = False
        fetch: Callable[[int], Awaitable[Any]] = source.fetch
        at_stop = self._fetch_at_stop
        while not out.abandoned:
            if self._stopping and fetch is not at_stop:
                if at_stop is None:
                    return
                fetch = at_stop  # stop(): what it completes, then the end
            room = out._room()
            if room <= 0:
                await out._wait_for_room("push()")
                continue
            await ledger.wait_for_room(runtime)
            if self._stopping and fetch is not at_stop:
                continue
            if not waited and ledger.room() < low and ledger.in_flight > 0 and not self._stopping:
                waited = True  # wait once, then fetch whatever room there is
                await ledger.wait_for_more(low, delay)
                continue
            waited = False
            self._fetching = True
            try:
                batch = await fetch(min(room, ledger.room()))
            except asyncio.CancelledError:
                if at_stop is None or fetch is at_stop or not _stop_cancelled(self):
                    raise
                continue  # stop() cancelled the waiting fetch: on to fetch_at_stop
            finally:
                self._fetching = False
            if batch is None or (not batch and fetch is at_stop):
                return
            ledger.fetched += len(batch)
            await out._push_fetched(batch, ledger)


def _stop_cancelled(stream: AckSourceStream) -> bool:
    """Was the cancellation just caught ``stop()``'s, and no other (a failing or cancelled
    run cancels the task too)? Then it is taken back: the task goes on."""
    task = asyncio.current_task()
    return stream._stopping and task is not None and task.uncancel() == 0


def wire_lineage(
    pipes: list[tuple[Stream, str, Stream, str]],
    streams: list[Stream],
    runtimes: dict[Stream, StepRuntime],
    roots: Sequence[Stream],
    late: bool = False,
) -> list[Holder]:
    """Switch the ports downstream of ``roots`` to their tracked variants (``_lineage.py``).

    ``pipes`` are ``(source stream, output, target stream, input)``. A stream downstream of a
    root is tracked: it gets a :class:`Holder`, its inputs and outputs are tracked. An output
    of another stream that feeds a tracked input is tracked too (its pushes carry no tag),
    and so is every input such an output feeds, until nothing changes. Returns the holders.
    """
    tracked: set[Stream] = set(roots)
    changed = True
    while changed:
        changed = False
        feeding = {src for src, _, dst, _ in pipes if dst in tracked}
        for src, _, dst, _ in pipes:
            if (src in tracked or src in feeding) and dst not in tracked:
                tracked.add(dst)
                changed = True
    holders: list[Holder] = []
    for stream in streams:
        if stream not in tracked or stream._holder is not None:
            continue  # untracked, or tracked already (downstream of another root)
        holder = Holder(stream.name)
        stream._holder = holder
        holders.append(holder)
        for port in stream._inputs.values():
            track_input(port, holder, late)
        for out in stream._outputs.values():
            track_output(out, holder)
    for src, output, dst, _ in pipes:
        if dst in tracked and src not in tracked:
            track_output(src._outputs[output], None)
    for stream in streams:  # every input is tracked now: the outputs' fast paths may apply
        for out in stream._outputs.values():
            if isinstance(out, TrackedOutput):
                out._refresh_fast_path()
    for root in roots:
        if not isinstance(root, AckSourceStream):
            continue
        root.ledger.holders = [
            (s._holder, runtimes[s])
            for s in streams
            if s in tracked and s._holder is not None and s in runtimes
        ]
    return holders
