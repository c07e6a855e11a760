"""Trace replay (edge/supervisor/telemetry/trace.py) on a clock moved by hand, and every way a trace is refused."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from edge.supervisor.telemetry.common import Sample, TelemetryError
from edge.supervisor.telemetry.trace import TRACE_MAX_BYTES, TRACE_MAX_LINE_BYTES, TraceReader
from tests.support.telemetry import HEATING, FakeClock, write_trace


def test_trace_replays_in_real_time_on_the_clock(tmp_path: Path, clock: FakeClock) -> None:
    reader = TraceReader(write_trace(tmp_path / "heat.jsonl", HEATING), clock=clock)    # opened at 1000
    assert reader.read() == Sample(t=0.0, source="trace", temps_c={"tj": 60.0}, power_mw={"VDD_IN": 15000.0},
                                   total_mw=15000.0, mode="MODE_30W")
    clock.now = 1009.75
    assert (reader.read().t, reader.read().temps_c) == (9.75, {"tj": 60.0})
    clock.now = 1010.0
    second = reader.read()
    assert (second.t, second.temps_c, second.total_mw, second.gpu_load) == (10.0, {"tj": 80.5}, 22000.0, 0.9)
    assert not reader.ended
    clock.now = 1020.5
    assert reader.read().temps_c == {"tj": 95.0, "gpu": 93.0} and reader.ended
    clock.now = 2000.0                                                   # long after the last line: it holds
    last = reader.read()
    assert (last.t, last.temps_c, last.total_mw, last.trips_c, last.gpu_load) == (
        1000.0, {"tj": 95.0, "gpu": 93.0}, 25000.0, {"tj": {"passive": 99.0}}, None)
    assert last.power_mw == {"VDD_CPU_GPU_CV": 9000.0, "VDD_SOC": 3000.0} and last.problems == ()


def test_trace_is_empty_before_its_first_line(tmp_path: Path, clock: FakeClock) -> None:
    reader = TraceReader(write_trace(tmp_path / "late.jsonl", [{"t": 5, "temps_c": {"tj": 50}}]), clock=clock)
    clock.now += 4.5
    assert reader.read() == Sample(t=4.5, source="trace") and not reader.ended
    clock.now += 0.5
    assert reader.read().temps_c == {"tj": 50.0} and reader.ended


@pytest.mark.parametrize(("line", "why"), [
    ("{not json", "not JSON: "),
    ("[1, 2]", "a JSON object is expected, got list"),
    ('{"temps_c": {"tj": 50}}', "`t` (seconds since start) is missing"),
    ('{"t": "soon"}', "`t` must be a number in 0..inf, got 'soon'"),
    ('{"t": true}', "`t` must be a number in 0..inf, got True"),
    ('{"t": -1}', "`t` must be a number in 0..inf, got -1"),
    ('{"t": 3}', "`t` goes back from 5 to 3"),
    ('{"t": 6, "temps_c": {"tj": NaN}}', "not JSON: NaN is not a number"),
    ('{"t": 6, "temps_c": {"tj": 1e999}}', "`temps_c.tj` must be a number in -60..150, got inf"),
    ('{"t": 6, "temps_c": {"tj": 900}}', "`temps_c.tj` must be a number in -60..150, got 900"),
    ('{"t": 6, "temps_c": [50]}', "`temps_c` must be an object of name -> number, got [50]"),
    ('{"t": 6, "power_mw": {"VDD_IN": -5}}', "`power_mw.VDD_IN` must be a number in 0..1e+07, got -5"),
    ('{"t": 6, "gpu_load": 45}', "`gpu_load` must be a number in 0..1, got 45"),
    ('{"t": 6, "mode": 30}', "`mode` must be a string, got 30"),
    ('{"t": 6, "temp_c": {"tj": 50}}', "unknown key(s) temp_c; known: "),
    # a nesting bomb in a line's bounds: RecursionError up to Python 3.11, parsed (and refused) by 3.12's json
    ('{"t": 6, "temps_c": ' + "[" * 8000 + "]" * 8000 + "}", "" if sys.version_info >= (3, 12) else "not JSON: "),
    (b"\xff\xfe{}", "not JSON: 'utf-8' codec can't decode"),
])
def test_trace_malformed_line_is_an_error_with_its_line_number(tmp_path: Path, line: str | bytes, why: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"t": 0}\n\n{"t": 5, "temps_c": {"tj": 50}}\n' + (line if isinstance(line, bytes) else
                                                                          line.encode()) + b'\n{"t": 9}\n')
    with pytest.raises(TelemetryError) as caught:
        TraceReader(path)
    assert caught.value.what == f"trace {path}: line 4 is malformed"
    assert caught.value.note.startswith(f"line 4: {why}"), caught.value.note
    assert '"t": seconds since start' in caught.value.hint


def test_trace_refuses_an_oversized_file_or_line(tmp_path: Path) -> None:
    big = tmp_path / "big.jsonl"
    with big.open("wb") as file:
        file.truncate(TRACE_MAX_BYTES + 1)                      # sparse: no 16 MiB written
    with pytest.raises(TelemetryError) as caught:
        TraceReader(big)
    assert caught.value.what == f"trace {big} is over the 16 MiB limit"
    assert caught.value.note == f"{TRACE_MAX_BYTES + 1} bytes"
    line = {"t": 1, "mode": "x" * TRACE_MAX_LINE_BYTES}
    with pytest.raises(TelemetryError, match="line 2 is malformed") as caught:
        TraceReader(write_trace(tmp_path / "long.jsonl", [{"t": 0}, line]))
    assert caught.value.note == f"line 2: {len(json.dumps(line))} bytes, over the 16384-byte limit of a line"


def test_trace_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)                                                     # no writer: a plain open() would hang
    with pytest.raises(TelemetryError, match="is not a regular file"):
        TraceReader(fifo)
    with pytest.raises(TelemetryError, match="is not a regular file"):
        TraceReader(tmp_path)
    with pytest.raises(TelemetryError, match="cannot be opened") as caught:
        TraceReader(tmp_path / "missing.jsonl")
    assert caught.value.note == "ENOENT (No such file or directory)"
    with pytest.raises(TelemetryError, match="has no lines"):
        TraceReader(write_trace(tmp_path / "empty.jsonl", ["", "  "]))


def test_trace_refuses_absurd_power(tmp_path: Path) -> None:
    """The issue's trace: two rails at 1e308 mW summed to inf, and `edge status --json` printed Infinity."""
    path = write_trace(tmp_path / "t.jsonl", [{"t": 0, "temps_c": {"tj": 50.0}, "power_mw": {"a": 1e308, "b": 1e308}}])
    with pytest.raises(TelemetryError, match="line 1 is malformed") as caught:
        TraceReader(path)
    assert "`power_mw.a` must be a number in 0..1e+07, got 1e+308" in caught.value.note
    path = write_trace(tmp_path / "t.jsonl", [{"t": 0, "power_mw": {"a": 6e6, "b": 6e6}}])
    sample = TraceReader(path).read()
    assert sample.total_mw is None and sample.problems[0].startswith("total power: the rails' sum 1.2e+07 mW")
