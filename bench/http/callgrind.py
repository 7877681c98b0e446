#!/usr/bin/env python3
"""bench/http/callgrind.py: instructions per request of HTTP request parsers.

usage: callgrind.py OUT.json LABEL=PARSER_COUNT_BINARY [LABEL=BINARY ...]  (no "=" in a path)

Runs bench/http/parser_count under valgrind --tool=callgrind at two request
counts per case and takes (I(n2) - I(n1)) / (n2 - n1): start-up, reading
the inputs and the final output are in both runs and cancel out. Unlike a
time, the figure does not move with the machine's load, so a change of a
few percent in it is a real change of the parser. Each binary is one build
(-O2, -O2 -march=native); the picohttpparser cases are measured where the
binary was linked with it, and skipped where it says "unknown case".
"""
import json
import re
import subprocess
import sys

CASES = [  # name shown, case, n1, n2
    ("minimal GET", "minimal", 2000, 6000),
    ("browser GET", "browser", 2000, 6000),
    ("chunked POST (4 KiB body, 4 chunks)", "chunked", 500, 1500),
    ("browser GET, one byte per read", "browser-bytewise", 20, 60),
    ("picohttpparser: minimal GET", "pico-minimal", 2000, 6000),
    ("picohttpparser: browser GET", "pico-browser", 2000, 6000),
]


class Unknown(Exception):
    pass


def instructions(binary, case, n):
    r = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                        binary, case, str(n)], capture_output=True, text=True, timeout=600)
    if "unknown case" in r.stderr:
        raise Unknown(case)
    m = re.search(r"Collected\s*:\s*(\d+)", r.stderr)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"callgrind {binary} {case} {n}: {r.stderr.strip().splitlines()[-3:]}")
    return int(m.group(1))


def main(argv):
    out, builds = argv[1], {}
    for spec in argv[2:]:
        label, binary = spec.rsplit("=", 1)  # the label may hold "=", the path does not
        cases = {}
        for name, case, n1, n2 in CASES:
            try:
                i1, i2 = instructions(binary, case, n1), instructions(binary, case, n2)
            except Unknown:
                continue
            except RuntimeError as e:
                print(f"  {label}: {e}", file=sys.stderr)
                continue
            cases[name] = (i2 - i1) / (n2 - n1)
            print(f"  {label:16} {name:36} {cases[name]:10.0f} instructions per request")
        builds[label] = cases
    with open(out, "w") as f:
        json.dump({"builds": builds}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
