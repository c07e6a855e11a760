"""Demo assets: real downloads from the registries (Debian's darknet package, 3 MB), sha256 checks."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from edge import assets, bundle
from edge.errors import AssetError


def seeded_cache(demo: assets.DemoAssets, tmp_path: Path) -> Path:
    """A cache holding verified copies of everything, so only what a test breaks is fetched again."""
    root = tmp_path / "cache"
    for asset in assets.ASSETS:
        (root / asset.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(demo.root / asset.path, root / asset.path)
    shutil.copytree(demo.engines, root / "engines" / "yolov3-tiny")
    return root


def test_complete_cache_fetches_nothing(demo, tmp_path: Path) -> None:
    root = seeded_cache(demo, tmp_path)
    said: list[str] = []
    assert assets.fetch(root, say=said.append).model == root / "engines" / "yolov3-tiny" / "yolov3-tiny.onnx"
    assert said == []


def test_corrupt_cached_file_is_fetched_again(demo, tmp_path: Path) -> None:
    root = seeded_cache(demo, tmp_path)
    (root / "images" / "dog.jpg").write_bytes(b"not a jpeg")
    said: list[str] = []
    assets.fetch(root, say=said.append)
    assert said == ["fetching deb:darknet for images/dog.jpg"]
    assert assets.sha256_file(root / "images" / "dog.jpg") == assets.sha256_file(demo.image("dog.jpg"))


def test_checksum_mismatch_is_refused_and_leaves_nothing(demo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = seeded_cache(demo, tmp_path)
    (root / "images" / "kite.jpg").unlink()
    wrong = [dataclasses.replace(a, sha256="0" * 64) if a.path == "images/kite.jpg" else a for a in assets.ASSETS]
    monkeypatch.setattr(assets, "ASSETS", tuple(wrong))
    with pytest.raises(AssetError, match="checksum mismatch for images/kite.jpg") as info:
        assets.fetch(root, say=lambda line: None)
    assert "expected sha256 0000" in str(info.value)
    assert not (root / "images" / "kite.jpg").exists() and not (root / "images" / "kite.jpg.part").exists()
    assert not list(root.glob(".download-*"))


def test_stale_model_conversion_is_redone(demo, tmp_path: Path) -> None:
    root = seeded_cache(demo, tmp_path)
    (root / "engines" / "yolov3-tiny" / "yolov3-tiny.onnx").write_bytes(b"half-written")
    said: list[str] = []
    assets.fetch(root, say=said.append)
    assert said[0].startswith("converting Darknet YOLOv3-tiny")
    assert assets.sha256_file(root / "engines" / "yolov3-tiny" / "yolov3-tiny.onnx") == assets.sha256_file(demo.model)
    # the fp32 model is identical again, so its variants and manifest are still current: nothing else rebuilt
    assert len(said) == 1


def test_missing_variant_rebuilds_the_repository(demo, tmp_path: Path) -> None:
    root = seeded_cache(demo, tmp_path)
    (root / "engines" / "yolov3-tiny" / "yolov3-tiny.fp16.onnx").unlink()
    said: list[str] = []
    assets.fetch(root, say=said.append)
    assert [line.split(" ")[1] for line in said[:2]] == ["the", "the"] and "FP16" in said[0] and "INT8" in said[1]
    manifest = bundle.Manifest.load(root / "engines" / "yolov3-tiny")
    assert sorted(v.precision for v in manifest.variants) == ["fp16", "fp32", "int8"]
    assert manifest.onnx("int8").extra["gate"]["f1"] >= assets.INT8_MIN_F1
