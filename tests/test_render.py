"""The graph as text: to_mermaid() and to_dot(), before, during and after a run."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from reactivex.subject import Subject

from mimo_rx import Stream, Workflow


async def numbers(ins: Any, outs: Any, state: Any) -> None:
    for i in range(state.get("n", 20)):
        await outs.out.push(i)


async def double(ins: Any, outs: Any, state: Any) -> None:
    async for item in ins.x:
        await outs.y.push(item * 2)


async def drain(ins: Any, outs: Any, state: Any) -> None:
    async def one(port: Any) -> None:
        async for _ in port:
            pass

    await asyncio.gather(*(one(port) for port in ins))


def chain(buffer_size: int = 8) -> Workflow:
    """numbers -> double -> sink, one input each."""
    wf = Workflow(buffer_size=buffer_size)
    source = wf.add_stream(Stream(outs=["out"], fn=numbers))
    middle = wf.add_stream(Stream(["x"], ["y"], fn=double))
    source.pipe(middle).pipe(wf.add_stream(Stream(["a"], fn=drain, name="sink")))
    return wf


def diamond() -> Workflow:
    """numbers fans out to two doubles, which merge into one input of sink."""
    wf = Workflow(buffer_size=8)
    source = wf.add_stream(Stream(outs=["out"], fn=numbers))
    left = wf.add_stream(Stream(["x"], ["y"], fn=double))
    right = wf.add_stream(Stream(["x"], ["y"], fn=double))
    sink = wf.add_stream(Stream(["a"], fn=drain, name="sink"))
    source.pipe(left)
    source.pipe(right, buffer_size=4)
    left.pipe(sink)
    right.pipe(sink)
    return wf


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until ``condition()`` holds (no timing involved)."""
    for _ in range(100_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def check_dot(text: str) -> None:
    """Have Graphviz parse ``text`` when it is installed (it is optional for the tests)."""
    dot = shutil.which("dot")
    if dot is None:
        return
    result = subprocess.run(
        [dot, "-Tsvg"], input=text, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0 and not result.stderr, result.stderr


def test_mermaid_before_running_shows_steps_ports_and_port_labelled_edges() -> None:
    assert chain().to_mermaid() == (
        "flowchart LR\n"
        '    s0["numbers<br/>out: out"]\n'
        '    s1["double<br/>in: x · out: y"]\n'
        '    s2["sink<br/>in: a"]\n'
        '    s0 -->|"out -> x"| s1\n'
        '    s1 -->|"y -> a"| s2\n'
    )


def test_dot_before_running_joins_output_cells_to_input_cells() -> None:
    text = chain().to_dot()
    assert text.startswith("digraph workflow {\n    rankdir=LR;\n")
    assert '<td port="o_out">out</td>' in text
    assert '<td port="i_x">x</td>' in text
    assert '    s0:"o_out":e -> s1:"i_x":w [label="out -> x"];' in text
    assert '    s1:"o_y":e -> s2:"i_a":w [label="y -> a"];' in text
    assert "<b>double</b>" in text
    assert text.endswith("}\n")
    check_dot(text)


def test_every_pipe_of_a_fan_out_and_a_merge_is_an_edge() -> None:
    wf = diamond()
    mermaid = wf.to_mermaid()
    assert '    s0 -->|"out -> x"| s1\n' in mermaid
    assert '    s0 -->|"out -> x (buffer 4)"| s2\n' in mermaid
    assert '    s1 -->|"y -> a"| s3\n' in mermaid
    assert '    s2 -->|"y -> a"| s3\n' in mermaid
    assert '    s2["double-2<br/>in: x · out: y"]\n' in mermaid
    dot = wf.to_dot()
    assert dot.count(' -> s3:"i_a":w') == 2
    assert 'label="out -> x (buffer 4)"' in dot
    check_dot(dot)


def test_after_a_run_edges_carry_passed_and_buffer_and_nodes_their_status() -> None:
    wf = diamond()
    wf.run()
    mermaid = wf.to_mermaid()
    assert '    s0 -->|"out -> x<br/>20 passed, 0/8 buffered"| s1\n' in mermaid
    assert '    s0 -->|"out -> x (buffer 4)<br/>20 passed, 0/4 buffered"| s2\n' in mermaid
    assert '    s3["sink<br/>in: a<br/>done"]\n' in mermaid
    assert "    class s0,s1,s2,s3 st_done\n" in mermaid
    assert "linkStyle" not in mermaid  # no buffer is full
    dot = wf.to_dot()
    assert 'label="y -> a\\n20 passed, 0/8 buffered"' in dot
    assert '<font point-size="9">done</font>' in dot
    check_dot(dot)


def test_items_discarded_by_a_finished_consumer_are_shown_on_its_edge() -> None:
    async def first_only(ins: Any, outs: Any, state: Any) -> None:
        await ins.a.pop()

    wf = Workflow(buffer_size=4)
    source = wf.add_stream(Stream(outs=["out"], fn=numbers))
    source.pipe(wf.add_stream(Stream(["a"], fn=first_only)))
    wf.run()
    stats = wf.stats()["streams"]["first_only"]["inputs"]["a"]
    label = f"20 passed, 0/4 buffered, {stats['discarded']} discarded"
    assert stats["discarded"] > 0
    assert label in wf.to_mermaid()
    assert label in wf.to_dot()


def test_while_running_an_edge_into_a_full_input_is_drawn_red() -> None:
    async def main() -> tuple[str, str]:
        release = asyncio.Event()

        async def held(ins: Any, outs: Any, state: Any) -> None:
            await release.wait()
            async for _ in ins.a:
                pass

        wf = Workflow(buffer_size=4)
        wf.add_stream(Stream(outs=["out"], fn=numbers)).pipe(wf.add_stream(Stream(["a"], fn=held)))
        run = asyncio.create_task(wf.start())
        await until(lambda: wf.stats()["streams"]["held"]["inputs"]["a"]["buffered"] == 4)
        texts = wf.to_mermaid(), wf.to_dot()
        release.set()
        await run
        return texts

    mermaid, dot = asyncio.run(main())
    assert '    s0 -->|"out -> a<br/>4 passed, 4/4 buffered"| s1\n' in mermaid
    assert "    linkStyle 0 stroke:#dc2626,stroke-width:2px\n" in mermaid
    assert "    class s0,s1 st_running\n" in mermaid
    assert 'label="out -> a\\n4 passed, 4/4 buffered", color="#dc2626"' in dot
    check_dot(dot)


def test_items_dropped_by_a_hot_source_policy_are_shown_on_its_edge() -> None:
    async def main() -> tuple[str, str]:
        release = asyncio.Event()

        async def held(ins: Any, outs: Any, state: Any) -> None:
            await release.wait()
            async for _ in ins.a:
                pass

        wf = Workflow(buffer_size=2)
        subject: Subject[int] = Subject()
        wf.add_source(subject, name="sensor", policy="drop_newest").pipe(
            wf.add_stream(Stream(["a"], fn=held))
        )
        run = asyncio.create_task(wf.start())
        await until(lambda: wf.steps[0].status == "running")
        for i in range(10):
            subject.on_next(i)
        await until(lambda: wf.stats()["streams"]["sensor"]["outputs"]["out"]["pushed"] == 10)
        texts = wf.to_mermaid(), wf.to_dot()
        release.set()
        subject.on_completed()
        await run
        return texts

    mermaid, dot = asyncio.run(main())
    assert '    s0 -->|"out -> a<br/>10 passed, 2/2 buffered, 8 dropped"| s1\n' in mermaid
    assert 'label="out -> a\\n10 passed, 2/2 buffered, 8 dropped"' in dot


def test_large_counts_and_paused_time_are_labelled(monkeypatch: pytest.MonkeyPatch) -> None:
    wf = chain()
    wf.run()
    snapshot = wf.stats()
    port = snapshot["streams"]["double"]["inputs"]["x"]
    port.update(dropped=1234, paused_s=1.5)
    monkeypatch.setattr(wf, "stats", lambda: snapshot)
    assert '"out -> x<br/>20 passed, 0/8 buffered, 1,234 dropped, paused 1.50 s"' in (
        wf.to_mermaid()
    )
    assert 'label="out -> x\\n20 passed, 0/8 buffered, 1,234 dropped, paused 1.50 s"' in (
        wf.to_dot()
    )


WEIRD = 'we"ird <b>#1</b> & `x` |y| [z]\nnext'


def test_mermaid_escapes_names_so_they_cannot_break_the_syntax() -> None:
    wf = Workflow()
    wf.add_stream(Stream(outs=["out"], name=WEIRD)).pipe(wf.add_stream(Stream(["x"])))
    text = wf.to_mermaid()
    node = text.splitlines()[1]
    assert node == (
        '    s0["we#quot;ird #lt;b#gt;#35;1#lt;/b#gt; #amp; #96;x#96; |y| [z] next<br/>out: out"]'
    )
    # Inside each label only entity-escaped text: no quote other than the delimiters.
    for line in text.splitlines()[1:]:
        label = re.search(r'"(.*)"', line)
        assert label is not None and '"' not in label.group(1)


def test_dot_escapes_names_in_html_labels() -> None:
    wf = Workflow()
    wf.add_stream(Stream(outs=["out"], name=WEIRD)).pipe(wf.add_stream(Stream(["x"])))
    text = wf.to_dot()
    assert "<b>we&quot;ird &lt;b&gt;#1&lt;/b&gt; &amp; `x` |y| [z] next</b>" in text
    check_dot(text)


def test_an_empty_workflow_renders_as_an_empty_graph() -> None:
    wf = Workflow()
    assert wf.to_mermaid() == "flowchart LR\n"
    assert wf.to_dot().startswith("digraph workflow {")
    check_dot(wf.to_dot())


def test_a_piped_errors_output_is_drawn_as_a_port_of_its_stream() -> None:
    from mimo_rx import map_stream

    workflow = Workflow()
    parse = workflow.add_stream(map_stream(int, on_error="resume", name="parse"))
    dead = workflow.add_stream(Stream(["x"], name="dead"))
    workflow.add_stream(Stream(outs=["out"], name="src")).pipe(parse)
    parse.pipe(dead, output="errors")
    dot = workflow.to_dot()
    mermaid = workflow.to_mermaid()
    assert 'port="o_errors"' in dot  # the edge's tail port exists in the node
    assert "out: y, errors" in mermaid
