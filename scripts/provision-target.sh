#!/usr/bin/env bash
# Provision a Jetson to run edge as a service: install this checkout under a prefix with its venv (system site
# packages: JetPack's TensorRT and OpenCV), the edge user and its groups, the systemd unit, a config, the demo
# engine repository, `edge` on PATH, Mender's Update Module for engine bundles; then enable and start the service
# and check it answers. Run on the board, as root. --dry-run prints every command instead of running it, on any
# machine (a preview off the board).
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: sudo scripts/provision-target.sh [--prefix DIR] [--config FILE] [--no-start] [--dry-run]

  --prefix DIR   where edge is installed (default /opt/edge; the unit expects /opt/edge/.venv/bin/edge): a
                 directory of edge's own, which provision keeps equal to this checkout (it deletes whatever else
                 is there), so a new or empty one, or an earlier install; an absolute path of letters, digits
                 and ._+-/ (it goes into the unit's ExecStart=)
  --config FILE  the config to install as /etc/edge/config.yaml (default: keep an existing one, else the
                 example systemd/config.yaml: one CSI camera, the demo detector)
  --no-start     install and enable, but do not start the service
  --dry-run      print the commands; change nothing (works off the board too, as a preview)
  --help         this text
  --             the end of the options
EOF
}

prefix=/opt/edge config="" start=1 dry_run=0
# shellcheck source=scripts/lib/options.sh
source "$(dirname "$0")/lib/options.sh"
while (( $# )); do
    case "$1" in
        --prefix) prefix=$(value_of --prefix "a directory" "$@"); shift 2 ;;
        --config) config=$(value_of --config "a file" "$@"); shift 2 ;;
        --no-start) start=0; shift ;;
        --dry-run) dry_run=1; shift ;;
        --help|-h) usage; exit 0 ;;
        --) shift; break ;;
        *) echo "provision-target: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
