"""A forgotten ``await`` fails the run instead of losing items silently.

``outs.y.push(item)`` without ``await`` makes a coroutine and drops it: nothing is delivered.
CPython reports such a coroutine when it is destroyed (at once, by reference counting, for a
discarded call) through ``warnings._warn_unawaited_coroutine(coro)``. While at least one run is
active, :func:`watching` replaces that function with :func:`_report`, which recognises the
coroutines of mimo_rx's own ``push``-like methods (registered with :func:`recognise`) and hands
the object they were called on to each active run; the run that owns it fails. Any other
coroutine goes to the function that was there before, so the usual ``RuntimeWarning`` (and a
pytest ``filterwarnings = error``) is unchanged for everything else.

This costs nothing per item: a push that is awaited never reaches this module. The hook is
CPython's private interface; ``tests/test_silent_mistakes.py`` fails loudly if a Python release
changes it.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Iterator
from types import CodeType
from typing import Any

# A watcher gets (the object the method was called on, the method's name) and returns True
# when it owns that object (it then fails its run).
Watcher = Callable[[Any, str], bool]

_codes: dict[CodeType, str] = {}  # code of a recognised coroutine function -> its public name
_watchers: list[Watcher] = []
_lock = threading.Lock()
_previous: Callable[[Any], None] | None = None  # the hook that was there before ours


def recognise(name: str, *functions: Callable[..., Any]) -> None:
    """Report a discarded coroutine of any of ``functions`` as a forgotten ``await name(...)``."""
    for function in functions:
        _codes[function.__code__] = name


def _report(coro: Any) -> None:
    """``warnings._warn_unawaited_coroutine`` while a run is active (see the module docstring).

    Called by the interpreter while the coroutine is being destroyed: it must not raise.
    """
    name = _codes.get(getattr(coro, "cr_code", None))  # type: ignore[arg-type]
    if name is not None:
        frame = coro.cr_frame
        owner = frame.f_locals.get("self") if frame is not None else None
        for watcher in list(_watchers):
            try:
                if watcher(owner, name):
                    return
            except Exception:  # never let a report break the code that dropped the coroutine
                continue
    previous = _previous
    if previous is not None:
        previous(coro)


@contextlib.contextmanager
def watching(watcher: Watcher) -> Iterator[None]:
    """Install :func:`_report` (the first time) while the body runs; restore it after the last.

    Several runs (also on several threads) may watch at once; each gets the coroutines of the
    objects it owns.
    """
    global _previous
    with _lock:
        if not _watchers:
            current = getattr(warnings, "_warn_unawaited_coroutine", None)
            if current is not None and current is not _report:
                _previous = current
                warnings._warn_unawaited_coroutine = _report  # type: ignore[attr-defined]
        _watchers.append(watcher)
    try:
        yield
    finally:
        with _lock:
            _watchers.remove(watcher)
            # Put the previous hook back unless someone replaced ours meanwhile (theirs may
            # chain to ours, which then still chains to the previous one).
            current = getattr(warnings, "_warn_unawaited_coroutine", None)
            if not _watchers and _previous is not None and current is _report:
                warnings._warn_unawaited_coroutine = _previous  # type: ignore[attr-defined]
