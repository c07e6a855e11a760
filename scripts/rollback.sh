#!/usr/bin/env bash
# Roll a Jetson back to the engine bundle it ran before the last install, over ssh: `edge bundle rollback
# --restart` verifies the other slot again, switches `current` to it, restarts the service and checks its health
# (switching back if that fails), then the slots are listed. docs/operations.md, "Deploying engine bundles".
# Needs bash 4.4 or later (empty arrays under set -u; on macOS: brew install bash) and ssh.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/rollback.sh [options] HOST

  HOST                 ssh destination: user@host, or a Host of ~/.ssh/config (needs sudo without a password
                       there for edge, or log in as root and pass --no-sudo)
  --edge PATH          edge on the target: an absolute path or a command name (default /opt/edge/.venv/bin/edge)
  --health-timeout S   seconds the restarted daemon has to show every lane processing frames, 1 to 1800
                       (default 120)
  --force              roll back to a bundle that failed its last health check
  --no-restart         do not restart the service (the daemon loads the bundle at its next start)
  --no-sudo            run edge on the target without sudo (HOST logs in as root)
  --dry-run            print the commands; change nothing
  --help               this text
  --                   the end of the options

Exit status: 0 rolled back and healthy; 1 refused or not healthy (the reason is printed; the target stays on
the bundle it ran); 2 usage; 255 the ssh connection failed.
EOF
}

default_edge=/opt/edge/.venv/bin/edge
edge=$default_edge timeout=120 restart=(--restart) sudo=(sudo) force=() dry_run=0 args=()
# shellcheck source=scripts/lib/options.sh
source "$(dirname "$0")/lib/options.sh"
while (( $# )); do
    case "$1" in
        --edge) edge=$(value_of --edge "a path" "$@"); shift 2 ;;
        --health-timeout) timeout=$(value_of --health-timeout "seconds" "$@"); shift 2 ;;
        --force) force=(--force); shift ;;
        --no-restart) restart=(); shift ;;
        --no-sudo) sudo=(); shift ;;
        --dry-run) dry_run=1; shift ;;
        --help|-h) usage; exit 0 ;;
        --) shift; args+=("$@"); break ;;
        -*) echo "rollback: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
(( ${#args[@]} == 1 )) || { echo "rollback: need HOST, got ${#args[@]} argument(s)" >&2; usage >&2; exit 2; }
host=${args[0]}

die() { echo "rollback: $*" >&2; exit 1; }
run() {                                   # run a command, or print it with --dry-run
    printf -v shown '%q ' "$@"
    echo "+ ${shown% }"
    (( dry_run )) || "$@"
}

# shellcheck source=scripts/lib/target-words.sh
source "$(dirname "$0")/lib/target-words.sh"
check_target_words "$host" "$edge" "$timeout" "$default_edge"

status=0
run ssh "$host" "${sudo[@]}" "$edge" bundle rollback "${restart[@]}" "${force[@]}" --health-timeout "$timeout" \
    || status=$?
case "$status" in
    0) ;;
    255) die "lost the connection to $host (ssh exit 255); see where it stands: ssh $host ${sudo[*]} $edge bundle list" ;;
    *) die "rollback on $host failed (exit $status): see its reason above; the target stays on the bundle it ran" ;;
esac
run ssh "$host" "${sudo[@]}" "$edge" bundle list
if (( dry_run )); then
    echo "rollback: dry run: nothing was changed on $host; the commands above would roll it back"
else
    echo "rollback: $host is back on its previous bundle"
fi
