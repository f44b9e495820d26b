#!/usr/bin/env bash
# Runs a command inside a throw-away tokctl world: a private HOME and XDG dirs, a private
# D-Bus session with an unlocked gnome-keyring (the keychain), and the bundled local IdP
# (tests/idp, oidc-provider on 127.0.0.1). Nothing of the caller's is read or touched;
# everything is removed afterwards. Used by scripts/demo.sh and benches/.
#
#   scripts/sandbox.sh [--idp-config JSON] -- COMMAND [ARG]...
#
# COMMAND sees ISSUER (the IdP's issuer URL), SANDBOX (the private root) and PATH with
# target/release first. Needs gnome-keyring, dbus, dbus-x11 and node with
# `npm ci --prefix tests/idp` done.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
IDP_CONFIG='{}'
if [ "${1:-}" = "--idp-config" ]; then IDP_CONFIG=$2; shift 2; fi
[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || { echo "usage: $0 [--idp-config JSON] -- COMMAND..." >&2; exit 2; }

S=$(mktemp -d /tmp/tokctl-sandbox.XXXXXX)
mkdir -p "$S"/{home,config/tokctl,state,data} && mkdir -m700 "$S/run"
printf '%s\n' "$IDP_CONFIG" > "$S/idp.json"
exec env -i PATH="$ROOT/target/release:$PATH" HOME="$S/home" XDG_CONFIG_HOME="$S/config" \
    XDG_STATE_HOME="$S/state" XDG_DATA_HOME="$S/data" XDG_RUNTIME_DIR="$S/run" \
    TERM="${TERM:-dumb}" SANDBOX="$S" ROOT="$ROOT" \
    dbus-run-session -- bash -c '
set -euo pipefail
pids=()
cleanup() {
    # tokctld may have been started by the command (autostart): end it by its own pid.
    if pid=$(tokctl status --json 2>/dev/null | sed -n "s/.*\"pid\": *\([0-9]*\).*/\1/p") && [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
    fi
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$SANDBOX"
}
trap cleanup EXIT
printf %s sandbox | gnome-keyring-daemon --foreground --unlock --components=secrets >/dev/null 2>&1 & pids+=($!)
until dbus-send --session --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus \
      org.freedesktop.DBus.NameHasOwner string:org.freedesktop.secrets 2>/dev/null | grep -q true; do sleep 0.05; done
node "$ROOT/tests/idp/idp.mjs" "$SANDBOX/idp.json" > "$SANDBOX/idp.log" 2> "$SANDBOX/idp.err" & pids+=($!)
until ISSUER=$(head -n1 "$SANDBOX/idp.log" 2>/dev/null | sed -n "s/.*\"issuer\": *\"\([^\"]*\)\".*/\1/p") && [ -n "$ISSUER" ]; do
    kill -0 "${pids[1]}" 2>/dev/null || { echo "the local IdP did not start:" >&2; cat "$SANDBOX/idp.err" >&2; exit 1; }
    sleep 0.1
done
export ISSUER
"$@"
' sandbox "$@"
