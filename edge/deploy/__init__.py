"""Engine bundles: signed archives of engine repositories, installed into A/B slots with a health check and an
automatic rollback (docs/operations.md, "Deploying engine bundles").

    edge keys generate --out DIR                      keys.generate: an Ed25519 key pair
    edge bundle pack MODEL_DIR... --key K --version V --out FILE    archive.pack
    edge bundle verify FILE                           install.verify: signature, sizes, sha256, paths; nothing kept
    edge bundle install FILE                          install.install: into the inactive slot, switch, check
    edge bundle activate SLOT | rollback              install.activate / install.rollback
    edge bundle list                                  install.list_slots

archive.py: the format and the bounded single-pass reader; keys.py: signing; slots.py: the on-disk layout, the
lock and the atomic switch; health.py: the daemon's health through its control socket; install.py: the commands.
The engine repository inside a bundle, and the resolver that picks a variant from it, are edge/engines/repository.py's.
"""
from __future__ import annotations

from edge.deploy.common import BundleError

__all__ = ["BundleError"]
