#!/usr/bin/env python3
"""tests/multihost/driver.py: the steps of tests/multihost/run (which made the
namespaces and removes everything afterwards).

Starts prefork-httpd in each host namespace (-D: it returns once its workers
serve), HAProxy in the root namespace with the shipped configuration, timings
shortened, and a client load through HAProxy: keep-alive and
new-connection threads, each with one request in flight at a time, every
answer checked (200 and the exact body). Then, host by host:

  1. USR2 upgrade, fork-exec mode (hosts started with --upgrade fork-exec)
  2. drain and return, restarted with --upgrade in-place (a changed command
     line takes a restart, never a USR2, so this is the rolling restart that
     also proves the drain): the host's --drain-file is created (its
     /_health answers 503 "draining", asked directly), HAProxy marks it
     DOWN, then QUIT finishes a request in hand; the host starts again with
     the file still there (so it stays out), and removing the file brings
     it UP
  3. USR2 upgrade, in-place mode
  4. a hard failure of one host: SIGKILL to its master and workers at once,
     then its return

Each step waits for the state it caused (the old master gone, the upgrade
logged, HAProxy seeing the host DOWN and UP again) with a deadline, and for
the host to serve again, then prints its duration and the requests per
host. The driver is the child subreaper of everything it starts, so the
daemons, and the masters they leave behind, are reaped here and a PID that
is gone is really gone.

Requests that fail outside the hard failure fail the run; on the hard
failure at most one per client thread (each has one request in flight) may
be lost, and the count is reported. The access logs must show the client's
address (127.0.0.1, through PROXY v2) for every /hello, never HAProxy's.
"""

import argparse
import ctypes
import http.client
import os
import re
import signal
import socket
import sys
import threading
import time

PR_SET_CHILD_SUBREAPER = 36
STEP_SECONDS = 1.0  # each step lasts at least this long, under load
SLOW_MS = 300  # the slow requests' time in the worker


def log(text):
    print(text, flush=True)


class Processes:
    """Spawns with posix_spawn and reaps every child (its own and orphans)."""

    def __init__(self):
        self.exited = {}

    def spawn(self, argv, out_path):
        fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            actions = [(os.POSIX_SPAWN_DUP2, fd, 1), (os.POSIX_SPAWN_DUP2, fd, 2),
                       (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0)]
            return os.posix_spawnp(argv[0], argv, os.environ, file_actions=actions)
        finally:
            os.close(fd)

    def reap(self):
        while True:
            try:
                pid, st = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.exited[pid] = st

    def alive(self, pid):
        self.reap()
        if pid in self.exited:
            return False
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False


def wait_for(what, cond, seconds=20.0):
    """Polls cond() until true; fails with `what` at the deadline."""
    deadline = time.monotonic() + seconds
    while True:
        if cond():
            return
        if time.monotonic() >= deadline:
            raise RuntimeError("timed out after %.0f s waiting for %s" % (seconds, what))
        time.sleep(0.02)


class Load:
    """Client threads through HAProxy; counts requests, failures, hosts."""

    def __init__(self, port, keepalive_threads=2, new_connection_threads=2, slow_threads=1, pause=0.002):
        self.port, self.pause = port, pause
        self.lock = threading.Lock()
        self.requests = self.failed = 0
        self.hosts = {}
        self.errors = []
        self.stop = threading.Event()
        kinds = [("/hello", True)] * keepalive_threads + [("/hello", False)] * new_connection_threads
        # A slow request keeps a worker busy, so a drain has something in hand to finish.
        kinds += [("/sleep?ms=%d" % SLOW_MS, True)] * slow_threads
        self.threads = [threading.Thread(target=self.run, args=k, daemon=True) for k in kinds]

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def snapshot(self):
        with self.lock:
            return self.requests, self.failed, dict(self.hosts)

    def run(self, target, keepalive):
        expect = b"Hello, World!" if target == "/hello" else b"slept %d ms\n" % SLOW_MS
        conn = None
        while not self.stop.is_set():
            host, error = "?", None
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
                conn.request("GET", target, headers={} if keepalive else {"Connection": "close"})
                r = conn.getresponse()
                body = r.read()
                host = r.getheader("X-Served-By", "?")
                if r.status != 200 or body != expect:
                    error = "status %d body %r from %s" % (r.status, body[:60], host)
                if not keepalive or r.will_close:
                    conn.close()
                    conn = None
            except Exception as e:  # a failed request, whatever the cause
                error = "%s: %s" % (type(e).__name__, e)
                if conn is not None:
                    conn.close()
                conn = None
            with self.lock:
                self.requests += 1
                if error:
                    self.failed += 1
                    if len(self.errors) < 20:
                        self.errors.append("%.3f %s" % (time.monotonic(), error))
                else:
                    self.hosts[host] = self.hosts.get(host, 0) + 1
            time.sleep(self.pause)


