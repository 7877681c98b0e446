#!/usr/bin/env python3
"""bench/http/record.py: turns one wrk round into one JSON line.

usage: record.py RESULTS.jsonl key=value... < wrk-output

Reads the WRKJSON line that bench/http/wrk.lua printed, adds the key=value
pairs given (server, mode, round, workers, cpu_before, cpu_after, tick,
syscalls) and appends the merged record to RESULTS.jsonl. Derived figures
(req/s, bytes/s, server CPU microseconds per request, system calls per
request) are computed here once, so the report only takes medians. A round
whose wrk printed no summary is recorded with "failed": true and wrk's last
line, and never aborts the run.
"""
import json
import sys


def number(v):
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


def main(argv):
    out_path = argv[1]
    rec = {}
    for kv in argv[2:]:
        k, _, v = kv.partition("=")
        rec[k] = number(v)
    text = sys.stdin.read()
    summary = None
    for line in text.splitlines():
        if line.startswith("WRKJSON "):
            summary = json.loads(line[len("WRKJSON "):])
    if summary is None:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        rec["failed"] = True
        rec["why"] = lines[-1] if lines else "wrk printed nothing"
    else:
        rec.update(summary)
        secs = summary["duration_us"] / 1e6
        rec["rps"] = summary["requests"] / secs if secs > 0 else 0.0
        rec["bytes_per_s"] = summary["bytes"] / secs if secs > 0 else 0.0
        rec["errors"] = sum(summary[k] for k in
                            ("err_connect", "err_read", "err_write", "err_status", "err_timeout"))
        if "cpu_before" in rec and "cpu_after" in rec and summary["requests"] > 0:
            ticks = rec["cpu_after"] - rec["cpu_before"]
            rec["cpu_us_per_req"] = ticks * 1e6 / rec.get("tick", 100) / summary["requests"]
            rec["cpu_share"] = ticks / rec.get("tick", 100) / secs if secs > 0 else 0.0
        if "syscalls" in rec and summary["requests"] > 0:
            rec["syscalls_per_req"] = rec["syscalls"] / summary["requests"]
        if "wrk_cpu_s" in rec and secs > 0:
            rec["wrk_cpu_share"] = rec["wrk_cpu_s"] / secs
    with open(out_path, "a") as f:
        f.write(json.dumps(rec) + "\n")
    if rec.get("failed"):
        print(f"    failed: {rec['why']}")
    elif "syscalls_per_req" in rec:
        print(f"    {rec['syscalls_per_req']:6.2f} per request ({rec['syscalls']} over {rec['requests']} requests)")
    else:
        print(f"    {rec['rps']:10.0f} req/s  p50 {rec['p50_us'] / 1000:.2f} ms  "
              f"p99 {rec['p99_us'] / 1000:.2f} ms  errors {rec['errors']}  "
              f"cpu {rec.get('cpu_us_per_req', 0):.1f} us/req  "
              f"(server {rec.get('cpu_share', 0) * 100:.0f}%, wrk {rec.get('wrk_cpu_share', 0) * 100:.0f}% of a core)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
