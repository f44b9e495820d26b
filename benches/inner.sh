#!/usr/bin/env bash
# The measurements of benches/run.sh; runs inside scripts/sandbox.sh (private HOME and
# keychain, the local IdP at $ISSUER). Writes one JSON file per measurement to $W/results;
# benches/report.py turns them into the table and chart. Never prints a token: the peers
# hold dummy tokens, and tokctl's output goes to /dev/null or is only counted.
#
# Environment from run.sh: W (private work dir with bin/ and bin-default/), QUICK (1 = smoke
# run), IDLE_SECS.
set -euo pipefail
# 1000 concurrent callers need more descriptors than the usual soft limit of 1024 (in the
# load generator, and in the daemon, which inherits this limit when it is autostarted).
ulimit -Sn 8192 2>/dev/null || ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true
export PATH="$W/bin:$PATH"
R=$W/results
mkdir -p "$R"
B=tokctl-bench
SOCK=$XDG_RUNTIME_DIR/tokctl/tokctld.sock
if [ "$QUICK" = 1 ]; then
    RUNS=30 WARMUP=5 SLOW_RUNS=3 LOAD_SECS=2 LOAD_ROUNDS=1 REFRESHES=5 STORMS=1 COLD=3 HELD=10
else
    RUNS=1000 WARMUP=50 SLOW_RUNS=10 LOAD_SECS=1 LOAD_ROUNDS=9 REFRESHES=100 STORMS=5 COLD=15 HELD=100
fi
log() { echo "==> $*" >&2; }
# ONLY=process,load,storm,refresh,cold,idle runs just those sections (empty: all).
want() { [ -z "${ONLY:-}" ] || [[ ",$ONLY," == *",$1,"* ]]; }

