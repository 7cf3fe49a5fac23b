"""Rx operators as streams: ``operator()`` and ``rx_stream()``.

Operator streams feed the items of their inputs into Rx observables on the loop and push what
the Rx chain emits with back-pressure. Time-based operators run on the workflow's event loop
through :class:`~._scheduler.LoopScheduler`, which also tells the deadlock monitor that a
stream with pending timers can still make progress. Adjacent ``operator()`` stages are fused
into one chain when a run starts (see ``RxStream._fuse``).

With ``on_error="resume"`` the chain's observers are the ``_Resuming*`` variants: an error
raised while the stream's task feeds an item is thrown back up the (synchronous) Rx call
stack as :class:`_StageFailed`, which names the stage and picks up, on its way through each
link, the value that was passed into that stage. ``_feed`` catches it, gives the items not
yet fed back to the input, and the chain is subscribed anew. Streams that do not resume use
the plain observers: not one instruction more per item.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from reactivex import Observable
from reactivex import abc as rx_abc
from reactivex.disposable import Disposable

from ._errors import ConfigError, safe_repr
from ._fastops import FastChain, Process, compile_chain
from ._lineage import Tag, decref, group
from ._monitor import StepRuntime
from ._ports import AnyInput, Input, Output
from ._scheduler import LoopScheduler
from ._stream import FusedStageError, Ports, Stream
from ._supervision import Failure, check_on_error, report_failure, step_name

_UNSET: Any = object()
_FeedFn = Callable[[list[Input[Any]], list[Any]], bool]


class _StageFailed(Exception):
    """An error of a resuming Rx stage, on its way up the Rx call stack to ``_feed``."""

    def __init__(self, stage: RxStream, error: Exception) -> None:
        super().__init__(safe_repr(error))
        self.stage = stage
        self.error = error
        self.item: Any = _UNSET  # the value passed into the failing stage, once known
        self.port: str | None = None


class _Feed(Observable[Any]):
    """What ``fn`` sees of one input: a minimal hot observable the stream feeds on the loop.

    A ``Subject`` takes two locks and copies its observer list per item; this takes none,
    because it is only ever fed from the stream's own task.
    """

    def __init__(self) -> None:
        super().__init__()
        self.observers: list[rx_abc.ObserverBase[Any]] = []
        self.done = False

    def _subscribe_core(
        self, observer: rx_abc.ObserverBase[Any], scheduler: rx_abc.SchedulerBase | None = None
    ) -> rx_abc.DisposableBase:
        if self.done:
            observer.on_completed()
            return Disposable()
        self.observers.append(observer)

        def unsubscribe() -> None:
            if observer in self.observers:
                self.observers.remove(observer)

        return Disposable(unsubscribe)

    def on_next(self, value: Any) -> None:
        observers = self.observers
        if len(observers) == 1:
            observers[0].on_next(value)
        else:
            for observer in list(observers):
                observer.on_next(value)

    def on_completed(self) -> None:
        self.done = True
        for observer in list(self.observers):
            observer.on_completed()
        self.observers.clear()


class _Link(Observable[Any]):
    """The join between two fused stages: counts what passes and names who failed.

    It stands where a buffer would be, so ``stats()`` still shows the items that went from
    the first stage's output to the second's input (none is ever buffered there). An error
    that reaches a link first came from the stage before it.

    The second stage's operator subscribes to the link with its callbacks; they are called
    directly, without the ``AutoDetachObserver`` a plain ``Observable.subscribe`` adds (the
    first stage's subscription to :class:`_Counting` keeps that guard): a fused chain costs
    one Python call per link and item, not two.
    """

    def __init__(
        self,
        source: rx_abc.ObservableBase[Any],
        out: Output[Any],
        owner: RxStream,
        stage: RxStream | None = None,
    ) -> None:
        super().__init__()
        self.source = source
        self.out = out
        self.owner = owner
        self.stage = stage  # the stream whose output this link stands for

    def subscribe(
        self,
        on_next: Any = None,
        on_error: Callable[[Exception], None] | None = None,
        on_completed: Callable[[], None] | None = None,
        *,
        scheduler: rx_abc.SchedulerBase | None = None,
    ) -> rx_abc.DisposableBase:
        if callable(getattr(on_next, "on_next", None)):  # an observer rather than callbacks
            observer = on_next
            on_next, on_error, on_completed = (
                observer.on_next,
                observer.on_error,
                observer.on_completed,
            )
        kind = _ResumingCounting if self.owner._on_error == "resume" else _Counting
        counting = kind(self, on_next, on_error, on_completed)
        return self.source.subscribe(counting, scheduler=scheduler)


class _Counting(rx_abc.ObserverBase[Any]):
    """A link's observer of the first stage: counts, then calls the second stage directly."""

    def __init__(
        self,
        link: _Link,
        on_next: Callable[[Any], None] | None,
        on_error: Callable[[Exception], None] | None,
        on_completed: Callable[[], None] | None,
    ) -> None:
        self.out = link.out
        self.owner = link.owner
        self.stage = link.stage
        self.next = on_next or _ignore
        self.error = on_error or _reraise
        self.completed = on_completed or _nothing

    def on_next(self, value: Any) -> None:
        self.out.pushed += 1  # the second stage's input counts it as received and taken
        self.next(value)

    def on_error(self, error: Exception) -> None:
        if self.owner._failed_stage is None:
            self.owner._failed_stage = self.out.stream_name
        self.error(error)

    def on_completed(self) -> None:
        self.completed()


def _stage_failed(owner: RxStream, stage: RxStream, error: Exception) -> _StageFailed:
    """An error reaching a resuming chain's link or collector, as a ``_StageFailed`` naming
    the stage it came from (if nothing named one on the way). While the stream's task feeds
    the chain it is raised back up the Rx call stack to ``_feed``, which knows the item;
    otherwise (emitted by a timer or a thread) it is returned, to go on as an event."""
    if not isinstance(error, _StageFailed):
        error = _StageFailed(stage, error)
    if owner._feeding and threading.get_ident() == owner._loop_thread:
        owner._caught = error  # in case an operator on the way up swallows it
        raise error
    return error


class _ResumingCounting(_Counting):
    """A link of a resuming chain: names the stage that failed and the value it was given."""

    def on_next(self, value: Any) -> None:
        self.out.pushed += 1
        try:
            self.next(value)
        except _StageFailed as failed:
            if failed.item is _UNSET:  # it failed in the stage this value was passed to
                failed.item = value
                failed.port = "x"
            raise

    def on_error(self, error: Exception) -> None:
        assert self.stage is not None
        # Raised back up to _feed while it feeds; else (a timer, a thread) passed on.
        self.error(_stage_failed(self.owner, self.stage, error))


def _ignore(value: Any) -> None:
    pass


def _nothing() -> None:
    pass


def _reraise(error: Exception) -> None:
    raise error


class _Collector(rx_abc.ObserverBase[Any]):
    """Collects what one result observable emits, and wakes the stream's task."""

    def __init__(self, owner: RxStream, index: int, stage: RxStream | None = None) -> None:
        self.owner = owner
        self.index = index
        self.stage = stage  # the stream whose output this collects (the chain's last)

    def on_next(self, value: Any) -> None:
        owner = self.owner
        # Emitted while the stream's own task feeds the chain (not from an operator's own
        # thread meanwhile): nobody to wake.
        if owner._feeding and threading.get_ident() == owner._loop_thread:
            if owner._tail_index == self.index:
                owner._tail.append(value)  # the common case: one more item of the open run
            else:
                if asyncio.iscoroutine(value):  # checked once per run of items, not per item
                    stage, error = self._coroutine_emitted(value)
                    raise FusedStageError(stage, error) if owner._followers else error
                owner._record(("next", self.index, [value]))
        else:
            if asyncio.iscoroutine(value):
                owner._emit(("error", self.index, self._coroutine_emitted(value)[1]))
                return
            owner._emit(("next", self.index, [value]))

    def _coroutine_emitted(self, value: Any) -> tuple[str, ConfigError]:
        """The stage and the error for a coroutine the chain emitted (``ops.map(async_fn)``,
        whose calls nobody would ever await); it fails the stage whatever its ``on_error``."""
        return _coroutine_emitted(self.stage or self.owner, self.index, value)

    def on_error(self, error: Exception) -> None:
        self.owner._emit(("error", self.index, error))

    def on_completed(self) -> None:
        self.owner._emit(("completed", self.index, None))


def _coroutine_emitted(stage: RxStream, index: int, value: Any) -> tuple[str, ConfigError]:
    """The stage and the error for a coroutine a chain emitted on output ``index`` of
    ``stage`` (``ops.map(async_fn)``, whose calls nobody would ever await); it fails the
    stage whatever its ``on_error``."""
    value.close()  # it will never run: no "never awaited" warning on top of the error
    out = stage._outputs[stage.outs[index]]
    error = ConfigError(
        f"operator stage {out.stream_name!r} emitted a coroutine on output {out.name!r} "
        f"({value.__qualname__}() was called, never awaited): an async function inside an "
        "Rx operator (ops.map(async_fn)) is not awaited; use map_stream(async_fn) instead "
        "(add concurrency= to run several calls at once)"
    )
    return out.stream_name, error


class _ResumingCollector(_Collector):
    """The collector of a resuming chain: its errors are failures to resume from."""

    def on_error(self, error: Exception) -> None:
        assert self.stage is not None
        # Raised back up to _feed while it feeds; else (a timer, a thread) an event.
        self.owner._emit(("error", self.index, _stage_failed(self.owner, self.stage, error)))


class _TrackedCollector(_Collector):
    """The collector of a chain downstream of an acknowledged source: each emitted item is
    recorded with its tag, what the stream fed into the chain since it last emitted
    (``RxStream._emission_tag``)."""

    def on_next(self, value: Any) -> None:
        owner = self.owner
        if threading.get_ident() == owner._loop_thread:
            owner._record(("next", self.index, [(value, owner._emission_tag())]))
        else:
            assert owner._loop is not None
            owner._loop.call_soon_threadsafe(owner._record_foreign_tagged, self.index, value)


class _TrackedResumingCollector(_TrackedCollector, _ResumingCollector):
    """A resuming chain's collector downstream of an acknowledged source."""


class _TaggingOwner:
    """The owner a collector reports to once its stream is tracked mid-run (an inlet's first
    ``send_and_wait``). Rx holds the bound ``on_next`` of every collector it subscribed, so
    switching their class would not reach it: they keep their code and report here instead,
    which records each emission with its tag, as a ``_TrackedCollector`` does. Everything
    else is the stream's own."""

    _tail_index = -2  # never an output's: every emission comes through _record

    def __init__(self, owner: RxStream) -> None:
        object.__setattr__(self, "_owner", owner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._owner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._owner, name, value)  # _stage_failed sets the stream's _caught

    def _record(self, event: tuple[str, int, Any]) -> None:
        kind, index, value = event
        owner = self._owner
        if kind == "next":
            value = [(item, owner._emission_tag()) for item in value]
        owner._record((kind, index, value))

    def _emit(self, event: tuple[str, int, Any]) -> None:
        kind, index, value = event
        owner = self._owner
        if kind != "next":
            owner._emit(event)
        elif owner._loop_thread is None or threading.get_ident() == owner._loop_thread:
            self._record(event)
        else:  # tagged on the loop, as _TrackedCollector's are
            assert owner._loop is not None
            for item in value:
                owner._loop.call_soon_threadsafe(owner._record_foreign_tagged, index, item)


class RxStream(Stream):
    """A stream whose inputs are Rx observables and whose outputs follow Rx observables.

    ``fn`` gets one observable per input and returns one observable (one output) or a
    tuple/list/dict of them (several outputs). Items emitted are pushed downstream with
    back-pressure; the stream ends when every result observable has completed.

    With ``on_error="resume"`` an error of the chain is a ``Failure`` on ``errors`` and the
    chain is built and subscribed anew (``fn`` called again); the items not yet fed stay
    buffered. An error before any item was fed since the last subscription fails the run.

    Per round, the stream takes everything buffered at its inputs, feeds it through the Rx
    chain synchronously, and pushes what came out as one batch: one suspension per batch
    rather than per item, and never more than a buffer-full of input in hand.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        ins: Sequence[str],
        outs: Sequence[str],
        name: str,
        on_error: str = "fail",
    ) -> None:
        super().__init__(ins=ins, outs=outs, name=name, on_error=on_error)
        self.rx_fn = fn
        # What the chain emitted and is not pushed yet, in order: ("next", output index, run
        # of items), ("completed", index, None) or ("error", index, exception). Consecutive
        # items for one output share a run; the last run stays open for more (the tail).
        self._events: deque[tuple[str, int, Any]] = deque()
        self._tail: list[Any] = []
        self._tail_index = -1  # output index of the open run at the end of _events, or -1
        self._feeding = False  # the stream's task is feeding the chain right now
        self._wake: asyncio.Future[None] | None = None
        self._waiting: tuple[list[Input[Any]], AnyInput] = ([], AnyInput([]))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._open_results = 0
        self._followers: list[RxStream] = []  # operator streams fused behind this one
        self._failed_stage: str | None = None  # which fused stage an error came from
        self._runtime: StepRuntime | None = None
        self._foreign = False  # the chain has emitted from a thread other than the loop's
        # Supervision (on_error="resume"): the failure _feed caught, the items fed since the
        # chain was last subscribed, and the last of them with its input.
        self._caught: _StageFailed | None = None
        self._fed = 0
        self._last_fed: tuple[Any, str | None] = (None, None)
        self._emitted = False  # lineage: the chain emitted while the current item was fed
        self._collectors: list[_Collector] = []
        # The fast path (_fastops): the operator of an operator() stage (None for rx_stream),
        # whether this stage must run the Rx chain anyway (require_rx_chain), the compiled
        # chain of this run, and whether it failed (on_error="fail") or completed.
        self._rx_op: Callable[[Any], Any] | None = None
        self._rx_chain_required = False
        self._fast: FastChain | None = None
        self._fast_dead = False
        self._fast_completed = False

    _resumes_itself = True  # the chain is subscribed anew in run()

    def _fuse(self, followers: list[Stream]) -> None:
        self._followers = [f for f in followers if isinstance(f, RxStream)]
        assert len(self._followers) == len(followers), "only operator streams fuse"

    def require_rx_chain(self) -> None:
        """Make this stage, and any chain fused with it, feed its items through the Rx
        chain, never the compiled fast path (see ``_fast_chain``).

        For wiring: a stage whose items are tracked (downstream of an acknowledged source,
        contract section 12) needs the Rx chain's emissions to know what each one derives
        from. Call it before the run starts (``Run._wire``), on the head or any follower.
        """
        self._rx_chain_required = True

    _may_be_tracked = require_rx_chain  # an inlet upstream may start tracking mid-run

    def _fast_chain(self) -> FastChain | None:
        """The one decision point of the fast path, made once per run: the chain of this
        stage and its fused followers compiled into plain Python (``_fastops``), or ``None``
        to run the Rx chain, when any stage is an ``rx_stream``, uses an operator
        ``_fastops`` does not know, or was told to ``require_rx_chain()``."""
        stages = [self, *self._followers]
        if any(s._rx_op is None or s._rx_chain_required for s in stages):
            return None
        links = [s._outputs[s.outs[0]] for s in stages[:-1]]
        return compile_chain([s._rx_op for s in stages], links)

    def _emit(self, event: tuple[str, int, Any]) -> None:
        if self._loop_thread is None or threading.get_ident() == self._loop_thread:
            self._record(event)
        else:  # an operator that runs on a thread of its own: hand over to the loop
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._record_foreign, event)

    def _record_foreign(self, event: tuple[str, int, Any]) -> None:
        # The chain works on a thread of its own (observe_on, a TimeoutScheduler): it can
        # emit without any input, so this stream is never counted as deadlocked again.
        if not self._foreign and self._runtime is not None:
            self._foreign = True
            self._runtime.busy += 1
        self._record(event)

    def _record(self, event: tuple[str, int, Any]) -> None:
        kind, index, value = event
        if kind == "next":
            if self._tail_index == index:
                self._tail.extend(value)
            else:
                self._events.append(event)
                self._tail = value
                self._tail_index = index
        else:
            self._events.append(event)
            self._tail_index = -1
            if kind == "completed":
                self._open_results -= 1
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _results(
        self, feeds: Sequence[rx_abc.ObservableBase[Any]]
    ) -> list[rx_abc.ObservableBase[Any]]:
        result = self.rx_fn(*feeds)
        names = self.outs
        if isinstance(result, rx_abc.ObservableBase):
            results = [result]
        elif isinstance(result, Mapping):
            unknown = set(result) - set(names)
            missing = set(names) - set(result)
            if unknown or missing:
                raise ConfigError(
                    f"rx_stream {self.name!r} returned observables for {sorted(result)}, but "
                    f"its outputs are {names}; return exactly one per output"
                )
            results = [result[name] for name in names]
        elif isinstance(result, (tuple, list)):
            results = list(result)
        else:
            raise ConfigError(
                f"rx_stream {self.name!r} must return an Observable, or a tuple/dict of them, "
                f"not {type(result).__name__}"
            )
        if len(results) != len(names):
            raise ConfigError(
                f"rx_stream {self.name!r} returned {len(results)} observables for "
                f"{len(names)} outputs {names}; return one per output, in order"
            )
        for obs in results:
            if not isinstance(obs, rx_abc.ObservableBase):
                raise ConfigError(
                    f"rx_stream {self.name!r} returned {type(obs).__name__} where an "
                    "Observable was expected"
                )
        return results

    async def run(self, ins: Ports, outs: Ports) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._loop_thread = threading.get_ident()
        inputs: list[Input[Any]] = list(ins)
        ports: list[Input[Any] | Output[Any]] = [*inputs, *outs]
        runtime = ports[0]._rt if ports else None
        self._runtime = runtime
        self._waiting = (inputs, AnyInput(inputs))  # the open inputs, for _wait
        scheduler = LoopScheduler(loop, runtime) if runtime is not None else None
        last = self._followers[-1] if self._followers else self
        outputs = [last._outputs[name] for name in last.outs]
        if self._holder is not None:  # downstream of an acknowledged source: tagged items
            self.require_rx_chain()  # lineage follows the Rx chain, not the compiled one
            self._feed = self._feed_tracked  # type: ignore[method-assign]
            self._push_run = self._push_run_tracked  # type: ignore[method-assign]
        tracking = self._holder is not None
        self._fast = self._fast_chain()
        # The same turns either way; the feeds are an Rx _Feed per input, or the process
        # of the compiled chain.
        subscribe: Callable[..., tuple[list[Any], list[rx_abc.DisposableBase]]]
        feed: Callable[[list[Input[Any]], list[Any]], bool]
        if self._fast is None:
            subscribe, feed = self._subscribe, cast(_FeedFn, self._feed)
        else:
            subscribe, feed = self._subscribe_fast, cast(_FeedFn, self._feed_fast)
        feeds, subscriptions = subscribe(len(inputs), outputs, scheduler)
        try:
            while True:
                if not tracking and self._holder is not None:  # an inlet's send_and_wait
                    tracking = True
                    self._start_tracking()
                    feed = cast(_FeedFn, self._feed)  # the chain is the Rx one: _may_be_tracked
                # Feed and push in turns, one run of results at a time, so that a timer
                # emitting faster than downstream takes cannot keep the inputs unread.
                fed = feed(inputs, feeds)
                broken = False  # on_error="resume": the chain failed and is rebuilt
                if self._caught is not None:
                    failed, self._caught = self._caught, None
                    await self._resume(failed, outputs)
                    broken = True
                elif self._events:
                    broken = await self._push_run(outputs)
                elif self._open_results == 0:
                    return  # every result completed (take(n) and friends): inputs detach
                elif not fed:
                    await self._wait(inputs, runtime, loop)
                if broken:
                    for subscription in subscriptions:
                        subscription.dispose()
                    feeds, subscriptions = subscribe(len(inputs), outputs, scheduler)
        finally:
            for subscription in subscriptions:
                subscription.dispose()

    def _subscribe(
        self,
        count: int,
        outputs: list[Output[Any]],
        scheduler: rx_abc.SchedulerBase | None,
    ) -> tuple[list[_Feed], list[rx_abc.DisposableBase]]:
        """Build the chain (``fn`` of every fused stage) on fresh feeds and subscribe it."""
        feeds = [_Feed() for _ in range(count)]
        results = self._results(feeds)
        stage: RxStream = self
        for follower in self._followers:  # fused: one chain through every stage
            out = stage._outputs[stage.outs[0]]
            results = follower._results([_Link(results[0], out, self, stage)])
            stage = follower
        resume = self._on_error == "resume"
        collector: type[_Collector]
        if self._holder is None:
            collector = _ResumingCollector if resume else _Collector
        else:
            collector = _TrackedResumingCollector if resume else _TrackedCollector
        # Resubscribed after a failure: outputs already complete stay complete.
        done = {i for kind, i, _ in self._events if kind == "completed"}
        live = [i for i in range(len(results)) if not outputs[i].closed and i not in done]
        self._open_results = len(live)
        self._fed = 0
        self._collectors = [collector(self, i, stage) for i in live]
        subscriptions = [
            results[i].subscribe(c, scheduler=scheduler)
            for i, c in zip(live, self._collectors, strict=True)
        ]
        return feeds, subscriptions

    def _subscribe_fast(
        self,
        count: int,
        outputs: list[Output[Any]],
        scheduler: rx_abc.SchedulerBase | None,
    ) -> tuple[list[Process], list[rx_abc.DisposableBase]]:
        """``_subscribe`` for the compiled chain: a fresh process (fresh operator state)."""
        assert self._fast is not None and count == 1 and len(outputs) == 1
        self._open_results = 0 if outputs[0].closed or self._fast_completed else 1
        self._fed = 0
        return [self._fast.start()], []

    def _feed_fast(self, inputs: list[Input[Any]], feeds: list[Process]) -> bool:
        """``_feed`` for the compiled chain: everything buffered goes through it at once.

        What it emits joins the events as the collector's emissions do, in the same
        order; a failure is handled as the Rx chain's observers handle it.
        """
        if self._open_results == 0:
            return False
        port = inputs[0]
        if port._items:
            batch = port._take_all()
            if self._fast_dead:  # failed (on_error="fail"): a stopped Rx chain ignores items
                return True
            self._fed += len(batch)
            self._last_fed = (batch[-1], port.name)
            items = iter(batch)
            results: list[Any] = []
            failed = feeds[0](items, results.append)
            if results:
                self._collect_fast(results)
            if failed is not None:
                self._fast_failed(failed, port, items)
            return True
        if port._closed and not self._fast_completed and not self._fast_dead:
            self._fast_completed = True
            self._record(("completed", 0, None))
            return True
        return False

    def _collect_fast(self, results: list[Any]) -> None:
        """What the compiled chain emitted for one batch (never empty), as the collector's
        ``on_next`` would have recorded it item by item; like it, the first item of a run
        must not be a coroutine (``ops.map(async_fn)``)."""
        if self._tail_index != 0 and asyncio.iscoroutine(results[0]):
            for value in results[1:]:  # made, never to run: no "never awaited" warnings
                if asyncio.iscoroutine(value):
                    value.close()
            last = self._followers[-1] if self._followers else self
            stage, error = _coroutine_emitted(last, 0, results[0])
            raise FusedStageError(stage, error) if self._followers else error
        self._record(("next", 0, results))

    def _fast_failed(self, failed: tuple[int, Exception, Any], port: Input[Any], rest: Any) -> None:
        """A user function of the compiled chain raised: as ``_feed`` and the observers do."""
        index, error, item = failed
        stage = ([self, *self._followers])[index]
        if self._on_error == "resume":
            port._give_back(list(rest))  # not fed: stays buffered
            caught = _StageFailed(stage, error)
            caught.item, caught.port = item, (port.name if index == 0 else "x")
            self._last_fed = (item, caught.port)
            self._caught = caught
        else:  # the rest of the batch is lost in the stopped chain, as with Rx
            self._fast_dead = True
            if self._failed_stage is None:
                self._failed_stage = stage._outputs[stage.outs[0]].stream_name
            self._record(("error", 0, error))

    async def _resume(self, failed: _StageFailed, outputs: list[Output[Any]]) -> None:
        """Report ``failed`` as a Failure, or fail the run if nothing was fed since the
        chain was last subscribed (it would only fail again)."""
        if not self._fed:
            if self._followers:
                raise FusedStageError(step_name(failed.stage), failed.error)
            raise failed.error
        item, port = self._last_fed if failed.item is _UNSET else (failed.item, failed.port)
        stage = failed.stage
        failure = Failure(step_name(stage), failed.error, item, port)
        holder = self._holder
        if holder is None:
            await report_failure(stage, failure)
            return
        tag = holder.tag()  # what the chain held (fused: the head holds it)
        try:
            await report_failure(stage, failure, tag)
        finally:
            decref(tag)
        holder.release_loose()  # the chain is built anew: what it held is lost

    def _feed(self, inputs: list[Input[Any]], feeds: list[_Feed]) -> bool:
        """Feed everything buffered (and every close) into the chain; return whether any."""
        fed = False
        if self._open_results == 0:
            return False
        self._feeding = True
        try:
            for port, feed in zip(inputs, feeds, strict=True):
                if port._items:
                    batch = port._take_all()
                    fed = True
                    self._fed += len(batch)
                    self._last_fed = (batch[-1], port.name)
                    # One subscriber (the usual chain): call it directly, not through the feed.
                    observers = feed.observers
                    on_next = observers[0].on_next if len(observers) == 1 else feed.on_next
                    position = 0
                    try:
                        for position, item in enumerate(batch):
                            if self._open_results == 0:  # the chain completed: give the rest back
                                port._give_back(batch[position:])
                                return True
                            on_next(item)
                    except _StageFailed as failed:  # only a resuming chain raises it
                        port._give_back(batch[position + 1 :])  # not fed: stays buffered
                        return self._failed_on(failed, batch[position], port.name)
                    if self._caught is not None:
                        # An operator that catches its downstream's exceptions (do_action's
                        # after_next, ...) swallowed the failure: the item is unknown and the
                        # rest of the batch went into the broken chain.
                        return True
                elif port._closed and not feed.done:
                    if self._end_feed(feed):
                        return True
                    fed = True
        finally:
            self._feeding = False
        return fed

    def _failed_on(self, failed: _StageFailed, item: Any, port: str) -> bool:
        """A resuming chain failed while ``item`` of input ``port`` was fed: remember it for
        ``_resume`` (the stage that raised may have named its own item already)."""
        if failed.item is _UNSET:
            failed.item, failed.port = item, port
        self._last_fed = (item, port)
        self._caught = failed
        return True

    def _end_feed(self, feed: _Feed) -> bool:
        """Complete the feed of a closed input; true when a resuming chain failed on it."""
        try:
            feed.on_completed()
        except _StageFailed as failed:
            self._caught = failed
            return True
        return False

    # -- lineage (contract section 12): an item fed into the chain stays held (in the
    # holder's ``loose``) until the chain next emits; what it emits meanwhile derives from it.

    def _start_tracking(self) -> None:
        """Switch a running chain to tagged items (an inlet's first ``send_and_wait``): what
        it emitted so far derives from nothing."""
        for kind, _, value in self._events:
            if kind == "next":
                value[:] = [(item, None) for item in value]  # in place: _tail is one of them
        tagging = _TaggingOwner(self)
        for collector in self._collectors:
            collector.owner = tagging  # type: ignore[assignment]
        self._feed = self._feed_tracked  # type: ignore[method-assign]
        self._push_run = self._push_run_tracked  # type: ignore[method-assign]

    def _emission_tag(self) -> Tag:
        """The tag of an item the chain emits now, with a reference of its own (released
        once pushed); what was fed is let go once the feeding item returns (or now, for an
        emission from a timer)."""
        holder = self._holder
        tag = group(holder.loose)
        if self._feeding:
            self._emitted = True
        else:
            holder.release_loose()
        return tag

    def _record_foreign_tagged(self, index: int, value: Any) -> None:
        self._record_foreign(("next", index, [(value, self._emission_tag())]))

    def _feed_tracked(self, inputs: list[Input[Any]], feeds: list[_Feed]) -> bool:
        """``_feed`` downstream of an acknowledged source: each item's tag goes into the
        holder while it is fed, and is let go once the chain has emitted."""
        fed = False
        if self._open_results == 0:
            return False
        holder = self._holder
        self._feeding = True
        try:
            for port, feed in zip(inputs, feeds, strict=True):
                if port._items:
                    batch = port._take_all()
                    tags = port._take_tags(len(batch))  # type: ignore[attr-defined]
                    fed = True
                    self._fed += len(batch)
                    self._last_fed = (batch[-1], port.name)
                    observers = feed.observers
                    on_next = observers[0].on_next if len(observers) == 1 else feed.on_next
                    position = 0
                    try:
                        for position, item in enumerate(batch):
                            if self._open_results == 0:
                                port._give_back(batch[position:])
                                port._give_back_tags(tags[position:])  # type: ignore[attr-defined]
                                return True
                            tag = tags[position]
                            if tag is not None:
                                holder.loose.append(tag)
                                holder.single = None
                            self._emitted = False
                            on_next(item)
                            if self._emitted:
                                holder.release_loose()
                    except _StageFailed as failed:
                        port._give_back(batch[position + 1 :])
                        port._give_back_tags(tags[position + 1 :])  # type: ignore[attr-defined]
                        return self._failed_on(failed, batch[position], port.name)
                    if self._caught is not None:
                        return True
                elif port._closed and not feed.done:
                    if self._end_feed(feed):
                        return True
                    fed = True
        finally:
            self._feeding = False
        return fed

    async def _push_run_tracked(self, outputs: list[Output[Any]]) -> bool:
        """``_push_run`` for tagged items: each is pushed with its own tag."""
        events = self._events
        kind, index, value = events[0]
        if kind != "next":
            return await RxStream._push_run(self, outputs)
        events.popleft()
        if not events:
            self._tail_index = -1
        out: Any = outputs[index]
        limit = out._room_limit()
        if len(value) > limit:
            events.appendleft(("next", index, value[limit:]))
            value = value[:limit]
        for position, (item, tag) in enumerate(value):
            try:
                await out._push_tag(item, tag)
            except BaseException:
                events.appendleft(("next", index, value[position:]))  # not pushed: kept
                raise
            decref(tag)
        return False

    async def _push_run(self, outputs: list[Output[Any]]) -> bool:
        """Push the next run of results for one output (or act on the next terminal signal).

        Returns whether the chain must be subscribed anew (a resuming chain failed).
        """
        events = self._events
        kind, index, value = events.popleft()
        if kind == "next":
            if not events:  # the open run is ours now: later items start a new one
                self._tail_index = -1
            out = outputs[index]
            target = out._fast_target
            if target is not None and len(target._items) + len(value) <= target.threshold:
                # push_many's one-input case when the whole run fits: no waiting, no chunks
                target._deliver_many(value)
                out.pushed += len(value)  # once buffered: see ``Input.taken``
                return False
            limit = out._room_limit()  # at most a buffer-full before the inputs are fed again
            if len(value) > limit:
                events.appendleft(("next", index, value[limit:]))
                value = value[:limit]
            await out.push_many(value)
        elif kind == "completed":
            outputs[index].close()
        elif isinstance(value, _StageFailed):  # resuming: raised outside _feed (a timer)
            await self._resume(value, outputs)
            return True
        elif self._followers:
            raise FusedStageError(self._failed_stage or outputs[index].stream_name, value)
        else:
            raise value
        return False

    async def _wait(
        self,
        inputs: list[Any],
        runtime: StepRuntime | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """Wait for an input to receive or close, or for the Rx chain to emit."""
        wake: asyncio.Future[None] = loop.create_future()
        self._wake = wake
        waiting, site = self._waiting
        for port in waiting:
            if port._closed:  # the open inputs changed since the last wait
                waiting = [p for p in inputs if not p._closed]
                site = AnyInput(waiting)
                self._waiting = (waiting, site)
                break
        for port in waiting:
            port._getter = wake
        # With timers pending the stream can still make progress (runtime.busy > 0): the
        # monitor checks that, so parking here is safe.
        parked = (
            runtime.park("an Rx operator waiting for input", site, wake)
            if runtime is not None and waiting
            else None
        )
        try:
            await wake
        finally:
            self._wake = None
            for port in waiting:
                port._getter = None
            if parked is not None and runtime is not None:
                runtime.unpark(parked)


def operator(op: Callable[[Any], Any], name: str | None = None, on_error: str = "fail") -> Stream:
    """A one-input (``x``), one-output (``y``) stream applying the Rx operator ``op``.

    Example: ``operator(ops.map(str))``, ``operator(ops.buffer_with_count(10))``,
    ``operator(ops.debounce(0.1))`` (time operators run on the workflow's event loop).

    ``on_error="resume"`` skips the item whose processing raised (a ``mimo_rx.Failure`` on
    the extra output ``errors``) and subscribes the Rx chain anew: what the operator held
    (an unfinished ``buffer_with_count`` window) is lost, as with Rx's ``retry``.
    """
    if not callable(op):
        raise ConfigError(
            f"operator {name or 'operator'!r} takes an Rx operator such as ops.map(f), "
            f"not {type(op).__name__}"
        )
    check_on_error(on_error, f"operator {name or 'operator'!r}")
    stream = RxStream(
        lambda x: x.pipe(op), ins=["x"], outs=["y"], name=name or "operator", on_error=on_error
    )
    stream._fusable = True
    stream._rx_op = op  # a chain of known operators runs compiled (_fastops)
    return stream


def rx_stream(
    fn: Callable[..., Any],
    ins: Sequence[str],
    outs: Sequence[str],
    name: str | None = None,
    on_error: str = "fail",
) -> Stream:
    """A stream whose inputs are handed to ``fn`` as Rx observables, in order.

    ``fn`` returns one observable, or a tuple/dict of observables for several outputs, e.g.
    ``rx_stream(lambda a, b: reactivex.zip(a, b), ins=['a', 'b'], outs=['pair'])``.

    ``on_error="resume"``: after an error the observables are rebuilt (``fn`` is called
    again) and the items not yet fed stay buffered; each failure goes to ``errors``.
    """
    if not callable(fn):
        raise ConfigError(f"rx_stream takes a function of observables, not {type(fn).__name__}")
    if name is None:
        fn_name = getattr(fn, "__name__", "rx_stream")
        name = "rx_stream" if fn_name == "<lambda>" else fn_name
    return RxStream(fn, ins=ins, outs=outs, name=name, on_error=on_error)
