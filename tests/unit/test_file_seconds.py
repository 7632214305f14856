"""tests/file_seconds.py: how `make test` orders the files it hands to its xdist workers."""

from __future__ import annotations

from pathlib import Path

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
