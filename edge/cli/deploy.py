"""The commands that deploy engines: bundle-signing keys, and signed bundles packed, verified, installed into
A/B slots and rolled back."""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from edge.cli import display
from edge.cli.common import control_endpoint, positive_seconds, terminated
from edge.deploy.common import BUNDLES, TRUSTED_KEYS, BundleError


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from edge.deploy import keys

    pair = keys.generate(args.out, args.name)
    print(f"wrote {pair.private} (the private key, 0600: keep it off the vehicles) and {pair.public} (install it in"
          f" {TRUSTED_KEYS}/ on each device); key id {pair.key_id}")
    return 0


def cmd_bundle_pack(args: argparse.Namespace) -> int:
    from edge.deploy import archive

    if args.device_type and not args.mender:
        raise BundleError("--device-type names the device types of a Mender artifact", hint="add --mender")
    tool = _check_mender_pack(args) if args.mender else None
    verified = archive.pack(args.models, key=args.key, version=args.version, out=args.out)
    manifest = verified.manifest
    print(f"wrote {args.out}: bundle {manifest.version}, models {', '.join(manifest.models)}, {len(manifest.files)}"
          f" files, {manifest.total_bytes} bytes, signed by key {verified.key_id}")
    if tool is not None:
        _write_mender_artifact(args, manifest.version, tool)
    return 0


def _check_mender_pack(args: argparse.Namespace) -> str:
    """Before packing: mender-artifact (its path) is there and every device type has the plans it needs."""
    from edge.deploy import mender

    if not args.device_type:
        raise BundleError("--mender needs the device types the artifact is for",
                          hint="--device-type TYPE (the boards' /var/lib/mender/device_type), once per type")
    tool = mender.find_tool()
    mender.check_device_types(args.models, args.device_type)
    return tool


def _write_mender_artifact(args: argparse.Namespace, version: str, tool: str) -> None:
    from edge.deploy import mender

    out = mender.artifact_path(args.out)
    mender.write_artifact(args.out, version, args.device_type, out, tool=tool)
    print(f"wrote {out}: Mender artifact {mender.NAME_PREFIX}{version}, payload type {mender.PAYLOAD_TYPE}, device"
          f" types {', '.join(args.device_type)}")


def cmd_bundle_mender_module(args: argparse.Namespace) -> int:
    """Mender's client runs this (through the module file) once per state: answers on stdout, reports on stderr."""
    from edge.deploy import health, install, mender

    if args.state in mender.ANSWERS:
        print(mender.ANSWERS[args.state])
        return 0
    signal.signal(signal.SIGHUP, terminated)
    activation = install.Activation(
        restart=None if args.no_restart else install.RESTART,
        health=health.HealthCheck(control_endpoint(args), timeout_s=args.health_timeout))
    report = mender.run_state(args.state, args.files, root=args.root, trusted_dir=args.keys, activation=activation)
    if report:
        print(report, file=sys.stderr)
    return 0


def cmd_bundle_verify(args: argparse.Namespace) -> int:
    from edge.deploy import install

    verified = install.verify(_bundle_source(args.bundle), trusted_dir=args.keys)
    manifest = verified.manifest
    plans = sorted({f"{k.get('board')} L4T {k.get('l4t')}" for k in manifest.device_keys})
    print(f"{args.bundle}: bundle {manifest.version} created {manifest.created}, signed by trusted key"
          f" {verified.key_id}; models {', '.join(manifest.models)}; {len(manifest.files)} files,"
          f" {manifest.total_bytes} bytes, every sha256 matches; plans for: {', '.join(plans) or 'none'}")
    return 0


def cmd_bundle_install(args: argparse.Namespace) -> int:
    from edge.deploy import install

    outcome = install.install(_bundle_source(args.bundle), root=args.root, trusted_dir=args.keys,
                              activation=_activation(args), allow_downgrade=args.allow_downgrade)
    _print_outcome("installed", outcome)
    return 0


def cmd_bundle_activate(args: argparse.Namespace) -> int:
    from edge.deploy import install

    outcome = install.activate(args.slot, root=args.root, trusted_dir=args.keys, activation=_activation(args),
                               force=args.force)
    _print_outcome("activated", outcome)
    return 0


def cmd_bundle_rollback(args: argparse.Namespace) -> int:
    from edge.deploy import install

    outcome = install.rollback(root=args.root, trusted_dir=args.keys, activation=_activation(args), force=args.force)
    _print_outcome("rolled back to", outcome)
    return 0


def cmd_bundle_list(args: argparse.Namespace) -> int:
    from edge.deploy import install

    listing = install.list_slots(args.root)
    print(display.json_text(listing, indent=2) if args.json else install.describe(listing))
    return 0


def _bundle_source(name: str) -> Any:
    """A bundle argument: a path, or - for standard input (a pipe over ssh)."""
    return sys.stdin.buffer if name == "-" else Path(name)


def _activation(args: argparse.Namespace) -> Any:
    """What follows a switch of `current`. A hangup (a closed terminal, a dropped ssh -t) ends the command like
    SIGTERM does, through the switch back, not in the middle of it."""
    from edge.deploy import health, install

    signal.signal(signal.SIGHUP, terminated)
    check = None if args.no_health else health.HealthCheck(control_endpoint(args), timeout_s=args.health_timeout)
    return install.Activation(restart=install.RESTART if args.restart else None, health=check)


