#!/usr/bin/env python3
"""bench/http/report.py: writes docs/benchmarks.md from bench/run's results.

usage: report.py RESULTS_DIR PLOT_DIR OUT.md [README.md]
       report.py --parser-only RESULTS_DIR OUT.md   (bench/run parser: replace
                                                    only the parser section)

Reads what bench/run left in RESULTS_DIR (meta.json, notes.txt, *.jsonl,
mem-*.json, process_creation.csv, the bench programs' own output), takes
medians over the interleaved rounds, and writes the Markdown page plus the
data files bench/plot.gp draws from (PLOT_DIR/process.dat, http.dat).
Missing parts are reported as not measured, never as an error. Given a
README holding the markers <!-- benchmarks:start --> and
<!-- benchmarks:end -->, the headline table and picture go between them.
"""
import glob
import json
import os
import re
import statistics
import sys

from markdown import replace_section

SERVER_ORDER = ["prefork-httpd", "prefork-httpd-evented", "prefork-httpd-uring", "prefork-kv-evented", "prefork-httpd-blocking",
                "prefork-kv-blocking", "nginx", "h2o",
                "unicorn", "gunicorn", "apache"]
SERVER_LABEL = {
    "prefork-httpd-evented": "prefork-httpd (evented)",
    "prefork-httpd-uring": "prefork-httpd (uring)",
    "prefork-httpd-blocking": "prefork-httpd (blocking)",
    "prefork-kv-evented": "prefork-kv GET /k/hello (evented)",
    "prefork-kv-blocking": "prefork-kv GET /k/hello (blocking)",
    "nginx": "nginx", "h2o": "h2o (2 threads)", "unicorn": "Unicorn (Rack)",
    "gunicorn": "gunicorn (sync, WSGI)", "apache": "Apache httpd (prefork MPM)",
}


def load_jsonl(path):
    out = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    out.append(json.loads(line))
    return out


def read(path):
    if os.path.exists(path):
        with open(path, errors="replace") as f:
            return f.read()
    return None


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def pct(values, p):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    k = min(len(values) - 1, max(0, int(round(p / 100 * len(values) + 0.5)) - 1))
    return values[k]


def fmt(v, digits=0, unit=""):
    if v is None:
        return "–"
    if digits == 0:
        return f"{v:,.0f}{unit}"
    return f"{v:,.{digits}f}{unit}"


def ordered(names):
    known = [n for n in SERVER_ORDER if n in names]
    return known + sorted(n for n in names if n not in SERVER_ORDER)


