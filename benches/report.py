#!/usr/bin/env python3
"""Turns the JSON files of benches/inner.sh into benches/results/latest.md (Markdown tables
with ratios and target checks), latest.svg (the chart docs/benchmarks.md embeds) and
latest.json (everything, for a closer look; not committed).

    python3 benches/report.py RAW_DIR OUT_DIR
"""
import json
import math
import os
import statistics
import sys

raw, out = sys.argv[1], sys.argv[2]


def load(name):
    p = os.path.join(raw, name)
    if not os.path.exists(p):
        return None
    with open(p) as f:
        if name.endswith(".jsonl"):
            return [json.loads(line) for line in f if line.strip()]
        if name.endswith(".txt"):
            return [int(line) for line in f if line.strip()]
        return json.load(f)


meta = load("meta.json")
proc = load("process.json")
hyper = load("hyperfine.json")
loads = load("load.jsonl") or []
storms = load("storm.jsonl") or []
refresh = load("refresh.json")
cold = load("cold.txt") or []
idle = load("idle.jsonl") or []

md = []
verdicts = []


def verdict(name, ok, detail):
    verdicts.append((name, ok, detail))


def ms(x):
    return f"{x:.2f}" if x < 100 else f"{x:.0f}"


md.append("# tokctl benchmarks: latest run\n")
md.append(
    f"{meta['date']}, {meta['nproc']} cores, load average at start {meta['loadavg']}, "
    f"Linux {meta['kernel']}; {'**quick smoke run: indicative only**' if meta['quick'] else 'full run'}. "
    f"Token: {meta['token_bytes']} bytes (daemon answer {meta['body_bytes']} bytes). "
    f"Peers: {meta['oidc_agent']}, {meta['git']}, {meta['gh']}. "
    f"Client binary: {meta['tokctl_static_bytes'] // 1024} KiB static, "
    f"{meta['tokctl_default_bytes'] // 1024} KiB default (dynamic) build.\n"
)
md.append("Produced by `benches/run.sh`; see docs/benchmarks.md for what each row measures.\n")

# 1. whole process
if proc:
    cat = proc["cat (floor)"]["median_ms"]
    md.append("## 1. Getting a cached token, whole process\n")
    md.append(
        f"Median wall time of {proc['cat (floor)']['runs']} alternating rounds (each round runs every "
        "command once, in a new shuffled order), ratio to `cat` of a file holding a token of the same size.\n"
    )
    md.append("| command | median ms | p25–p75 ms | × cat |")
    md.append("|:---|---:|---:|---:|")
    for name, r in sorted(proc.items(), key=lambda kv: kv[1]["median_ms"]):
        md.append(
            f"| `{name}` | {ms(r['median_ms'])} | {ms(r['p25_ms'])}–{ms(r['p75_ms'])} | "
            f"{r['median_ms'] / cat:.2f} |"
        )
    ratio = proc["tokctl get"]["median_ms"] / cat
    verdict("`tokctl get` ≤ 1.2× `cat`", ratio <= 1.2, f"{ratio:.2f}×")
    if hyper:
        res = {r["command"]: r for r in hyper["results"]}
        hc = res["cat"]["median"]
        md.append("\nCross-check with `hyperfine -N` (300 runs per command, back to back):\n")
        md.append("| command | median ms | × cat |")
        md.append("|:---|---:|---:|")
        for name, r in res.items():
            md.append(f"| `{name}` | {r['median'] * 1000:.2f} | {r['median'] / hc:.2f} |")
    md.append("")

# 2. throughput
md.append("## 2. Socket throughput\n")
md.append(
    "`GET /v1/token` answered from the cache by tokctld (two tokio workers), against a bare "
    "hyper HTTP/1.1 server on a Unix socket answering a same-size JSON body on a 2-thread tokio "
    "runtime (the transport ceiling), same load generator. `keepalive`: each connection sends "
    "requests back to back; `reconnect`: a new connection per request, as `tokctl get` does. "
    "Each point is several rounds, after an unrecorded warm-up, that alternate the two servers "
    "(going first in turn); req/s and p99 are medians "
    "over the rounds, the ratio is of the medians.\n"
)
md.append(
    "| mode | connections | tokctld req/s | bare hyper req/s | ratio | ratio per round | "
    "tokctld p99 µs | bare p99 µs |"
)
md.append("|:---|---:|---:|---:|---:|:---|---:|---:|")
# Several alternating rounds per point (older results: one): medians over the rounds.
by = {}
for r in loads:
    by.setdefault((r["target"], r["mode"], r["connections"]), {})[r.get("round", 1)] = r
