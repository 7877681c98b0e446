#!/usr/bin/env python3
"""bench/http/proc.py: what bench/run needs to know about a running server.

Subcommands (all read /proc, none changes anything but `ready`, which sends
GET requests to 127.0.0.1):

  tree PID            PIDs of PID and all its descendants, one a line
  cpu PID             clock ticks (utime+stime+cutime+cstime) of the tree;
                      cutime/cstime keep the time of children that died and
                      were reaped during a round, so nothing is lost
  mem PID             JSON: each process's RSS, private and PSS (kB, from
                      /proc/PID/smaps_rollup) and the tree's total PSS
  ready PORT PATH S [PID]
                      wait up to S seconds for 200 "Hello, World!" on PATH;
                      gives up at once if PID exits meanwhile
  keepalive PORT PATH prints "yes" when a second request on the connection
                      of a first one is answered, else "no"
  port-free PORT      exit 0 when nothing listens on 127.0.0.1:PORT
  gone PGID [PID...]  exit 0 when no process of group PGID and none of the
                      PIDs runs any more (zombies count as gone)
  pgid PID            PID's process group
  tick                clock ticks per second
"""
import json
import os
import socket
import sys
import time

HELLO = b"Hello, World!"


def children(pid):
    """Direct children of every thread of pid (h2o and nginx are one
    process, but a multi-threaded master's children hang off its threads)."""
    out = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out.extend(int(x) for x in f.read().split())
        except OSError:
            pass
    return out


def tree(pid):
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p in seen or not os.path.exists(f"/proc/{p}"):
            continue
        seen.append(p)
        todo.extend(children(p))
    return seen


def stat_fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    # comm may hold spaces and parentheses: split after the last ')'.
    return s[s.rindex(")") + 2:].split()


def cpu_ticks(pid):
    total = 0
    for p in tree(pid):
        try:
            f = stat_fields(p)
        except OSError:
            continue
        # fields after comm start at state (field 3): utime is field 14.
        total += sum(int(f[i]) for i in (11, 12, 13, 14))
    return total


def smaps_rollup(pid):
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    return out


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def mem(pid):
    procs = []
    for p in tree(pid):
        try:
            r = smaps_rollup(p)
        except OSError:
            continue
        procs.append({
            "pid": p,
            "comm": comm(p),
            "master": p == pid,
            "rss_kb": r.get("Rss", 0),
            "pss_kb": r.get("Pss", 0),
            "private_kb": r.get("Private_Clean", 0) + r.get("Private_Dirty", 0),
        })
    return {"pss_total_kb": sum(p["pss_kb"] for p in procs), "processes": procs}


def get(port, path, timeout=2.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    return status, body


def ready(port, path, seconds, pid=None):
    deadline = time.monotonic() + seconds
    last = "no answer"
    while time.monotonic() < deadline:
        if pid is not None and not running(pid):
            print(f"PID {pid} exited before answering", file=sys.stderr)
            return 1
        try:
            status, body = get(port, path)
            if b" 200 " in status + b" " and body == HELLO:
                return 0
            last = f"{status.decode(errors='replace')} body {body[:60]!r}"
        except OSError as e:
            last = str(e)
        time.sleep(0.05)
    print(f"not ready after {seconds}s: {last}", file=sys.stderr)
    return 1


def read_response(s, buf):
    """One response with a Content-Length body from s; returns (ok, rest)."""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            return False, buf
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            return False, rest
        rest += chunk
    return True, rest[length:]


def keepalive(port, path):
    req = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2.0) as s:
            s.sendall(req)
            ok, rest = read_response(s, b"")
            if not ok:
                return "no"
            s.sendall(req)
            ok, _ = read_response(s, rest)
            return "yes" if ok else "no"
    except OSError:
        return "no"


def port_free(port):
    s = socket.socket()
    # As servers bind: connections of an earlier run in TIME_WAIT do not
    # keep a port busy, a listener does.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        return 0
    except OSError:
        return 1
    finally:
        s.close()


def running(pid):
    try:
        return stat_fields(pid)[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def gone(pgid, pids):
    if any(running(p) for p in pids):
        return 1
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                f = stat_fields(int(entry))
            except OSError:
                continue
            if int(f[2]) == pgid and f[0] not in ("Z", "X"):
                return 1
    return 0


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "tree":
        for p in tree(int(args[0])):
            print(p)
    elif cmd == "cpu":
        print(cpu_ticks(int(args[0])))
    elif cmd == "mem":
        print(json.dumps(mem(int(args[0]))))
    elif cmd == "ready":
        return ready(int(args[0]), args[1], float(args[2]), int(args[3]) if len(args) > 3 else None)
    elif cmd == "keepalive":
        print(keepalive(int(args[0]), args[1]))
    elif cmd == "port-free":
        return port_free(int(args[0]))
    elif cmd == "gone":
        return gone(int(args[0]), [int(a) for a in args[1:] if a.strip()])
    elif cmd == "pgid":
        try:
            print(stat_fields(int(args[0]))[2])
        except OSError:
            return 1
    elif cmd == "tick":
        print(os.sysconf("SC_CLK_TCK"))
    else:
        print(f"unknown subcommand {cmd}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
