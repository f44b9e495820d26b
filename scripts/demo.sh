#!/usr/bin/env bash
# One command for newcomers on a fresh Debian 12 (Rust and Node.js installed): installs what
# is missing, builds tokctl, starts the bundled local IdP (oidc-provider on 127.0.0.1) and a
# private keychain (gnome-keyring in its own D-Bus session), then shows a real client
# credentials token, a real password-grant login and `tokctl status`.
# Everything runs in a temporary HOME; nothing of yours is touched. Ctrl-C ends it.
set -euo pipefail
cd "$(dirname "$0")/.."

need=""
for p in gnome-keyring:gnome-keyring-daemon libsecret-tools:secret-tool dbus:dbus-run-session dbus-x11:dbus-launch; do
    command -v "${p#*:}" >/dev/null 2>&1 || need="$need ${p%%:*}"
done
if [ -n "$need" ]; then
    echo "==> installing$need" >&2
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need
fi
[ -d tests/idp/node_modules/oidc-provider ] || { echo "==> npm ci --prefix tests/idp" >&2; npm ci --prefix tests/idp --no-audit --no-fund; }
echo "==> cargo build --release" >&2
cargo build --release -q -p tokctl -p tokctld
# The rest runs in a throw-away HOME with its own keychain and the bundled IdP.
exec ./scripts/sandbox.sh -- bash -c '
set -euo pipefail
echo "==> local IdP at $ISSUER"
cat > "$XDG_CONFIG_HOME/tokctl/config.toml" <<TOML
default_profile = "ci"

[profile.ci]
issuer = "$ISSUER"
client_id = "cc-basic"
grant = "client_credentials"

[profile.alice]
issuer = "$ISSUER"
client_id = "password-cli"
grant = "password"
scopes = ["openid", "offline_access", "api"]
TOML
echo "==> config: $XDG_CONFIG_HOME/tokctl/config.toml"
echo "==> printf %s cc-basic-secret | tokctl secret set ci      (stdin only; kept in the keychain)"
printf %s cc-basic-secret | tokctl secret set ci
echo "==> tokctl get ci --format json                          (starts tokctld on first use)"
tokctl get ci --format json
echo "==> printf %s alice-password | tokctl login alice --username alice --password-stdin"
printf %s password-cli-secret | tokctl secret set alice
printf %s alice-password | tokctl login alice --username alice --password-stdin
echo "==> tokctl get alice --format header"
tokctl get alice --format header | cut -c1-40; echo "…"
echo "==> tokctl status"
tokctl status
echo "==> secret-tool search service tokctl (what the keychain holds; values hidden)"
secret-tool search --all service tokctl 2>&1 | grep -E "^(label|attribute)" || true
'
