"""tests/file_seconds.py: how `make test` orders the files it hands to its xdist workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import file_seconds


def test_an_unlisted_integration_file_counts_as_the_listed_ones_median_and_any_other_as_nothing():
    """A new integration file, not yet in the table, was sorted with 0 s: after every listed file, the unit tier's
    included, so a slow one (test_dead_letters.py, ~50 s) could be the last file of a run, its worker alone."""
    table = {"tests/integration/test_a.py": 300.0, "tests/integration/test_b.py": 40.0,
             "tests/integration/test_c.py": 10.0, "tests/unit/test_d.py": 25.0}
    estimate = file_seconds.unlisted_estimate(table)
    assert estimate("tests/integration/test_new.py") == 40.0  # handed out before the unit file of 25 s
    assert estimate("tests/unit/test_new.py") == 0.0
    assert estimate("tests/ml_backend/test_new.py") == 0.0
    assert file_seconds.unlisted_estimate({})("tests/integration/test_new.py") == 0.0


def test_a_junit_report_gives_the_seconds_of_each_file(tmp_path: Path):
    report = tmp_path / "run.xml"
    report.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.integration.test_a" name="test_one" time="2.5"/>'
        '<testcase classname="tests.integration.test_a.TestGroup" name="test_two" time="1.0"/>'
        '<testcase classname="tests.unit.test_b" name="test_three[x]" time="0.25"/>'
        '</testsuite></testsuites>')
    assert file_seconds.from_junit(report) == {"tests/integration/test_a.py": 3.5, "tests/unit/test_b.py": 0.25}


def test_a_runs_output_gives_the_table_its_last_file_seconds_line_holds(tmp_path: Path, monkeypatch):
    """Session 41's final run's junit report went with its clone, so the table could not be refreshed from that run;
    its output (kept) had only the 25 slowest durations. The controller's summary now prints every file's seconds
    (tests/conftest.py); `python -m tests.file_seconds run.log` reads the last such line."""
    log = tmp_path / "ci.log"
    earlier = {"tests/integration/test_old.py": 99.0}
    seconds = {"tests/unit/test_b.py": 4.9, "tests/integration/test_a.py": 61.4, "tests/integration/test_c.py": 7.5}
    log.write_text("collecting ...\n" + file_seconds.LOG_LINE + json.dumps(earlier) + "\n"
                   "5297 passed in 895.70s\n" + file_seconds.LOG_LINE + json.dumps(seconds) + "\nEXIT 0\n")
    assert file_seconds.from_log(log) == seconds
    monkeypatch.setattr(file_seconds, "TABLE", tmp_path / "file_seconds.json")
    file_seconds.main([str(log)])
    written = file_seconds.TABLE.read_text()
    assert json.loads(written) == {"tests/integration/test_a.py": 61, "tests/integration/test_c.py": 8}
    assert list(json.loads(written)) == ["tests/integration/test_a.py", "tests/integration/test_c.py"]  # slowest first
    without = tmp_path / "old.log"
    without.write_text("5297 passed in 895.70s\n")
    with pytest.raises(SystemExit, match="no line with"):
        file_seconds.from_log(without)


def test_a_junit_report_still_refreshes_the_table(tmp_path: Path, monkeypatch):
    report = tmp_path / "run.xml"
    report.write_text('<testsuites><testsuite name="pytest">'
                      '<testcase classname="tests.integration.test_a" name="test_one" time="6.5"/>'
                      '<testcase classname="tests.unit.test_b" name="test_two" time="0.5"/>'
                      '</testsuite></testsuites>')
    monkeypatch.setattr(file_seconds, "TABLE", tmp_path / "file_seconds.json")
    file_seconds.main([str(report)])
    assert json.loads(file_seconds.TABLE.read_text()) == {"tests/integration/test_a.py": 6}


def test_the_xdist_controller_prints_the_line_that_refreshes_the_table(tmp_path: Path, monkeypatch):
    """tests/conftest.py's hooks, as the controller calls them (a worker's reports carry its node): each file's
    set-up, call and teardown add up, and the summary's line reads back as the table. A run without workers (-n 0,
    -p no:xdist) prints no such line."""
    from collections import defaultdict
    from types import SimpleNamespace

    from tests import conftest
    monkeypatch.setattr(conftest, "_client_venv_pending", False)
    monkeypatch.setattr(conftest, "_worker_busy", defaultdict(float))
    monkeypatch.setattr(conftest, "_worker_down", {})
    monkeypatch.setattr(conftest, "_file_busy", defaultdict(float))
    lines: list[str] = []
    reporter = SimpleNamespace(write_line=lines.append)
    conftest.pytest_terminal_summary(reporter)
    assert lines == []  # no worker went down: not under xdist
    node = SimpleNamespace(gateway=SimpleNamespace(id="gw0"))
    for nodeid, seconds in [("tests/integration/test_a.py::test_one", 0.5),  # its set-up, call
                            ("tests/integration/test_a.py::test_one", 4.0),
                            ("tests/integration/test_a.py::test_two[x::y]", 1.5), ("tests/unit/test_b.py::test", 4.9)]:
        conftest.pytest_runtest_logreport(SimpleNamespace(node=node, nodeid=nodeid, duration=seconds))
    conftest.pytest_testnodedown(node, None)
    conftest.pytest_terminal_summary(reporter)
    assert lines[0].startswith("workers: gw0 ran tests for 11 s")
    log = tmp_path / "run.log"
    log.write_text("\n".join(lines) + "\n")
    assert file_seconds.table(file_seconds.from_log(log)) == {"tests/integration/test_a.py": 6}


def test_the_line_is_found_after_a_prefix_a_ci_log_puts_before_each_line(tmp_path: Path):
    """Session 42's review: from_log took the line only at a line's start, so a CI log that stamps each line with its
    time (or a job's name) refused to refresh the table. The words inside other text (a command, a message) are no
    table and are passed over; the last table found is the run's."""
    seconds = {"tests/integration/test_a.py": 61.4, "tests/unit/test_b.py": 9.0}
    log = tmp_path / "ci.log"
    log.write_text("2026-12-06T22:03:01Z make test | grep 'file seconds: '\n"
                   "2026-12-06T22:24:40Z [gw] " + file_seconds.LOG_LINE + json.dumps(seconds) + "\r\n"
                   "2026-12-06T22:24:41Z the 'file seconds: ' line above refreshes the table\n")
    assert file_seconds.from_log(log) == seconds


def test_a_run_of_a_few_files_leaves_the_table_as_it_is_unless_forced(tmp_path: Path, monkeypatch, capsys):
    """Session 42's review: `python -m tests.file_seconds` wrote whatever the run measured, so the output of a run of
    one file (or of none of 5 s) replaced the suite's table with a line or with {}, and every other file then counted
    0 s (or the median) in the order the workers take them. A run must measure at least half the listed files."""
    table = tmp_path / "file_seconds.json"
    monkeypatch.setattr(file_seconds, "TABLE", table)
    current = {f"tests/integration/test_{i}.py": 40 - i for i in range(10)}
    table.write_text(json.dumps(current))

    def run(seconds: dict[str, float], *options: str) -> None:
        log = tmp_path / "run.log"
        log.write_text(file_seconds.LOG_LINE + json.dumps(seconds) + "\n")
        file_seconds.main([str(log), *options])

    for small in ({"tests/integration/test_0.py": 39.0}, {},
                  {f"tests/integration/test_{i}.py": 9.0 for i in range(4)}):  # 4 of 10: under half
        with pytest.raises(SystemExit, match="left as it is"):
            run(small)
        assert json.loads(table.read_text()) == current
    half = {f"tests/integration/test_{i}.py": 9.0 for i in range(5)} | {"tests/unit/test_new.py": 6.0}
    run(half)
    assert json.loads(table.read_text()) == {name: round(value) for name, value in half.items()}
    run({"tests/unit/test_new.py": 7.0}, "--force")
    assert json.loads(table.read_text()) == {"tests/unit/test_new.py": 7}
