#!/bin/sh
# Container entrypoint: run `trtserve serve` as this process (exec), so the server is PID 1,
# receives SIGTERM itself, drains for TRTSERVE_GRACE_PERIOD_S and exits 0. The server reads
# every setting from TRTSERVE_* variables (TRTSERVE_GRPC_PORT, TRTSERVE_REPOSITORY, ...).
#
# Extra variables read here:
#   TRTSERVE_CONFIG             a TOML settings file, passed as --config (e.g. a ConfigMap)
#   TRTSERVE_BAKED_RUNTIMES_DIR lean runtimes shipped in the image; each version missing from
#                               TRTSERVE_RUNTIMES_DIR is linked into it, so a runtimes volume
#                               adds versions to the image's instead of hiding them
#   TRTSERVE_TOKENS_MOUNT       where a bearer-tokens file may be mounted (an optional Secret):
#                               when the file is there and TRTSERVE_AUTH_TOKENS_FILE is not set,
#                               the server uses it; when it is not, admin calls stay refused
#
# Arguments starting with "-" are flags of `trtserve serve`; any other first argument is a
# trtserve command (`runtimes list`, `inspect model.plan`, ...).
set -eu

seed_runtimes() {
    baked=${TRTSERVE_BAKED_RUNTIMES_DIR:-}
    target=${TRTSERVE_RUNTIMES_DIR:-}
    [ -n "$baked" ] && [ -n "$target" ] && [ -d "$baked" ] || return 0
    [ "$(cd "$baked" && pwd -P)" != "$(mkdir -p "$target" && cd "$target" && pwd -P)" ] || return 0
    for version in "$baked"/*/; do
        [ -d "$version" ] || continue
        name=$(basename "$version")
        if [ ! -e "$target/$name" ]; then
            # A read-only runtimes volume keeps what it has; the server reports what is missing.
            ln -s "${version%/}" "$target/$name" 2>/dev/null \
                || echo "docker-entrypoint: cannot link lean runtime $name into $target" >&2
        fi
    done
}

use_tokens_mount() {
    mount=${TRTSERVE_TOKENS_MOUNT:-}
    [ -n "$mount" ] && [ -z "${TRTSERVE_AUTH_TOKENS_FILE:-}" ] && [ -f "$mount" ] || return 0
    TRTSERVE_AUTH_TOKENS_FILE=$mount
    export TRTSERVE_AUTH_TOKENS_FILE
}

seed_runtimes
use_tokens_mount
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
    if [ -n "${TRTSERVE_CONFIG:-}" ]; then
        set -- --config "$TRTSERVE_CONFIG" "$@"
    fi
    exec trtserve serve "$@"
fi
exec trtserve "$@"
