"""A rows path that exists but is no regular file (`railyard infer fraud /dev/null`, a directory, a pipe such as a
`<(...)` process substitution's /dev/fd/N) is refused saying so and what to give instead: the SDK's readers
(data.read_table, data.read_json_records) said "no such file: /dev/null", of a path that is there. Such paths are
not read (a pipe's reader waits for its writer, and the kind of rows is not in the name): stdin takes streams."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from railyard_client import data
from railyard_client.errors import InvalidInput

READERS = [data.read_table, data.read_json_records]


@pytest.mark.parametrize("read", READERS)
def test_a_device_is_not_a_regular_file(read):
    with pytest.raises(InvalidInput) as refused:
        read("/dev/null")
    assert str(refused.value).startswith("not a regular file: /dev/null (a device): give a .json, .arrow/.feather "
                                         "or .parquet file; `railyard infer PIPELINE -` reads a stream from stdin")


@pytest.mark.parametrize("read", READERS)
def test_a_directory_and_a_pipe_are_not_regular_files(read, tmp_path):
    (tmp_path / "rows.json").mkdir()
    with pytest.raises(InvalidInput, match=r"^not a regular file: .*rows\.json \(a directory\)"):
        read(tmp_path / "rows.json")
    os.mkfifo(tmp_path / "fifo.json")  # not opened: no writer, so a read would wait for ever
    with pytest.raises(InvalidInput, match=r"^not a regular file: .*fifo\.json \(a pipe\)"):
        read(tmp_path / "fifo.json")


@pytest.mark.parametrize("read", READERS)
def test_a_missing_path_is_still_no_such_file_and_a_link_to_a_file_is_read(read, tmp_path):
    with pytest.raises(InvalidInput, match="^no such file: "):
        read(tmp_path / "missing.json")
    (tmp_path / "rows.json").write_text('[{"x": 1.0}]')
    Path(tmp_path / "link.json").symlink_to(tmp_path / "rows.json")
    assert read(tmp_path / "link.json")  # a table or a list of rows: not refused
