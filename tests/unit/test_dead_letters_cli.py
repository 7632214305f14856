"""`railyard dead-letters replay` against a bus that is not there: one line on stderr, exit status 5 (README:
server unreachable), within seconds. Before, nats-py's defaults retried for two minutes and its error handler printed
a traceback for each attempt (1,700 lines), and the exit status was 1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# `python -m shared.cli` with each TCP connection it opens counted (nats-py's transport opens them with
# asyncio.open_connection), the count written to $COUNTED at exit
COUNTING = """
import asyncio, atexit, os, runpy
tries = []
open_connection = asyncio.open_connection
async def counted(*args, **kwargs):
    tries.append(1)
    return await open_connection(*args, **kwargs)
asyncio.open_connection = counted
atexit.register(lambda: open(os.environ["COUNTED"], "w").write(str(len(tries))))
runpy.run_module("shared.cli", run_name="__main__", alter_sys=True)
"""


def test_a_bus_that_is_away_is_one_line_and_exit_status_5(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAILYARD_")}
    # a cluster's comma-separated servers, none there (the database is never reached: the bus comes first)
    env |= {"RAILYARD_NATS__URL": f"nats://127.0.0.1:{closed_port()}, nats://127.0.0.1:{closed_port()}",
            "RAILYARD_NATS__USER": "ops", "RAILYARD_NATS__PASSWORD": "x",
            "RAILYARD_POSTGRES__DSN": f"postgresql://railyard:x@127.0.0.1:{closed_port()}/railyard",
            "RAILYARD_STACK__DATA_DIR": str(tmp_path), "COUNTED": str(tmp_path / "tries")}
    result = subprocess.run([sys.executable, "-c", COUNTING, "dead-letters", "replay", "auth", "1"], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 5, result.stderr
    # within seconds: each of the two servers tried at most twice (a connect, one reconnect), not nats-py's default
    # of retrying for two minutes; the tries counted, not the wall time (under 30 s, which a loaded machine could
    # miss)
    assert 2 <= int((tmp_path / "tries").read_text()) <= 4
    (line,) = result.stderr.splitlines()
    assert line.startswith("railyard: ") and "Connect call failed" in line and "x@" not in line


class FakeConnection:
    """asyncpg's connection as `_list` uses it: each service's table answers `rows[service]`."""

    def __init__(self, rows: dict) -> None:
        self.rows = rows

    async def fetch(self, query: str, *args):
        return next((rows for service, rows in self.rows.items() if f'"{service}".' in query), [])

    async def close(self) -> None:
        pass


def listed(monkeypatch, capsys, rows: dict, *flags: str) -> str:
    import asyncio
    import datetime

    from shared import dead_letters
    from shared.cli import build_parser
    from shared.settings import Settings

    async def connect(settings):
        return FakeConnection({service: [{
            "id": 7, "durable": "auth-model-uploaded", "subject": "events.model.uploaded", "stream_seq": 12,
            "deliveries": 10, "error": "OSError: away", "payload_size": 3, "replayed_at": None, "replay_msg_id": None,
            "created_at": datetime.datetime(2026, 12, 6, 14, 0, tzinfo=datetime.UTC)}] * count
            for service, count in rows.items()})

    monkeypatch.setattr(dead_letters, "_connect_db", connect)
    args = build_parser().parse_args(["dead-letters", "list", *flags])
    assert asyncio.run(dead_letters._list(args, Settings())) == 0
    return capsys.readouterr().out


def test_an_empty_list_says_none_as_the_other_lists(monkeypatch, capsys):
    """`railyard dead-letters list` with nothing to show printed its bare header line; the client's lists print
    `(none)` (railyard_client.cli show). With --json (one object a line) nothing is printed, as before."""
    assert listed(monkeypatch, capsys, {}) == "(none)\n"  # before: "service      id  created ..."
    assert listed(monkeypatch, capsys, {}, "--json") == ""
    lines = listed(monkeypatch, capsys, {"auth": 1}).splitlines()
    assert lines[0].startswith("service") and "auth-model-uploaded" in lines[1] and len(lines) == 2