def _print_outcome(done: str, outcome: Any) -> None:
    print(f"{done} bundle {outcome.version} (key {outcome.key_id}) in slot {outcome.slot}; current -> {outcome.slot}"
          f" (was {outcome.previous or 'none'})")
    print(f"health: {outcome.health}")
    for note in outcome.notes:
        print(f"note: {note}")


def add_keys(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="keys that sign engine bundles").add_subparsers(dest="keys_command",
                                                                                     required=True)
    generate = keys.add_parser("generate", help="a new Ed25519 key pair: NAME.key (0600) and NAME.pub")
    generate.add_argument("--out", type=Path, required=True, metavar="DIR", help="where to write them (made 0700)")
    generate.add_argument("--name", default="edge-bundle", help="file name stem (default edge-bundle)")
    generate.set_defaults(func=cmd_keys_generate)


def add_bundle(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bundle = sub.add_parser("bundle", help="signed engine bundles: pack, verify, install into A/B slots, roll back")
    bundles = bundle.add_subparsers(dest="bundle_command", required=True)
    pack = bundles.add_parser("pack", help="pack engine repositories into a signed bundle")
    pack.add_argument("models", nargs="+", type=Path, metavar="MODEL_DIR", help="engine repositories (manifest.json)")
    pack.add_argument("--key", type=Path, required=True, help="the private key (edge keys generate)")
    pack.add_argument("--version", required=True, help="the bundle's version, e.g. 2026.11.1")
    pack.add_argument("--out", type=Path, required=True, metavar="FILE", help="the bundle to write")
    pack.add_argument("--mender", action="store_true", help="also write FILE's .mender beside it: a Mender artifact"
                      " (module-image, type edge-bundle) for a fleet rollout")
    pack.add_argument("--device-type", action="append", default=[], metavar="TYPE",
                      help="with --mender: a device type the artifact is for (repeat for more); each model with"
                           " plans needs one built on a board of that type")
    pack.set_defaults(func=cmd_bundle_pack)
    verify = bundles.add_parser("verify", help="check a bundle completely (signature, sha256, paths); keep nothing")
    verify.add_argument("bundle", metavar="BUNDLE", help="the bundle file, or - for standard input")
    _bundle_keys_arg(verify)
    verify.set_defaults(func=cmd_bundle_verify)
    install = bundles.add_parser("install", help="install into the inactive slot, switch, check health, roll back"
                                 " on failure")
    install.add_argument("bundle", metavar="BUNDLE", help="the bundle file, or - for standard input")
    install.add_argument("--allow-downgrade", action="store_true",
                         help="install a bundle older than the highest version this device has committed (a"
                              " workshop's choice: logged, and recorded in the slot)")
    _bundle_switch_args(install)
    install.set_defaults(func=cmd_bundle_install)
    activate = bundles.add_parser("activate", help="make an installed slot current (verified again, health checked)")
    activate.add_argument("slot", choices=["a", "b"])
    _bundle_switch_args(activate, force=True)
    activate.set_defaults(func=cmd_bundle_activate)
    rollback = bundles.add_parser("rollback", help="make the other slot current again")
    _bundle_switch_args(rollback, force=True)
    rollback.set_defaults(func=cmd_bundle_rollback)
    listing = bundles.add_parser("list", help="the slots: versions, keys, health, which is current; the highest"
                                 " committed version and a pending install")
    _bundle_root_arg(listing)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_bundle_list)
    module = bundles.add_parser("mender-module", help="(run by Mender's client through its Update Module"
                                " edge-bundle) one state of a fleet deployment")
    module.add_argument("state", metavar="STATE", help="the Update Module state (protocol v3)")
    module.add_argument("files", type=Path, metavar="FILES", help="the module's File API directory")
    _bundle_root_arg(module)
    _bundle_keys_arg(module)
    module.add_argument("--no-restart", action="store_true", help="do not restart the daemon after a switch")
    module.add_argument("--health-timeout", type=positive_seconds, default=120.0, metavar="SECONDS",
                        help="how long the daemon has to show every lane processing frames (default 120)")
    module.add_argument("--control", metavar="ENDPOINT", help="the daemon's control socket (default:"
                        " $EDGE_CONTROL_ENDPOINT, else the ipc socket of `edge run`)")
    module.set_defaults(func=cmd_bundle_mender_module)


def _bundle_keys_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keys", type=Path, default=TRUSTED_KEYS, metavar="DIR",
                        help=f"trusted public keys, *.pub (default {TRUSTED_KEYS})")


def _bundle_root_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, default=BUNDLES, metavar="DIR",
                        help=f"where the slots are (default {BUNDLES})")


def _bundle_switch_args(parser: argparse.ArgumentParser, *, force: bool = False) -> None:
    _bundle_root_arg(parser)
    _bundle_keys_arg(parser)
    parser.add_argument("--restart", action="store_true",
                        help="restart the daemon after the switch (systemctl restart edge-runtime), and again after"
                             " a rollback")
    parser.add_argument("--no-health", action="store_true", help="switch without checking the daemon's health")
    parser.add_argument("--health-timeout", type=positive_seconds, default=60.0, metavar="SECONDS",
                        help="how long the daemon has to show every lane processing frames (default 60)")
    parser.add_argument("--control", metavar="ENDPOINT", help="the daemon's control socket (default:"
                        " $EDGE_CONTROL_ENDPOINT, else the ipc socket of `edge run`)")
    if force:
        parser.add_argument("--force", action="store_true", help="activate a slot that failed its last health check")

