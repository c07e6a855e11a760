#!/usr/bin/env bash
# Flash a Jetson from a host PC with NVIDIA's L4T tools, after checking what usually goes wrong first:
# the Linux_for_Tegra directory (its tools and a populated rootfs), the board configuration name, and a
# Jetson in USB recovery mode. --dry-run checks the same and prints the exact command instead of running it.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/flash-jetson.sh --l4t DIR --board CONFIG [--storage internal|nvme] [--dry-run]

  --l4t DIR       the Linux_for_Tegra directory of the JetPack release to flash (from SDK Manager or the
                  L4T driver package, with the sample root file system applied)
  --board CONFIG  the board configuration, the name of DIR/CONFIG.conf (e.g. jetson-orin-nano-devkit,
                  jetson-agx-orin-devkit)
  --storage S     internal (default: the module's eMMC or the storage the configuration names) or nvme
                  (the root file system on an NVMe SSD, QSPI boot firmware on the module)
  --dry-run       check everything and print the command; flash nothing
  --help          this text
  --              the end of the options

Put the Jetson in recovery mode first (hold REC, press RESET or power on) and connect its recovery USB
port to this PC; `lsusb` then shows an NVIDIA Corp. APX device, USB ID 0955:7x23 for an Orin (0955:7020 is a
booted Jetson, not one in recovery mode). Flashing erases it.
EOF
}

die() { echo "flash-jetson: $*" >&2; exit 1; }

l4t="" board="" storage=internal dry_run=0
# shellcheck source=scripts/lib/options.sh
source "$(dirname "$0")/lib/options.sh"
while (( $# )); do
    case "$1" in
        --l4t) l4t=$(value_of --l4t "a directory" "$@"); shift 2 ;;
        --board) board=$(value_of --board "a configuration name" "$@"); shift 2 ;;
        --storage) storage=$(value_of --storage "internal or nvme" "$@"); shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        --help|-h) usage; exit 0 ;;
        --) shift; break ;;
        *) echo "flash-jetson: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
(( $# == 0 )) || { echo "flash-jetson: unexpected argument '$1': it takes options only" >&2; usage >&2; exit 2; }
[[ -n "$l4t" && -n "$board" ]] || { usage >&2; exit 2; }
[[ "$storage" == internal || "$storage" == nvme ]] || die "--storage is internal or nvme, not '$storage'"

[[ -d "$l4t" ]] || die "no directory $l4t. Hint: give --l4t the Linux_for_Tegra directory SDK Manager made"
for part in bootloader kernel nv_tegra rootfs flash.sh tools/kernel_flash/l4t_initrd_flash.sh; do
    [[ -e "$l4t/$part" ]] || die "$l4t has no $part: it is not a Linux_for_Tegra directory (or an incomplete one)"
done
[[ -d "$l4t/rootfs/etc" ]] || die "$l4t/rootfs is empty. Hint: extract the sample root file system there, then" \
    "run sudo ./apply_binaries.sh in $l4t"
if [[ ! -f "$l4t/$board.conf" ]]; then
    known=$(cd "$l4t" && find . -maxdepth 1 -name 'jetson-*.conf' -printf '%f\n' | sed 's/\.conf$//' | sort \
        | tr '\n' ' ')
    die "no board configuration $board.conf in $l4t. Known here: ${known:-none}"
fi

first() {   # the first of the given paths (relative to $l4t) that exists
    local path
    for path in "$@"; do [[ -e "$l4t/$path" ]] && { echo "$path"; return 0; }; done
    return 1
}

command=(sudo ./tools/kernel_flash/l4t_initrd_flash.sh)
if [[ "$storage" == nvme ]]; then
    layout=$(first tools/kernel_flash/flash_l4t_t234_nvme.xml tools/kernel_flash/flash_l4t_external.xml) \
        || die "$l4t has no external-storage partition layout (tools/kernel_flash/flash_l4t_*nvme*.xml)"
    qspi=$(first bootloader/generic/cfg/flash_t234_qspi.xml bootloader/t186ref/cfg/flash_t234_qspi.xml) \
        || die "$l4t has no QSPI layout (bootloader/*/cfg/flash_t234_qspi.xml)"
    command+=(--external-device nvme0n1p1 -c "$layout" -p "-c $qspi" --showlogs --network usb0)
fi
command+=("$board" internal)

# An Orin in recovery mode (USB RCM) is 0955:7x23: 7023 and 7223 AGX Orin, 7323 and 7423 Orin NX 16/8 GB, 7523 and
# 7623 Orin Nano 8/4 GB (the product IDs L4T's tools/kernel_flash/l4t_initrd_flash.sh looks for; the Jetson Linux
# Developer Guide's Quick Start checks recovery mode with lsusb the same way). Other NVIDIA IDs are not a board to
# flash: 0955:7020 is a booted Jetson's USB gadget (L4T running on Tegra), 0955:7045 the AGX devkit's board
# automation port.
recovery="" booted=""
if command -v lsusb >/dev/null; then
    devices=$(lsusb)
    recovery=$(grep -Ei 'ID 0955:7[0-9a-f]23( |$)' <<<"$devices" || true)
    booted=$(grep -Ei 'ID 0955:7020( |$)' <<<"$devices" || true)
    why="no Jetson Orin in recovery mode on USB (lsusb shows no 0955:7x23 device)"
    [[ -z "$booted" ]] || why+="; 0955:7020 is a Jetson that booted, not one in recovery mode"
    hint="hold REC, press RESET (or power on), and connect the recovery USB port"
else
    why="lsusb is missing, so a Jetson in recovery mode cannot be seen"
    hint="install usbutils (sudo apt-get install usbutils)"
fi
if [[ -z "$recovery" ]]; then
    (( dry_run )) || die "$why. Hint: $hint"
    echo "flash-jetson: note: $why. Hint: $hint"
else
    echo "flash-jetson: recovery device: ${recovery#*ID }"
fi

printf -v shown '%q ' "${command[@]}"
if (( dry_run )); then
    echo "flash-jetson: would run in $l4t:"
    echo "  ${shown% }"
    exit 0
fi
echo "flash-jetson: running in $l4t: ${shown% }"
cd "$l4t"
exec "${command[@]}"
