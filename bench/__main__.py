"""Run every benchmark and record the results in docs/benchmarks.md."""

from __future__ import annotations

import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

from bench import assays, bus_roundtrip, inference, logs, python_step, records_codec

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def main() -> int:
    sections = [inference.run(), python_step.run(), logs.run(), assays.run(), bus_roundtrip.run(),
                records_codec.run()]
    header = (
        "# Benchmarks\n\n"
        "Written by `make bench` (`python -m bench`); every figure is compared with a baseline measured in the same"
        " run on the same machine. `docs/performance.md` explains the figures and what holds inference back.\n\n"
        f"Last run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()},"
        f" {platform.machine()}, {_cores()} cores.\n\n"
    )
    text = header + "\n".join(sections)
    previous = DOCS.read_text() if DOCS.exists() else ""
    if "<!-- bench-peers:start -->" in previous:  # `make bench-peers`'s section stays (bench/peers/harness.py)
        kept = previous[previous.index("<!-- bench-peers:start -->"):]
        text += "\n" + kept[:kept.index("<!-- bench-peers:end -->")] + "<!-- bench-peers:end -->\n"
    DOCS.write_text(text)
    print(text)
    return 0


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())