def summarise(records):
    """{(server, mode): summary of the rounds}"""
    groups = {}
    for r in records:
        groups.setdefault((r["server"], r["mode"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        ok = [r for r in rs if not r.get("failed")]
        out[key] = {
            "rounds": len(rs),
            "failed": len(rs) - len(ok),
            "rps": med([r["rps"] for r in ok]),
            "rps_all": [r["rps"] for r in ok],
            "bytes_per_s": med([r["bytes_per_s"] for r in ok]),
            "p50_ms": med([r["p50_us"] / 1000 for r in ok]),
            "p99_ms": med([r["p99_us"] / 1000 for r in ok]),
            "errors": sum(r["errors"] for r in ok),
            "cpu_us": med([r.get("cpu_us_per_req") for r in ok]),
            "cpu_share": med([r.get("cpu_share") for r in ok]),
            "wrk_share": med([r.get("wrk_cpu_share") for r in ok]),
        }
    return out


def add_syscalls(summary, records):
    """Puts each server's system calls per request (syscalls.jsonl: perf's
    count over a window of its own) beside its timed figures."""
    for (server, mode), x in summarise_syscalls(records).items():
        summary.setdefault((server, mode), {"rps": None, "rps_all": [], "p50_ms": None, "p99_ms": None,
                                            "errors": 0, "failed": 0, "cpu_us": None, "cpu_share": None,
                                            "wrk_share": None, "rounds": 0})["syscalls"] = x


def summarise_syscalls(records):
    groups = {}
    for r in records:
        if not r.get("failed") and r.get("syscalls_per_req") is not None:
            groups.setdefault((r["server"], r["mode"]), []).append(r["syscalls_per_req"])
    return {k: med(v) for k, v in groups.items()}


def http_table(summary, mode, kept=None):
    servers = ordered({s for (s, m) in summary if m == mode})
    if not servers:
        return "Not measured in this run.\n"
    base = summary.get(("nginx", mode), {}).get("rps")
    head = ("| server | req/s (median) | vs nginx | p50 | p99 | errors | server CPU per request | "
            "syscalls/req | server CPU load | wrk CPU load |\n")
    head += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    rows = []
    for s in servers:
        x = summary[(s, mode)]
        ratio = f"{x['rps'] / base:.2f}×" if base and x["rps"] is not None else "–"
        err = str(x["errors"]) + (f" ({x['failed']} rounds failed)" if x["failed"] else "")
        mark = " ¹" if kept and kept.get(s) == "no" else ""
        rows.append(f"| {SERVER_LABEL.get(s, s)}{mark} | {fmt(x['rps'])} | {ratio} | {fmt(x['p50_ms'], 2, ' ms')} | "
                    f"{fmt(x['p99_ms'], 2, ' ms')} | {err} | {fmt(x['cpu_us'], 1, ' µs')} | "
                    f"{fmt(x.get('syscalls'), 2)} | "
                    f"{fmt(x['cpu_share'] and x['cpu_share'] * 100, 0, '%')} | "
                    f"{fmt(x['wrk_share'] and x['wrk_share'] * 100, 0, '%')} |")
    return head + "\n".join(rows) + "\n"


def load_kept(results):
    """{server: "yes"|"no"}: did it answer a second request on one connection."""
    kept = {}
    for line in (read(os.path.join(results, "keepalive.txt")) or "").splitlines():
        if line.split():
            kept[line.split()[0]] = line.split()[-1]
    return kept


def closer_note(kept):
    closers = [SERVER_LABEL.get(k, k) for k in ordered(set(kept)) if kept[k] == "no"]
    if not closers:
        return ""
    return ("\n¹ closes the connection after every response even when the client asks to keep it "
            "(checked before the load: a second request on the same connection got no answer), so "
            "its keep-alive figure is a new-connection-per-request figure: " + ", ".join(closers) + ".\n")


def headline(summary, kept=None):
    servers = ordered({s for (s, _) in summary})
    if not servers:
        return "No HTTP server was measured in this run.\n"
    ka = summary.get(("nginx", "keepalive"), {}).get("rps")
    cl = summary.get(("nginx", "close"), {}).get("rps")
    out = ("| server (2 workers) | keep-alive req/s | vs nginx | p99 | CPU/req | syscalls/req | "
           "new connection per request req/s | vs nginx | p99 | CPU/req | syscalls/req |\n")
    out += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    for s in servers:
        a = summary.get((s, "keepalive"), {})
        b = summary.get((s, "close"), {})
        ra = f"{a['rps'] / ka:.2f}×" if ka and a.get("rps") else "–"
        rb = f"{b['rps'] / cl:.2f}×" if cl and b.get("rps") else "–"
        mark = " ¹" if kept and kept.get(s) == "no" else ""
        out += (f"| {SERVER_LABEL.get(s, s)}{mark} | {fmt(a.get('rps'))} | {ra} | {fmt(a.get('p99_ms'), 2, ' ms')} | "
                f"{fmt(a.get('cpu_us'), 1, ' µs')} | {fmt(a.get('syscalls'), 2)} | {fmt(b.get('rps'))} | {rb} | "
                f"{fmt(b.get('p99_ms'), 2, ' ms')} | {fmt(b.get('cpu_us'), 1, ' µs')} | "
                f"{fmt(b.get('syscalls'), 2)} |\n")
    return out


HTTPD_MODES = (("prefork-httpd-evented", "evented"), ("prefork-httpd-uring", "uring"),
               ("prefork-httpd-blocking", "blocking"))
WORKLOADS = (("keepalive", "keep-alive (`-c64`)"), ("close", "a new connection per request (`-c16`)"))


def ratio_text(a, b):
    return f"{a / b:.2f}×" if a and b else "not measured"


def modes_verdict(summary, syscall_us=None):
    """Which of prefork-httpd's worker modes wins which workload, with the
    figures that say why, and issue 17's targets against the peers."""
    out = []
    for mode, label in WORKLOADS:
        ran = [(name, m, summary[(name, mode)]) for name, m in HTTPD_MODES
               if (name, mode) in summary and summary[(name, mode)].get("cpu_us")]
        if not ran:
            continue
        cheapest = min(ran, key=lambda r: r[2]["cpu_us"])
        fastest = max(ran, key=lambda r: r[2]["rps"] or 0)
        counted = [r for r in ran if r[2].get("syscalls") is not None]
        fewest = min(counted, key=lambda r: r[2]["syscalls"]) if counted else None
        figures = "; ".join(
            f"{m} {fmt(x['cpu_us'], 1, ' µs')}, {fmt(x['rps'])} req/s, "
            f"{fmt(x.get('syscalls'), 2)} syscalls/req" for _, m, x in ran)
        line = f"- **{label}**: {cheapest[1]} costs the least CPU per request"
        line += (" and serves the most" if fastest is cheapest else f", {fastest[1]} serves the most")
        line += f" ({figures})."
        if fewest is not None and fewest is not cheapest:
            line += (f" The fewest system calls ({fewest[1]}) did not make the cheapest requests on this "
                     "run: what a mode does in the kernel in their place is CPU time too.")
        elif fewest is not None:
            line += " It also makes the fewest system calls."
        out.append(line)
    if not out:
        return ""
    text = ("\n### Which prefork-httpd mode wins which workload\n\n" + "\n".join(out) + "\n\n"
            "How the modes differ: the evented loop makes a read, a write and a share of an "
            "epoll_wait per kept-alive request; the uring loop submits the answers of a loop turn "
            "and collects the next requests with one io_uring_enter (docs/uring.md); the blocking "
            "worker closes after each answer, so every request costs it a connection (accept, "
            "read, write, close), with nothing registered with epoll or a ring. "
            + (f"A system call's entry and exit alone cost {syscall_us:.2f} µs on this machine "
               "(`perf bench syscall basic`): that is what each system call the uring loop saves "
               "is worth, and the CPU per request shows what the ring's own work costs in its "
               "place. " if syscall_us else
               "What a system call saves is the cost of its entry and exit (`perf bench syscall "
               "basic` measures it; perf was missing on this run). ")
            + "With a new connection per request the connection's set-up and tear-down "
            "in the kernel dominate in every mode, and only the bookkeeping around them differs.\n")
    ka_u = summary.get(("prefork-httpd-uring", "keepalive"), {})
    ka_n = summary.get(("nginx", "keepalive"), {})
    targets = []
    if ka_u.get("cpu_us") and ka_n.get("cpu_us"):
        r = ka_u["cpu_us"] / ka_n["cpu_us"]
        targets.append(f"keep-alive, uring against nginx: {r:.2f}× nginx's CPU per request "
                       f"(target at most 0.75×: {'met' if r <= 0.75 else 'not met; the profile section below and docs/uring.md say why'}), "
                       f"{ratio_text(ka_u.get('rps'), ka_n.get('rps'))} its req/s "
                       f"(target at least 1.0×: {'met' if (ka_u.get('rps') or 0) >= (ka_n.get('rps') or 0) else 'not met'})")
    best = [(m, summary[(name, "close")]) for name, m in HTTPD_MODES
            if (name, "close") in summary and summary[(name, "close")].get("cpu_us")]
    cl_h = summary.get(("h2o", "close"), {})
    if best and cl_h.get("cpu_us"):
        m, x = min(best, key=lambda b: b[1]["cpu_us"])
        r = x["cpu_us"] / cl_h["cpu_us"]
        targets.append(f"new connection per request, the best mode ({m}) against h2o: {r:.2f}× h2o's CPU "
                       f"per request (target at most 0.8×: {'met' if r <= 0.8 else 'not met'})")
    if targets:
        text += "\nIssue 17's targets on this run: " + "; ".join(targets) + ".\n"
    return text


def rounds_table(records):
    if not records:
        return ""
    out = "| server | mode | round | req/s | p50 | p99 | errors | CPU/req |\n|---|---|---:|---:|---:|---:|---:|---:|\n"
    for r in records:
        if r.get("failed"):
            out += f"| {r['server']} | {r['mode']} | {r['round']} | failed: {r.get('why', '')} | | | | |\n"
        else:
            out += (f"| {r['server']} | {r['mode']} | {r['round']} | {fmt(r['rps'])} | "
                    f"{fmt(r['p50_us'] / 1000, 2)} | {fmt(r['p99_us'] / 1000, 2)} | {r['errors']} | "
                    f"{fmt(r.get('cpu_us_per_req'), 1)} |\n")
    return out


def memory_table(results):
    files = {os.path.basename(p)[4:-5]: p for p in glob.glob(os.path.join(results, "mem-*.json"))}
    if not files:
        return "Not measured in this run.\n"
    out = ("| server | processes | master private | each worker's private RSS | whole server PSS | "
           "vs nginx |\n|---|---:|---:|---:|---:|---:|\n")
    data = {k: json.load(open(v)) for k, v in files.items()}
    base = data.get("nginx", {}).get("pss_total_kb")
    for s in ordered(set(data)):
        m = data[s]
        procs = m["processes"]
        master = [p for p in procs if p["master"]]
        workers = [p for p in procs if not p["master"]]
        # A child that is not a worker (h2o's perl helper) is named.
        mcomm = master[0]["comm"] if master else ""
        wk = ", ".join(f"{p['private_kb'] / 1024:.1f}" + (f" ({p['comm']})" if p["comm"] != mcomm
                                                        and not p["comm"].startswith(mcomm[:6]) else "")
                       for p in workers) or "(threads in one process)"
        ratio = f"{m['pss_total_kb'] / base:.2f}×" if base else "–"
        out += (f"| {SERVER_LABEL.get(s, s)} | {len(procs)} | "
                f"{fmt(master[0]['private_kb'] / 1024 if master else None, 1, ' MiB')} | {wk} MiB | "
                f"{m['pss_total_kb'] / 1024:.1f} MiB | {ratio} |\n")
    return out


def process_section(results, plot_dir):
    rows = []
    text = read(os.path.join(results, "process_creation.csv")) or ""
    for line in text.splitlines():
        parts = line.rsplit(",", 2)
        if len(parts) == 3:
            try:
                rows.append((parts[0].strip(), float(parts[1]), float(parts[2])))
            except ValueError:
                pass
    methods = []
    for m, _, _ in rows:
        if m not in methods:
            methods.append(m)
    sizes = sorted({r[1] for r in rows})
    # One block per method for gnuplot: its name, then "position label
    # microseconds" lines; RSS sizes are evenly spaced categories (0 and
    # 64 MiB would touch on a linear axis, and 0 has no logarithm).
    with open(os.path.join(plot_dir, "process.dat"), "w") as f:
        blocks = []
        for m in methods:
            block = f'"{m}"\n'
            for mm, rss, us in sorted(r for r in rows if r[0] == m):
                label = f"{rss / 1024:g} GiB" if rss >= 1024 else f"{rss:g} MiB"
                block += f'{sizes.index(rss)} "{label}" {us:g}\n'
            blocks.append(block)
        f.write("\n\n".join(blocks))
    if not rows:
        return "Not measured in this run (bench_process_creation was not built).\n"
    cell = {(m, s): us for m, s, us in rows}
    out = "| method (median) | " + " | ".join(f"{s:g} MiB" for s in sizes) + " |\n"
    out += "|---|" + "---:|" * len(sizes) + "\n"
    for m in methods:
        out += f"| {m} | " + " | ".join(fmt(cell.get((m, s)), 0, " µs") for s in sizes) + " |\n"
    # The question the picture answers: is fork as cheap as a thread, and
    # from which RSS is it dearer than spawn?
    def find(prefix):
        return next((m for m in methods if m.lower().startswith(prefix)), None)
    fork_m, thread_m, spawn_m = find("fork+waitpid"), find("pthread"), find("posix_spawn")
    if fork_m and thread_m and (fork_m, sizes[0]) in cell and (thread_m, sizes[0]) in cell:
        f0, t0 = cell[(fork_m, sizes[0])], cell[(thread_m, sizes[0])]
        out += (f"\nWith the parent at {sizes[0]:g} MiB, {fork_m} takes {f0:,.0f} µs, "
                f"{f0 / t0:.0f}× a {thread_m} ({t0:,.0f} µs)")
        out += ".\n"
    # Starting a program: fork+exec against spawn, which do the same work.
    fe_m = find("fork+exec")
    if fe_m and spawn_m:
        both = [sz for sz in sizes if (fe_m, sz) in cell and (spawn_m, sz) in cell]
        if both:
            out += "To start a program, " + fe_m + " against " + spawn_m + ": " + ", ".join(
                f"{cell[(fe_m, sz)] / cell[(spawn_m, sz)]:.1f}× at {sz:g} MiB" for sz in both) + ".\n"
    # The wrappers against the raw calls they wrap, where both were measured.
    pairs = []
    lower = {m.lower(): m for m in methods}
    for wrapped, raw in (("prefork::fork", "fork+waitpid"), ("prefork::spawn", "posix_spawn")):
        w = next((m for k, m in lower.items() if k.startswith(wrapped)), None)
        r = next((m for k, m in lower.items() if not k.startswith("prefork") and k.startswith(raw)), None)
        if w and r:
            over = [cell[(w, s)] / cell[(r, s)] - 1 for s in sizes
                    if (w, s) in cell and (r, s) in cell and cell[(r, s)] > 0]
            if over:
                pairs.append(f"{w} over {r}: " + ", ".join(f"{o * 100:+.1f}%" for o in over)
                             + " (at " + ", ".join(f"{s:g}" for s in sizes) + " MiB)")
    if pairs:
        out += "\nThe library's wrappers against the raw calls (the goal is at most +5%):\n\n"
        out += "".join(f"- {p}\n" for p in pairs)
    return out


def dynamics_section(records):
    if not records:
        return "Not measured in this run.\n"
    groups = {}
    for r in records:
        groups.setdefault((r["server"], r["event"]), []).append(r)
    out = "| server | event | n | median | p99 | max | failed |\n|---|---|---:|---:|---:|---:|---:|\n"
    servers = ordered({s for s, _ in groups})
    for s in servers:
        for ev in ("respawn", "hup", "usr2 fork_exec", "usr2 in_place"):
            rs = groups.get((s, ev))
            if not rs:
                continue
            ms = [r["ms"] for r in rs if "ms" in r]
            out += (f"| {s} | {ev} | {len(ms)} | {fmt(med(ms), 2, ' ms')} | {fmt(pct(ms, 99), 2, ' ms')} | "
                    f"{fmt(max(ms) if ms else None, 2, ' ms')} | {len(rs) - len(ms)} |\n")
    loaded = [(s, ev) for s in servers for ev in ("hup under load", "usr2 fork_exec under load",
                                                  "usr2 in_place under load") if (s, ev) in groups]
    if loaded:
        out += ("\nThe same replacements under load: wrk makes a new connection per request "
                "(`-t1 -c16 -H 'Connection: close'`, 4 s) and the signal goes 1 s in. A connection "
                "refused, reset or left unanswered while workers change shows as a wrk error.\n\n")
        out += "| server | event | requests in 4 s | wrk errors |\n|---|---|---:|---:|\n"
        for s, ev in loaded:
            for r in groups[(s, ev)]:
                if r.get("failed"):
                    out += f"| {s} | {ev} | failed | |\n"
                else:
                    out += f"| {s} | {ev} | {fmt(r['requests'])} | {r['errors']} |\n"
    return out


def verbatim(text, limit=80):
    if text is None:
        return None
    # Without Catch2's frame: rules, filters and pass/fail counts.
    noise = re.compile(r"^(=+|-+|Filters:.*|All tests passed.*|test cases:.*|assertions:.*)$")
    lines = [ln.rstrip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln.strip() and not noise.match(ln.strip())]
    if len(lines) > limit:
        lines = lines[:limit] + [f"... ({len(lines) - limit} more lines in build/bench/results/)"]
    return "```\n" + "\n".join(lines) + "\n```\n"


BASELINE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "parser_baseline.json")


def compare_figures(results):
    """{(build, request, parser): (median ns, min ns, max ns, runs)} over every
    [compare] run, and {(build, request): median of the per-run ratios}."""
    text = read(os.path.join(results, "http_parser_compare.txt")) or ""
    per = {}
    for line in text.splitlines():
        f = line.split("|")
        if len(f) == 7 and f[0] == "compare":
            per.setdefault((f[1], f[2], f[3]), []).append((float(f[4]), float(f[5]), float(f[6])))
    figures = {k: (med([v[0] for v in vs]), min(v[1] for v in vs), max(v[2] for v in vs), len(vs))
               for k, vs in per.items()}
    ratios = {}
    for (build, req, parser), vs in per.items():
        pico = per.get((build, req, "picohttpparser"))
        if parser == "prefork" and pico and len(pico) == len(vs):
            ratios[(build, req)] = med([a[0] / b[0] for a, b in zip(vs, pico)])
    return figures, ratios


def parser_section(results):
    md = ["\n## The HTTP parser\n"]
    meta_path = os.path.join(results, "meta.json")
    meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
    if meta.get("date"):
        md.append(f"Measured on {meta['date']}, commit {meta.get('commit', '?')} "
                  "(`bench/run parser` rewrites this section alone).\n\n")
    md.append("prefork-httpd's request parser (examples/httpd/http_parser.hpp) against "
              "picohttpparser, h2o's parser and the usual reference for speed, as Debian ships it "
              "(`phr_parse_request` from libh2o-evloop0.13), on the same bytes "
              "(bench/http/requests.hpp): a minimal GET (35 B) and a browser GET of 1,236 B with 19 "
              "fields. prefork's parser does more: it validates field names and values, the shape "
              "of Host, Content-Length and Transfer-Encoding semantics and connection options, and "
              "fills a vector of fields; pico checks characters and splits lines. Both built at -O2 "
              "(pico by Debian, for baseline x86-64: its SSE4.2 path is not compiled in); prefork "
              "also with -march=native.\n")
    figures, ratios = compare_figures(results)
    base = json.load(open(BASELINE)) if os.path.exists(BASELINE) else {}
    if figures:
        runs = max(v[3] for v in figures.values())
        t = (f"\n`bench_http_parser \"[compare]\"` (and `bench_http_parser_native`): ns per request on "
             f"CPU time, the median over {runs} runs of each build's own median of 9 interleaved "
             "rounds; min and max are the single fastest and slowest rounds, to show the noise. "
             "The ratio is taken within each run, then its median.\n\n")
        t += "| build | request | prefork ns | pico ns | prefork / pico | prefork range | pico range |\n"
        t += "|---|---|---:|---:|---:|---:|---:|\n"
        for build in sorted({k[0] for k in figures}):
            for req in ("minimal GET", "browser GET"):
                ours, pico = figures.get((build, req, "prefork")), figures.get((build, req, "picohttpparser"))
                if not ours:
                    continue
                r = ratios.get((build, req))
                t += (f"| {build} | {req} | {ours[0]:.1f} | {pico[0]:.1f} | " if pico else
                      f"| {build} | {req} | {ours[0]:.1f} | n/a | ")
                t += (f"{r:.2f}× | " if r else "n/a | ")
                t += f"{ours[1]:.0f}-{ours[2]:.0f} | " + (f"{pico[1]:.0f}-{pico[2]:.0f} |\n" if pico else "n/a |\n")
        if meta.get("load_start"):
            t += (f"\nLoad average (1 min) when this run began: {meta['load_start']} on "
                  f"{meta.get('cores', '?')} cores. On a shared machine the ns figures move by tens of "
                  "percent from round to round (the ranges above); the ratios, taken within one run, "
                  "and the instruction counts below are the figures to trust.\n")
        verdicts = []
        for req in ("minimal GET", "browser GET"):
            r = ratios.get(("-O2", req))
            if r:
                verdicts.append(f"{'met' if r <= 1.0 else 'not met'} for the {req} ({r:.2f}×)")
        if verdicts:
            t += ("\nThe goal of issue 24, at most 1.0× picohttpparser's ns per request at -O2 with every "
                  "check kept: " + "; ".join(verdicts) + ".\n")
        md.append(t)
    else:
        md.append("\nThe comparison was not measured in this run (bench_http_parser was not built).\n")
    cg_path = os.path.join(results, "http_parser_callgrind.json")
    cg = json.load(open(cg_path)).get("builds", {}) if os.path.exists(cg_path) else {}
    if cg:
        t = ("\nInstructions per request, counted by callgrind (bench/http/parser_count.cpp; the "
             "same on every run, so the stable figure on a noisy machine):\n\n")
        builds = list(cg)
        t += "| case | " + " | ".join(f"prefork {b}" for b in builds) + " | picohttpparser | prefork -O2 / pico |\n"
        t += "|---|" + "---:|" * (len(builds) + 2) + "\n"
        o2 = cg.get("-O2", {})
        for name in ("minimal GET", "browser GET", "chunked POST (4 KiB body, 4 chunks)",
                     "browser GET, one byte per read"):
            pico = o2.get("picohttpparser: " + name)
            row = f"| {name} | " + " | ".join(fmt(cg[b].get(name)) if cg[b].get(name) else "n/a" for b in builds)
            row += f" | {fmt(pico) if pico else '-'} | "
            row += (f"{o2[name] / pico:.2f}× |" if pico and o2.get(name) else "- |")
            t += row + "\n"
        md.append(t)
    # The baseline file holds the start of the speed work of issue 24, and
    # under "later" the start of each later round of it: one table each.
    for k, b0 in enumerate(([base] + base.get("later", [])) if base else []):
        what = "the speed work of issue 24" if k == 0 else "this round of it"
        t = (f"\nBefore and after {what}. Before: commit {b0.get('commit', '?')} "
             f"({b0.get('date', '?')}), {b0.get('note', '')}.\n\n")
        t += ("| figure | build | request | prefork before | prefork now | picohttpparser | "
              "prefork / pico before | prefork / pico now |\n|---|---|---|---:|---:|---:|---:|---:|\n")
        for build, per in b0.get("instructions", {}).items():
            for req, b in per.items():
                now = cg.get(build, {}).get(req)
                pico = cg.get("-O2", {}).get("picohttpparser: " + req)
                t += (f"| instructions | {build} | {req} | {fmt(b)} | {fmt(now) if now else 'n/a'} | "
                      f"{fmt(pico) if pico else 'n/a'} | {f'{b / pico:.2f}×' if pico else 'n/a'} | "
                      f"{f'{now / pico:.2f}×' if pico and now else 'n/a'} |\n")
        for build, per in b0.get("ns", {}).items():
            for req, b in per.items():
                now = figures.get((build, req, "prefork"))
                pico = figures.get((build, req, "picohttpparser"))
                r_now = ratios.get((build, req))
                before_ratio = b.get("ratio")
                t += (f"| ns (median) | {build} | {req} | {b['prefork']:.1f} | {f'{now[0]:.1f}' if now else 'n/a'} | "
                      f"{f'{pico[0]:.1f}' if pico else 'n/a'} | {f'{before_ratio:.2f}×' if before_ratio else '-'} | "
                      f"{f'{r_now:.2f}×' if r_now else '-'} |\n")
        md.append(t)
    other = verbatim(read(os.path.join(results, "http_parser.txt")))
    if other:
        md.append("\n`bench_http_parser \"[report]\"` (built at -O2): requests and bytes "
                  "per CPU second on three requests and a byte-at-a-time split case.\n")
        md.append(other)
    return "".join(md)


def parser_only(results, out_path):
    """Replaces the "## The HTTP parser" section of an existing report."""
    replace_section(out_path, "## The HTTP parser\n", parser_section(results))
    return 0


def main(argv):
    if len(argv) > 1 and argv[1] == "--parser-only":
        return parser_only(argv[2], argv[3])
    results, plot_dir, out_path = argv[1], argv[2], argv[3]
    os.makedirs(plot_dir, exist_ok=True)
    meta = json.load(open(os.path.join(results, "meta.json"))) if os.path.exists(
        os.path.join(results, "meta.json")) else {}
    notes = (read(os.path.join(results, "notes.txt")) or "").strip()
    http = load_jsonl(os.path.join(results, "http.jsonl"))
    scaling = load_jsonl(os.path.join(results, "scaling.jsonl"))
    dyn = load_jsonl(os.path.join(results, "dynamics.jsonl"))
    summary = summarise(http)
    add_syscalls(summary, load_jsonl(os.path.join(results, "syscalls.jsonl")))
    scale = summarise(scaling)
    kept = load_kept(results)

    with open(os.path.join(plot_dir, "http.dat"), "w") as f:
        servers = ordered({s for (s, _) in summary})
        for s in servers:
            a = summary.get((s, "keepalive"), {}).get("rps") or 0
            b = summary.get((s, "close"), {}).get("rps") or 0
            # CPU per request: "-" (missing, gnuplot draws no bar) when not measured.
            ca = summary.get((s, "keepalive"), {}).get("cpu_us")
            cb = summary.get((s, "close"), {}).get("cpu_us")
            f.write(f'"{SERVER_LABEL.get(s, s)}" {a:.0f} {b:.0f} '
                    f'{f"{ca:.2f}" if ca else "-"} {f"{cb:.2f}" if cb else "-"}\n')

    v = meta.get("versions", {})
    secs, rounds = meta.get("seconds", "?"), meta.get("rounds", "?")
    md = []
    md.append("# Benchmarks\n")
    md.append(f"Measured by `bench/run` on {meta.get('date', '?')}, commit {meta.get('commit', '?')}. "
              "Every figure below comes from that one run, the peers beside prefork on the same "
              "machine; run `bench/run` to get your own.\n")
    if meta.get("quick"):
        md.append("> **Quick run** (`bench/run --quick`): one short round per case, a smoke test of the "
                  "harness. Its figures are indicative only; the published page comes from a full run.\n")
    md.append("## Headline\n")
    md.append(f"HTTP servers with 2 workers answering `GET /hello` with `Hello, World!` "
              "(prefork-kv: `GET /k/hello`, the same 13 bytes from its store through the application "
              "seam, served from the worker's cache of the store), wrk on the "
              f"same machine, {rounds} interleaved round(s) of {secs} s, medians. Keep-alive: "
              "`wrk -t1 -c64`; new connection per request: `wrk -t1 -c16 -H 'Connection: close'`. "
              "CPU/req is the server's own CPU time (utime+stime of master and workers, from "
              "/proc/PID/stat) per request served; syscalls/req the system calls its processes "
              "entered per request, counted by `perf stat -e raw_syscalls:sys_enter` in a short "
              "window of their own after the timed rounds.\n")
    md.append(headline(summary, kept) + closer_note(kept))
    md.append("\n![process creation cost against RSS, HTTP throughput and server CPU per request](benchmarks.png)\n")

    md.append("## The machine\n")
    t = "| | |\n|---|---|\n"
    for k, label in (("cpu", "CPU"), ("cores", "cores"), ("memory", "memory"), ("os", "system"),
                     ("kernel", "kernel")):
        t += f"| {label} | {meta.get(k, '?')} |\n"
    for k in ("g++", "wrk", "nginx", "h2o", "unicorn", "ruby", "gunicorn", "python3", "apache", "valgrind"):
        if v.get(k):
            t += f"| {k} | {v[k]} |\n"
    t += f"| build | the `release` CMake preset ({meta.get('build_dir', 'build/release')}), -O3 |\n"
    load_end = open("/proc/loadavg").read().split()[0]
    t += f"| load average (1 min) | {meta.get('load_start', '?')} at the start, {load_end} at the end |\n"
    md.append(t)
    try:
        busy = float(meta.get("load_start", 0)) > 1.0
    except ValueError:
        busy = False
    if busy:
        md.append("\n> **The machine was busy before this run began** (load average "
                  f"{meta.get('load_start')} on {meta.get('cores', '?')} cores): other work shared "
                  "the CPUs with the servers and wrk, so absolute figures are low and vary from round "
                  "to round. Ratios and CPU time per request suffer least; rerun on an idle machine "
                  "for figures to quote.\n")
    md.append("\nA noisy 2-core VM: wrk's one thread takes one core, and the fastest servers "
              "saturate it, so near the top the figures measure wrk as much as the server. That "
              "is why rounds are interleaved (each round measures every server's keep-alive, "
              "then every server's close, in an order that rotates from round to round), "
              "medians are quoted, and the server's CPU time per request stands beside req/s: "
              "it is the figure that says what a server costs. The machine also has slow spells "
              "of a minute or more, in which every server loses about a fifth of its rate at "
              "once; the table of every round shows them.\n")

    md.append("\n## Process creation against RSS\n")
    runs = 7 if meta.get("quick") else 31
    md.append(f"`bench_process_creation \"[csv]\"`: the cost of creating a process (or thread) and "
              f"waiting for it, median of {runs} runs per method and size, with the parent holding "
              "0, 64 MiB, 512 MiB and 2 GiB of touched memory. fork copies the parent's page "
              "tables, so its cost grows with the parent's RSS; spawn (clone with CLONE_VM | "
              "CLONE_VFORK) and a thread do not. The left half of the picture plots this table, "
              "one line per method; `bench_process_creation` alone gives the Catch2 BENCHMARK "
              "statistics of the same methods.\n")
    md.append(process_section(results, plot_dir))

    md.append(parser_section(results))

    md.append("\n## HTTP servers\n")
    md.append("### Keep-alive (`wrk -t1 -c64`)\n")
    md.append(http_table(summary, "keepalive", kept))
    md.append(closer_note(kept))
    md.append("\n### New connection per request (`wrk -t1 -c16 -H 'Connection: close'`)\n")
    md.append(http_table(summary, "close"))
    md.append(modes_verdict(summary, meta.get("syscall_us")))
    md.append("\n*Server CPU per request*: the server's utime+stime (master and all workers, "
              "/proc/PID/stat, before and after the round) divided by the requests served. "
              "*Server CPU load*: the same time over the round's length (200% is both cores). "
              "*wrk CPU load*: wrk's own; near 100% the client, not the server, was the limit. "
              "*syscalls/req*: the system calls entered by the server's processes and threads "
              "(perf stat's raw_syscalls:sys_enter on their PIDs, turned on once wrk is about to "
              "start and off when it ends) over the requests wrk counted, in a separate "
              "window per server and mode after the timed rounds, so the counting does not slow "
              "those.\n\n"
              "Apache's prefork MPM serves one connection per process at a time and keeps it as "
              "long as the client sends: with 64 keep-alive clients and 2 processes, 2 clients are "
              "served and 62 wait in the listen queue. wrk times and counts only answered "
              "requests, so those waiting clients add neither latency nor errors: Apache's "
              "keep-alive figure is the throughput of 2 connections.\n")
    if http:
        md.append("\n<details><summary>Every round</summary>\n\n" + rounds_table(http) + "\n</details>\n")

    md.append("\n### Scaling: prefork-httpd (evented) with 1, 2 and 4 workers, keep-alive\n")
    if scale:
        t = "| workers | req/s (median) | p50 | p99 | errors | CPU/req |\n|---:|---:|---:|---:|---:|---:|\n"
        for (name, _), x in sorted(scale.items(), key=lambda kv: int(re.sub(r"\D", "", kv[0][0]) or 0)):
            w = re.sub(r"\D", "", name)
            t += (f"| {w} | {fmt(x['rps'])} | {fmt(x['p50_ms'], 2, ' ms')} | {fmt(x['p99_ms'], 2, ' ms')} | "
                  f"{x['errors']} | {fmt(x['cpu_us'], 1, ' µs')} |\n")
        md.append(t)
        md.append("\nOn 2 cores with wrk taking one, more than 2 workers cannot add throughput; "
                  "the figures show what the extra workers cost.\n")
    else:
        md.append("Not measured in this run (prefork-httpd was not built).\n")

    md.append("\n### Memory\n")
    md.append("Taken at rest right after the load, from /proc/PID/smaps_rollup: each worker's "
              "private memory (Private_Clean + Private_Dirty) and the whole server's PSS (shared "
              "pages divided among the processes that share them, so the sum is what the server "
              "really costs).\n\n")
    md.append(memory_table(results))

    md.append("\n## Pool dynamics\n")
    md.append("`bench/http/dynamics.py` on idle servers with 2 workers. *respawn*: SIGKILL to the "
              "oldest worker (at least 1.5 s old, so no crash-loop back-off is measured) until the "
              "master runs 2 workers again; *hup*: HUP to the master until every old worker is gone "
              "and 2 new ones run; *usr2*: prefork-httpd's upgrade modes, from the signal until the "
              "old generation (for fork_exec, the old master too) is gone. Deaths are seen through "
              "pidfds, births by polling the master's children every 0.2 ms. h2o is left out: its "
              "workers are threads of one process. Apache's prefork MPM starts at most one "
              "process per second from its maintenance loop, hence its respawn figure.\n\n")
    md.append(dynamics_section(dyn))
    pool = verbatim(read(os.path.join(results, "pool.txt")))
    md.append("\n`bench_pool` (the library's pool, measured from inside):\n\n")
    md.append(pool or "Not measured in this run (bench_pool was not built).\n")

    md.append("\n## Refork\n")
    md.append("`bench_refork`: `examples/refork` with 4 workers that each build a 64 MiB table on "
              "their first request, forked from the master and then from a warm mold "
              "(`--refork-after 50`); the Pss and Rss of the workers (and of the mold) from "
              "/proc/PID/smaps_rollup once every worker has served, how long the refork took, "
              "and the requests a client made meanwhile, one connection each "
              "([docs/refork.md](refork.md)):\n\n")
    refork = verbatim(read(os.path.join(results, "refork.txt")))
    md.append(refork or "Not measured in this run (bench_refork was not built).\n")

    md.append("\n## The peers and their configuration\n")
    md.append(
        "Every server binds 127.0.0.1 on a port of its own, runs 2 workers, keeps its config, pid "
        "file and logs in its own folder under build/bench/, logs no request, and is started by "
        "bench/run in the foreground and stopped by its PID (TERM, then KILL for anything of its "
        "process group left after 10 s). The configurations are written by bench/http/lib.sh; "
        "the choices:\n\n"
        "- **prefork-httpd**: `prefork-httpd -l 127.0.0.1:PORT -w 2 -m evented|uring|blocking`, "
        "defaults otherwise (keep-alive timeout 5 s, no access log). The uring row is left out, "
        "with a note, where prefork-httpd falls back to evented (no liburing in the build, or "
        "io_uring refused by the kernel).\n"
        "- **nginx**: `worker_processes 2; access_log off; keepalive_timeout 5s; "
        "keepalive_requests 1000000;` and `location / { default_type text/plain; return 200 "
        "\"Hello, World!\"; }`, run with `daemon off`. keepalive_requests is raised from 1000 "
        "so that no server closes keep-alive connections on a count.\n"
        "- **h2o**: `num-threads: 2` (h2o is one process with threads, not a preforking "
        "server), `/hello` served by `file.file` from a 13-byte file (h2o has no fixed-response "
        "directive; a file is what it serves fastest), keep-alive timeout 5 s, no access log.\n"
        "- **Unicorn**: Debian's unicorn, `worker_processes 2`, `-E none` (no Rack middleware, "
        "no request log), the app a one-line Rack lambda with content-length. Unicorn never keeps "
        "a connection alive.\n"
        "- **gunicorn**: Debian's gunicorn, `--workers 2 --worker-class sync`, a one-line WSGI "
        "app with Content-Length, no access log. Sync workers never keep a connection alive.\n"
        "- **Apache httpd**: the prefork MPM with exactly 2 processes (StartServers, "
        "MinSpareServers, ServerLimit and MaxRequestWorkers 2, MaxConnectionsPerChild 0), "
        "`KeepAlive On`, `KeepAliveTimeout 5`, `MaxKeepAliveRequests 0` (unlimited, as nginx "
        "above), only mpm_prefork, authz_core and mime loaded, /hello a 13-byte static file "
        "with `ForceType text/plain`, no access log.\n")

    md.append("\n## Commands\n")
    md.append("```sh\nbench/run                      # installs what is missing, builds the release "
              "preset, runs everything, writes this page\nbench/run --quick              # 2 s "
              "rounds, 1 round: a smoke test\nBENCH_SECONDS=10 BENCH_ROUNDS=5 bench/run --only "
              "http   # longer HTTP rounds only\n```\n")
    md.append(f"wrk, per round and server: `wrk -t1 -c64 -d{secs}s --timeout 2s -s bench/http/wrk.lua "
              f"http://127.0.0.1:PORT/hello` and `wrk -t1 -c16 -d{secs}s --timeout 2s -H 'Connection: "
              "close' ...`; a 1 s warm-up per server first, not counted. Raw outputs are kept in "
              "build/bench/.\n")
    if notes:
        md.append("\n## Skipped or failed in this run\n")
        md.append("".join(f"- {n}\n" for n in notes.splitlines()))

    with open(out_path, "w") as f:
        f.write("\n".join(part.rstrip("\n") + "\n" for part in md))
    if len(argv) > 4:
        update_readme(argv[4], summary, meta, kept)
    return 0


START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"


def update_readme(path, summary, meta, kept):
    """Replaces what stands between the two markers in the README, when it
    has them, with the headline table and the picture."""
    text = read(path)
    if text is None or START not in text or END not in text:
        return
    quick = " (a quick run: indicative only)" if meta.get("quick") else ""
    body = (f"\n{headline(summary, kept)}{closer_note(kept)}\nMedians of {meta.get('rounds', '?')} interleaved rounds of "
            f"{meta.get('seconds', '?')} s on {meta.get('date', '?')}{quick}; machine, versions, "
            "configurations and every other figure in [docs/benchmarks.md](docs/benchmarks.md). "
            "Run `bench/run` to measure your own.\n\n![benchmarks](docs/benchmarks.png)\n")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    with open(path, "w") as f:
        f.write(head + START + body + END + tail)
    print(f"  updated the headline in {path}")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
