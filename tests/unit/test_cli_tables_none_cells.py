"""The CLI's tables print an empty cell for a value that is none, as for a key a row lacks: `railyard models
versions` showed `null` for a version's sha while it converts and for the error of one that did not fail, a task's
table `null` for a run not yet made, and an id or state column printed whole showed Python's `None` (session 34 made
only the pipelines table's cells empty). Tables of data keep `null`: inference results, logged rows and a dataset's
rows, where a null is a value (a missing input or output). --json prints what the API answered, nulls kept."""

from __future__ import annotations

import io
import uuid

import pytest
from railyard_client import cli, cli_lineage, cli_orchestrations
from rich.console import Console

VERSION = str(uuid.uuid4())


@pytest.fixture
def printed(monkeypatch):
    """What the tables print, on a console wide enough for every cell whole (`printed()`: the text so far)."""
    console = Console(width=200, record=True, soft_wrap=False, file=io.StringIO())
    monkeypatch.setattr(cli, "out", console)
    return console.export_text


def _words(text: str) -> set[str]:
    return {word.strip("│┃|") for word in text.split()}


def test_a_records_none_values_are_empty_cells(printed):
    rows = [{"model_version": VERSION, "framework": "sklearn", "status": "converting", "sha": None, "error": None},
            {"model_version": None, "framework": "onnx", "status": None, "sha": "ab" * 4, "error": None}]
    cli.show(rows, ["model_version", "framework", "status", "sha", "error"], False)
    text = printed()
    assert VERSION in text and "converting" in text and "abababab" in text
    assert not _words(text) & {"null", "None"}, text


def test_the_orchestrations_and_lineage_tables_too(printed):
    cli_orchestrations._show([{"id": "t1", "status": "pending", "last_run": None}], ["id", "status", "last_run"],
                             False)
    cli_lineage._show([{"id": 3, "name": "images", "description": None}], ["id", "name", "description"], False)
    text = printed()
    assert "pending" in text and "images" in text and not _words(text) & {"null", "None"}, text


@pytest.mark.parametrize("as_json", [True, False])
def test_inference_results_keep_their_nulls(printed, capsys, as_json):
    rows = [{"time": 1796384000000, "in": {"a": 1.5}, "out": {"score": None}},
            {"time": 1796384000001, "in": {"a": None}, "out": {"score": 0.25}}]
    cli.show_rows(rows, as_json)
    text = capsys.readouterr().out if as_json else printed()
    assert "null" in text and "0.25" in text


def test_a_datasets_rows_keep_their_nulls_and_json_keeps_every_null(printed, capsys):
    cli_lineage._show([{"x": 1, "y": None}], None, False, data=True)
    assert "null" in _words(printed())
    cli.show([{"sha": None}], ["sha"], True)
    assert '"sha": null' in capsys.readouterr().out


def test_a_column_a_row_lacks_is_empty_in_a_data_table_too(printed):
    cli.show_rows([{"in": {"a": 1}, "out": {"b": 2}}, {"in": {"a": 3}, "out": {"c": 4}}], False)
    text = printed()
    assert "in.a" in text and "out.c" in text and not _words(text) & {"null", "None"}, text


@pytest.mark.parametrize("as_json", [True, False])
def test_the_datasets_read_command_keeps_a_rows_nulls(printed, capsys, monkeypatch, as_json):
    """`railyard datasets read` itself, not only `_show(data=True)`: a dataset's null is a missing value, printed
    `null` in its table (an empty cell there read as an empty string) and in its --json."""
    import pyarrow as pa
    from railyard_client import cli_lineage as lineage_cli

    class Lineage:
        def read_rows(self, dataset_id: int):
            assert dataset_id == 3
            return pa.table({"x": [1, None], "label": [None, "fraud"]})

    monkeypatch.setattr(lineage_cli, "_lineage", lambda workspace: Lineage())
    assert cli.main(["datasets", "read", "3", *(["--json"] if as_json else [])]) == 0
    if as_json:
        assert capsys.readouterr().out.count("null") == 2
    else:
        text = printed()
        assert "fraud" in text and sorted(_words(text) & {"null", "None"}) == ["null"], text
        assert text.count("null") == 2, text
