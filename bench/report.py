"""Prints scripts/bench's results (bench/results/STAMP.tsv) as markdown tables.

Medians over the runs, spread as min-max, and each keyfob/tower-sessions ratio
as the median of the per-run ratios (runs made side by side).
"""
import csv
import statistics
import sys
from collections import defaultdict


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt_rps(xs):
    return f"{med(xs):,.0f} ({min(xs):,.0f}–{max(xs):,.0f})" if xs else "–"


def cpu_per_req(row):
    """Server CPU µs per request of one run (scripts/bench's server_cpu_us), or None."""
    for f in row.get("extra", "").split():
        name, _, v = f.partition("=")
        if name == "server_cpu_us" and int(row["requests"]) > 0:
            return int(v) / int(row["requests"])
    return None


def cpu_ratio(num, den):
    """Median over runs made side by side of num's CPU per request ÷ den's."""
    rs = []
    for i in den:
        if i in num:
            a, b = cpu_per_req(num[i]), cpu_per_req(den[i])
            if a and b:
                rs.append(a / b)
    return f"{med(rs):.2f}× ({min(rs):.2f}–{max(rs):.2f})" if rs else "–"


def fmt_cpu(cell):
    xs = [c for c in (cpu_per_req(r) for r in cell.values()) if c]
    return f"{med(xs):.2f}" if xs else "–"


def fmt_p99(xs):
    return f"{med(xs) / 1000:.2f} ms" if xs else "–"


# Lines starting with `#` record how the run was made (command, commit).
rows = list(csv.DictReader((l for l in open(sys.argv[1]) if not l.startswith("#")), delimiter="\t"))
cell = defaultdict(dict)  # (store, route, impl) -> run -> row
for r in rows:
    cell[(r["kind"], r["store"], r["route"], r["impl"])][r["run"]] = r

stores = []
for r in rows:
    if r["kind"] == "http" and r["store"] not in stores:
        stores.append(r["store"])

