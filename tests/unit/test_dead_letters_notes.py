"""`railyard dead-letters`: a replay is refused when its durable would not receive it (shared.subjects.covers
reads the durable's subject filter), and a failure to connect with the defaults says, in its one line, where the
embedded stack's secrets were looked for (shared.dead_letters.stack_note). Before, a data directory that was not
there (a typo in --data-dir) gave a bare "Connect call failed" naming neither it nor what to set, and a secrets
file that could not be read printed a line of its own before the connection's error."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import pytest

from shared import cli, dead_letters
from shared.dead_letters import stack_note
from shared.settings import Settings, StackSettings
from shared.subjects import covers

NOTHING_SET: dict[str, str] = {}


@pytest.mark.parametrize("pattern, subject, expected", [
    ("events.model.uploaded", "events.model.uploaded", True),
    ("events.>", "events.model.uploaded", True),
    ("events.*.uploaded", "events.model.uploaded", True),
    (">", "events.model.uploaded", True),
    ("events.>", "events", False),
    ("events.model.*", "events.model.uploaded.x", False),
    ("events.pipeline.version_created", "events.model.uploaded", False),
    ("events.model", "events.model.uploaded", False),
    ("events.model.uploaded.x", "events.model.uploaded", False),
])
def test_covers_reads_nats_wildcards(pattern, subject, expected):
    assert covers(pattern, subject) is expected


def settings_of(data_dir: Path) -> Settings:
    return Settings(stack=StackSettings(data_dir=data_dir))


def test_a_missing_data_directory_is_named_with_what_to_set(tmp_path):
    note = stack_note(settings_of(tmp_path / "typo"), NOTHING_SET)
    assert f"no embedded stack's secrets in {tmp_path / 'typo'}" in note
    assert "--data-dir" in note and "RAILYARD_POSTGRES__DSN" in note and "\n" not in note


def test_an_unreadable_or_foreign_secrets_file_is_named(tmp_path, monkeypatch):
    (tmp_path / "secrets.json").write_text("[1]")
    assert "is not an embedded stack's secrets file" in stack_note(settings_of(tmp_path), NOTHING_SET)

    def refused(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", refused)  # another user's stack (mode 0600); the tests run as root
    assert "cannot read the embedded stack's secrets" in stack_note(settings_of(tmp_path), NOTHING_SET)
    base = settings_of(tmp_path)
    assert dead_letters.with_stack_credentials(base, NOTHING_SET) == base


def test_no_note_when_the_environment_sets_both_or_the_secrets_are_read(tmp_path):
    env = {"RAILYARD_POSTGRES__DSN": "postgresql://x@h/d", "RAILYARD_NATS__URL": "nats://h:4222"}
    assert stack_note(settings_of(tmp_path / "none"), env) == ""
    (tmp_path / "secrets.json").write_text(json.dumps({"postgres_password": "p"}))
    assert stack_note(settings_of(tmp_path), NOTHING_SET) == ""


def test_a_refused_connection_is_one_line_naming_the_data_directory(tmp_path, monkeypatch, capsys):
    for name in [n for n in os.environ if n.upper().startswith("RAILYARD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("RAILYARD_STACK__DATA_DIR", str(tmp_path))  # restored after: --data-dir sets it

    def unreachable(args, settings):
        raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 15432)")

    monkeypatch.setattr(dead_letters, "run", unreachable)
    # the command declines pandas, aiohttp, uvicorn and pyarrow's remote filesystems for its process (b4367551):
    # run here, in the test process, on a copy of its finders, or every later test of the process would find them
    # refused (a run of this file and one importing pandas after it)
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    status = cli.cmd_dead_letters(argparse.Namespace(data_dir=str(tmp_path / "typo")))
    err = capsys.readouterr().err
    assert status == 5
    assert err.count("\n") == 1 and "Connect call failed" in err and str(tmp_path / "typo") in err, err