worst = None
for mode in ("keepalive", "reconnect"):
    for c in (1, 16, 64, 256):
        d, b = by.get(("tokctld", mode, c)), by.get(("bare", mode, c))
        if not d or not b:
            continue
        drps = statistics.median(r["rps"] for r in d.values())
        brps = statistics.median(r["rps"] for r in b.values())
        rt = drps / brps if brps else float("nan")
        per = [d[k]["rps"] / b[k]["rps"] for k in sorted(d) if k in b and b[k]["rps"]]
        worst = rt if worst is None else min(worst, rt)
        errors = sum(r["errors"] for r in d.values())
        err = f" ({errors} errors)" if errors else ""
        span = f"{min(per):.2f}–{max(per):.2f}" if len(per) > 1 else ""
        md.append(
            f"| {mode} | {c} | {drps:.0f}{err} | {brps:.0f} | {rt:.2f} | {span} | "
            f"{statistics.median(r['p99_us'] for r in d.values()):.0f} | "
            f"{statistics.median(r['p99_us'] for r in b.values()):.0f} |"
        )
if worst is not None:
    verdict("socket throughput ≥ 0.8× bare hyper", worst >= 0.8, f"lowest ratio {worst:.2f}")
md.append("")

# 3. single flight
md.append("## 3. Many callers after an invalidation\n")
md.append(
    "The cached token is dropped (`POST /v1/invalidate`), 1000 connections are opened, then all "
    "send `GET /v1/token` at once; token-endpoint requests counted by the IdP (`/test/stats`).\n"
)
md.append("| run | callers | answers | token requests | ms until all answered |")
md.append("|---:|---:|:---|---:|---:|")
for i, s in enumerate(storms, 1):
    st = ", ".join(f"{k}: {v}" for k, v in s["statuses"].items())
    md.append(f"| {i} | {s['callers']} | {st} | {s['token_requests']} | {s['elapsed_ms']:.0f} |")
if storms:
    ok = all(s["token_requests"] == 1 and s["statuses"] == {"200": s["callers"]} for s in storms)
    verdict("exactly 1 token request for 1000 callers", ok,
            ", ".join(str(s["token_requests"]) for s in storms))
md.append("")

# 4. rotation
if refresh:
    rot, norot = refresh["tokctl"]["alice"], refresh["tokctl"]["alice_norot"]
    oa = refresh["oidc_agent"]
    r1 = rot["median_ms"] / norot["median_ms"]
    oar, oan = oa["oidc-token rotation"]["median_ms"], oa["oidc-token no rotation"]["median_ms"]
    md.append("## 4. A refresh with and without rotation\n")
    md.append(
        "tokctl: drop the cached token, then time one `GET /v1/token` on an open connection, "
        "alternating between the two profiles "
        "(a refresh-token grant at the IdP; with rotation the new refresh token is written to the "
        "keychain before the answer). oidc-agent: whole `oidc-token -t 7200` process (a lifetime "
        "longer than the token's forces a refresh). Two local IdPs, one rotating, one not.\n"
    )
    md.append("| | with rotation ms | without ms | ratio |")
    md.append("|:---|---:|---:|---:|")
    md.append(
        f"| tokctl ({rot['count']} rounds) | {ms(rot['median_ms'])} "
        f"({ms(rot['p25_ms'])}–{ms(rot['p75_ms'])}) | {ms(norot['median_ms'])} "
        f"({ms(norot['p25_ms'])}–{ms(norot['p75_ms'])}) | {r1:.2f} |"
    )
    md.append(
        f"| oidc-agent ({oa['oidc-token rotation']['runs']} runs) | {ms(oar)} | {ms(oan)} | {oar / oan:.2f} |"
    )
    verdict("refresh with rotation ≤ 2× without", r1 <= 2.0, f"{r1:.2f}×")
    md.append("")

# 5. idle
if idle:
    md.append("## 5. Idle cost\n")
    md.append(
        f"A daemon with N client-credentials profiles, the first {idle[-1]['holding_tokens']} "
        "(or all, if fewer) holding an access token, left alone for "
        f"{idle[0]['idle_secs']} s after a 2 s settle: voluntary context switches of all its "
        "threads (from /proc/PID/task/*/status) and resident memory (VmRSS) at the end. "
        "The scheduler checks the wall clock at least once a minute by design.\n"
    )
    md.append("| profiles | holding tokens | wake-ups per minute | RSS MiB | of which anonymous MiB | threads |")
    md.append("|---:|---:|---:|---:|---:|---:|")
    for r in idle:
        per_min = r["voluntary_switches"] * 60 / r["idle_secs"]
        md.append(
            f"| {r['profiles']} | {r['holding_tokens']} | {per_min:.1f} | "
            f"{r['rss_kib'] / 1024:.1f} | {r['rss_anon_kib'] / 1024:.1f} | {r['threads']} |"
        )
    rss = {r["profiles"]: r["rss_kib"] / 1024 for r in idle}
    if 100 in rss:
        verdict("RSS ≤ 8 MiB with 100 profiles", rss[100] <= 8, f"{rss[100]:.1f} MiB")
    if 10000 in rss:
        verdict("RSS ≤ 64 MiB with 10 000 profiles", rss[10000] <= 64, f"{rss[10000]:.1f} MiB")
    wake = max(r["voluntary_switches"] * 60 / r["idle_secs"] for r in idle)
    # One timer wake a minute moves a worker thread and the signal thread stays parked: a
    # handful of switches per minute at most. Anything more is a busy loop or a poll.
    verdict("idle: only the scheduler's clock check (≤ 4 switches/min)", wake <= 4, f"max {wake:.1f}/min")
    md.append("")

