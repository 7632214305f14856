"""Run every benchmark and record the results in docs/benchmarks.md.

    python -m bench                 every section; the page written anew (bench-peers' block kept)
    python -m bench logs assays     those sections alone, each put in place of its own on the page, with a line
                                    saying when it was re-run; the other sections' figures as they were"""

from __future__ import annotations

import importlib
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
SECTIONS = ("inference", "python_step", "logs", "assays", "bus_roundtrip", "records_codec")  # modules, page order
PEERS_START, PEERS_END = "<!-- bench-peers:start -->", "<!-- bench-peers:end -->"  # bench/peers/harness.py's
RERUN = ": re-run alone "


def main(names: list[str]) -> int:
    if unknown := [n for n in names if n not in SECTIONS]:
        print(f"no section {', '.join(unknown)}; sections: {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    previous = DOCS.read_text() if DOCS.exists() else ""
    if names:
        if not previous:
            print(f"{DOCS} does not exist yet: run every section (python -m bench)", file=sys.stderr)
            return 2
        done = []
        for name in [n for n in SECTIONS if n in names]:
            load = os.getloadavg()[0]
            section = importlib.import_module(f"bench.{name}").run()
            done.append(section)
            note = (f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}, load average "
                    f"{load:.2f} at its start")
            previous = splice(previous, section, note)
            DOCS.write_text(previous)  # each section as soon as it is measured
        print("\n".join(done))
        return 0
    sections = [importlib.import_module(f"bench.{name}").run() for name in SECTIONS]
    header = (
        "# Benchmarks\n\n"
        "Written by `make bench` (`python -m bench`); every figure is compared with a baseline measured in the same"
        " run on the same machine. `docs/performance.md` explains the figures and what holds inference back.\n\n"
        f"Last run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()},"
        f" {platform.machine()}, {_cores()} cores.\n\n"
    )
    text = header + "\n".join(sections)
    if PEERS_START in previous:  # `make bench-peers`'s section stays (bench/peers/harness.py)
        kept = previous[previous.index(PEERS_START):]
        text += "\n" + kept[:kept.index(PEERS_END)] + PEERS_END + "\n"
    DOCS.write_text(text)
    print(text)
    return 0


def splice(page: str, section: str, note: str) -> str:
    """`page` (docs/benchmarks.md) with `section` in place of the section of the same heading, and, among the header's
    lines, '<heading>: re-run alone <note>.' in place of any such line of that section; the rest as it was."""
    heading = section.split("\n", 1)[0]
    start = page.find(f"\n{heading}\n") + 1
    peers = page.find(PEERS_START)
    if not heading.startswith("## ") or start == 0 or (peers >= 0 and start > peers):
        raise ValueError(f"{DOCS.name} has no section {heading!r} of `python -m bench`: run every section")
    ends = [i for i in (page.find("\n## ", start), page.find(f"\n{PEERS_START}", start)) if i >= 0]
    end = min(ends) if ends else len(page)
    page = page[:start] + section.rstrip("\n") + "\n" + page[end:]
    head_end = page.find("\n## ") + 1
    title = heading.removeprefix("## ")
    lines = [line for line in page[:head_end].split("\n") if line and not line.startswith(f"{title}{RERUN}")]
    return "\n\n".join([*lines, f"{title}{RERUN}{note}."]) + "\n\n" + page[head_end:]


def _cores() -> int:
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
