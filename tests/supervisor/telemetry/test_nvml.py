"""The NVML reader (edge/supervisor/telemetry/nvml.py): its error paths against a stand-in here, the real library
on the GPU tier."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from edge.errors import UsageError
from edge.supervisor.telemetry import open_reader
from edge.supervisor.telemetry.common import Sample, TelemetryError
from edge.supervisor.telemetry.nvml import NvmlReader
from tests.support.telemetry import FakeClock, make_pynvml


def test_nvml_reader_maps_each_gpu_and_reports_a_failed_query(monkeypatch: pytest.MonkeyPatch,
                                                              clock: FakeClock) -> None:
    fake = make_pynvml(power_error_on=1)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    reader = NvmlReader(clock=clock)
    assert reader.read() == Sample(
        t=1000.0, source="nvml", temps_c={"gpu0": 40.0, "gpu1": 41.0},
        trips_c={"gpu0": {"passive": 87.0, "critical": 92.0}}, power_mw={"gpu0": 70000.0}, total_mw=70000.0,
        mode=None, gpu_load=0.5, problems=("gpu1: power: Not Supported",))
    reader.close()
    reader.close()
    assert fake.shutdowns == 1
    with pytest.raises(UsageError):
        reader.read()


def test_nvml_missing_or_without_a_driver_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, no_pynvml: None) -> None:
    with pytest.raises(TelemetryError) as caught:
        NvmlReader()
    assert caught.value.what == "NVML telemetry requested but `import pynvml` failed"
    assert "edge[nvml]" in caught.value.hint and "Jetsons before Thor" in caught.value.hint
    monkeypatch.setitem(sys.modules, "pynvml", make_pynvml(init_error="Driver Not Loaded"))
    with pytest.raises(TelemetryError) as caught:
        NvmlReader()
    assert (caught.value.what, caught.value.note) == ("NVML could not be initialised", "Driver Not Loaded")


@pytest.mark.gpu
def test_nvml_reads_this_gpu(tmp_path: Path, no_jtop: None, telemetry_log) -> None:
    pytest.importorskip("pynvml", reason="needs nvidia-ml-py (pip install 'edge[nvml]')")
    with open_reader("nvml") as reader:
        sample = reader.read()
    assert sample.source == "nvml" and sample.problems == (), sample.problems
    assert 5.0 < sample.temps_c["gpu0"] < 110.0
    assert sample.power_mw["gpu0"] > 1000.0 and sample.total_mw == sum(sample.power_mw.values())
    assert 0.0 <= sample.gpu_load <= 1.0
    trips = sample.trips_c["gpu0"]
    assert sample.temps_c["gpu0"] < trips["passive"] < trips["critical"], trips
    auto = open_reader("auto", root=tmp_path)                          # no jtop, no zone under tmp_path
    assert isinstance(auto, NvmlReader)
    auto.close()
    assert telemetry_log.records[-1].getMessage().startswith("telemetry auto: nvml; skipped jtop: ")
