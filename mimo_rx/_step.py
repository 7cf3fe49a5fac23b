"""A stream placed in a workflow (:class:`Step`) and a connection between two (:class:`Pipe`).

Kept apart from :mod:`._workflow` so that the modules defining kinds of step (inlets and
outlets in :mod:`._service`) can build on ``Step`` while the workflow imports them: imports
flow one way (``_workflow`` -> ``_service`` -> ``_step``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._stream import Stream
    from ._workflow import Workflow


@dataclass(frozen=True)
class Pipe:
    """One connection: an output of one step to an input of another (or the same) step."""

    source: Step
    output: str
    target: Step
    input: str
    buffer_size: int | None
    policy: str = "block"  # what a full input does to this pipe's pushes (see Step.pipe)


class Step:
    """A stream placed in a workflow. Made by ``Workflow.add_stream``; pipe steps together.

    Attributes:
        workflow: the workflow the step belongs to.
        stream: the ``Stream`` it runs.
        name: its name, unique in the workflow (the stream's name, ``-2``, ``-3`` for repeats).
        status: ``"pending"``, ``"running"``, ``"done"``, ``"failed"`` or ``"cancelled"``.
        error: the exception the stream raised, once it has failed.
    """

    def __init__(self, workflow: Workflow, stream: Stream, name: str) -> None:
        self.workflow = workflow
        self.stream = stream
        self.name = name
        self._status = "pending"
        self.error: BaseException | None = None

    @property
    def status(self) -> str:
        """``pending``, ``running``, ``done``, ``failed`` or ``cancelled``."""
        return self._status

    @status.setter
    def status(self, value: str) -> None:
        if value != self._status:
            self._status = value
            emit = self.workflow._watch.emit  # None unless workflow.events has a subscriber
            if emit is not None:
                emit({"event": "status", "stream": self.name, "status": value})

    def pipe(
        self,
        other: Step,
        output: str | None = None,
        input: str | None = None,
        buffer_size: int | None = None,
        policy: str = "block",
    ) -> Step:
        """Connect an output of this step to an input of ``other``; return ``other``.

        Ports are chosen by the first rule that applies (a named side is kept, the other side
        is resolved by the same rules): explicit names; outputs whose name equals an input of
        ``other``; the only output to the only unconnected input; the only output to the only
        input (a merge). The ``errors`` output of a resuming stream is only ever piped by
        name (``output="errors"``).

        ``policy`` is what a full input does to this pipe alone: ``"block"`` (the default)
        pauses the pushing stream (back-pressure); ``"buffer"``, ``"drop_newest"``,
        ``"drop_oldest"``, ``"latest"`` and ``"error"`` never pause it and decide as for a
        hot source (drops are counted in the input's ``dropped``), so a slow branch of a
        broadcast cannot stall the others.

        Raises:
            PipeError: the ports are unknown or ambiguous, ``other`` belongs to another
                workflow, or the same output is already piped to the same input.
            ConfigError: ``policy`` is unknown.
        """
        return self.workflow._pipe(self, other, output, input, buffer_size, policy)

    def __repr__(self) -> str:
        return f"<Step {self.name!r} {self.status}>"
