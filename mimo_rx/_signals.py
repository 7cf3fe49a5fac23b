"""Ctrl-C must reach an idle event loop, whichever thread the kernel delivers it to.

Python runs signal handlers in the main thread only. When SIGINT lands on another thread (a
cold source's worker, an executor thread), the C-level handler merely flags it; a main thread
sleeping in ``epoll_wait`` with nothing scheduled never looks, and ``run()`` would hang on
Ctrl-C. Two defences:

* :func:`wake_loop_on_signals` points Python's signal wake-up fd at a socket the loop reads,
  so any delivered signal wakes the loop, which then runs the handler (``asyncio.Runner``'s,
  which cancels the run).
* :func:`block_signals_in_this_thread` keeps threads that mimo_rx starts out of the kernel's
  choice of recipient altogether.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

# Signals whose Python handlers must run promptly; others keep their default per-thread fate.
_INTERRUPTS = frozenset(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def wake_loop_on_signals(loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """Make every signal wake ``loop`` (main thread only); returns the undo function."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # only the main thread may set the wake-up fd (or handle signals)
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)

    def drain() -> None:
        with contextlib.suppress(OSError):
            while reader.recv(4096):
                pass

    try:
        previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    except ValueError:  # e.g. an embedding interpreter that forbids it
        reader.close()
        writer.close()
        return lambda: None
    loop.add_reader(reader.fileno(), drain)

    def undo() -> None:
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(previous)
        if not loop.is_closed():
            loop.remove_reader(reader.fileno())
        reader.close()
        writer.close()

    return undo


def block_signals_in_this_thread() -> None:
    """Leave interrupts to the main thread: the kernel then never delivers them here."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, _INTERRUPTS)


class TerminationSignals:
    """What ``run()`` does on SIGTERM: drain first, cancel on a second signal.

    SIGTERM (what a container orchestrator sends before it kills) calls ``drain`` (the
    workflow's ``stop()``). A second SIGTERM during the drain calls ``cancel`` and marks the
    run as interrupted, so ``run()`` raises ``KeyboardInterrupt``. SIGINT keeps asyncio's own
    handling (``asyncio.Runner`` cancels the run; ``run()`` raises ``KeyboardInterrupt``), also
    during a drain. Installed in the main thread only; ``restore()`` puts back the previous
    handler.
    """

    def __init__(self, drain: Callable[[], None], cancel: Callable[[], None]) -> None:
        self.drain = drain
        self.cancel = cancel
        self.draining = False
        self.interrupted = False
        self._previous: Any = None
        self._installed = False

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        sigterm = getattr(signal, "SIGTERM", None)
        if sigterm is None:
            return
        self._previous = signal.signal(sigterm, self._on_sigterm)
        self._installed = True

    def restore(self) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False

    def _on_sigterm(self, signum: int, frame: object) -> None:
        # Runs in the main thread between two bytecodes: only thread-safe calls here.
        if not self.draining:
            self.draining = True
            self.drain()
        else:
            self.interrupted = True
            self.cancel()
