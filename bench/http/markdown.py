"""bench/http/markdown.py: one section of docs/benchmarks.md, replaced.

The parts of bench/run that can run alone (parser, reuseport, profile)
rewrite only their own section of an existing report.
"""
import os


def replace_section(path, heading, text, before=None):
    """Puts text (starting with heading, a "## ..." line) in place of the
    section with that heading: where it was, else before the section
    `before` names, else at the end. No text (no figures): the page stays."""
    if text is None:
        print(f"  no figures for {heading.strip()!r}: section left as it was")
        return 0
    old = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    body = text.strip("\n") + "\n"
    start = old.find(heading)
    if start == -1:
        at = old.find("\n" + before) if before else -1
        new = old[:at + 1] + body + "\n" + old[at + 1:] if at != -1 else old.rstrip("\n") + "\n\n" + body
    else:
        end = old.find("\n## ", start + 1)
        new = old[:start] + body + ("\n" + old[end + 1:] if end != -1 else "")
    with open(path, "w") as f:
        f.write(new)
    return 0