for store in stores:
    bare = cell.get(("http", store, "bare", "axum"), {})
    bare_rps = [float(x["rps"]) for x in bare.values()]
    print(f"### {store}\n")
    barec = cell.get(("http", store, "bare+cookie", "axum"), {})
    print("| route | keyfob req/s (min–max) | keyfob p99 | tower-sessions req/s (min–max) | tower-sessions p99 | keyfob ÷ tower-sessions | keyfob ÷ bare | keyfob ÷ bare with cookie | keyfob store writes / request |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| `/bare` (axum, no session) | {fmt_rps(bare_rps)} | {fmt_p99([float(x['p99_us']) for x in bare.values()])} | | | | | | |")
    if barec:
        print(f"| `/bare` sent a session cookie | {fmt_rps([float(x['rps']) for x in barec.values()])} | {fmt_p99([float(x['p99_us']) for x in barec.values()])} | | | | | | |")
    routes = []
    for r in rows:
        if r["kind"] == "http" and r["store"] == store and r["route"] not in ("bare", "bare+cookie") and r["route"] not in routes:
            routes.append(r["route"])
    for route in routes:
        k = cell.get(("http", store, route, "keyfob"), {})
        t = cell.get(("http", store, route, "tower-sessions"), {})
        krps = [float(x["rps"]) for x in k.values()]
        trps = [float(x["rps"]) for x in t.values()]
        ratios = [float(k[i]["rps"]) / float(t[i]["rps"]) for i in k if i in t and float(t[i]["rps"]) > 0]
        bratio = [float(k[i]["rps"]) / float(bare[i]["rps"]) for i in k if i in bare]
        writes, touches, reqs = 0, 0, 0
        for x in k.values():
            reqs += int(x["requests"])
            for f in x["extra"].split():
                name, _, v = f.partition("=")
                if name == "store_writes":
                    writes += int(v)
                elif name == "touches":
                    touches += int(v)
        bad = sum(int(x["non2xx"]) + int(x["errors"]) for x in list(k.values()) + list(t.values()))
        note = f" ⚠ {bad} non-2xx/errors" if bad else ""
        wr = f"{writes / reqs:.3f} (+{touches / reqs:.4f} idle touches)" if reqs else "–"
        ratio = f"{med(ratios):.2f}× ({min(ratios):.2f}–{max(ratios):.2f})" if ratios else "–"
        bare_r = f"{med(bratio):.2f}×" if bratio else "–"
        cratio = [float(k[i]["rps"]) / float(barec[i]["rps"]) for i in k if i in barec]
        barec_r = f"{med(cratio):.2f}×" if cratio else "–"
        print(f"| `/{route}`{note} | {fmt_rps(krps)} | {fmt_p99([float(x['p99_us']) for x in k.values()])} | {fmt_rps(trps)} | {fmt_p99([float(x['p99_us']) for x in t.values()])} | {ratio} | {bare_r} | {barec_r} | {wr} |")
    print()
    # Server CPU per request (user + system time of the server process over
    # the run ÷ requests): what each request costs the server, whether or not
    # wrk (on the other core) kept it saturated.
    if any(cpu_per_req(x) for c in (k for key, k in cell.items() if key[1] == store) for x in c.values()):
        print("| route | keyfob CPU µs / request | tower-sessions CPU µs / request | tower-sessions ÷ keyfob CPU | bare with cookie ÷ keyfob CPU |")
        print("|---|---|---|---|---|")
        print(f"| `/bare` (axum, no session) | {fmt_cpu(bare)} | | | |")
        if barec:
            print(f"| `/bare` sent a session cookie | {fmt_cpu(barec)} | | | |")
        for route in routes:
            k = cell.get(("http", store, route, "keyfob"), {})
            t = cell.get(("http", store, route, "tower-sessions"), {})
            vs_bare = cpu_ratio(barec, k) if route == "read" and barec else "–"
            print(f"| `/{route}` | {fmt_cpu(k)} | {fmt_cpu(t)} | {cpu_ratio(t, k)} | {vs_bare} |")
        print()
    # What each implementation cost the store, per request (scripts/bench's
    # store_counters): summed over the runs, divided by their requests.
    side = {"wal_bytes": "WAL bytes", "redo_bytes": "redo log bytes",
            "disk_write_bytes": "bytes written to disk", "redis_cmds": "Redis commands",
            "redis_dirty": "Redis key changes", "redis_cpu_us": "Redis CPU µs"}
    impls = ["keyfob", "tower-sessions", "axum_session"]
    per = {}  # (route, impl) -> {field: per request}
    for route in routes:
        for impl in impls:
            runs = cell.get(("http", store, route, impl), {}).values()
            reqs = sum(int(x["requests"]) for x in runs)
            sums = defaultdict(int)
            for x in runs:
                for f in x["extra"].split():
                    name, _, v = f.partition("=")
                    if name in side:
                        sums[name] += int(v)
            if reqs and sums:
                per[(route, impl)] = {n: v / reqs for n, v in sums.items()}
    fields = [n for n in side if any(n in v for v in per.values())]
    if fields:
        shown = [i for i in impls if any((r, i) in per for r in routes)]
        print("| route | " + " | ".join(f"{side[n]} / request: {i}" for n in fields for i in shown) + " |")
        print("|---|" + "---|" * (len(fields) * len(shown)))
        for route in routes:
            vals = [per.get((route, i), {}).get(n) for n in fields for i in shown]
            print(f"| `/{route}` | " + " | ".join("–" if v is None else f"{v:,.1f}" for v in vals) + " |")
        print()
    # The second peer, where it ran (memory, SQLite): axum_session 0.22.
    peer = [(route, cell.get(("http", store, route, "axum_session"), {})) for route in routes]
    if any(a for _, a in peer):
        print("| route | axum_session req/s (min–max) | axum_session p99 | keyfob ÷ axum_session |")
        print("|---|---|---|---|")
        for route, a in peer:
            k = cell.get(("http", store, route, "keyfob"), {})
            ratios = [float(k[i]["rps"]) / float(a[i]["rps"]) for i in k if i in a and float(a[i]["rps"]) > 0]
            ratio = f"{med(ratios):.2f}× ({min(ratios):.2f}–{max(ratios):.2f})" if ratios else "–"
            bad = sum(int(x["non2xx"]) + int(x["errors"]) for x in a.values())
            note = f" ⚠ {bad} non-2xx/errors" if bad else ""
            print(f"| `/{route}`{note} | {fmt_rps([float(x['rps']) for x in a.values()])} | {fmt_p99([float(x['p99_us']) for x in a.values()])} | {ratio} |")
        print()

rss = [r for r in rows if r["kind"] == "rss"]
if rss:
    print("### memory store: RSS per session and `/read` by store size\n")
    print("| sessions | RSS bytes / session | data bytes / session | overhead bytes / session | `/read` req/s (min–max) | p99 | `/read` CPU µs / request |")
    print("|---|---|---|---|---|---|---|")
    sizes = []
    for r in rss:
        if r["impl"] not in sizes:
            sizes.append(r["impl"])
    for s in sizes:
        runs = [r for r in rss if r["impl"] == s]
        info = dict(f.partition("=")[::2] for f in runs[0]["extra"].split())
        print(f"| {int(info['n']):,} | {info['bytes_per_session']} | {info['data_bytes_per_session']} | {info['overhead_per_session']} | {fmt_rps([float(r['rps']) for r in runs])} | {fmt_p99([float(r['p99_us']) for r in runs])} | {fmt_cpu({r['run']: r for r in runs})} |")
    print()
