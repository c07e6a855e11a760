"""A demo asset cache seeded from the session's verified assets, for tests that must not download."""
from __future__ import annotations

import shutil
from pathlib import Path

from edge.tools import assets


def seeded_cache(demo: assets.DemoAssets, tmp_path: Path) -> Path:
    """A cache holding verified copies of everything, so only what a test breaks is fetched again."""
    root = tmp_path / "cache"
    for asset in assets.ASSETS:
        (root / asset.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(demo.root / asset.path, root / asset.path)
    shutil.copytree(demo.engines, root / "engines" / "yolov3-tiny")
    return root
