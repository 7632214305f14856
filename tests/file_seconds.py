"""How long each test file took in one full run, for tests/conftest.py to hand the slowest files out first.

pytest-xdist (`make test`, --dist loadfile --no-loadscope-reorder) gives the workers whole files in collection order;
with the slowest first, the last files a worker takes are short ones, and neither worker waits long for the other to
finish a 45-s single-test file (xdist's own order, most tests first, put exactly those last). The figures are
relative: an integration file not listed counts as the listed integration files' median (unlisted_estimate), any
other as 0 s, keeping its place after the listed ones.

Refresh from a run's --junitxml or its output: `python -m tests.file_seconds run.xml` or `python -m tests.file_seconds
run.log` (rewrites file_seconds.json). Under xdist the controller prints every file's seconds on one line of its
summary (LOG_LINE, tests/conftest.py), so a run's saved output refreshes the table after its clone, and the junit
report in it, are gone (session 41's final run's were). The line is found anywhere in a line of the output (a CI log's
timestamp before it included). A run that measured fewer than half the files the table lists (one file, a subset, a
run cut short) leaves the table as it is: `--force` writes its table anyway."""

from __future__ import annotations

import argparse
import json
import statistics
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

TABLE = Path(__file__).with_name("file_seconds.json")
LISTED_FROM = 5.0  # seconds: files faster than this keep collection order
INTEGRATION = "tests/integration/"
LOG_LINE = "file seconds: "  # then the table as JSON, on one line of the run's summary
_DECODER = json.JSONDecoder()


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
    """Seconds per test file from a run's output: its last LOG_LINE (printed by a run under xdist), wherever it begins
    in its line: a CI log may put a timestamp or a job's name before each line of pytest's output."""
    found = None
    with path.open(errors="replace") as lines:
        for line in lines:
            start = line.find(LOG_LINE)
            while start >= 0:
                try:
                    seconds, _ = _DECODER.raw_decode(line, start + len(LOG_LINE))
                except ValueError:  # the words in other text (a command line, a message), not the summary's line
                    seconds = None
                if isinstance(seconds, dict):
                    found = seconds
                    break
                start = line.find(LOG_LINE, start + 1)
    if found is None:
        raise SystemExit(f"{path}: no line with {LOG_LINE!r} and a table after it "
                         "(`make test` prints it since session 42)")
    return {name: float(value) for name, value in found.items()}


def refusal(seconds: dict[str, float], current: dict[str, float]) -> str | None:
    """Why a run's seconds must not replace the current table, or None. A run of one file or a few (a helper's
    `pytest -n 2 tests/unit/test_x.py`, a run stopped early) prints its own short line, and writing its table
    reordered the whole suite by it: every file it did not run counted 0 s (or the median), the slowest integration
    files among them. It must have measured at least half of the files the table lists."""
    if not table(seconds):
        return "the run measured no file of 5 s or more"
    covered = sum(1 for name in current if name in seconds)
    if covered * 2 < len(current):
        return (f"the run measured {covered} of the {len(current)} files the table lists (a subset or a run cut short,"
                " not a full run)")
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.file_seconds",
                                     description="Refresh tests/file_seconds.json from a full run's junit report or "
                                                 "output.")
    parser.add_argument("report", help="a run's --junitxml report (.xml) or its saved output")
    parser.add_argument("--force", action="store_true",
                        help="write the table even from a run that measured under half the files it lists")
    args = parser.parse_args(argv)
    path = Path(args.report)
    seconds = from_junit(path) if path.suffix == ".xml" else from_log(path)
    why = refusal(seconds, load())
    if why is not None and not args.force:
        raise SystemExit(f"{path}: {TABLE.name} left as it is: {why}; --force writes it anyway")
    TABLE.write_text(json.dumps(table(seconds), indent=0) + "\n")


if __name__ == "__main__":
    main()
