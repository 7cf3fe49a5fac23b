"""Operator stages at plain-Python speed: known Rx operators compiled into one loop.

An ``operator()`` stage (and the stages fused behind it) normally feeds each item through a
reactivex chain: for ``ops.map(f)`` that is four or five Python calls per item and stage
besides ``f`` itself. When every operator of the chain is one whose behaviour is known
(:func:`recognise`), the chain is compiled instead into one plain-Python loop over a
buffer-full of items that calls the user's functions in exactly the order reactivex would
(item by item, stage by stage) and catches exactly what reactivex's operators catch.

Known operators, each recognised by the function reactivex's ``curry_flip`` wraps (the
closure of the object ``ops.map(f)`` returns), never by name:

* ``ops.map(f)``, ``ops.filter(p)``, ``ops.map_indexed(f)``, ``ops.filter_indexed(p)``;
* ``reactivex.compose(...)`` / ``ops.pipe``-style compositions of known operators, which is
  what ``ops.starmap(f)`` and ``ops.starmap_indexed(f)`` return (``compose(map(starred))``).

Anything else anywhere in the chain (and any change in how reactivex builds these objects)
makes :func:`compile_chain` return ``None``, and the stage runs the Rx chain as before.
``tests/test_fastops.py`` fails loudly when a reactivex release stops being recognised, and
compares the compiled loop with reactivex itself on random chains.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import reactivex
from reactivex import operators as ops

MAP = "map"
FILTER = "filter"
MAP_INDEXED = "map_indexed"
FILTER_INDEXED = "filter_indexed"


@dataclass(frozen=True)
class Prim:
    """One known operator: its kind and the user's function (never ``None``)."""

    kind: str
    fn: Callable[..., Any]


class Counter(Protocol):
    """What a link between fused stages counts on: the output it stands for."""

    pushed: int


Failed = tuple[int, Exception, Any]
"""What a process returns when a user function raised: (stage index, error, the value that
was passed into that stage)."""

Process = Callable[[Iterator[Any], Callable[[Any], None]], "Failed | None"]
"""``process(items, append)``: feeds the items of the iterator through the chain, appending
each result; stops at the first failure and returns it (the iterator then holds the items
not fed). What a failure leaves unfed is the caller's to give back or drop."""


def _identity(value: Any) -> Any:
    return value


def _identity_indexed(value: Any, _index: int) -> Any:
    return value


def _closure(fn: object) -> dict[str, Any] | None:
    """The closure variables of a plain function, by name; ``None`` if it has none."""
    code = getattr(fn, "__code__", None)
    cells = getattr(fn, "__closure__", None)
    if code is None or cells is None or len(code.co_freevars) != len(cells):
        return None
    try:
        return {
            name: cell.cell_contents for name, cell in zip(code.co_freevars, cells, strict=True)
        }
    except ValueError:  # an empty cell
        return None


def _probe(value: Any) -> Any:
    return value


def _curried_parts(op: object) -> tuple[Any, tuple[Any, ...], dict[str, Any]] | None:
    """``(fun, args, kwargs)`` of an operator made by reactivex's ``curry_flip``."""
    if getattr(op, "__code__", None) is not _CURRY_CODE:
        return None
    cells = _closure(op)
    if cells is None or set(cells) != {"fun", "args", "kwargs"}:
        return None
    args, kwargs = cells["args"], cells["kwargs"]
    if not isinstance(args, tuple) or not isinstance(kwargs, dict):
        return None
    return cells["fun"], args, kwargs


