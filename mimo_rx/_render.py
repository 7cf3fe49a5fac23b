"""The workflow graph as text: Mermaid (``to_mermaid``) and Graphviz DOT (``to_dot``).

Both show one node per step (its name and its ports) and one edge per pipe, labelled with
the ports it connects (``out -> x``). Once the workflow has started, nodes also show their
status and edges carry live state read from :meth:`Workflow.stats`::

    numbers --"out -> x / 1,200 passed, 8/8 buffered, 3 dropped"--> double

``passed`` counts the items pushed along the pipe (its output's ``pushed``: under fan-out
every pipe of an output carries every item). The buffer, drop, discard and pause figures
belong to the target *input*, so pipes that merge into one input show the same buffer. An
edge into a full input is drawn red: that is where items pile up and producers are paused.

Only the public graph (``workflow.steps``, ``workflow.pipes``) and ``workflow.stats()`` are
read, so rendering is safe while the workflow runs. Names are escaped for each format: any
step name, however odd (quotes, ``<``, ``#``, newlines), yields valid Mermaid and DOT.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._step import Pipe, Step
    from ._workflow import Workflow

# Node fill and border per status (the same palette in both formats).
_STATUS_COLOURS = {
    "pending": ("#f3f4f6", "#9ca3af"),
    "running": ("#dbeafe", "#2563eb"),
    "done": ("#dcfce7", "#16a34a"),
    "failed": ("#fee2e2", "#dc2626"),
    "cancelled": ("#fef3c7", "#d97706"),
}
_FULL_EDGE = "#dc2626"


# -- what is drawn, independent of the format ----------------------------------------------


def _started(workflow: Workflow) -> bool:
    return any(step.status != "pending" for step in workflow.steps)


def _node_ids(steps: Iterable[Step]) -> dict[str, str]:
    # Generated ids keep user-chosen names out of the syntax: names only appear in labels.
    return {step.name: f"s{i}" for i, step in enumerate(steps)}


def _outputs_drawn(step: Step) -> list[str]:
    """The step's outputs, and its hidden ``errors`` output too once a pipe uses it."""
    outs = list(step.stream.outs)
    if any(p.source is step and p.output not in outs for p in step.workflow.pipes):
        outs.append("errors")
    return outs


def _ports_line(step: Step) -> str:
    parts = []
    if step.stream.ins:
        parts.append("in: " + ", ".join(step.stream.ins))
    outs = _outputs_drawn(step)
    if outs:
        parts.append("out: " + ", ".join(outs))
    return " · ".join(parts)


def _live_state(pipe: Pipe, streams: dict[str, Any]) -> tuple[str, bool]:
    """The live label of ``pipe`` and whether its target input is full."""
    pushed = streams[pipe.source.name]["outputs"][pipe.output]["pushed"]
    port = streams[pipe.target.name]["inputs"][pipe.input]
    buffered = port["buffered"]
    threshold = port.get("threshold")
    parts = [f"{pushed:,} passed"]
    if threshold is None:
        parts.append(f"{buffered:,} buffered")
    else:
        parts.append(f"{buffered:,}/{threshold:,} buffered")
    if port["dropped"]:
        parts.append(f"{port['dropped']:,} dropped")
    if port["discarded"]:
        parts.append(f"{port['discarded']:,} discarded")
    if port["paused_s"] >= 0.005:
        parts.append(f"paused {port['paused_s']:.2f} s")
    full = threshold is not None and buffered >= threshold
    return ", ".join(parts), full


def _edge_label(pipe: Pipe) -> str:
    label = f"{pipe.output} -> {pipe.input}"
    if pipe.buffer_size is not None:
        label += f" (buffer {pipe.buffer_size:,})"
    return label


# -- Mermaid -------------------------------------------------------------------------------

# Mermaid reads "#name;" / "#123;" as an entity, so '#' itself must be escaped first (it is
# handled char by char below, so the escapes are never escaped again).
_MERMAID_ESCAPES = {
    "#": "#35;",
    '"': "#quot;",
    "&": "#amp;",
    "<": "#lt;",
    ">": "#gt;",
    "`": "#96;",
}


def _mermaid_text(text: str) -> str:
    """``text`` safe inside a quoted Mermaid label (entities for specials, no line breaks)."""
    out = []
    for ch in text:
        if ch in _MERMAID_ESCAPES:
            out.append(_MERMAID_ESCAPES[ch])
        elif ch < " " or ch == "\x7f":
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


