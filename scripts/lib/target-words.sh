# shellcheck shell=bash
# Sourced by deploy-bundle.sh and rollback.sh. The words they send to a target go to ssh, sudo and the remote shell
# in one string, so each must be plain; none may start with '-' (it would be an option of ssh, rsync or sudo: --edge
# -s is `sudo -s`, a root shell); --edge is an absolute path or a command name without '=' (sudo takes a NAME=value
# word before the command for its environment unless it starts with '/': sudo 1.9, src/parse_args.c, is_envar; so
# does the remote shell); --health-timeout is whole seconds up to the longest start the unit allows (START_CAP_S in
# edge/daemon/systemd.py; the edge CLI itself takes up to a day).
host_word='^[A-Za-z0-9._+@][A-Za-z0-9._+@-]*$'  # no '/' (rsync would take /tmp/x for a local path), no ':' (its
                                              # host:path separator); an IPv6 literal goes in ~/.ssh/config
command_word='^(/[A-Za-z0-9._+/@:=-]*|[A-Za-z0-9_][A-Za-z0-9._+-]*)$'
max_timeout=1800

# check_target_words HOST EDGE TIMEOUT DEFAULT_EDGE: `die` (the script's own) with the rule and a hint when one is not
check_target_words() {
    [[ "$1" =~ $host_word ]] || die "HOST '$1' is not an ssh destination: a plain word (letters, digits, ._+@-)" \
        "not starting with '-', without '/' or ':' (rsync would read those as a local path or a host:path)." \
        "Hint: user@host, or a Host of ~/.ssh/config"
    [[ "$2" =~ $command_word ]] || die "--edge '$2' is neither an absolute path nor a command name (letters, digits," \
        "._+-; not starting with '-' or '.'): sudo and the target's shell would take it for an option or a variable." \
        "Hint: --edge $4"
    [[ "$3" =~ ^[1-9][0-9]{0,3}$ && $3 -le max_timeout ]] || die "--health-timeout '$3' is not a whole number of" \
        "seconds from 1 to $max_timeout. Hint: --health-timeout 120 (the default)"
}