@functools.lru_cache(maxsize=64)
def _signature(fun: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(fun)


def _argument(fun: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The one argument after ``source`` that ``fun(source, *args, **kwargs)`` receives."""
    signature = _signature(fun)
    bound = signature.bind(None, *args, **kwargs)  # TypeError when it does not fit
    bound.apply_defaults()
    values = list(bound.arguments.values())
    if len(values) != 2:
        raise TypeError("not a one-argument operator")
    return values[1]


def _known_kinds() -> tuple[Any, dict[Any, str], Any]:
    """Probe reactivex once: the code of its curried operators, the implementation behind
    each known one, and the code of ``compose``'s function. Nothing is known when the probes
    do not look as expected: every chain then takes the Rx path."""
    curry_code = getattr(ops.map(_probe), "__code__", None)
    kinds: dict[Any, str] = {}
    probes: list[tuple[Callable[..., Any], str]] = [
        (ops.map, MAP),
        (ops.filter, FILTER),
        (ops.map_indexed, MAP_INDEXED),
        (ops.filter_indexed, FILTER_INDEXED),
    ]
    for make, kind in probes:
        op = make(_probe)
        cells = _closure(op)
        if getattr(op, "__code__", None) is not curry_code or cells is None:
            return None, {}, None
        if cells.get("args") != (_probe,) or "fun" not in cells:
            return None, {}, None
        kinds[cells["fun"]] = kind
    compose_code = getattr(reactivex.compose(ops.map(_probe)), "__code__", None)
    return curry_code, kinds, compose_code


_CURRY_CODE, _KINDS, _COMPOSE_CODE = _known_kinds()


def recognise(op: object) -> list[Prim] | None:
    """The known operators ``op`` consists of, in order, or ``None`` if any is unknown."""
    if _COMPOSE_CODE is not None and getattr(op, "__code__", None) is _COMPOSE_CODE:
        cells = _closure(op)
        operators = cells.get("operators") if cells is not None else None
        if cells is None or set(cells) != {"operators"} or not isinstance(operators, tuple):
            return None
        prims: list[Prim] = []
        for inner in operators:
            part = recognise(inner)
            if part is None:
                return None
            prims.extend(part)
        return prims
    parts = _curried_parts(op)
    if parts is None:
        return None
    fun, args, kwargs = parts
    kind = _KINDS.get(fun)
    if kind is None:
        return None
    try:
        fn = _argument(fun, args, kwargs)
    except TypeError:
        return None
    # As reactivex's implementations do: ``mapper or identity``, ``if predicate_indexed``.
    if kind == MAP:
        return [Prim(MAP, fn or _identity)]
    if kind == MAP_INDEXED:
        return [Prim(MAP_INDEXED, fn or _identity_indexed)]
    if kind == FILTER_INDEXED and not fn:
        return []  # lets everything through, counting nothing
    return [Prim(kind, fn)]


class FastChain:
    """A chain of stages compiled into one loop; ``start()`` makes a fresh process for each
    (re)subscription, with fresh operator state (the index of ``map_indexed``), as a new Rx
    subscription of the chain would have."""

    def __init__(self, stages: Sequence[Sequence[Prim]], links: Sequence[Counter]) -> None:
        assert len(links) == len(stages) - 1
        source, args = _source(stages, len(links))
        self.source = source
        self.start: Callable[[], Process] = _factory(source)(*args, *links)


@functools.lru_cache(maxsize=256)
def _factory(source: str) -> Callable[..., Callable[[], Process]]:
    """The ``factory`` function of a generated source (chains of one shape share it)."""
    namespace: dict[str, Any] = {}
    exec(compile(source, "<mimo_rx fused operators>", "exec"), namespace)
    factory: Callable[..., Callable[[], Process]] = namespace["factory"]
    return factory


def compile_chain(ops_: Sequence[object], links: Sequence[Counter]) -> FastChain | None:
    """Compile the operators of consecutive fused stages (one operator per stage; ``links[k]``
    counts what passes into stage ``k + 1``), or ``None`` if any operator is unknown."""
    stages: list[list[Prim]] = []
    for op in ops_:
        prims = recognise(op)
        if prims is None:
            return None
        stages.append(prims)
    return FastChain(stages, links)


def _source(stages: Sequence[Sequence[Prim]], n_links: int) -> tuple[str, list[Any]]:
    """The Python source of ``factory(f0, f1, ..., o1, o2, ...)`` and its function arguments.

    Each value gets a variable of its own (``x0`` is the item), so the value passed into a
    stage is still at hand when a later operator of that stage fails.
    """
    fns: list[Any] = []
    indexed: list[str] = []
    body: list[str] = []
    cur = "x0"
    for si, prims in enumerate(stages):
        stage_input = cur
        if si:
            body.append(f"c{si} += 1")
        for prim in prims:
            j = len(fns)
            fns.append(prim.fn)
            fail = f"return ({si}, e, {stage_input})"
            if prim.kind == MAP:
                body += [f"try: x{j + 1} = f{j}({cur})", f"except Exception as e: {fail}"]
                cur = f"x{j + 1}"
            elif prim.kind == MAP_INDEXED:
                indexed.append(f"n{j}")
                body += [
                    f"i = n{j}",  # zip_with_iterable(infinite()) takes the index first
                    f"n{j} = i + 1",
                    f"try: x{j + 1} = f{j}({cur}, i)",
                    f"except Exception as e: {fail}",
                ]
                cur = f"x{j + 1}"
            elif prim.kind == FILTER:
                body += [
                    f"try: r = f{j}({cur})",
                    f"except Exception as e: {fail}",
                    "if not r: continue",
                ]
            elif prim.kind == FILTER_INDEXED:
                indexed.append(f"n{j}")
                body += [
                    f"try: r = f{j}({cur}, n{j})",
                    f"except Exception as e: {fail}",
                    f"n{j} += 1",  # counted once the predicate returned
                    "if not r: continue",
                ]
            else:  # pragma: no cover - recognise() makes no other kind
                raise AssertionError(prim.kind)
    body.append(f"append({cur})")
    counters = [f"c{k}" for k in range(1, n_links + 1)]
    params = [f"f{j}" for j in range(len(fns))] + [f"o{k}" for k in range(1, n_links + 1)]
    lines = [f"def factory({', '.join(params)}):", "    def start():"]
    lines += [f"        {n} = 0" for n in indexed]
    lines.append("        def process(it, append):")
    if indexed:
        lines.append(f"            nonlocal {', '.join(indexed)}")
    lines += [f"            {c} = 0" for c in counters]
    lines += ["            try:", "                for x0 in it:"]
    lines += [f"                    {line}" for line in body]
    lines.append("            finally:")
    counts = [f"                o{c[1:]}.pushed += {c}" for c in counters]
    lines += counts or ["                pass"]
    lines += ["            return None", "        return process", "    return start"]
    return "\n".join(lines) + "\n", fns