def to_mermaid(workflow: Workflow) -> str:
    """Return the graph as a Mermaid flowchart (``flowchart LR``).

    Before the workflow starts: steps with their ports, and pipes labelled ``output ->
    input``. Once it has started, nodes also show their status (coloured by class) and edges
    the live counters, e.g. ``42 passed, 3/8 buffered, 1 dropped``; edges into a full input
    are drawn red.
    """
    ids = _node_ids(workflow.steps)
    started = _started(workflow)
    streams: dict[str, Any] = workflow.stats()["streams"] if started else {}
    lines = ["flowchart LR"]
    for step in workflow.steps:
        label = [_mermaid_text(step.name)]
        ports = _ports_line(step)
        if ports:
            label.append(_mermaid_text(ports))
        if started:
            label.append(step.status)
        lines.append(f'    {ids[step.name]}["{"<br/>".join(label)}"]')
    full_edges = []
    for index, pipe in enumerate(workflow.pipes):
        # Port names are identifiers and the rest is digits: nothing in it needs escaping.
        label = [_edge_label(pipe)]
        if started:
            state, full = _live_state(pipe, streams)
            label.append(state)
            if full:
                full_edges.append(index)
        source, target = ids[pipe.source.name], ids[pipe.target.name]
        lines.append(f'    {source} -->|"{"<br/>".join(label)}"| {target}')
    if started:
        for status, (fill, stroke) in _STATUS_COLOURS.items():
            members = [ids[s.name] for s in workflow.steps if s.status == status]
            if members:
                lines.append(f"    classDef st_{status} fill:{fill},stroke:{stroke}")
                lines.append(f"    class {','.join(members)} st_{status}")
        for index in full_edges:
            lines.append(f"    linkStyle {index} stroke:{_FULL_EDGE},stroke-width:2px")
    return "\n".join(lines) + "\n"


# -- Graphviz DOT --------------------------------------------------------------------------


def _dot_string(text: str) -> str:
    """``text`` as a quoted DOT string (a newline becomes a centred line break)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\n")
    return f'"{escaped}"'


def _html(text: str) -> str:
    """``text`` safe inside a DOT HTML-like label."""
    return "".join(" " if ch < " " or ch == "\x7f" else ch for ch in html.escape(text))


def _dot_ports(names: list[str], prefix: str) -> str:
    rows = "".join(f'<tr><td port="{prefix}_{_html(n)}">{_html(n)}</td></tr>' for n in names)
    return f'<td><table border="0" cellborder="1" cellspacing="0">{rows}</table></td>'


def _dot_node(step: Step, node_id: str, started: bool) -> str:
    fill, stroke = _STATUS_COLOURS[step.status] if started else ("#ffffff", "#374151")
    title = f"<b>{_html(step.name)}</b>"
    if started:
        title += f'<br/><font point-size="9">{_html(step.status)}</font>'
    cells = []
    if step.stream.ins:
        cells.append(_dot_ports(step.stream.ins, "i"))
    cells.append(f'<td bgcolor="{fill}">{title}</td>')
    outs = _outputs_drawn(step)
    if outs:
        cells.append(_dot_ports(outs, "o"))
    table = (
        f'<table border="1" cellborder="0" cellspacing="0" cellpadding="4" color="{stroke}">'
        f"<tr>{''.join(cells)}</tr></table>"
    )
    return f"    {node_id} [label=<{table}>];"


def to_dot(workflow: Workflow) -> str:
    """Return the graph in Graphviz DOT (``digraph``, left to right).

    Each step is a table: its inputs on the left, its name (and status once started) in the
    middle, its outputs on the right; each pipe runs from the output's cell to the input's
    cell, labelled ``output -> input`` and, once started, with its live counters. Edges into
    a full input are red and bold. Render with ``dot -Tsvg``.
    """
    ids = _node_ids(workflow.steps)
    started = _started(workflow)
    streams: dict[str, Any] = workflow.stats()["streams"] if started else {}
    lines = [
        "digraph workflow {",
        "    rankdir=LR;",
        '    node [shape=plaintext, fontname="Helvetica"];',
        '    edge [fontname="Helvetica", fontsize=10];',
    ]
    lines.extend(_dot_node(step, ids[step.name], started) for step in workflow.steps)
    for pipe in workflow.pipes:
        label = _edge_label(pipe)
        attrs = ""
        if started:
            state, full = _live_state(pipe, streams)
            label += "\n" + state
            if full:
                attrs = f', color="{_FULL_EDGE}", fontcolor="{_FULL_EDGE}", penwidth=2'
        tail = f"{ids[pipe.source.name]}:{_dot_string('o_' + pipe.output)}:e"
        head = f"{ids[pipe.target.name]}:{_dot_string('i_' + pipe.input)}:w"
        lines.append(f"    {tail} -> {head} [label={_dot_string(label)}{attrs}];")
    lines.append("}")
    return "\n".join(lines) + "\n"