(( $# == 0 )) || { echo "provision-target: unexpected argument '$1': it takes options only" >&2; usage >&2; exit 2; }

die() { echo "provision-target: $*" >&2; exit 1; }
run() {                                   # run a command, or print it with --dry-run
    printf -v shown '%q ' "$@"
    echo "+ ${shown% }"
    (( dry_run )) || "$@"
}
write() {                                 # write FILE LINE...: write the lines to FILE, or print them with --dry-run
    local file=$1
    shift
    echo "+ cat > $file <<'EOF'"
    printf '%s\n' "$@" EOF
    (( dry_run )) || printf '%s\n' "$@" > "$file"
}
run_into() {                              # run_into FILE CMD...: run CMD, its output into FILE, or print it with --dry-run
    local file=$1
    shift
    printf -v shown '%q ' "$@"
    printf -v into '%q' "$file"
    echo "+ ${shown% } > $into"
    (( dry_run )) || "$@" > "$file"
}

source_dir=$(cd "$(dirname "$0")/.." && pwd)
tegra_release=${EDGE_TEGRA_RELEASE:-/etc/nv_tegra_release}
if [[ ! -f "$tegra_release" ]]; then
    (( dry_run )) || die "this is not a Jetson ($tegra_release is missing); provision the board itself"
    echo "provision-target: note: this is not a Jetson ($tegra_release is missing): a preview only. What it says" \
         "about the jtop group, /etc/edge/config.yaml and $prefix is this machine's, not the board's"
fi
(( dry_run )) || (( EUID == 0 )) || die "run as root (sudo): it installs a system service and a user"
[[ -z "$config" || -f "$config" ]] || die "no config file $config"

# The prefix becomes a directory of edge's own: rsync --delete makes it equal to this checkout. So it is never / or a
# directory of the system (systemd's file-hierarchy(7) and the FHS 3.0; /opt holds other vendors' packages, e.g.
# /opt/nvidia on a Jetson), nor one that holds anything but an edge install. Its path goes into the unit's
# ExecStart=, where systemd splits words at spaces, takes quotes and backslash escapes and expands % specifiers and
# $VARIABLES (systemd.service(5), "Command lines"), and into a sed expression: plain characters only.
marker=.edge-install                      # in the prefix: provision installed edge here
system_dirs=(/ /bin /boot /dev /efi /etc /etc/opt /home /lib /lib32 /lib64 /libx32 /lost+found /media /mnt /opt /proc
    /root /run /sbin /srv /sys /tmp /usr /usr/bin /usr/games /usr/include /usr/lib /usr/lib32 /usr/lib64 /usr/libexec
    /usr/libx32 /usr/local /usr/local/bin /usr/local/etc /usr/local/games /usr/local/include /usr/local/lib
    /usr/local/man /usr/local/sbin /usr/local/share /usr/local/src /usr/sbin /usr/share /usr/src /var /var/cache
    /var/lib /var/local /var/log /var/mail /var/opt /var/spool /var/tmp)
edge_install() {                          # edge_install DIR: provision's marker, or an edge checkout (an older install)
    [[ -f "$1/$marker" ]] || [[ -f "$1/scripts/provision-target.sh" && -f "$1/systemd/edge-runtime.service" \
                                && -f "$1/edge/__init__.py" ]]
}
[[ "$prefix" =~ ^/[A-Za-z0-9._+/-]*$ ]] || die "--prefix '$prefix' is not an absolute path of letters, digits and" \
    "._+-/ only (it goes into the unit's ExecStart=, where systemd gives spaces, quotes, \\, % and \$ a meaning)." \
    "Hint: --prefix /opt/edge"
resolved=$(realpath -m -- "$prefix")      # what rsync would write into: .. and symbolic links resolved
for dir in "${system_dirs[@]}"; do
    [[ "$resolved" != "$dir" ]] || die "--prefix $prefix is $resolved, a directory of the system: provision makes" \
        "its prefix equal to this checkout and deletes everything else there. Hint: a directory of edge's own," \
        "e.g. --prefix ${resolved%/}/edge"
done
case "$resolved" in
    "$source_dir"/*) die "--prefix $prefix is inside this checkout ($source_dir): rsync would copy the checkout into" \
        "itself. Hint: a directory outside it, e.g. --prefix /opt/edge" ;;
esac
if [[ -e "$resolved" ]]; then
    [[ -d "$resolved" ]] || die "--prefix $prefix is not a directory. Hint: a new or empty directory, e.g." \
        "--prefix /opt/edge"
    edge_install "$resolved" || [[ -z "$(find "$resolved" -mindepth 1 -maxdepth 1 -print -quit)" ]] \
        || die "--prefix $prefix is not empty and holds no edge install (neither $marker nor an edge checkout):" \
               "provision makes its prefix equal to this checkout and would delete what is there. Hint: a new or" \
               "empty directory, e.g. --prefix ${resolved%/}/edge"
fi
unit=/etc/systemd/system/edge-runtime.service
dropin=/etc/systemd/system/edge-runtime.service.d/jtop.conf
edge="$prefix/.venv/bin/edge"
module=/usr/share/mender/modules/v3/edge-bundle

if (( dry_run )); then
    echo "provision-target: dry run: these commands would install edge from $source_dir into $prefix"
else
    echo "provision-target: installing edge from $source_dir into $prefix"
fi
run install -d -m 0755 "$prefix"
write "$prefix/$marker" "# scripts/provision-target.sh installed edge here: it keeps this directory equal to its checkout"
# an excluded file is kept by --delete too (rsync(1), --delete): the marker stays, also if the copy is interrupted
run rsync -a --delete --exclude "/$marker" --exclude .venv --exclude .git --exclude '__pycache__' "$source_dir/" \
    "$prefix/"
run "$prefix/scripts/setup.sh"
# sudo's secure_path and login shells know /usr/local/bin, not the venv: `edge status`, `sudo edge bundle ...`
run ln -sfn "$edge" /usr/local/bin/edge
run install -m 0644 "$source_dir/systemd/edge-sysusers.conf" /usr/lib/sysusers.d/edge.conf
run install -m 0644 "$source_dir/systemd/edge-tmpfiles.conf" /usr/lib/tmpfiles.d/edge.conf
run systemd-sysusers /usr/lib/sysusers.d/edge.conf
run systemd-tmpfiles --create /usr/lib/tmpfiles.d/edge.conf
# The jtop group (jetson-stats' socket) goes into the unit through a drop-in, and only where it exists: a
# SupplementaryGroups= group that does not exist fails the start (216/GROUP). A drop-in rather than `usermod -aG`:
# the unit's groups are then written down in one place, whatever /etc/group and Group= say.
if getent group jtop >/dev/null; then
    run install -d -m 0755 "$(dirname "$dropin")"
    write "$dropin" "# scripts/provision-target.sh: this board has the jtop group (jetson-stats)" "[Service]" \
        "SupplementaryGroups=jtop"
else
    echo "provision-target: note: no jtop group (jetson-stats' service is not installed): the supervisor will" \
         "read sysfs instead. Hint: sudo pip3 install jetson-stats, then run this again"
    run rm -f "$dropin"
fi
if [[ -n "$config" ]]; then
    run install -m 0640 -o root -g edge "$config" /etc/edge/config.yaml
elif [[ ! -f /etc/edge/config.yaml ]]; then
    run install -m 0640 -o root -g edge "$source_dir/systemd/config.yaml" /etc/edge/config.yaml
else
    echo "provision-target: keeping /etc/edge/config.yaml"
fi
run install -d -m 0750 -o edge -g edge /var/lib/edge
run runuser -u edge -- env EDGE_CACHE=/var/lib/edge "$edge" assets fetch
run_into "$unit" sed "s#/opt/edge/.venv/bin/edge#$edge#" "$source_dir/systemd/edge-runtime.service"
# Mender's Update Module for engine bundles: the client reads modules from this directory only (a fleet rollout,
# docs/operations.md); unused on a board without Mender's client
run install -d -m 0755 "$(dirname "$module")"
run_into "$module" sed "s#/opt/edge/.venv/bin/edge#$edge#" "$source_dir/scripts/mender/edge-bundle"
run chmod 0755 "$module"
run systemctl daemon-reload
if (( start )); then
    run systemctl enable --now edge-runtime      # returns once the daemon said READY=1 (Type=notify), or failed
    run systemctl is-active edge-runtime
    run runuser -u edge -- "$edge" status --control ipc:///run/edge/control.sock --timeout 30
else
    run systemctl enable edge-runtime
fi
if (( dry_run )); then
    echo "provision-target: dry run: nothing was installed or changed"
else
    echo "provision-target: done. Logs: journalctl -u edge-runtime -f; state: sudo edge status"
fi
