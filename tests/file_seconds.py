"""How long each test file took in one full run, for tests/conftest.py to hand the slowest files out first.

pytest-xdist (`make test`, --dist loadfile --no-loadscope-reorder) gives the workers whole files in collection order;
with the slowest first, the last files a worker takes are short ones, and neither worker waits long for the other to
finish a 45-s single-test file (xdist's own order, most tests first, put exactly those last). The figures are
relative: an integration file not listed counts as the listed integration files' median (unlisted_estimate), any
other as 0 s, keeping its place after the listed ones.

Refresh from a run's --junitxml or its output: `python -m tests.file_seconds run.xml` or `python -m tests.file_seconds
run.log` (rewrites file_seconds.json). Under xdist the controller prints every file's seconds on one line of its
summary (LOG_LINE, tests/conftest.py), so a run's saved output refreshes the table after its clone, and the junit
report in it, are gone (session 41's final run's were)."""

from __future__ import annotations

import json
import statistics
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

TABLE = Path(__file__).with_name("file_seconds.json")
LISTED_FROM = 5.0  # seconds: files faster than this keep collection order
INTEGRATION = "tests/integration/"
LOG_LINE = "file seconds: "  # then the table as JSON, on one line of the run's summary


def load() -> dict[str, float]:
    try:
        return json.loads(TABLE.read_text())
    except (OSError, ValueError):
        return {}


def unlisted_estimate(seconds: dict[str, float]):
    """The seconds a file missing from the table is taken to need: an integration file (a new one since the last
    refresh) the median of the listed integration files, so it is handed out among them, not after the unit tier
    where a slow one ran alone at the end (test_dead_letters.py, ~50 s, was unlisted in session 24); any other 0."""
    listed = [value for name, value in seconds.items() if name.startswith(INTEGRATION)]
    middle = statistics.median(listed) if listed else 0.0

    def estimate(name: str) -> float:
        return middle if name.startswith(INTEGRATION) else 0.0

    return estimate


def from_junit(path: Path) -> dict[str, float]:
    """Seconds per test file (set-up, call and teardown of its tests) in a junit xml written by pytest."""
    seconds: dict[str, float] = defaultdict(float)
    for case in ET.parse(path).getroot().iter("testcase"):
        parts = case.get("classname", "").split(".")
        modules = [i for i, part in enumerate(parts) if part.startswith("test_")]
        if modules:
            seconds["/".join(parts[: modules[0] + 1]) + ".py"] += float(case.get("time") or 0)
    return dict(seconds)


def table(seconds: dict[str, float]) -> dict[str, int]:
    """The table's entries: the files of LISTED_FROM seconds or more, slowest first, in whole seconds."""
    return {name: round(value) for name, value in sorted(seconds.items(), key=lambda kv: -kv[1])
            if value >= LISTED_FROM}


def from_log(path: Path) -> dict[str, float]:
    """Seconds per test file from a run's output: its last LOG_LINE (printed by a run under xdist)."""
    found = None
    with path.open(errors="replace") as lines:
        for line in lines:
            if line.startswith(LOG_LINE):
                found = line[len(LOG_LINE):]
    if found is None:
        raise SystemExit(f"{path}: no line starting {LOG_LINE!r} (`make test` prints it since session 42)")
    return {name: float(value) for name, value in json.loads(found).items()}


def main(report: str) -> None:
    path = Path(report)
    seconds = from_junit(path) if path.suffix == ".xml" else from_log(path)
    TABLE.write_text(json.dumps(table(seconds), indent=0) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
