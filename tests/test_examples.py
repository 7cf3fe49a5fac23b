"""Every example runs, and does what its docstring says."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_quickstart_sums_the_squares(capsys: pytest.CaptureFixture[str]) -> None:
    totals = load("quickstart").main()
    assert totals["total"] == sum(n * n for n in range(10))
    assert "Numbers.a -> square.b" in capsys.readouterr().out


def test_merge_join_matches_keys_present_on_both_sides() -> None:
    module = load("merge_join")
    matched, unmatched = module.main()
    assert matched == [(1, "ada", "book"), (4, "cy", "pen"), (7, "dee", "mug"), (9, "eve", "hat")]
    assert sorted(unmatched) == [
        ("left only", (2, "bob")),
        ("right only", (3, "lamp")),
        ("right only", (8, "cup")),
    ]


def test_sensor_alerts_delivers_every_reading_the_thread_sent() -> None:
    report = asyncio.run(load("sensor_alerts").main())
    assert report["delivered"] == report["emitted"]  # the inlet holds the thread back instead
    assert report["dropped"] == 0
    assert report["alerts_stored"] > 0


def test_web_service_self_test_gets_every_record_back_exactly_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("aiohttp")
    report = asyncio.run(load("web_service").self_test())
    assert report["returned_once"]
    assert report["errors"] == report["uploads"]  # each upload ends with one malformed line
    assert report["complete"]
    assert "back exactly once" in capsys.readouterr().out


def test_every_example_has_a_test() -> None:
    tested = {"quickstart", "merge_join", "sensor_alerts", "scale_out", "web_service"}
    assert {p.stem for p in EXAMPLES.glob("*.py")} <= tested


def test_scale_out_runs_the_heavy_stage_on_worker_processes_in_input_order() -> None:
    import subprocess

    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "scale_out.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "64/64" in result.stdout
    assert "in input order" in result.stdout
