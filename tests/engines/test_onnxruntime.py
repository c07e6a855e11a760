"""The engine contract on the ONNX Runtime backend: lifecycle, slots, K in flight, bad model files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.engines.onnxruntime import OnnxRuntimeEngine
from edge.errors import EngineError, UsageError
from tests.support.models import conv_model, make_dynamic


@pytest.fixture
def small(tmp_path: Path) -> Path:
    return conv_model(tmp_path / "small.onnx", input_shape=[1, 3, 32, 32], out_channels=4, stride=2)


def test_lifecycle_and_io_specs(small: Path) -> None:
    engine = OnnxRuntimeEngine(small)
    with pytest.raises(UsageError, match="before activate"):
        engine.create_slot("a")
    with engine:
        assert engine.is_active
        assert [(t.name, t.shape) for t in engine.inputs] == [("images", (1, 3, 32, 32))]
        assert [(t.name, t.shape) for t in engine.outputs] == [("out0", (1, 4, 16, 16))]
    assert not engine.is_active
    engine.deactivate()                                        # idempotent


def test_slot_ring_keeps_k_in_flight_in_order(small: Path) -> None:
    with OnnxRuntimeEngine(small) as engine:
        slot = engine.create_slot("cam", depth=3)
        pendings = []
        for value in (1.0, 2.0, 3.0):
            buf = slot.input()
            buf[...] = value
            pendings.append(slot.submit(buf))
        assert slot.in_flight() == 3
        with pytest.raises(UsageError, match="all 3 input buffers are in flight"):
            slot.input()
        results = [p.wait(10)["out0"] for p in pendings]
        np.testing.assert_allclose([r[0, 0, 0, 0] for r in results], [0.03, 0.06, 0.09], rtol=1e-5)
        assert slot.in_flight() == 0


def test_submit_only_takes_the_slot_buffer(small: Path) -> None:
    with OnnxRuntimeEngine(small) as engine:
        slot = engine.create_slot("cam")
        with pytest.raises(UsageError, match="takes the buffer returned by input"):
            slot.submit(np.zeros((1, 3, 32, 32), np.float32))


def test_deactivate_closes_slots(small: Path) -> None:
    engine = OnnxRuntimeEngine(small).activate()
    slot = engine.create_slot("cam")
    engine.deactivate()
    with pytest.raises(UsageError, match="is closed"):
        slot.input()


def test_missing_empty_and_corrupt_model_files(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="does not exist"):
        OnnxRuntimeEngine(tmp_path / "none.onnx").activate()
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(EngineError, match="is empty"):
        OnnxRuntimeEngine(tmp_path / "empty.onnx").activate()
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07 this is not a protobuf \xff\xfe" * 50)
    with pytest.raises(EngineError, match="ONNX Runtime cannot load") as info:
        OnnxRuntimeEngine(tmp_path / "junk.onnx").activate()
    assert "Hint:" in str(info.value)


def test_truncated_real_model_is_refused(demo, tmp_path: Path) -> None:
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(demo.model.read_bytes()[: 5_000_000])
    with pytest.raises(EngineError, match="ONNX Runtime cannot load"):
        OnnxRuntimeEngine(cut).activate()


def test_dynamic_input_shape_is_refused(tmp_path: Path) -> None:
    path = make_dynamic(conv_model(tmp_path / "dyn.onnx", input_shape=[1, 3, 32, 32], out_channels=4, stride=2),
                        {"images": 2})
    with pytest.raises(EngineError, match="dynamic shape"):
        OnnxRuntimeEngine(path).activate()
