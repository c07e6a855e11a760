"""What the readers share (edge/supervisor/telemetry/common.py): one plausible temperature range and a bound on
power, kept by every reader and the traces."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from edge.supervisor.telemetry.common import TelemetryError
from edge.supervisor.telemetry.jtop import JtopReader
from edge.supervisor.telemetry.nvml import NvmlReader
from edge.supervisor.telemetry.sysfs import SysfsReader
from edge.supervisor.telemetry.trace import TraceReader
from tests.support.telemetry import ORIN_NX_JTOP, make_jtop_module, make_pynvml, write_trace, zone


def test_one_plausible_range_for_every_reader_and_the_traces(tmp_path: Path) -> None:
    """The readers and traces took −100..250 °C and the policy −60..150 °C, so a zone reading 200 °C was a
    temperature in `edge status` and an offline sensor to the policy. One range now (common.PLAUSIBLE_C): its
    edges are readings, a thousandth of a degree beyond is a problem, and a trace line beyond is malformed."""
    zone(tmp_path, 0, "cpu-thermal", "150000", (("passive", 150000), ("critical", 150001)))
    zone(tmp_path, 1, "gpu-thermal", "150001")
    zone(tmp_path, 2, "soc0-thermal", "-60000")
    zone(tmp_path, 3, "soc1-thermal", "-60001")
    sample = SysfsReader(tmp_path).read()
    assert sample.temps_c == {"cpu": 150.0, "soc0": -60.0} and sample.trips_c == {"cpu": {"passive": 150.0}}
    assert sample.problems == ("zone gpu: temp 150.001 °C is not plausible (sensor offline?)",
                               "zone soc1: temp -60.001 °C is not plausible (sensor offline?)")
    edges = write_trace(tmp_path / "edges.jsonl", [{"t": 0, "temps_c": {"tj": 150, "cv0": -60},
                                                    "trips_c": {"tj": {"passive": 150}}}])
    assert TraceReader(edges).read().temps_c == {"tj": 150.0, "cv0": -60.0}
    for beyond in ({"temps_c": {"tj": 150.5}}, {"temps_c": {"tj": -60.5}}, {"trips_c": {"tj": {"passive": 151}}}):
        with pytest.raises(TelemetryError, match="line 1 is malformed") as caught:
            TraceReader(write_trace(tmp_path / "beyond.jsonl", [{"t": 0, **beyond}]))
        assert "must be a number in -60..150" in caught.value.note


def test_jtop_and_nvml_absurd_power_is_a_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    data = json.loads(json.dumps(ORIN_NX_JTOP))
    data["power"] = {"rail": {"VDD_A": {"online": True, "power": 1e308}, "VDD_B": {"online": True, "power": 1e308},
                              "VDD_C": {"online": True, "power": 2000}},
                     "tot": {"online": True, "power": 1e308}}                        # jtop's sum of the rails
    monkeypatch.setitem(sys.modules, "jtop", make_jtop_module(data))
    sample = JtopReader().read()
    assert sample.power_mw == {"VDD_C": 2000.0} and sample.total_mw == 2000.0
    assert [p.split(" is not")[0] for p in sample.problems[1:]] == [
        "rail VDD_A: 1e+308 mW", "rail VDD_B: 1e+308 mW", "total power: 1e+308 mW"]
    fake = make_pynvml()
    fake.nvmlDeviceGetPowerUsage = lambda handle: 0xFFFFFFFF if handle else 70000    # an unsigned -1
    fake.nvmlDeviceGetTemperature = lambda handle, sensor: 0xFFFFFFFF if handle else 40
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    sample = NvmlReader().read()
    assert sample.temps_c == {"gpu0": 40.0} and sample.power_mw == {"gpu0": 70000.0} and sample.total_mw == 70000.0
    assert sample.problems == ("gpu1: temperature 4294967295 °C is not plausible",
                               "gpu1: power 4.295e+09 mW is not plausible (beyond ±10000000 mW: a broken sensor?)")
