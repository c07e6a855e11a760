#!/usr/bin/env bash
# Deploy a signed engine bundle to a Jetson over ssh: verify it here first (`edge bundle verify` of this checkout,
# against the trusted keys given or found: a bad bundle stops before anything reaches the target), copy it (rsync,
# resumable), then install it there with
# `edge bundle install --restart`: verified (signature, sha256 of every file), unpacked into the inactive slot,
# `current` switched, the service restarted and its health checked through the control socket; if it is not
# healthy the target switches back to the previous bundle and restarts it by itself. Then the slots are listed.
# Run on a technician's machine. The target needs edge provisioned (scripts/provision-target.sh) and the signing
# key's .pub in /etc/edge/trusted-keys/. docs/operations.md, "Deploying engine bundles".
# Needs bash 4.4 or later (empty arrays under set -u; on macOS: brew install bash), ssh, rsync, and edge here
# (scripts/setup.sh in this checkout, or edge on PATH).
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/deploy-bundle.sh [options] HOST BUNDLE

  HOST                 ssh destination: user@host, or a Host of ~/.ssh/config (needs sudo without a password
                       there for edge, or log in as root and pass --no-sudo)
  BUNDLE               the bundle file (edge bundle pack)
  --keys DIR           the public keys (*.pub) to verify BUNDLE with here, before anything is copied (default:
                       ~/edge-keys, else /etc/edge/trusted-keys; the target checks against its own)
  --edge PATH          edge on the target: an absolute path or a command name (default /opt/edge/.venv/bin/edge)
  --health-timeout S   seconds the restarted daemon has to show every lane processing frames, 1 to 1800
                       (default 120)
  --no-restart         do not restart the service: the daemon loads the bundle at its next start, and the
                       health check only shows that the running daemon is healthy
  --no-sudo            run edge on the target without sudo (HOST logs in as root)
  --allow-downgrade    install BUNDLE even if it is older than the highest version the target has committed (a
                       workshop's choice; the target logs it and records it in the slot)
  --dry-run            verify BUNDLE, then print the commands; change nothing
  --help               this text
  --                   the end of the options (a BUNDLE whose name starts with '-' may follow)

Exit status: 0 installed and healthy; 1 refused or rolled back (the reason is printed); 2 usage;
255 the ssh connection failed.
EOF
}

default_edge=/opt/edge/.venv/bin/edge
edge=$default_edge keys="" timeout=120 restart=(--restart) sudo=(sudo) downgrade=() dry_run=0 args=()
# shellcheck source=scripts/lib/options.sh
source "$(dirname "$0")/lib/options.sh"
while (( $# )); do
    case "$1" in
        --edge) edge=$(value_of --edge "a path" "$@"); shift 2 ;;
        --keys) keys=$(value_of --keys "a directory" "$@"); shift 2 ;;
        --health-timeout) timeout=$(value_of --health-timeout "seconds" "$@"); shift 2 ;;
        --no-restart) restart=(); shift ;;
        --no-sudo) sudo=(); shift ;;
        --allow-downgrade) downgrade=(--allow-downgrade); shift ;;
        --dry-run) dry_run=1; shift ;;
        --help|-h) usage; exit 0 ;;
        --) shift; args+=("$@"); break ;;
        -*) echo "deploy-bundle: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
(( ${#args[@]} == 2 )) || { echo "deploy-bundle: need HOST and BUNDLE, got ${#args[@]} argument(s)" >&2; usage >&2; exit 2; }
host=${args[0]} bundle=${args[1]}
[[ "$bundle" != -* ]] || bundle=./$bundle   # a file, not an option of rsync or edge

die() { echo "deploy-bundle: $*" >&2; exit 1; }
run() {                                   # run a command, or print it with --dry-run
    printf -v shown '%q ' "$@"
    echo "+ ${shown% }"
    (( dry_run )) || "$@"
}
step() {                                  # step DOING TODO: say what happens now, or what would with --dry-run
    if (( dry_run )); then echo "deploy-bundle: would $2"; else echo "deploy-bundle: $1"; fi
}

# shellcheck source=scripts/lib/target-words.sh
source "$(dirname "$0")/lib/target-words.sh"
name=$(basename -- "$bundle")
[[ -f "$bundle" ]] || die "no bundle file $bundle"
check_target_words "$host" "$edge" "$timeout" "$default_edge"
plain='^[A-Za-z0-9._+/@:=-]+$'
[[ "$name" =~ $plain ]] || die "BUNDLE's file name '$name' must be a plain word (letters, digits, ._+/@:=-): it goes" \
    "to the target's shell. Hint: rename it"
staged="edge-bundles/$name"               # in the ssh user's home on the target, not a shared /tmp

# Verify here (signature, every file's sha256, paths), so that a damaged, tampered or wrongly signed bundle stops
# before anything reaches the target. The target verifies again, against its own keys.
if [[ -z "$keys" ]]; then
    for dir in ~/edge-keys /etc/edge/trusted-keys; do
        if [[ -d "$dir" ]]; then keys=$dir; break; fi
    done
    [[ -n "$keys" ]] || die "no keys to verify $bundle with here (neither ~/edge-keys nor /etc/edge/trusted-keys" \
        "exists); nothing copied. Hint: --keys DIR, a directory with the signing key's .pub"
fi
local_edge="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/edge"
[[ -x "$local_edge" ]] || local_edge=$(command -v edge) \
    || die "no edge here to verify $bundle with; nothing copied. Hint: scripts/setup.sh in this checkout"
echo "deploy-bundle: verifying $bundle here against the keys in $keys"
"$local_edge" bundle verify "$bundle" --keys "$keys" \
    || die "$bundle failed verification here (see above); nothing copied to $host"

step "copying $bundle to $host:$staged" "copy $bundle to $host:$staged"
run ssh "$host" mkdir -p -m 0700 edge-bundles || die "cannot reach $host or make ~/edge-bundles there; nothing installed"
run rsync --partial --times --compress-level=0 "$bundle" "$host:$staged" \
    || die "copying $bundle to $host failed; nothing installed (run again: rsync resumes)"

step "installing on $host" "install it on $host"
status=0
run ssh "$host" "${sudo[@]}" "$edge" bundle install "$staged" "${restart[@]}" "${downgrade[@]}" --health-timeout "$timeout" \
    || status=$?
case "$status" in
    0) ;;
    255) die "lost the connection to $host during the install (ssh exit 255). The install goes on there and ends" \
             "installed or rolled back; see which: ssh $host ${sudo[*]} $edge bundle list" ;;
    *) die "install on $host failed (exit $status): see its reason above. The target kept or went back to its" \
           "previous bundle; the copy stays in ~/$staged on $host" ;;
esac
run ssh "$host" rm -f "$staged"
run ssh "$host" "${sudo[@]}" "$edge" bundle list
if (( dry_run )); then
    echo "deploy-bundle: dry run: $name verified here; nothing was copied to $host or installed there"
else
    echo "deploy-bundle: $host runs $name"
fi
