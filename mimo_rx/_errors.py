"""Every error and signal mimo_rx raises, in one tree.

::

    MimoError                       base of everything below; catch this to catch them all
    ├── EndOfStream                 an input is closed and drained (a signal, not a fault)
    ├── ClosedError                 push() on a closed output, send() on a closed inlet
    ├── MissingAwaitError           push()/push_many()/send() called without await
    ├── WouldBlock                  inlet.send_nowait() could not deliver without waiting
    ├── ConfigError (ValueError)    a graph that is built wrong: bad port name, bad buffer size
    │   └── PipeError               pipe() cannot decide or is not allowed which ports to connect
    ├── WorkflowError (RuntimeError)  a workflow that cannot be run as asked
    ├── StreamError                 user code (or an Rx operator/source) in one stream raised
    │   └── SourceOverflowError     (also a BufferOverflowError) what run() raises for one
    ├── BufferOverflowError         a hot source overflowed an input whose policy is "error"
    ├── DeadlockError               every live stream waits on another one: nothing can move
    └── WorkflowCancelled           sent to Rx subscribers when the run was cancelled

Messages name the stream and the port involved and say what to do about it; the names are
also kept as attributes (``stream``, ``port``) so programs need not parse messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import warnings
from pathlib import Path

_FULL = re.compile(r"\d+/\d+ full\)")


class MimoError(Exception):
    """Base class of every mimo_rx error and signal."""


class EndOfStream(MimoError):
    """Raised by ``pop()``/``peek()`` once an input is closed and has nothing buffered.

    It is a signal, not a fault: ``async for`` stops on it. It deliberately does not derive
    from ``StopIteration`` (which a coroutine cannot raise).
    """

    def __init__(self, stream: str | None = None, port: str | None = None) -> None:
        self.stream = stream
        self.port = port
        where = f"input {port!r} of stream {stream!r}" if port else "input"
        super().__init__(f"{where} is closed and empty: no more items will arrive")


class ClosedError(MimoError):
    """An item was pushed or sent where no more items may go.

    Raised by ``push()`` on an output that its stream (or the end of its stream) had already
    closed, and by an inlet's ``send`` calls after ``close()`` or once the run has ended.
    """

    def __init__(self, stream: str | None, port: str, message: str | None = None) -> None:
        self.stream = stream
        self.port = port
        super().__init__(
            message
            or f"output {port!r} of stream {stream!r} is closed; "
            "push every item before calling close() (or before run() returns)"
        )


class MissingAwaitError(MimoError):
    """``push()``, ``push_many()`` or an inlet's ``send()`` was called without ``await``.

    Such a call only makes a coroutine: nothing is delivered. When the coroutine is dropped
    during a run, the run fails with a ``StreamError`` naming the stream whose port it was,
    with this error as ``__cause__`` (the run would otherwise end "successfully" with items
    missing).

    Attributes:
        stream: the step name of the stream (or inlet) the port belongs to.
        port: the output port's name.
    """

    def __init__(self, stream: str, port: str, method: str, *, inlet: bool = False) -> None:
        self.stream = stream
        self.port = port
        arg = "items" if method == "push_many" else "item"
        if inlet:
            where = f"inlet {stream!r} (output {port!r})"
            fix = f"await inlet.{method}({arg})"
        else:
            where = f"output {port!r} of stream {stream!r}"
            fix = f"await outs.{port}.{method}({arg})"
        super().__init__(
            f"{where}: {method}() was called without await, so nothing was delivered; "
            f"add `await`: `{fix}`"
        )


class WouldBlock(MimoError):
    """``inlet.send_nowait(item)`` could not deliver without waiting; nothing was delivered.

    A buffer the inlet feeds is full, or the run has not started: ``await inlet.send(item)``
    waits instead.
    """

    def __init__(self, stream: str, port: str, reason: str) -> None:
        self.stream = stream
        self.port = port
        super().__init__(
            f"inlet {stream!r} cannot deliver to its output {port!r} without waiting: {reason}; "
            "use 'await inlet.send(item)' to wait, or retry later"
        )


class ConfigError(MimoError, ValueError):
    """A stream or graph was built wrong; raised when it is built, before anything runs."""


class PipeError(ConfigError):
    """``pipe()`` could not (or may not) connect the ports it was asked to connect."""


class WorkflowError(MimoError, RuntimeError):
    """The workflow cannot be run as asked (invalid graph, wrong context, already run)."""


class StreamError(MimoError):
    """A stream raised; the original exception is ``__cause__`` (and ``.error``).

    Attributes:
        stream: the step name of the stream that failed.
        error: the exception it raised.
        errors: every ``StreamError`` of the run when several streams failed together, this one
            first (so no failure is ever hidden behind another).
    """

    def __init__(self, stream: str, error: BaseException) -> None:
        self.stream = stream
        self.error = error
        self.errors: list[StreamError] = [self]
        MimoError.__init__(self, f"stream {stream!r} failed: {describe(error)}")


class BufferOverflowError(MimoError):
    """An input was full where the policy is ``"error"``: a hot source's, or a pipe's.

    A hot source that cannot be paused, or a pipe made with ``policy="error"``, found the input
    it feeds full. ``stream`` and ``port`` name that input; the run fails.
    """

    def __init__(
        self, stream: str, port: str, threshold: int, source: str, *, pipe: bool = False
    ) -> None:
        self.stream = stream
        self.port = port
        self.threshold = threshold
        if pipe:
            message = (
                f"input {port!r} of stream {stream!r} is full ({threshold} items) and the pipe "
                f"from stream {source!r} has policy 'error'; raise the input's buffer_size, "
                'read it faster, or choose another policy ("block", "drop_oldest", ...)'
            )
        else:
            message = (
                f"input {port!r} of stream {stream!r} is full ({threshold} items) and the hot "
                f"source {source!r} cannot be paused; raise its buffer_size or choose another "
                'policy ("buffer", "drop_newest", "drop_oldest", "latest")'
            )
        super().__init__(message)


class SourceOverflowError(StreamError, BufferOverflowError):
    """Raised by ``run()``/``start()`` when an input with an ``"error"`` policy overflowed.

    The producer was a hot source, or a stream pushing through a pipe with ``policy="error"``.
    It is both the ``StreamError`` of that producer (``stream`` is its step name,
    ``__cause__`` the original ``BufferOverflowError``) and a ``BufferOverflowError`` (with the
    overflowing ``port`` and its ``threshold``), so either can be caught.
    """

    def __init__(self, source: str, error: BufferOverflowError) -> None:
        StreamError.__init__(self, source, error)
        self.port = error.port
        self.threshold = error.threshold
        self.input_stream = error.stream


class DeadlockError(MimoError):
    """Every stream still running waits on a buffer that nothing can fill or drain.

    Attributes:
        waits: one line per waiting stream: the stream, the port and why it cannot move.
        errors: ``StreamError`` of streams that raised while being stopped (also in the notes).
    """

    def __init__(self, waits: list[str]) -> None:
        self.waits = waits
        self.errors: list[StreamError] = []  # streams that failed while the graph shut down
        detail = "\n  ".join(waits)
        # A wait on a full buffer reads "... (4/4 full)" (Output._describe_wait).
        if any(_FULL.search(line) for line in waits):
            advice = (
                "Give the full buffers more room (buffer_size on pipe() or Stream), or read the "
                "inputs in an order that does not depend on a full sibling buffer."
            )
        else:
            advice = (
                "No buffer is full, so more room would not help: each stream waits for an item "
                "that only another waiting stream would send (a cycle of empty inputs). Put a "
                "first item into the cycle (a source or an inlet piped into it, or a stream "
                "that pushes before it pops), or close an output so that the streams reading "
                "it see end of stream."
            )
        super().__init__(
            "deadlock: every running stream is waiting and none of the waits can be "
            f"satisfied:\n  {detail}\n{advice}"
        )


class WorkflowCancelled(MimoError):
    """Sent to Rx subscribers of unfinished outputs when the workflow run is cancelled."""

    def __init__(self, stream: str | None = None, port: str | None = None) -> None:
        self.stream = stream
        self.port = port
        where = f" before output {port!r} of stream {stream!r} closed" if port else ""
        super().__init__(f"the workflow was cancelled{where}")


def describe(error: BaseException) -> str:
    """``Type: message`` of ``error`` for a report, even when its ``__str__`` raises."""
    name = type(error).__name__
    try:
        text = str(error)
    except Exception as exc:  # formatting user objects must not lose the error itself
        text = f"<str() raised {type(exc).__name__}>"
    return f"{name}: {text}"


def safe_repr(value: object) -> str:
    """``repr(value)``, or a stand-in naming its type when that ``__repr__`` raises."""
    try:
        return repr(value)
    except Exception as exc:
        return f"<{type(value).__name__} object; repr() raised {type(exc).__name__}>"


# -- how errors and warnings present themselves to users -----------------------------------

# Shown as ``mimo_rx.PipeError`` in tracebacks and reprs (and pickled under the name users
# import), not under the private module that defines them.
for _error in (
    MimoError,
    EndOfStream,
    ClosedError,
    MissingAwaitError,
    WouldBlock,
    ConfigError,
    PipeError,
    WorkflowError,
    StreamError,
    BufferOverflowError,
    SourceOverflowError,
    DeadlockError,
    WorkflowCancelled,
):
    _error.__module__ = "mimo_rx"

# Frames of these files stand between a user's call and mimo_rx's code (an event loop running
# start(), an async context manager): a warning skips them, as it skips mimo_rx's own.
_PLUMBING = (
    str(Path(__file__).resolve().parent) + os.sep,  # mimo_rx
    str(Path(asyncio.__file__).resolve().parent) + os.sep,
    str(Path(contextlib.__file__).resolve()),
)


def warn_user(message: str, category: type[Warning] = RuntimeWarning) -> None:
    """``warnings.warn`` pointing at the user's line: the first frame up the stack outside
    mimo_rx, asyncio and contextlib (``workflow.run()``, ``await workflow.start()``...)."""
    frame = sys._getframe(1)  # the caller: stacklevel 2
    level = 2
    while frame.f_back is not None:
        if not str(Path(frame.f_code.co_filename).resolve()).startswith(_PLUMBING):
            break
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
