#!/usr/bin/env python3
"""bench/http/callgrind.py: instructions per request of prefork-httpd's parser.

usage: callgrind.py PARSER_COUNT_BINARY OUT.json

Runs bench/http/parser_count under valgrind --tool=callgrind at two request
counts per case and takes (I(n2) - I(n1)) / (n2 - n1): start-up, reading
the inputs and the final output are in both runs and cancel out. Unlike a
time, the figure does not move with the machine's load, so a change of a
few percent in it is a real change of the parser.
"""
import json
import re
import subprocess
import sys

CASES = [  # name shown, case, n1, n2
    ("small GET (40 B)", "small", 2000, 6000),
    ("browser GET (768 B)", "browser", 2000, 6000),
    ("chunked POST (4 KiB body, 8 chunks)", "chunked", 500, 1500),
    ("browser GET, one byte per read", "browser-bytewise", 20, 60),
]


def instructions(binary, case, n):
    r = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                        binary, case, str(n)], capture_output=True, text=True, timeout=600)
    m = re.search(r"Collected\s*:\s*(\d+)", r.stderr)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"callgrind {case} {n}: {r.stderr.strip().splitlines()[-1:]}")
    return int(m.group(1))


def main(argv):
    binary, out = argv[1], argv[2]
    cases = {}
    for name, case, n1, n2 in CASES:
        i1, i2 = instructions(binary, case, n1), instructions(binary, case, n2)
        cases[name] = (i2 - i1) / (n2 - n1)
        print(f"  {name:34} {cases[name]:10.0f} instructions per request")
    with open(out, "w") as f:
        json.dump({"cases": cases}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
