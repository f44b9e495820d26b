#!/usr/bin/env bash
# User-space instructions tokctld executes per cached-token answer, counted by valgrind's
# callgrind: unlike req/s on a small shared machine, the count barely moves between runs,
# so a change of a few percent in the daemon's own CPU cost shows. Kernel time (the
# socket syscalls, about 60 % of the daemon's CPU under load) is not in it.
#
#   benches/instructions.sh [REV...]
#
# With no REV it measures the working tree; with REVs (anything `git worktree add`
# accepts) it measures each, for an A/B. Each daemon serves a 4 s keep-alive load from
# one connection (tokctl-bench load) after a warm-up; the callgrind counters are zeroed
# before the load and dumped after it. Needs valgrind (Debian `valgrind`) and what
# benches/run.sh needs. tokctld is built with `--cfg rustix_use_libc` into
# target/instructions: rustix's own vDSO lookup does not run under valgrind.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
command -v valgrind >/dev/null || { echo "needs valgrind: apt-get install valgrind" >&2; exit 2; }
W=$(mktemp -d /tmp/tokctl-instr.XXXXXX)
trap 'git -C "$ROOT" worktree prune; rm -rf "$W"' EXIT
cargo build --release -q -p tokctl -p tokctl-bench
build() { # SRC DEST: tokctld from the tree at SRC, with tokctl and the load generator
    mkdir -p "$2"
    (cd "$1" && RUSTFLAGS="--cfg rustix_use_libc" CARGO_PROFILE_RELEASE_STRIP=false \
        cargo build --release -q -p tokctld --target-dir "$ROOT/target/instructions")
    cp "$ROOT/target/instructions/release/tokctld" "$ROOT/target/release/tokctl" \
        "$ROOT/target/release/tokctl-bench" "$2/"
}
dirs=()
if [ $# -eq 0 ]; then
    build "$ROOT" "$W/worktree"
    dirs+=("$W/worktree")
else
    for rev in "$@"; do
        name=$(printf %s "$rev" | tr -c 'A-Za-z0-9._-' _)
        git worktree add -q --detach "$W/src-$name" "$rev"
        build "$W/src-$name" "$W/$name"
        git worktree remove --force "$W/src-$name"
        dirs+=("$W/$name")
    done
fi
"$ROOT/scripts/sandbox.sh" -- env DIRS="${dirs[*]}" OUT="$W" bash -c '
set -euo pipefail
cat > "$XDG_CONFIG_HOME/tokctl/config.toml" <<TOML
default_profile = "ci"
[profile.ci]
issuer = "$ISSUER"
client_id = "cc-basic"
grant = "client_credentials"
TOML
Q="/v1/token?profile=ci&min_ttl=30"
printf "| build | requests | instructions | per answer |\n|:---|---:|---:|---:|\n"
for d in $DIRS; do
    n=$(basename "$d")
    S=$OUT/$n.sock
    TOKCTL_SOCKET=$S valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.$n" \
        "$d/tokctld" >/dev/null 2>"$OUT/vg.$n.log" & vp=$!
    until [ -S "$S" ]; do sleep 0.05; done
    printf %s cc-basic-secret | TOKCTL_SOCKET=$S "$d/tokctl" secret set ci 2>/dev/null
    TOKCTL_SOCKET=$S "$d/tokctl" get ci >/dev/null
    "$d/tokctl-bench" load "$S" "$Q" 1 1 keepalive >/dev/null
    callgrind_control -z "$vp" >/dev/null 2>&1
    r=$("$d/tokctl-bench" load "$S" "$Q" 1 4 keepalive | python3 -c "import json,sys; print(json.load(sys.stdin)[\"requests\"])")
    callgrind_control -d "$vp" >/dev/null 2>&1
    f=$(ls -t "$OUT"/cg."$n"* | head -1)
    until ir=$(callgrind_annotate "$f" 2>/dev/null | awk "/PROGRAM TOTALS/{gsub(\",\",\"\",\$1); print \$1; exit}") && [ -n "$ir" ]; do sleep 0.2; done
    printf "| %s | %d | %d | %d |\n" "$n" "$r" "$ir" $((ir / r))
    kill "$vp"; wait "$vp" 2>/dev/null || true
done
'