# Everything started here is ended here, by pid.
pids=()
cleanup() {
    oidc-agent -k >/dev/null 2>&1 || true
    # The agent forks a helper of its own; a leftover pair was seen after a run.
    if [ -n "${OIDCD_PID:-}" ]; then
        for c in $(ps -o pid= --ppid "$OIDCD_PID" 2>/dev/null); do kill "$c" 2>/dev/null || true; done
    fi
    [ -n "${GIT_CACHE_SOCK:-}" ] && git credential-cache --socket "$GIT_CACHE_SOCK" exit 2>/dev/null || true
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

# pid of the daemon answering on $1 (empty when none).
daemon_pid() {
    TOKCTL_SOCKET=$1 TOKCTL_NO_AUTOSTART=1 tokctl status --json 2>/dev/null |
        sed -n 's/.*"pid": *\([0-9]*\).*/\1/p'
}
wait_gone() { while kill -0 "$1" 2>/dev/null; do sleep 0.01; done; }

# ---------------------------------------------------------------- setup
# A second IdP without refresh-token rotation, for the rotation comparison.
printf '{"access_token_ttl":3600,"rotate_refresh_token":false}\n' > "$W/idp2.json"
node "$ROOT/tests/idp/idp.mjs" "$W/idp2.json" > "$W/idp2.log" 2> "$W/idp2.err" & pids+=($!)
until ISSUER2=$(head -n1 "$W/idp2.log" 2>/dev/null | sed -n 's/.*"issuer": *"\([^"]*\)".*/\1/p') && [ -n "$ISSUER2" ]; do
    kill -0 "${pids[0]}" 2>/dev/null || { cat "$W/idp2.err" >&2; exit 1; }
    sleep 0.1
done

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

[profile.alice_norot]
issuer = "$ISSUER2"
client_id = "password-cli"
grant = "password"
scopes = ["openid", "offline_access", "api"]
TOML
log "tokctl: secrets and logins (local IdPs at $ISSUER and $ISSUER2)"
printf %s cc-basic-secret | tokctl secret set ci 2>/dev/null
for p in alice alice_norot; do
    printf %s password-cli-secret | tokctl secret set "$p" 2>/dev/null
    printf %s alice-password | tokctl login "$p" --username alice --password-stdin >/dev/null 2>&1
done
TOKEN_LEN=$(($(tokctl get ci | wc -c) - 1))
BODY_LEN=$(($(tokctl get ci --format json | wc -c) - 1))
# The floor: `cat` of a file holding a dummy token of the same length.
head -c "$TOKEN_LEN" /dev/zero | tr '\0' x > "$W/dummy-token" && echo >> "$W/dummy-token"

log "oidc-agent: own agent, accounts imported with the password flow"
OA=$W/oidc-agent
mkdir -m700 -p "$OA"
oidc-agent --json -a "$OA/agent.sock" > "$OA/agent.json"
export OIDC_SOCK=$OA/agent.sock
OIDCD_PID=$(sed -n 's/.*"dpid":[^0-9]*\([0-9]*\).*/\1/p' "$OA/agent.json")
export OIDCD_PID
pids+=("$OIDCD_PID")
# The agent forks before it listens: wait for its socket.
for _ in $(seq 500); do [ -S "$OIDC_SOCK" ] && break; sleep 0.01; done
export BENCH_OIDC_PW=bench-encryption-password
for acc in "bench:$ISSUER" "bench_norot:$ISSUER2"; do
    oidc-gen "${acc%%:*}" -m --issuer "${acc#*:}/" --client-id password-cli \
        --client-secret password-cli-secret --flow=password --op-username alice \
        --op-password alice-password --pw-env=BENCH_OIDC_PW --prompt=none --confirm-default \
        --scope "openid offline_access api" </dev/null >/dev/null 2>"$W/oidc-gen.err" ||
        { cat "$W/oidc-gen.err" >&2; exit 1; }
done
oidc-token bench >/dev/null

log "git credential-cache daemon with one stored credential (a dummy password)"
mkdir -m700 -p "$W/git-cache"
GIT_CACHE_SOCK=$W/git-cache/socket
export GIT_TERMINAL_PROMPT=0
git config --global credential.helper "cache --timeout=86400 --socket=$GIT_CACHE_SOCK"
printf 'protocol=https\nhost=git.bench.invalid\nusername=oauth2\npassword=%s\n\n' "$(head -n1 "$W/dummy-token")" |
    git credential approve
printf 'protocol=https\nhost=git.bench.invalid\n\n' > "$W/git-fill-input"
git credential fill < "$W/git-fill-input" | grep -q '^password=x' || { echo "git credential-cache did not answer" >&2; exit 1; }

log "gh: a config dir with a (dummy) token in hosts.yml"
unset GH_TOKEN GITHUB_TOKEN GH_ENTERPRISE_TOKEN GITHUB_ENTERPRISE_TOKEN
export GH_CONFIG_DIR=$W/gh GH_NO_UPDATE_NOTIFIER=1 GH_PROMPT_DISABLED=1
mkdir -p "$GH_CONFIG_DIR"
printf 'github.com:\n    user: bench\n    oauth_token: gho_%s\n    git_protocol: https\n' \
    "$(head -c 36 /dev/zero | tr '\0' x)" > "$GH_CONFIG_DIR/hosts.yml"
gh auth token >/dev/null

{
    echo "{\"token_bytes\": $TOKEN_LEN, \"body_bytes\": $BODY_LEN, \"quick\": $QUICK,"
    echo " \"nproc\": $(nproc), \"loadavg\": \"$(cut -d' ' -f1-3 /proc/loadavg)\","
    echo " \"kernel\": \"$(uname -r)\", \"date\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\","
    echo " \"git\": \"$(git --version)\", \"gh\": \"$(gh --version | head -n1)\","
    echo " \"oidc_agent\": \"$(oidc-agent --version 2>&1 | head -n1)\","
    echo " \"tokctl_static_bytes\": $(stat -c %s "$W/bin/tokctl"), \"tokctl_default_bytes\": $(stat -c %s "$W/bin-default/tokctl")}"
} > "$R/meta.json"

# ---------------------------------------------------------------- 1. whole process
if want process; then
log "1. whole-process time, $RUNS alternating rounds (+$WARMUP warm-up)"
T=$'\t'
cat > "$W/spec" <<SPEC
true${T}-${T}true
cat (floor)${T}-${T}cat${T}$W/dummy-token
tokctl get${T}-${T}$W/bin/tokctl${T}get${T}ci
tokctl get (dynamic build)${T}-${T}$W/bin-default/tokctl${T}get${T}ci
oidc-token${T}-${T}oidc-token${T}bench
git credential fill${T}$W/git-fill-input${T}git${T}credential${T}fill
gh auth token${T}-${T}gh${T}auth${T}token
SPEC
$B runs "$W/spec" "$RUNS" "$WARMUP" > "$R/process.json"
if [ "$QUICK" != 1 ]; then
    # Cross-check with hyperfine -N (runs each command's runs back to back).
    hyperfine -N --warmup 50 --runs 300 --export-json "$R/hyperfine.json" \
        -n cat "cat $W/dummy-token" -n "tokctl get" "$W/bin/tokctl get ci" \
        -n oidc-token "oidc-token bench" >/dev/null 2>&1 || true
fi
fi

# ---------------------------------------------------------------- 2. throughput
if want load; then
log "2. socket throughput: tokctld vs a bare hyper server, $LOAD_ROUNDS alternating rounds of ${LOAD_SECS}s per point"
$B serve "$W/bare.sock" "$BODY_LEN" >/dev/null & pids+=($!)
until [ -S "$W/bare.sock" ]; do sleep 0.01; done
: > "$R/load.jsonl"
modes=keepalive
[ "$QUICK" = 1 ] || modes="keepalive reconnect"
# Warm-up, not recorded: both servers grow their buffers and allocator caches once.
for s in "$SOCK" "$W/bare.sock"; do
    $B load "$s" "/v1/token?profile=ci&min_ttl=30" 64 0.5 keepalive >/dev/null
done
# Rounds alternate the two servers, which go first in turn, so a slow patch of the machine
# (another process, a CPU frequency change) hits both alike; the report takes medians over
# the rounds.
for mode in $modes; do
    for c in 1 16 64 256; do
        for round in $(seq "$LOAD_ROUNDS"); do
            order="tokctld bare"; [ $((round % 2)) = 0 ] && order="bare tokctld"
            for target in $order; do
                s=$SOCK; [ $target = bare ] && s=$W/bare.sock
                $B load "$s" "/v1/token?profile=ci&min_ttl=30" "$c" "$LOAD_SECS" "$mode" |
                    sed "s/^{/{\"target\":\"$target\",\"round\":$round,/" >> "$R/load.jsonl"
            done
        done
    done
done
fi

# ---------------------------------------------------------------- 3. single flight
if want storm; then
log "3. 1000 concurrent callers after an invalidation ($STORMS times)"
: > "$R/storm.jsonl"
for _ in $(seq "$STORMS"); do
    curl -fsS -X POST "$ISSUER/test/reset-stats" >/dev/null
    out=$($B storm "$SOCK" ci 1000)
    n=$(curl -fsS "$ISSUER/test/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"]["total"])')
    echo "${out%\}}, \"token_requests\": $n}" >> "$R/storm.jsonl"
