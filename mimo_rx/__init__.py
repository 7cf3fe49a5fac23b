"""mimo_rx: multi-input, multi-output streaming graphs with real back-pressure, on reactivex.

Streams have named input and output ports; a Workflow pipes them into a graph and runs it
from beginning to end. Every input is a bounded buffer: ``await push`` pauses producers when
a buffer is full, so memory stays bounded. Every output is a ``reactivex`` Subject.
"""

from ._acksource import AckSource
from ._concurrency import map_stream
from ._errors import (
    BufferOverflowError,
    ClosedError,
    ConfigError,
    DeadlockError,
    EndOfStream,
    MimoError,
    MissingAwaitError,
    PipeError,
    SourceOverflowError,
    StreamError,
    WorkflowCancelled,
    WorkflowError,
    WouldBlock,
)
from ._ports import Input, Output
from ._rx import operator, rx_stream
from ._service import Inlet, Outlet
from ._step import Step
from ._stream import Stream
from ._supervision import Failure
from ._workflow import Workflow

__all__ = [
    "AckSource",
    "BufferOverflowError",
    "ClosedError",
    "ConfigError",
    "DeadlockError",
    "EndOfStream",
    "Failure",
    "Inlet",
    "Input",
    "MimoError",
    "MissingAwaitError",
    "Outlet",
    "Output",
    "PipeError",
    "SourceOverflowError",
    "Step",
    "Stream",
    "StreamError",
    "Workflow",
    "WorkflowCancelled",
    "WorkflowError",
    "WouldBlock",
    "map_stream",
    "operator",
    "rx_stream",
]

__version__ = "0.1.0"
