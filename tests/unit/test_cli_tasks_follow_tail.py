"""`railyard tasks logs RUN -n N -f` prints the last N lines written so far, then every new one, as `tail -n N -f`
does. Before, `--lines` was read only without `--follow`: with it, the whole log was printed from its first line
(16 lines for `-n 2 -f` of a killed run of 16), the option silently ignored. `-n 0` or a negative N is refused as
usage (exit 2) before anything is asked."""

from __future__ import annotations

import pytest
from railyard_client import cli, cli_orchestrations

RUN_ID = "5f0c8a3e-0000-4000-8000-000000000001"


def line(n: int) -> str:
    return f"2026-12-01T00:00:{n:02d}Z stdout F {n}"


class Runs:
    """run_logs_from as the SDK answers it: a live run's lines so far with a next cursor, then its end."""

    def __init__(self) -> None:
        self.reads: list[str | None] = []

    def run_logs_from(self, run_id: str, cursor: str | None = None) -> dict:
        assert run_id == RUN_ID
        self.reads.append(cursor)
        if cursor is None:  # five lines written so far, the run still going
            return {"task": "t", "status": "running", "logs": [line(n) for n in range(5)], "next_cursor": "5",
                    "last_page_cursor": None, "last_page_lines": 5}
        return {"task": "t", "status": "success", "logs": [line(5)], "next_cursor": None,
                "last_page_cursor": "5", "last_page_lines": 1}


@pytest.fixture
def runs(monkeypatch) -> Runs:
    made = Runs()
    monkeypatch.setattr(cli_orchestrations, "_orchestrations", lambda workspace: made)
    monkeypatch.setattr(cli_orchestrations.time, "sleep", lambda seconds: None)
    return made


def test_lines_with_follow_print_the_last_n_then_the_new_ones(runs, capsys):
    assert cli.main(["tasks", "logs", RUN_ID, "-n", "2", "-f"]) == 0
    # the old code: lines 0 to 5, every one
    assert capsys.readouterr().out == f"{line(3)}\n{line(4)}\n{line(5)}\n"
    assert runs.reads == [None, "5"]


def test_follow_without_lines_prints_every_line(runs, capsys):
    assert cli.main(["tasks", "logs", RUN_ID, "-f"]) == 0
    assert capsys.readouterr().out == "".join(f"{line(n)}\n" for n in range(6))


@pytest.mark.parametrize("lines", ["0", "-3"])
def test_no_lines_is_a_usage_error(runs, capsys, lines):
    assert cli.main(["tasks", "logs", RUN_ID, "-n", lines, "-f"]) == 2
    assert "--lines" in capsys.readouterr().err and runs.reads == []
