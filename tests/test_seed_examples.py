"""The original mimo README examples (shared/seeds/) run after changing only the import line.

Only the seeds' typos are fixed: ``pueh`` -> ``push``, the unclosed quote in ``['entity]``,
and ``my_stream_fn`` used before its definition.
"""

from __future__ import annotations

from harness import Collector, run_checked

from mimo_rx import Stream, Workflow

# -- mimo 1.0: plain def, push returns whether the output can take more ------------------------


class MyStream(Stream):
    IN = []
    OUT = ["entity"]

    def __init__(self):
        super().__init__()
        self.iterator = None

    def run(self, ins, outs):
        if self.iterator is None:
            self.iterator = iter(range(100))
        for item in self.iterator:
            if not outs.entity.push(item):
                return True


def my_stream_fn(ins, outs, state):
    if "iterator" not in state:
        state["iterator"] = iter(range(100))
    for item in state["iterator"]:
        if not outs.entity.push(item):
            return True


my_stream = Stream(outs=["entity"], fn=my_stream_fn)


# -- mimo 1.2: async def -------------------------------------------------------------------


class MyAsyncStream(Stream):
    IN = []
    OUT = ["entity"]

    async def run(self, ins, outs):
        for item in iter(range(100)):
            await outs.entity.push(item)


async def my_async_stream_fn(ins, outs, state):
    for item in iter(range(100)):
        await outs.entity.push(item)


def _collect(stream: Stream, buffer_size: int) -> list[int]:
    workflow = Workflow(buffer_size=buffer_size)
    sink = Collector()
    workflow.add_stream(stream).pipe(workflow.add_stream(sink))
    run_checked(workflow)
    return sink.items


def test_seed_mimo_1_inheritance_example_produces_0_to_99():
    assert _collect(MyStream(), buffer_size=7) == list(range(100))


def test_seed_mimo_1_constructor_example_produces_0_to_99():
    assert _collect(my_stream, buffer_size=7) == list(range(100))


def test_seed_mimo_1_examples_work_with_the_default_buffer_size():
    assert _collect(MyStream(), buffer_size=1024) == list(range(100))
    assert _collect(Stream(outs=["entity"], fn=my_stream_fn), buffer_size=1024) == list(range(100))


def test_seed_async_inheritance_example_produces_0_to_99():
    assert _collect(MyAsyncStream(), buffer_size=7) == list(range(100))


def test_seed_async_constructor_example_produces_0_to_99():
    stream = Stream(outs=["entity"], fn=my_async_stream_fn)
    assert _collect(stream, buffer_size=7) == list(range(100))


# -- the workflow example, as written (blocking run, print) ------------------------------------


def main():
    workflow = Workflow()
    step1 = workflow.add_stream(Stream(outs=["a"]))
    step2 = workflow.add_stream(Stream(["b"], ["c"]))
    step3 = workflow.add_stream(Stream(["d"]))

    step1.pipe(step2).pipe(step3)

    print(str(workflow))
    workflow.run()


def test_seed_workflow_example_runs_to_the_end(capsys):
    assert main() is None
    printed = capsys.readouterr().out
    assert printed.strip()
    assert "Stream" in printed


def test_seed_workflow_example_leaves_nothing_behind():
    workflow = Workflow()
    step1 = workflow.add_stream(Stream(outs=["a"]))
    step2 = workflow.add_stream(Stream(["b"], ["c"]))
    step3 = workflow.add_stream(Stream(["d"]))
    assert step1.pipe(step2).pipe(step3) is step3
    assert [s.name for s in workflow.steps] == ["Stream", "Stream-2", "Stream-3"]
    run_checked(workflow)


def test_seed_streams_feed_the_workflow_example_shape():
    """The seed's producer piped through a forwarding stream into a sink."""
    workflow = Workflow(buffer_size=5)
    sink = Collector()
    a = workflow.add_stream(MyStream())
    b = workflow.add_stream(Stream(["b"], ["c"]))
    a.pipe(b).pipe(workflow.add_stream(sink))
    run_checked(workflow)
    assert sink.items == list(range(100))
