#!/usr/bin/env python3
"""bench/http/reuseport.py: the reuseport comparison of bench/run.

usage: reuseport.py snap PORT                      per-worker request counts
                                                   from GET /_status (JSON)
       reuseport.py share OUT.jsonl BEFORE PORT key=value...
                                                   appends how the requests
                                                   since BEFORE (a snap) were
                                                   shared among the workers
       reuseport.py report RESULTS_DIR OUT.md      writes the "## Reuseport"
                                                   section of the report,
                                                   replacing the old one

prefork-httpd with 2 workers, its one listening socket shared by the workers
or one per worker (--reuseport), blocking and evented workers: req/s and
server CPU per request come from wrk_round's records (RESULTS/reuseport.jsonl,
CPU of master and workers from /proc/PID/stat), the sharing from the
scoreboard's per-worker request counts before and after each round.
"""
import json
import os
import statistics
import sys
import urllib.request

from markdown import replace_section

SECTION = "## Reuseport: one socket shared, or one per worker\n"


def snap(port):
    url = f"http://127.0.0.1:{port}/_status?format=json"
    with urllib.request.urlopen(url, timeout=10) as r:
        status = json.load(r)
    return {str(w["index"]): w["requests"] for w in status["workers"]}


def share(out_path, before_path, port, pairs):
    rec = {}
    for kv in pairs:
        k, _, v = kv.partition("=")
        rec[k] = int(v) if v.isdigit() else v
    try:
        before = json.load(open(before_path))
        after = snap(port)
    except Exception as e:  # a server that stopped answering: no figure, no abort
        print(f"    no per-worker counts: {e}")
        return 0
    # A worker replaced during the round starts again at 0: counted from 0.
    delta = {i: after[i] - before.get(i, 0) if after[i] >= before.get(i, 0) else after[i] for i in after}
    total = sum(delta.values())
    if total <= 0:
        return 0
    rec["per_worker"] = delta
    rec["busiest_share"] = max(delta.values()) / total
    with open(out_path, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print("    shared " + " / ".join(f"{100 * delta[i] / total:.0f}%" for i in sorted(delta)))
    return 0


def load(path):
    if not os.path.exists(path):
        return []
    return [json.loads(line) for line in open(path) if line.strip()]


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def section(results):
    rounds = [r for r in load(os.path.join(results, "reuseport.jsonl")) if not r.get("failed")]
    shares = load(os.path.join(results, "reuseport_share.jsonl"))
    if not rounds:
        return None
    meta = {}
    if os.path.exists(os.path.join(results, "meta.json")):
        meta = json.load(open(os.path.join(results, "meta.json")))
    md = [SECTION]
    md.append(
        "prefork-httpd, 2 workers, `GET /hello`: the workers sharing one listening socket "
        "(the default) against one socket per worker (`--reuseport`, pool_config::reuseport), "
        "for blocking and evented workers. Medians of "
        f"{meta.get('rounds', '?')} interleaved rounds of {meta.get('seconds', '?')} s "
        f"({meta.get('date', '')}, {meta.get('cores', '?')} cores, load average {meta.get('load_start', '?')} "
        f"at the start, kernel {meta.get('kernel', '?')}). "
        "CPU is the server's (master and workers, from /proc/PID/stat) per request; "
        "*busiest worker* is the share of the requests the busier of the two served "
        "(50% is an even split), from the scoreboard's per-worker counts.\n")
    md.append("| workers | listening | load | req/s | p99 ms | server CPU µs/req | busiest worker | errors |")
    md.append("|---|---|---|---:|---:|---:|---:|---:|")
    for mode in ("keepalive", "close"):
        for kind in ("blocking", "evented"):
            for sock in ("shared", "reuseport"):
                name = f"rp-{kind}-{sock}"
                rs = [r for r in rounds if r["server"] == name and r["mode"] == mode]
                if not rs:
                    continue
                sh = [s["busiest_share"] for s in shares if s["server"] == name and s["mode"] == mode]
                rps = med([r["rps"] for r in rs])
                p99 = med([r["p99_us"] / 1000 for r in rs])
                cpu = med([r.get("cpu_us_per_req") for r in rs])
                busiest = med(sh)
                errors = sum(r.get("errors", 0) for r in rs)
                load_name = "keep-alive -c64" if mode == "keepalive" else "close -c16"
                sock_name = "one shared socket" if sock == "shared" else "`--reuseport`"
                md.append(
                    f"| {kind} | {sock_name} | {load_name} | {rps:,.0f} | {p99:.2f} | "
                    + (f"{cpu:.1f}" if cpu is not None else "n/a") + " | "
                    + (f"{100 * busiest:.0f}%" if busiest is not None else "n/a") + f" | {errors} |")
    md.append("")
    md.append(GUIDANCE)
    md.append("Run this section alone with `bench/run reuseport` (a few minutes).\n")
    return "\n".join(md)


GUIDANCE = """**Which to choose.** Evented workers with kept-alive connections: `--reuseport`.
With one shared socket, whichever worker is waiting in `epoll_wait` when the
connections arrive takes them, and keeps them for their whole life: in these
runs one worker served every request of the 64 connections and the other
sat idle. With a socket each, the kernel (the steering program, at random)
gives each worker its half, and both cores work. Blocking workers, or new
connections per request: the shared socket. A blocking worker takes one
connection at a time, so the workers already alternate on a shared queue
(an even split above without reuseport), and any idle worker takes the next
connection; with a socket each, a connection is bound to one worker when its
SYN arrives and waits behind that worker's request even while the other is
idle, which cost throughput and p99 here. The same holds for requests of
very uneven length (a slow one holds up its socket's queue: the known cost
of SO_REUSEPORT). CPU per request is about the same either way. prefork
loses no queued connection in either mode: a dead worker's queue waits for
its replacement, and `TTOU` or `WINCH` steer new connections away from a
socket and drain it before closing it.
"""


def report(results, out_path):
    return replace_section(out_path, SECTION, section(results), before="## Pool dynamics\n")


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ""
    if cmd == "snap":
        json.dump(snap(int(argv[2])), sys.stdout)
        return 0
    if cmd == "share":
        return share(argv[2], argv[3], int(argv[4]), argv[5:])
    if cmd == "report":
        return report(argv[2], argv[3])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
