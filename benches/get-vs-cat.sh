#!/usr/bin/env bash
# Benchmark 1 (first part) of docs/benchmarks.md: `tokctl get` with a cached token, as a
# whole process, against `cat` of a file holding a token of the same size (the floor) and
# `true` (process start alone). Runs in a private HOME with a private keychain and the
# bundled local IdP; prints hyperfine's Markdown table and the ratios.
#
#   benches/get-vs-cat.sh [RUNS]        (default 300 runs per command, alternating warm-up)
#
# Needs: hyperfine, gnome-keyring, dbus (Debian), node with `npm ci --prefix tests/idp`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=${1:-300}
command -v hyperfine >/dev/null || { echo "needs hyperfine (apt-get install hyperfine)" >&2; exit 2; }
[ -d tests/idp/node_modules/oidc-provider ] || npm ci --prefix tests/idp --no-audit --no-fund
cargo build --release -q -p tokctl -p tokctld
# Long-lived tokens, so no refresh falls inside the measurement.
exec ./scripts/sandbox.sh --idp-config '{"access_token_ttl":3600}' -- env RUNS="$RUNS" bash -c '
set -euo pipefail
printf "[profile.ci]\nissuer = \"%s\"\nclient_id = \"cc-basic\"\ngrant = \"client_credentials\"\n" "$ISSUER" \
    > "$XDG_CONFIG_HOME/tokctl/config.toml"
printf %s cc-basic-secret | tokctl secret set ci 2>/dev/null
tokctl get ci > "$SANDBOX/token"
echo "token: $(wc -c < "$SANDBOX/token") bytes; $(nproc) cores; load $(cut -d" " -f1-3 /proc/loadavg)" >&2
hyperfine -N --warmup 50 --runs "$RUNS" --export-markdown "$SANDBOX/table.md" --export-json "$SANDBOX/r.json" \
    "true" "cat $SANDBOX/token" "tokctl get ci" >/dev/null
cat "$SANDBOX/table.md"
python3 - "$SANDBOX/r.json" <<PY
import json, sys
r = {x["command"].split()[0]: x for x in json.load(open(sys.argv[1]))["results"]}
cat = r["cat"]["median"]
for name in ("true", "cat", "tokctl"):
    m = r[name]["median"]
    print(f"{name:7s} median {m*1000:7.3f} ms  = {m/cat:5.2f} x cat")
PY
'
