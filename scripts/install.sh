#!/usr/bin/env bash
# Installs tokctl under a prefix: the binaries, the git/docker helper links, the man page,
# shell completions, and the service definition (systemd user units on Linux, a
# LaunchAgent on macOS) with the path of the installed tokctld filled in.
#
#   scripts/install.sh                       # builds (release) and installs into ~/.local
#   PREFIX=/usr/local sudo -E scripts/install.sh
#   scripts/install.sh --from target/debug   # install binaries that are already built
#
# Variables: PREFIX (default ~/.local), DESTDIR (staging root for packagers; paths written
# into the units stay without it), UNITDIR (systemd user units; default
# $PREFIX/share/systemd/user for a prefix in $HOME, else $PREFIX/lib/systemd/user, both
# searched by `systemctl --user`). Enabling the service is left to you (see the end).
set -euo pipefail

usage() {
    echo "usage: scripts/install.sh [--from DIR]   (PREFIX, DESTDIR, UNITDIR from the environment)" >&2
    exit 2
}

FROM=""
while [ $# -gt 0 ]; do
    case "$1" in
        --from) [ $# -ge 2 ] || usage; FROM="$2"; shift 2 ;;
        -h|--help) usage ;;
        *) echo "install.sh: unknown argument: $1" >&2; usage ;;
    esac
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PREFIX="${PREFIX:-$HOME/.local}"
DESTDIR="${DESTDIR:-}"
case "$PREFIX" in
    /*) ;;
    *) echo "install.sh: PREFIX must be an absolute path, got $PREFIX" >&2; exit 2 ;;
esac
BINDIR="$PREFIX/bin"
MANDIR="$PREFIX/share/man/man1"
if [ -z "${UNITDIR:-}" ]; then
    case "$PREFIX/" in
        "$HOME"/*) UNITDIR="$PREFIX/share/systemd/user" ;;
        *) UNITDIR="$PREFIX/lib/systemd/user" ;;
    esac
fi

if [ -z "$FROM" ]; then
    echo "==> cargo build --release --locked -p tokctl -p tokctld" >&2
    (cd "$ROOT" && cargo build --release --locked -p tokctl -p tokctld)
    if [ "$(uname -s)" = Linux ]; then
        # The client starts on every `tokctl get`: linked statically against glibc it skips
        # the dynamic loader, about half its start-up cost (docs/benchmarks.md). The flag
        # goes to the final link only; in RUSTFLAGS it would break proc-macro crates.
        echo "==> cargo rustc --release -p tokctl --bin tokctl -- -C target-feature=+crt-static" >&2
        (cd "$ROOT" && cargo rustc --release --locked -p tokctl --bin tokctl -- -C target-feature=+crt-static)
    fi
    FROM="$ROOT/target/release"
fi
for b in tokctl tokctld; do
    if [ ! -x "$FROM/$b" ]; then
        echo "install.sh: $FROM/$b is missing; build it first or drop --from" >&2
        exit 1
    fi
done

echo "==> installing into ${DESTDIR}${PREFIX}" >&2
install -d -m 0755 "$DESTDIR$BINDIR" "$DESTDIR$MANDIR"
install -m 0755 "$FROM/tokctl" "$FROM/tokctld" "$DESTDIR$BINDIR/"
# The helpers are tokctl itself under another name (it dispatches on argv[0]).
for helper in git-credential-tokctl docker-credential-tokctl; do
    ln -sfn tokctl "$DESTDIR$BINDIR/$helper"
done

"$DESTDIR$BINDIR/tokctl" man > "$DESTDIR$MANDIR/tokctl.1"
chmod 0644 "$DESTDIR$MANDIR/tokctl.1"
install -d -m 0755 "$DESTDIR$PREFIX/share/bash-completion/completions" \
    "$DESTDIR$PREFIX/share/zsh/site-functions" "$DESTDIR$PREFIX/share/fish/vendor_completions.d"
"$DESTDIR$BINDIR/tokctl" completions bash > "$DESTDIR$PREFIX/share/bash-completion/completions/tokctl"
"$DESTDIR$BINDIR/tokctl" completions zsh > "$DESTDIR$PREFIX/share/zsh/site-functions/_tokctl"
"$DESTDIR$BINDIR/tokctl" completions fish > "$DESTDIR$PREFIX/share/fish/vendor_completions.d/tokctl.fish"

# sed replacement text: escape the characters sed treats specially.
sed_escape() { printf '%s' "$1" | sed -e 's/[\/&|]/\\&/g'; }

case "$(uname -s)" in
    Darwin)
        # The socket path tokctl computes: $TOKCTL_SOCKET, else $XDG_RUNTIME_DIR/tokctl/…,
        # else $TMPDIR/tokctl-$UID/… (macOS has a per-user TMPDIR). launchd binds it, so
        # its directory has to exist, private, before the agent loads.
        if [ -n "${TOKCTL_SOCKET:-}" ]; then
            SOCKET="$TOKCTL_SOCKET"
        elif [ -n "${XDG_RUNTIME_DIR:-}" ]; then
            SOCKET="$XDG_RUNTIME_DIR/tokctl/tokctld.sock"
        else
            SOCKET="${TMPDIR:-/tmp}"
            SOCKET="${SOCKET%/}/tokctl-$(id -u)/tokctld.sock"
        fi
        mkdir -p -m 0700 "$(dirname "$SOCKET")"
        AGENTS="${LAUNCH_AGENTS_DIR:-$HOME/Library/LaunchAgents}"
        install -d -m 0755 "$DESTDIR$AGENTS" "$DESTDIR$HOME/Library/Logs"
        sed -e "s|@TOKCTLD@|$(sed_escape "$BINDIR/tokctld")|g" \
            -e "s|@SOCKET@|$(sed_escape "$SOCKET")|g" \
            -e "s|@HOME@|$(sed_escape "$HOME")|g" \
            "$ROOT/launchd/dev.tokctl.tokctld.plist" > "$DESTDIR$AGENTS/dev.tokctl.tokctld.plist"
        chmod 0644 "$DESTDIR$AGENTS/dev.tokctl.tokctld.plist"
        cat >&2 <<EOF
==> done. Start the agent now and at every login:
    launchctl bootstrap gui/\$(id -u) $AGENTS/dev.tokctl.tokctld.plist
    tokctl doctor
EOF
        ;;
    *)
        install -d -m 0755 "$DESTDIR$UNITDIR"
        install -m 0644 "$ROOT/systemd/tokctld.socket" "$DESTDIR$UNITDIR/tokctld.socket"
        sed -e "s|^ExecStart=.*|ExecStart=$(sed_escape "$BINDIR/tokctld")|" \
            "$ROOT/systemd/tokctld.service" > "$DESTDIR$UNITDIR/tokctld.service"
        chmod 0644 "$DESTDIR$UNITDIR/tokctld.service"
        cat >&2 <<EOF
==> done. Start the agent now and at every login (socket activation):
    systemctl --user daemon-reload
    systemctl --user enable --now tokctld.socket
    tokctl doctor
Make sure $BINDIR is on your PATH, and $MANDIR on MANPATH if man does not find tokctl(1).
EOF
        ;;
esac