# 6. cold start
if cold:
    c = [x / 1000 for x in cold]
    md.append("## 6. Cold start\n")
    md.append(
        "No daemon running, refresh token in the keychain: `tokctl get` autostarts tokctld, which "
        "reads the refresh token from the keychain and refreshes at the IdP; whole time until "
        f"the token is printed, {len(c)} runs.\n"
    )
    md.append("| median ms | min ms | max ms |")
    md.append("|---:|---:|---:|")
    md.append(f"| {ms(statistics.median(c))} | {ms(min(c))} | {ms(max(c))} |")
    md.append("")

md.append("## Targets\n")
md.append("| target | result | holds |")
md.append("|:---|:---|:---|")
for name, ok, detail in verdicts:
    md.append(f"| {name} | {detail} | {'yes' if ok else '**no**'} |")
md.append("\n![chart](latest.svg)\n")


# ------------------------------------------------------------------ chart (hand-written SVG)
def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


W, PAD, LABEL = 820, 20, 230
svg = []
y = 30
if proc:
    svg.append(f'<text x="{PAD}" y="{y}" class="h">Whole process: median time relative to cat (log scale)</text>')
    y += 15
    items = sorted(proc.items(), key=lambda kv: kv[1]["median_ms"])
    lo, hi = math.log10(0.25), math.log10(max(r["median_ms"] / cat for _, r in items) * 1.5)
    span = W - LABEL - PAD - 70


    def xr(v):
        return LABEL + (math.log10(v) - lo) / (hi - lo) * span


    for name, r in items:
        v = r["median_ms"] / cat
        color = "#1f77b4" if name.startswith("tokctl") else ("#999" if name in ("cat (floor)", "true") else "#ff7f0e")
        svg.append(f'<text x="{LABEL - 8}" y="{y + 13}" text-anchor="end">{esc(name)}</text>')
        svg.append(f'<rect x="{LABEL}" y="{y + 2}" width="{max(xr(v) - LABEL, 1):.1f}" height="15" fill="{color}"/>')
        svg.append(f'<text x="{xr(v) + 5:.1f}" y="{y + 13}">{v:.2f}× ({ms(r["median_ms"])} ms)</text>')
        y += 20
    svg.append(f'<line x1="{xr(1):.1f}" y1="{y - 20 * len(items)}" x2="{xr(1):.1f}" y2="{y}" stroke="#333" stroke-dasharray="3,3"/>')
    y += 30
def median_rps(rounds):
    return {"rps": statistics.median(r["rps"] for r in rounds.values())} if rounds else None


keep = [
    (c, median_rps(by.get(("tokctld", "keepalive", c))), median_rps(by.get(("bare", "keepalive", c))))
    for c in (1, 16, 64, 256)
]
keep = [k for k in keep if k[1] and k[2]]
if keep:
    svg.append(f'<text x="{PAD}" y="{y}" class="h">Socket throughput (keep-alive), requests per second</text>')
    y += 15
    top = max(max(d["rps"], b["rps"]) for _, d, b in keep) * 1.15
    for c, d, b in keep:
        for label, r, color in ((f"tokctld, {c} conn", d, "#1f77b4"), (f"bare hyper, {c} conn", b, "#999")):
            wpx = r["rps"] / top * (W - LABEL - PAD - 70)
            svg.append(f'<text x="{LABEL - 8}" y="{y + 13}" text-anchor="end">{esc(label)}</text>')
            svg.append(f'<rect x="{LABEL}" y="{y + 2}" width="{max(wpx, 1):.1f}" height="15" fill="{color}"/>')
            svg.append(f'<text x="{LABEL + wpx + 5:.1f}" y="{y + 13}">{r["rps"]:.0f}</text>')
            y += 20
        y += 6
y += 10
note = f"{meta['date']}, {meta['nproc']} cores{', quick smoke run' if meta['quick'] else ''}; benches/run.sh"
svg.append(f'<text x="{PAD}" y="{y}" class="n">{esc(note)}</text>')
y += 10
doc = (
    f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{y}" viewBox="0 0 {W} {y}" '
    'font-family="sans-serif" font-size="12">'
    '<style>.h{font-weight:bold;font-size:14px}.n{fill:#666;font-size:11px}</style>'
    f'<rect width="{W}" height="{y}" fill="white"/>' + "".join(svg) + "</svg>\n"
)

os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "latest.md"), "w") as f:
    f.write("\n".join(md))
with open(os.path.join(out, "latest.svg"), "w") as f:
    f.write(doc)
with open(os.path.join(out, "latest.json"), "w") as f:
    json.dump(
        {"meta": meta, "process": proc, "hyperfine": hyper, "load": loads, "storm": storms,
         "refresh": refresh, "cold_us": cold, "idle": idle}, f, indent=1)
print("\n".join(md))
