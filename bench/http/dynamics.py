#!/usr/bin/env python3
"""bench/http/dynamics.py: how fast a preforking server heals and renews.

usage: dynamics.py RESULTS.jsonl SERVER MASTER_PID WORKERS [options]
  --respawn K         SIGKILL a worker K times; time until the master has
                      WORKERS workers again, the victim among none of them
  --hup H             HUP the master H times; time until every old worker is
                      gone and WORKERS new ones run (a rolling replacement)
  --upgrade MODE      USR2 --repeat times: fork_exec times signal to old
                      master and its workers gone (the new master's PID is
                      read from --pid-file); in_place times signal to old
                      workers gone and WORKERS new ones under the same PID
  --pid-file F, --repeat N
  --under-load PORT   then once more, HUP (and USR2 with --upgrade) while wrk
                      makes a new connection per request (-c16, 4 s, the
                      signal at 1 s): a connection lost or refused during
                      the replacement shows as a wrk error

Deaths are seen through pidfds (poll says readable when the process exits,
whoever its parent is), births by polling /proc/PID/task/*/children every
0.2 ms, so figures are good to about that. The server is idle meanwhile.
Nothing here is a test: an event that does not complete within 15 s is
recorded as failed and the next one goes on.
"""
import json
import os
import select
import signal
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proc import children, stat_fields  # noqa: E402

POLL_S = 0.0002
DEADLINE_S = 15.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def workers_of(master):
    return set(children(master))


def age_s(pid):
    """Seconds since pid started (starttime is field 22, in clock ticks)."""
    try:
        start = int(stat_fields(pid)[19]) / CLK_TCK
    except (OSError, IndexError):
        return 0.0
    with open("/proc/uptime") as f:
        up = float(f.read().split()[0])
    return up - start


def pidfds(pids):
    fds = {}
    for p in pids:
        try:
            fds[p] = os.pidfd_open(p)
        except OSError:
            pass  # already gone
    return fds


def all_dead(fds):
    if not fds:
        return True
    poller = select.poll()
    for fd in fds.values():
        poller.register(fd, select.POLLIN)
    return len(poller.poll(0)) == len(fds)


def close_all(fds):
    for fd in fds.values():
        os.close(fd)


def wait_until(cond):
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(POLL_S)
    return False


def wait_workers(master, n):
    return wait_until(lambda: len(workers_of(master)) >= n)


class Recorder:
    def __init__(self, path, server):
        self.path, self.server = path, server

    def __call__(self, event, ms=None, **extra):
        rec = {"section": "dynamics", "server": self.server, "event": event}
        if ms is None:
            rec["failed"] = True
        else:
            rec["ms"] = ms
        rec.update(extra)
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if ms is None:
            shown = "failed (no outcome within 15 s)"
        elif extra.get("load"):
            shown = f"{extra['errors']} errors in {extra['requests']} requests"
        else:
            shown = f"{ms:.2f} ms"
        print(f"  {self.server:22} {event:18} {shown}", flush=True)


def respawn(rec, master, n, count):
    if not wait_workers(master, n):
        rec("respawn")
        return
    for _ in range(count):
        olds = workers_of(master)
        # The oldest worker, and only once it is over 1.5 s old, so that no
        # crash-loop back-off (for workers dying young) is measured instead.
        victim = max(olds, key=age_s)
        while age_s(victim) < 1.5:
            time.sleep(0.05)
        fds = pidfds([victim])
        t0 = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        ok = wait_until(lambda: all_dead(fds) and victim not in workers_of(master)
                        and len(workers_of(master)) >= n)
        t1 = time.monotonic()
        close_all(fds)
        rec("respawn", (t1 - t0) * 1000 if ok else None)


def hup(rec, master, n, count):
    for _ in range(count):
        if not wait_workers(master, n):
            rec("hup")
            return
        olds = workers_of(master)
        fds = pidfds(olds)
        t0 = time.monotonic()
        os.kill(master, signal.SIGHUP)
        ok = wait_until(lambda: all_dead(fds) and len(workers_of(master) - olds) >= n)
        t1 = time.monotonic()
        close_all(fds)
        rec("hup", (t1 - t0) * 1000 if ok else None)


def read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def upgrade(rec, master, n, mode, pid_file, count):
    event = f"usr2 {mode}"
    for _ in range(count):
        if not wait_workers(master, n):
            rec(event)
            return None
        olds = workers_of(master)
        if mode == "fork_exec":
            fds = pidfds(olds | {master})
        else:
            fds = pidfds(olds)
        t0 = time.monotonic()
        os.kill(master, signal.SIGUSR2)
        if mode == "fork_exec":
            ok = wait_until(lambda: all_dead(fds))
        else:
            ok = wait_until(lambda: all_dead(fds) and len(workers_of(master) - olds) >= n)
        t1 = time.monotonic()
        close_all(fds)
        rec(event, (t1 - t0) * 1000 if ok else None)
        if not ok:
            return None
        if mode == "fork_exec":
            new = read_pid(pid_file) if pid_file else None
            if new is None or new == master:
                print(f"  {rec.server}: no new master PID in {pid_file}", file=sys.stderr)
                return None
            master = new
    return master


def under_load(rec, master, n, port, sig, event, pid_file=None):
    """Sends sig to the master 1 s into a 4 s wrk run and records wrk's
    errors; returns the master's PID afterwards (new after fork_exec)."""
    if not wait_workers(master, n):
        rec(event)
        return master
    here = os.path.dirname(os.path.abspath(__file__))
    wrk = subprocess.Popen(["timeout", "-k", "5", "30", "wrk", "-t1", "-c16", "-d4s", "--timeout", "2s",
                            "-H", "Connection: close", "-s", os.path.join(here, "wrk.lua"),
                            f"http://127.0.0.1:{port}/hello"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)
    os.kill(master, sig)
    out, _ = wrk.communicate()
    summary = None
    for line in out.splitlines():
        if line.startswith("WRKJSON "):
            summary = json.loads(line[len("WRKJSON "):])
    if summary is None:
        rec(event)
        return master
    errors = sum(summary[k] for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout"))
    rec(event, 0.0, requests=summary["requests"], errors=errors, load=True)
    if pid_file and sig == signal.SIGUSR2:
        new = read_pid(pid_file)
        if new:
            master = new
    return master


def main(argv):
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("server")
    ap.add_argument("master", type=int)
    ap.add_argument("workers", type=int)
    ap.add_argument("--respawn", type=int, default=0)
    ap.add_argument("--hup", type=int, default=0)
    ap.add_argument("--upgrade", choices=["fork_exec", "in_place"])
    ap.add_argument("--pid-file")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--under-load", type=int, metavar="PORT")
    a = ap.parse_args(argv[1:])
    rec = Recorder(a.results, a.server)
    master = a.master
    if a.respawn:
        respawn(rec, master, a.workers, a.respawn)
    if a.hup:
        hup(rec, master, a.workers, a.hup)
    if a.upgrade:
        # None: the upgrade did not complete, so none is tried under load.
        master = upgrade(rec, master, a.workers, a.upgrade, a.pid_file, a.repeat)
    if a.under_load:
        if a.hup:
            under_load(rec, master, a.workers, a.under_load, signal.SIGHUP, "hup under load")
        if a.upgrade and master is not None:
            under_load(rec, master, a.workers, a.under_load, signal.SIGUSR2,
                       f"usr2 {a.upgrade} under load", a.pid_file)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
