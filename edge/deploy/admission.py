"""What an install checks of a bundle's signed manifest before it extracts anything: the version is not below the
highest this device has committed (anti-rollback), and every model has a variant this device can run (target
binding). docs/operations.md, "What an install does", step 2.
"""
from __future__ import annotations

from typing import Any

from edge.deploy.archive import BundleManifest, version_of
from edge.deploy.common import BundleError
from edge.deploy.marks import Mark
from edge.engines.repository import DeviceKey
from edge.log import get_logger

log = get_logger("deploy")
DOWNGRADE_HINT = "--allow-downgrade"
NO_TENSORRT = "no TensorRT (only ONNX variants run here)"


def not_older(manifest: BundleManifest, mark: Mark | None, *, allow_downgrade: bool) -> str:
    """'' when the bundle is not older than the mark; with allow_downgrade, the mark it goes below (logged as a
    warning); else BundleError naming both versions."""
    if mark is None or version_of(manifest.version) >= mark.ordered():
        return ""
    if not allow_downgrade:
        raise BundleError(f"bundle {manifest.version} is older than bundle {mark.version}, the highest version this"
                          f" device has committed (slot {mark.slot}, {mark.at}): refused as a rollback",
                          note="replaying an older, validly signed bundle is what a stolen or old artifact allows;"
                               " nothing was extracted, the active bundle is unchanged",
                          hint=f"install bundle {mark.version} or a later one; in a workshop, {DOWNGRADE_HINT}"
                               " installs an older one anyway")
    log.warning("installing bundle %s below bundle %s, the highest version this device has committed (%s)",
                manifest.version, mark.version, DOWNGRADE_HINT)
    return mark.version


def runnable(manifest: BundleManifest, device: DeviceKey | None) -> None:
    """BundleError unless each model has an ONNX variant or a plan built for `device` (None: no TensorRT here)."""
    keys = {(k.get("model"), k.get("file")): k for k in manifest.device_keys if isinstance(k, dict)}
    for model, variants in manifest.models.items():
        formats = [v.get("format") for v in variants if isinstance(v, dict)]
        if "onnx" in formats:
            continue
        plans = [keys.get((model, v.get("file"))) for v in variants
                 if isinstance(v, dict) and v.get("format") == "plan"]
        if device is not None and any(_platform(k) == device.platform() for k in plans):
            continue
        built = sorted({_shown(k) for k in plans}) or ["no plan either"]
        raise BundleError(f"bundle {manifest.version} holds nothing this device can run for model {model}: no ONNX"
                          f" variant, and its plans are for {'; '.join(built)}",
                          note=f"this device: {_shown(device.to_json()) if device else NO_TENSORRT}; nothing was"
                               " extracted, the active bundle is unchanged",
                          hint="build the plans on a board like this one (edge build) and pack them, or pack the"
                               " model's ONNX variant as well")


def _platform(key: dict[str, Any] | None) -> tuple[str, str, str, str] | None:
    try:
        return DeviceKey.from_json(key).platform() if key is not None else None
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _shown(key: dict[str, Any] | None) -> str:
    if key is None:
        return "(a plan without its device key)"
    return f"{key.get('board')} L4T {key.get('l4t')} TensorRT {key.get('tensorrt')} SM {key.get('sm')}"
