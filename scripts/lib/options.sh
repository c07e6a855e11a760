# shellcheck shell=bash
# Sourced by the field scripts: the value of an option that takes one.
# value_of OPTION WHAT ARGS...: prints the word after OPTION (ARGS starts with OPTION itself); where there is none, or
# it is empty, it says so on stderr and returns 2, which ends the script under `set -e` as a usage error.
value_of() {
    local option=$1 what=$2
    shift 2
    if (( $# < 2 )) || [[ -z "$2" ]]; then
        echo "$(basename "$0" .sh): $option needs $what (see --help)" >&2
        return 2
    fi
    printf '%s' "$2"
}
