#!/usr/bin/env python3
"""bench/run's helpers: parse load-generator output and print the tables.

  report.py wrk OUTFILE                      -> "requests p50_us p99_us rps errors" from wrk's BENCH line
  report.py h2load OUTFILE LOGFILE           -> same from h2load's summary and its --log-file
  report.py table RESULTS.tsv                -> markdown table + median ratios per variant
  report.py cmdstats FILE MISSES             -> Redis commands ("cmd calls" lines) per cache miss
  report.py scaling SCALING.tsv              -> req/s on 1 core vs 2 cores per target (bench/run scaling)
RESULTS.tsv columns: variant round target requests seconds p50_us p99_us errors proxy_ticks redis_ticks clk_tck
"""
import re
import statistics
import sys


def kv_line(text):
    for line in text.splitlines():
        if line.startswith("BENCH "):
            return dict(kv.split("=", 1) for kv in line.split()[1:])
    raise SystemExit("no BENCH line in wrk output")


def parse_wrk(path):
    d = kv_line(open(path).read())
    errors = sum(int(d[k]) for k in ("status_errors", "connect", "read", "write", "timeout"))
    print(d["requests"], int(d["duration_us"]) / 1e6, d["p50_us"], d["p99_us"], errors)


def percentile(sorted_vals, p):
    if not sorted_vals:
        return 0
    # nearest-rank, as wrk's stats do
    k = max(0, min(len(sorted_vals) - 1, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def parse_h2load(out_path, log_path):
    text = open(out_path).read()
    m = re.search(r"finished in ([\d.]+)(m?s)", text)
    secs = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1) if m else 0.0
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", text)
    if not m:
        raise SystemExit("no requests line in h2load output")
    done, succeeded = int(m.group(3)), int(m.group(4))
    m2 = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    non2xx = sum(int(x) for x in m2.groups()[1:]) if m2 else 0
    lat = []
    with open(log_path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                lat.append(int(parts[2]))
    lat.sort()
    errors = (done - succeeded) + non2xx
    print(done, secs, percentile(lat, 50), percentile(lat, 99), errors)


def result_row(f):
    """One RESULTS.tsv row (variant round target requests secs p50 p99 errors ticks...) as a dict."""
    v, rnd, tgt = f[0], int(f[1]), f[2]
    req, secs = int(f[3]), float(f[4])
    p50, p99, err = int(f[5]), int(f[6]), int(f[7])
    pt, rt, tck = int(f[8]), int(f[9]), int(f[10])
    return dict(variant=v, round=rnd, target=tgt, req=req, rps=req / secs if secs else 0,
                p50=p50 / 1000.0, p99=p99 / 1000.0, err=err,
                cpu=(pt / tck * 1e6 / req) if req else 0,
                rcpu=(rt / tck * 1e6 / req) if req else 0)


def table(path):
    rows = []
    for line in open(path):
        f = line.rstrip("\n").split("\t")
        if len(f) < 11 or f[0] == "variant":
            continue
        rows.append(result_row(f))
    for variant in dict.fromkeys(r["variant"] for r in rows):
        vr = [r for r in rows if r["variant"] == variant]
        print()
        print("### %s" % variant)
        print()
        print("| round | target | requests | req/s | p50 ms | p99 ms | proxy CPU µs/req | redis CPU µs/req | errors |")
        print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in vr:
            print("| %d | %s | %d | %.0f | %.3f | %.3f | %.1f | %.2f | %d |" % (
                r["round"], r["target"], r["req"], r["rps"], r["p50"], r["p99"], r["cpu"], r["rcpu"], r["err"]))
        by = {}
        for r in vr:
            by.setdefault(r["round"], {})[r["target"]] = r
        print()
        print("| median over rounds | req/s | p99 | proxy CPU/req |")
        print("| --- | ---: | ---: | ---: |")
        for other in ("nginx", "haproxy", "direct"):
            ratios = {"rps": [], "p99": [], "cpu": []}
            for rnd, t in sorted(by.items()):
                if "scopegate" in t and other in t:
                    s, o = t["scopegate"], t[other]
                    for k in ratios:
                        if o[k]:
                            ratios[k].append(s[k] / o[k])
            if ratios["rps"]:
                print("| scopegate / %s | %.2f× | %.2f× | %.2f× |" % (
                    other, statistics.median(ratios["rps"]), statistics.median(ratios["p99"]),
                    statistics.median(ratios["cpu"]) if ratios["cpu"] else float("nan")))


SOURCES = {
    "get": "get_key: GET sg:key:ID (pipelined with the HGET); get_app",
    "hget": "get_key: HGET sg:last_used ID; and the TOUCH_KEYS script",
    "eval": "touch_keys: the last_used flush (TOUCH_KEYS, up to 500 ids a call)",
    "hset": "TOUCH_KEYS script",
    "multi": "add_usage: the usage counters flush",
    "exec": "add_usage",
    "hincrby": "add_usage (per key per day, per app per day)",
    "ping": "pub/sub liveness probe, /readyz",
    "expireat": "add_usage: the monthly usage hashes' expiry",
    "set": "add_usage: the batch markers (SET NX, exactly-once)",
    "exists": "TOUCH_KEYS script; /readyz",
}


def cmdstats(path, misses):
    print("| command | calls | per miss | issued by (src/store/redis.rs) |")
    print("| --- | ---: | ---: | --- |")
    for line in open(path):
        cmd, calls = line.split()
        if cmd.startswith("config") or cmd == "info":
            continue
        calls = int(calls)
        print("| %s | %d | %.3f | %s |" % (cmd, calls, calls / misses if misses else 0, SOURCES.get(cmd, "")))


def scaling(path):
    """SCALING.tsv: cores round, then the RESULTS.tsv columns of that run (one round each)."""
    rows = []
    for line in open(path):
        f = line.rstrip("\n").split("\t")
        if len(f) < 13 or f[0] == "cores":
            continue
        # The run's own round (always 1) gives way to the scaling round.
        rows.append(dict(result_row(f[2:]), cores=int(f[0]), round=int(f[1])))
    by = {}
    for r in rows:
        by.setdefault(r["target"], {}).setdefault(r["cores"], {})[r["round"]] = r
    print("| target | req/s 1 core | req/s 2 cores | scaling |")
    print("| --- | ---: | ---: | ---: |")
    for tgt in ("nginx", "haproxy", "scopegate", "direct"):
        if tgt not in by or 1 not in by[tgt] or 2 not in by[tgt]:
            continue
        one, two = by[tgt][1], by[tgt][2]
        ratios = [two[r]["rps"] / one[r]["rps"] for r in sorted(one) if r in two and one[r]["rps"]]
        name = tgt if tgt != "direct" else "direct (the upstream alone, for reference)"
        print("| %s | %.0f | %.0f | %s |" % (
            name, statistics.median(x["rps"] for x in one.values()),
            statistics.median(x["rps"] for x in two.values()),
            ("%.2f×" % statistics.median(ratios)) if ratios else "n/a"))
    print()
    print("scaling: median over rounds of (2-core req/s / 1-core req/s), each round's two runs back to back.")
    print()
    print("| round | cores | target | requests | req/s | p99 ms | proxy CPU µs/req | errors |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in sorted(rows, key=lambda r: (r["round"], r["cores"], r["target"])):
        print("| %d | %d | %s | %d | %.0f | %.3f | %.1f | %d |" % (
            r["round"], r["cores"], r["target"], r["req"], r["rps"], r["p99"], r["cpu"], r["err"]))


def main():
    cmd = sys.argv[1]
    if cmd == "wrk":
        parse_wrk(sys.argv[2])
    elif cmd == "h2load":
        parse_h2load(sys.argv[2], sys.argv[3])
    elif cmd == "cmdstats":
        cmdstats(sys.argv[2], int(sys.argv[3]))
    elif cmd == "table":
        table(sys.argv[2])
    elif cmd == "scaling":
        scaling(sys.argv[2])
    else:
        raise SystemExit("unknown command " + cmd)


if __name__ == "__main__":
    main()
