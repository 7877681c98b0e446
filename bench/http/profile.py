#!/usr/bin/env python3
"""bench/http/profile.py: where a keep-alive request's server CPU goes.

usage: profile.py classify PERF.DATA OUT.jsonl PIDS key=value...
                                      sorts the samples of PIDS (a server's
                                      processes) in a system-wide
                                      `perf record -g` by what their kernel
                                      stack shows, appends one record
       profile.py report RESULTS_DIR OUT.md
                                      writes the "## Where the CPU goes"
                                      section of the report, replacing the
                                      old one

Why this exists: the io_uring mode was asked to spend at most 0.75x nginx's
CPU per keep-alive request, on the premise that system calls dominate. A
profile says what does: on loopback, a send runs the receiving socket's
whole TCP path too (the packet is delivered in the sender's softirq), and
that work is the same for every server. A sample is put in the first of
these that its stack matches, leaf first:

  user        the leaf is in user space (parser, response, the loop itself)
  tcp send    tcp_sendmsg on the stack: the send, and the peer's receive
              that loopback runs inside it
  tcp recv    tcp_recvmsg on the stack
  scheduler   __schedule on the stack: going to sleep and waking up
  loop        the event loop's kernel side: epoll or io_uring (submission,
              completion, task work), outside the three above
  other       system call entry and exit, timers, the rest

The VM has no hardware counters: perf samples with cpu-clock, so a sample
lands where interrupts were enabled again (spin unlocks, finish_task_switch).
Shares are of the server's own samples; microseconds are those shares of the
CPU per request that /proc/PID/stat counted over the same window.
"""
import json
import os
import statistics
import subprocess
import sys

from markdown import replace_section

SECTION = "## Where the CPU goes: a keep-alive request, profiled\n"
CATEGORIES = ["tcp send", "tcp recv", "loop", "scheduler", "user", "other"]


def category(frames):
    """frames: (symbol, in_kernel) from leaf to root."""
    if not frames or not frames[0][1]:
        return "user"
    # The kernel's frames only: without frame pointers a user-space stack
    # is half guesses, and a guessed name must not decide the category.
    syms = [s for s, in_kernel in frames if in_kernel]
    if any(s.startswith("tcp_sendmsg") for s in syms):
        return "tcp send"
    if any(s.startswith("tcp_recvmsg") for s in syms):
        return "tcp recv"
    if "__schedule" in syms:
        return "scheduler"
    if any(s.startswith(("io_", "__io_", "ep_", "do_epoll")) or "io_uring" in s or "epoll" in s for s in syms):
        return "loop"
    return "other"


def samples(data, pids):
    """Yields each sample's frames for the samples of pids."""
    out = subprocess.run(["perf", "script", "-i", data, "-F", "pid,ip,sym,dso"],
                         capture_output=True, text=True, check=True).stdout
    for block in out.split("\n\n"):
        lines = [line.strip() for line in block.strip().splitlines() if line.strip()]
        if len(lines) < 2:
            continue
        try:
            pid = int(lines[0].split()[0])
        except ValueError:
            continue
        if pid not in pids:
            continue
        frames = []
        for line in lines[1:]:
            parts = line.split(None, 1)
            rest = parts[1] if len(parts) > 1 else ""
            sym = rest.split(" (")[0].split("+0x")[0]
            frames.append((sym, "[kernel" in rest))
        yield frames


def classify(data, out_path, pids, pairs):
    counts = dict.fromkeys(CATEGORIES, 0)
    for frames in samples(data, {int(p) for p in pids.split(",") if p}):
        counts[category(frames)] += 1
    record = dict(pair.split("=", 1) for pair in pairs)
    record["samples"] = counts
    with open(out_path, "a") as f:
        f.write(json.dumps(record) + "\n")
    total = sum(counts.values()) or 1
    print("  " + "  ".join(f"{c} {100 * n / total:.0f}%" for c, n in counts.items()))
    return 0


def load(results):
    path = os.path.join(results, "profile.jsonl")
    if not os.path.exists(path):
        return []
    return [json.loads(line) for line in open(path) if line.strip()]


def per_round(r):
    """CPU per request (us) of the round, and each category's part of it."""
    ticks_per_second = float(r["tick"])
    requests = int(r["requests"])
    cpu = (int(r["cpu_after"]) - int(r["cpu_before"])) / ticks_per_second
    total = sum(r["samples"].values())
    if requests <= 0 or total <= 0:
        return None
    us = 1e6 * cpu / requests
    return us, {c: us * r["samples"][c] / total for c in CATEGORIES}


def rounds(n):
    return "one round" if n == 1 else f"medians of {n} interleaved rounds"


def section(results):
    rows = {}
    for r in load(results):
        got = per_round(r)
        if got:
            rows.setdefault(r["server"], []).append(got)
    if not rows:
        return None
    med = {s: (statistics.median(u for u, _ in v),
               {c: statistics.median(p[c] for _, p in v) for c in CATEGORIES}) for s, v in rows.items()}
    md = [SECTION, "\n"]
    md.append("wrk -t1 -c64 keep-alive GET /hello, 2 workers, each server under a system-wide "
              "`perf record -g` (cpu-clock samples) for a round; "
              f"{rounds(max(len(v) for v in rows.values()))}. Microseconds of server CPU per request "
              "(from /proc/PID/stat over the same window), split by what the kernel stack of each "
              "sample shows (bench/http/profile.py says how).\n\n")
    md.append("| server | CPU/req | TCP send (with the peer's receive) | TCP recv | event loop | "
              "scheduler | user space | other |\n|---|---|---|---|---|---|---|---|\n")
    for s, (us, parts) in med.items():
        md.append(f"| {s} | {us:.2f} µs | " + " | ".join(f"{parts[c]:.2f}" for c in CATEGORIES) + " |\n")
    if "nginx" in med:
        ng = med["nginx"][0]
        ng_tcp = med["nginx"][1]["tcp send"] + med["nginx"][1]["tcp recv"]
        md.append("\nThe two TCP columns are the kernel's own work for one request and one answer on "
                  "loopback, whichever server asks for it: "
                  f"{ng_tcp:.2f} µs for nginx, {100 * ng_tcp / ng:.0f}% of its CPU per request.")
        for s in ("prefork-httpd-uring", "prefork-httpd-evented"):
            if s in med:
                us, parts = med[s]
                tcp = parts["tcp send"] + parts["tcp recv"]
                md.append(f" {s}: {tcp:.2f} µs of TCP and {us - tcp:.2f} µs of everything else "
                          f"({us / ng:.2f}x nginx in all).")
        md.append(f" At 0.75x nginx ({0.75 * ng:.2f} µs) with the same TCP work, everything else "
                  f"(the loop, the parser, sleeping and waking) would have to fit in "
                  f"{0.75 * ng - ng_tcp:.2f} µs; nginx spends {ng - ng_tcp:.2f} µs on it. "
                  "See docs/uring.md.\n")
    md.append("\nRun this section alone with `bench/run profile` (a few minutes; needs perf).\n")
    return "".join(md)


def report(results, out_path):
    return replace_section(out_path, SECTION, section(results), before="## Pool dynamics\n")


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ""
    if cmd == "classify" and len(argv) >= 5:
        return classify(argv[2], argv[3], argv[4], argv[5:])
    if cmd == "report" and len(argv) == 4:
        return report(argv[2], argv[3])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
