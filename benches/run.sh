#!/usr/bin/env bash
# Issue #8: tokctl side by side with the tools users would pick instead, in one run.
# Installs what is missing (Debian packages, npm for the local IdP), builds release
# binaries, then runs benches/inner.sh inside scripts/sandbox.sh (private HOME, private
# keychain, the bundled local IdP) and writes benches/results/latest.md and latest.svg.
#
#   benches/run.sh [--quick] [--idle-secs N] [--no-install] [--only LIST]
#
#   --quick        smoke run: few repetitions, short windows, idle 10 s (about 3 minutes)
#   --idle-secs N  idle window per daemon for the wake-up/RSS measurement (default 60)
#   --no-install   do not apt-get/npm install; fail if something is missing
#   --only LIST    only these sections (comma-separated: process,load,storm,refresh,cold,idle)
#
# docs/benchmarks.md explains every measurement and how to read the results.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
QUICK=0
IDLE_SECS=""
INSTALL=1
ONLY=""
while [ $# -gt 0 ]; do
    case $1 in
        --quick) QUICK=1 ;;
        --idle-secs) IDLE_SECS=$2; shift ;;
        --no-install) INSTALL=0 ;;
        --only) ONLY=$2; shift ;;
        *) echo "usage: $0 [--quick] [--idle-secs N] [--no-install] [--only LIST]" >&2; exit 2 ;;
    esac
    shift
done
[ -n "$IDLE_SECS" ] || { [ "$QUICK" = 1 ] && IDLE_SECS=10 || IDLE_SECS=60; }

# Debian package : a program it provides.
need=""
for p in hyperfine:hyperfine oidc-agent:oidc-agent gh:gh git:git gnome-keyring:gnome-keyring-daemon \
         libsecret-tools:secret-tool dbus:dbus-run-session dbus-x11:dbus-launch curl:curl \
         python3:python3 procps:ps; do
    command -v "${p#*:}" >/dev/null 2>&1 || need="$need ${p%%:*}"
done
if [ -n "$need" ]; then
    [ "$INSTALL" = 1 ] || { echo "missing Debian packages:$need" >&2; exit 2; }
    echo "==> apt-get install$need" >&2
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need
fi
command -v node >/dev/null || { echo "needs Node.js 20+ for the local IdP (tests/idp)" >&2; exit 2; }
if [ ! -d tests/idp/node_modules/oidc-provider ]; then
    [ "$INSTALL" = 1 ] || { echo "run: npm ci --prefix tests/idp" >&2; exit 2; }
    npm ci --prefix tests/idp --no-audit --no-fund
fi

# The binaries live in a private directory for the whole run, so a concurrent
# `cargo build` cannot swap them mid-measurement.
W=$(mktemp -d /tmp/tokctl-bench.XXXXXX)
trap 'rm -rf "$W"' EXIT
mkdir -p "$W/bin" "$W/bin-default"
echo "==> cargo build --release (tokctl, tokctld, tokctl-bench)" >&2
cargo build --release -q -p tokctl -p tokctld -p tokctl-bench
cp target/release/tokctl "$W/bin-default/tokctl"
cp target/release/tokctld target/release/tokctl-bench "$W/bin/"
cp target/release/tokctld "$W/bin-default/"
# The client as docs/benchmarks.md recommends installing it: glibc linked statically
# (no dynamic loader work at each start). Only the final link differs, so this reuses
# every compiled dependency; the plain build is restored afterwards.
echo "==> the statically linked client (cargo rustc … -C target-feature=+crt-static)" >&2
cargo rustc --release -q -p tokctl --bin tokctl -- -C target-feature=+crt-static
cp target/release/tokctl "$W/bin/tokctl"
cargo build --release -q -p tokctl

mkdir -p benches/results
# Long-lived access tokens: no background refresh falls inside a measurement.
./scripts/sandbox.sh --idp-config '{"access_token_ttl":3600}' -- \
    env W="$W" QUICK="$QUICK" IDLE_SECS="$IDLE_SECS" ONLY="$ONLY" bash "$ROOT/benches/inner.sh"
python3 benches/report.py "$W/results" benches/results
echo "==> wrote benches/results/latest.md and benches/results/latest.svg" >&2