class Cluster:
    def __init__(self, args, procs):
        self.a, self.procs = args, procs
        self.names = ["h1", "h2", "h3"]
        self.mode = {"h1": "evented", "h2": "evented", "h3": "blocking"}  # both worker modes
        self.port = 0
        self.haproxy = None
        self.detail = ""  # what the last step measured, for its line

    def path(self, name):
        return os.path.join(self.a.work, name)

    def address(self, h):
        return "%s.1%s" % (self.a.net, h[1:])

    def pid(self, h):
        try:
            with open(self.path(h + ".pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def error_log(self, h):
        try:
            with open(self.path(h + ".log")) as f:
                return f.read()
        except OSError:
            return ""

    def start_host(self, h, upgrade):
        argv = ["ip", "netns", "exec", self.a.tag + h, self.a.bin, "-D", "-w", "2", "-m", self.mode[h],
                "-l", self.address(h) + ":8080", "--proxy-protocol", "--upgrade", upgrade,
                "--graceful-timeout", "5", "--header-timeout", "2", "--keepalive-timeout", "5",
                "--drain-file", self.path(h + ".drain"),
                "-P", self.path(h + ".pid"), "--error-log", self.path(h + ".log"),
                "--access-log", self.path(h + "-access.log")]
        launcher = self.procs.spawn(argv, self.path(h + ".out"))
        wait_for(h + " to start (-D returns once its workers serve)", lambda: not self.procs.alive(launcher))
        st = self.procs.exited.get(launcher)
        if st is None or os.waitstatus_to_exitcode(st) != 0:
            raise RuntimeError("%s did not start: %s" % (h, open(self.path(h + ".out")).read()))

    def haproxy_config(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        out = []
        section = None
        for line in open(self.a.haproxy_cfg):
            word = line.split()
            if line[:1] not in (" ", "\t", "#", "\n") and word:
                section = word[0]
            if section == "global" and word and word[0] in ("log", "chroot", "user", "group", "stats"):
                continue
            if word[:2] == ["log", "global"]:
                continue
            if word and word[0] == "server":
                continue
            if word and word[0] == "bind":
                line = "    bind 127.0.0.1:%d\n" % self.port
            if word and word[0] == "default-server":
                # Seconds become a tenth: out within fall x inter = 0.2 s.
                line = re.sub(r"\binter \S+", "inter 100ms", line)
                line = re.sub(r"\bfastinter \S+", "fastinter 50ms", line)
                line = re.sub(r"\bdowninter \S+", "downinter 100ms", line)
            out.append(line)
            if section == "global" and word and word[0] == "global":
                out.append("    stats socket %s level admin\n" % self.path("haproxy.sock"))
        for h in self.names:
            out.append("    server %s %s:8080\n" % (h, self.address(h)))
        # Which host answered, for the per-host counts.
        out.append("    http-response set-header X-Served-By %[srv_name]\n")
        with open(self.path("haproxy.cfg"), "w") as f:
            f.writelines(out)

    def start_haproxy(self):
        self.haproxy_config()
        self.haproxy = self.procs.spawn(["haproxy", "-db", "-f", self.path("haproxy.cfg")], self.path("haproxy.out"))
        with open(self.path("haproxy.pid"), "w") as f:
            f.write(str(self.haproxy))
        wait_for("HAProxy's stats socket", lambda: os.path.exists(self.path("haproxy.sock")))
        for h in self.names:
            self.wait_state(h, "UP")

    def status(self, h):
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(self.path("haproxy.sock"))
                s.sendall(b"show stat\n")
                data = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        except OSError:
            return "?"
        lines = data.decode().splitlines()
        head = lines[0].lstrip("# ").split(",")
        for row in lines[1:]:
            f = row.split(",")
            if len(f) == len(head) and f[head.index("pxname")] == "prefork_httpd" and f[head.index("svname")] == h:
                return f[head.index("status")]
        return "?"

    def wait_state(self, h, state):
        wait_for("HAProxy to see %s %s" % (h, state), lambda: self.status(h) == state)

    def children(self, pid):
        try:
            with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
                return [int(x) for x in f.read().split()]
        except OSError:
            return []

    # The steps -------------------------------------------------------------

    def upgrade_fork_exec(self, h):
        old = self.pid(h)
        os.kill(old, signal.SIGUSR2)
        # The old master steps aside only once the new one's workers are ready.
        wait_for(h + "'s old master to hand over and exit",
                 lambda: not self.procs.alive(old) and self.pid(h) not in (None, old) and self.procs.alive(self.pid(h)))

    def upgrade_in_place(self, h):
        pid = self.pid(h)
        done = len(re.findall(r"upgrade \d+ complete", self.error_log(h)))
        os.kill(pid, signal.SIGUSR2)
        wait_for(h + "'s in-place upgrade to complete",
                 lambda: len(re.findall(r"upgrade \d+ complete", self.error_log(h))) > done)
        if self.pid(h) != pid:
            raise RuntimeError("%s: the in-place upgrade changed the master's PID" % h)

    def direct(self, h, target):
        """A request straight to host h (not through HAProxy), with a PROXY
        v1 header as HAProxy would send; returns the connected socket."""
        s = socket.create_connection((self.address(h), 8080), timeout=15)
        s.sendall(b"PROXY TCP4 192.0.2.1 %s 40000 8080\r\nGET %s HTTP/1.0\r\n\r\n" %
                  (self.address(h).encode(), target.encode()))
        return s

    @staticmethod
    def read_all(s):
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk

    def drain_and_return(self, h, upgrade):
        pid = self.pid(h)
        drain = self.path(h + ".drain")
        t0 = time.monotonic()
        open(drain, "w").close()
        # The host says so itself, and goes on serving everything else.
        health = self.read_all(self.direct(h, "/_health"))
        if not health.startswith(b"HTTP/1.0 503") or not health.endswith(b"\r\n\r\ndraining\n"):
            raise RuntimeError("%s: /_health with the drain file present answered %r" % (h, health[:120]))
        self.wait_state(h, "DOWN")
        t_down = time.monotonic()
        # Out of rotation, but a request in hand (sent straight to the host)
        # that QUIT must let finish: QUIT once its worker shows it.
        slow = self.direct(h, "/sleep?ms=400")
        wait_for(h + "'s worker to take the slow request",
                 lambda: b"/sleep?ms=400" in self.read_all(self.direct(h, "/_status?format=json")))
        t_quit = time.monotonic()
        os.kill(pid, signal.SIGQUIT)
        answer = self.read_all(slow)
        slow.close()
        if not answer.startswith(b"HTTP/1.0 200") or not answer.endswith(b"slept 400 ms\n"):
            raise RuntimeError("%s: the request in hand at QUIT got %r" % (h, answer[:80]))
        wait_for(h + "'s master to exit after QUIT", lambda: not self.procs.alive(pid))
        t_exit = time.monotonic()
        # Started with the file still there it serves, but HAProxy keeps it
        # out until the file goes.
        self.start_host(h, upgrade)
        if not self.status(h).startswith("DOWN"):
            raise RuntimeError("%s: HAProxy shows it %s, restarted with its drain file" % (h, self.status(h)))
        t_rm = time.monotonic()
        os.unlink(drain)
        self.wait_state(h, "UP")
        self.detail = ("/_health 503 draining, DOWN in HAProxy %.2f s after the drain file, the request in hand "
                       "finished, master exited %.2f s after QUIT, UP %.2f s after the file's removal" %
                       (t_down - t0, t_exit - t_quit, time.monotonic() - t_rm))

    def hard_failure(self, h, upgrade):
        master = self.pid(h)
        victims = [master] + self.children(master)
        t0 = time.monotonic()
        for p in victims:
            os.kill(p, signal.SIGKILL)
        wait_for(h + "'s processes to die", lambda: not any(self.procs.alive(p) for p in victims))
        self.wait_state(h, "DOWN")
        t_down = time.monotonic()
        os.unlink(self.path(h + ".pid"))  # what a killed master leaves behind
        self.start_host(h, upgrade)
        self.wait_state(h, "UP")
        self.detail = "DOWN in HAProxy %.2f s after the kill, UP %.2f s after the restart" % (
            t_down - t0, time.monotonic() - t_down)


def main():
    p = argparse.ArgumentParser()
    for name in ("bin", "tag", "net", "work", "haproxy-cfg"):
        p.add_argument("--" + name, required=True)
    a = p.parse_args()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl PR_SET_CHILD_SUBREAPER")
    procs = Processes()
    c = Cluster(a, procs)
    started = time.monotonic()
    for h in c.names:
        c.start_host(h, "fork-exec")
    c.start_haproxy()
    load = Load(c.port)
    load.start()
    wait_for("the first answers through HAProxy", lambda: load.snapshot()[0] >= 50)

    totals = {"upgrades": 0, "drains": 0, "hard": 0, "failed": 0, "lost": 0}
    problems = []
    steps = []
    for h in c.names:
        steps.append(("USR2 fork-exec upgrade " + h, h, "upgrades", lambda h=h: c.upgrade_fork_exec(h)))
    for h in c.names:
        steps.append(("drain (file, DOWN, QUIT) of %s, back with --upgrade in-place" % h, h, "drains",
                      lambda h=h: c.drain_and_return(h, "in-place")))
    for h in c.names:
        steps.append(("USR2 in-place upgrade " + h, h, "upgrades", lambda h=h: c.upgrade_in_place(h)))
    steps.append(("SIGKILL of h2's master and workers, and its return", "h2", "hard",
                  lambda: c.hard_failure("h2", "in-place")))

    try:
        run_steps(c, load, steps, totals, problems)
    except RuntimeError as e:
        problems.append(str(e))
    finish(c, procs, load, totals, problems, started)
    return 1 if problems else 0


def run_steps(c, load, steps, totals, problems):
    for n, (name, host, kind, action) in enumerate(steps, 1):
        r0, f0, h0 = load.snapshot()
        t0 = time.monotonic()
        c.detail = ""
        action()
        # Back in rotation: the host answers again through HAProxy; and the
        # load goes on for a while around each step.
        wait_for(host + " to serve through HAProxy again",
                 lambda: load.snapshot()[2].get(host, 0) >= h0.get(host, 0) + 20)
        while time.monotonic() < t0 + STEP_SECONDS:
            time.sleep(0.05)
        r1, f1, h1 = load.snapshot()
        failed = f1 - f0
        totals[kind] += 1
        if kind == "hard":
            totals["lost"] += failed
            if failed > len(load.threads):
                problems.append("%s: %d requests lost, more than the %d that can be in flight" %
                                (name, failed, len(load.threads)))
        else:
            totals["failed"] += failed
            if failed:
                problems.append("%s: %d requests failed" % (name, failed))
        per_host = ", ".join("%s %d" % (x, h1.get(x, 0) - h0.get(x, 0)) for x in c.names)
        log("multihost: step %d/%d %s: %.2f s, requests %d (%s), failed %d%s" %
            (n, len(steps), name, time.monotonic() - t0, r1 - r0, per_host, failed,
             "; " + c.detail if c.detail else ""))



def finish(c, procs, load, totals, problems, started):
    load.finish()
    requests, failed_all, _ = load.snapshot()
    # Requests outside the steps count as failed too.
    outside = failed_all - totals["failed"] - totals["lost"]
    if outside:
        problems.append("%d requests failed between steps" % outside)
        totals["failed"] += outside

    # The client's address survived the balancer: every /hello in the access
    # logs comes from 127.0.0.1 (the client), none from HAProxy's address.
    seen = {"client": 0, "balancer": 0}
    for h in c.names:
        try:
            text = open(c.path(h + "-access.log")).read()
        except OSError:
            text = ""
        for line in text.splitlines():
            if '"GET /hello ' in line:
                seen["client" if line.startswith("127.0.0.1 ") else "balancer"] += 1
    if seen["client"] == 0 or seen["balancer"]:
        problems.append("access logs: %d /hello lines with the client's address, %d with another" %
                        (seen["client"], seen["balancer"]))

    try:
        for h in c.names:
            pid = c.pid(h)
            if pid and procs.alive(pid):
                os.kill(pid, signal.SIGQUIT)
                wait_for(h + " to stop", lambda: not procs.alive(pid))
        os.kill(c.haproxy, signal.SIGUSR1)  # soft stop
        wait_for("HAProxy to stop", lambda: not procs.alive(c.haproxy))
    except (RuntimeError, OSError) as e:
        problems.append("stopping: %s" % e)

    for e in load.errors:
        log("multihost: failed request: " + e)
    if problems:
        for name in [h + ".log" for h in c.names] + ["haproxy.out"]:
            try:
                lines = open(c.path(name)).read().splitlines()[-12:]
            except OSError:
                continue
            log("multihost: --- last lines of " + name)
            for line in lines:
                log("  " + line)
    for pr in problems:
        log("multihost: FAILED: " + pr)
    log("multihost: %.1f s in all, access logs: %d /hello lines with the client's address" %
        (time.monotonic() - started, seen["client"]))
    log("multihost: requests %d, failed %d, in-flight lost on hard failure %d, upgrades %d, drains %d, "
        "hard failures %d" % (requests, totals["failed"], totals["lost"], totals["upgrades"], totals["drains"],
                              totals["hard"]))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as e:
        log("multihost: FAILED: %s" % e)
        sys.exit(1)
