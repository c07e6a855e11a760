"""Engine bundles: signed archives of engine repositories, installed into A/B slots with a health check and an
automatic rollback; `edge keys` and `edge bundle` (docs/cli.md) run on these modules.

archive.py: the format and the bounded single-pass reader; keys.py: signing; slots.py: the on-disk layout, the
lock and the atomic switch; marks.py: the highest committed version and a pending install; admission.py: what
an install refuses before extracting (an older version, nothing this device can run); health.py: the daemon's
health through its control socket; install.py: the commands (verify, install, activate, rollback, list, and a
pending install's commit and rollback); mender.py: Mender's Update Module and artifacts, for fleets. The engine
repository inside a bundle, and the resolver that picks a variant from it, are edge/engines/repository.py's. How
to deploy: docs/operations.md, "Deploying engine
bundles".
"""
from __future__ import annotations

from edge.deploy.common import BundleError

__all__ = ["BundleError"]
