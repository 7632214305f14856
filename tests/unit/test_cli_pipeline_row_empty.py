"""`railyard pipelines create` (and `pipelines list`) showed `deployment null` for a pipeline not deployed (the s34
walk-through): JSON's word for none, in a table whose other empty values (a key a row lacks) are empty cells. The
table's cell is empty; --json prints the pipeline's record itself, its null kept."""

from __future__ import annotations

from railyard_client import cli


class Pipeline:
    def __init__(self, record: dict) -> None:
        self.record = record

    def to_dict(self) -> dict:
        return self.record


def test_a_pipeline_not_deployed_shows_an_empty_deployment_cell(capsys):
    fresh = {"id": 3, "name": "fraud", "versions": [{"id": 5, "version": "v1", "definition": {}}],
             "deployment": None, "created_at": "2026-12-05T23:00:00Z"}
    row = cli._pipeline_row(Pipeline(fresh))
    assert row == {"id": 3, "name": "fraud", "versions": 1, "latest_version": "v1", "deployment": "",
                   "created_at": "2026-12-05T23:00:00Z"}
    assert cli._pipeline_row(Pipeline({**fresh, "versions": []}))["latest_version"] == ""
    deployed = cli._pipeline_row(Pipeline({**fresh, "deployment": {"name": "fraud-7"}}))
    assert deployed["deployment"] == "fraud-7"
    cli.show([row], None, False, fresh)
    assert "null" not in capsys.readouterr().out
    cli.show([row], None, True, fresh)
    assert '"deployment": null' in capsys.readouterr().out  # --json: the record as the API answered it
