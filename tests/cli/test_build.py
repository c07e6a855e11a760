"""`edge build --profiles N` on the TensorRT stand-in (tests/support/fake_tensorrt.py, a contract test): N copies of a
dynamic-shape plan's optimization profile, recorded in its sidecar; a nonsense count is refused clearly."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.cli.main import main
from tests.support.models import conv_model, make_dynamic


def test_profiles_reach_the_build_and_its_sidecar(trt, tmp_path: Path,  # noqa: F811
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    onnx = make_dynamic(conv_model(tmp_path / "dyn.onnx", input_shape=[1, 3, 64, 64], out_channels=4, stride=1),
                        {"images": 0, "out0": 0})
    assert main(["build", str(onnx), "--shapes", "images:1x3x64x64,2x3x64x64,4x3x64x64", "--profiles", "2"]) == 0
    sidecar = next((tmp_path / "plans").glob("*.plan.json"))
    assert json.loads(sidecar.read_text())["profiles"] == 2
    assert main(["build", str(onnx), "--profiles", "2"]) == 1                  # no dynamic shapes to copy
    assert "profiles=2: give 1, or more than 1 together with --shapes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["build", str(onnx), "--profiles", "0"])