done
fi

# ---------------------------------------------------------------- 4. rotation
if want refresh; then
log "4. refresh with and without rotation ($REFRESHES alternating rounds; oidc-agent $SLOW_RUNS each)"
{
    echo "{\"tokctl\": $($B refresh "$SOCK" alice,alice_norot "$REFRESHES"),"
    printf 'oidc-token rotation\t-\toidc-token\t-t\t7200\tbench\noidc-token no rotation\t-\toidc-token\t-t\t7200\tbench_norot\n' > "$W/spec-oidc"
    echo " \"oidc_agent\": $($B runs "$W/spec-oidc" "$SLOW_RUNS" 1)}"
} > "$R/refresh.json"
fi

# ---------------------------------------------------------------- 6. cold start
if want cold; then
log "6. cold start: daemon stopped, refresh token in the keychain, until the first token ($COLD runs)"
: > "$R/cold.txt"
for _ in $(seq "$COLD"); do
    pid=$(daemon_pid "$SOCK")
    [ -n "$pid" ] && { kill "$pid"; wait_gone "$pid"; }
    t0=$(date +%s%N)
    tokctl get alice >/dev/null    # autostarts tokctld, which refreshes with the stored token
    t1=$(date +%s%N)
    echo $(((t1 - t0) / 1000)) >> "$R/cold.txt"
done
fi

# ---------------------------------------------------------------- 5. idle cost
if want idle; then
log "5. idle cost: 1, 100 and 10000 profiles, ${IDLE_SECS}s each"
# Voluntary context switches of every thread of $1, one "TID COUNT" line per thread.
vcs() {
    for t in /proc/"$1"/task/*; do
        awk -v tid="${t##*/}" '/^voluntary_ctxt_switches/ {print tid, $2}' "$t/status" 2>/dev/null || true
    done
}
# Switches between two vcs snapshots, per thread: a thread that exits in the window (a pool
# thread ending after its idle timeout) would otherwise take its count out of a plain sum
# and make it negative; its exit is at most one more wake-up, not counted.
vcs_delta() { awk 'NR == FNR {a[$1] = $2; next} {s += $2 - ($1 in a ? a[$1] : 0)} END {print s + 0}' <(echo "$1") <(echo "$2"); }
: > "$R/idle.jsonl"
for n in 1 100 10000; do
    d=$W/idle-$n
    mkdir -p "$d" && mkdir -m700 -p "$d/run"
    held=$((n < HELD ? n : HELD))
    {
        for i in $(seq 0 $((n - 1))); do
            printf '[profile.p%d]\nissuer = "%s"\nclient_id = "cc-basic"\ngrant = "client_credentials"\n\n' "$i" "$ISSUER"
        done
    } > "$d/config.toml"
    TOKCTL_CONFIG=$d/config.toml tokctld --socket "$d/run/s.sock" 2>"$d/log" & dpid=$!
    pids+=("$dpid")
    until [ -S "$d/run/s.sock" ]; do sleep 0.01; done
    # The first $held profiles hold a token (client credentials); the rest are configured only.
    for i in $(seq 0 $((held - 1))); do
        printf %s cc-basic-secret | TOKCTL_SOCKET=$d/run/s.sock tokctl secret set "p$i" 2>/dev/null
        TOKCTL_SOCKET=$d/run/s.sock tokctl get "p$i" >/dev/null
    done
    sleep 2
    a=$(vcs "$dpid")
    sleep "$IDLE_SECS"
    b=$(vcs "$dpid")
    rss=$(awk '/^VmRSS/ {print $2}' /proc/"$dpid"/status)
    anon=$(awk '/^RssAnon/ {print $2}' /proc/"$dpid"/status)
    threads=$(awk '/^Threads/ {print $2}' /proc/"$dpid"/status)
    echo "{\"profiles\": $n, \"holding_tokens\": $held, \"idle_secs\": $IDLE_SECS, \"voluntary_switches\": $(vcs_delta "$a" "$b"), \"rss_kib\": $rss, \"rss_anon_kib\": $anon, \"threads\": $threads}" >> "$R/idle.jsonl"
    kill "$dpid"; wait_gone "$dpid"
done
fi

log "done"
