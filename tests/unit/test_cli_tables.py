"""The CLI's tables keep the ids the next command needs whole: on an 80-column terminal (or a pipe) the ids of
`railyard orchestrations list`, `models versions` and `tasks runs` were cut to `58c9ff8e-93ea-…`, and
`railyard tasks run` takes only the whole UUID."""

from __future__ import annotations

import io
import json
import uuid

from railyard_client import cli
from rich.console import Console


def test_a_uuid_column_is_printed_whole_on_a_narrow_terminal(monkeypatch):
    ids = [str(uuid.uuid4()) for _ in range(2)]
    rows = [{"id": i, "name": "walk" * 5, "status": "ready", "sha": "d5" * 32, "reason": None,
             "created_at": "2026-12-01T21:44:10.663605+00:00"} for i in ids]
    console = Console(width=80, record=True, soft_wrap=False)
    monkeypatch.setattr(cli, "out", console)
    cli.show(rows, cli_columns := ["id", "name", "status", "sha", "reason", "created_at"], as_json=False)
    text = console.export_text()
    assert all(i in text for i in ids), text
    assert max(len(line) for line in text.splitlines()) <= 80
    assert cli_columns  # every column is still there, narrower
    assert "d5d5d5d5d5d5d5d5d5d5d5d5d5d5d5d5d5d5d5d5" not in text  # the others give way (a sha is cut)


def test_pipelines_status_prints_why_a_deployment_is_not_running(monkeypatch, capsys):
    """A deployment whose restore failed said only `fraud: Error`; the reason (and "redeploy it") was in --json."""
    detail = ("deployment 'fraud-2' failed to restore after the deployer restarted: railyard-engine: cached "
              "artifact 6c0586332841 does not match its sha256; redeploy it (pipelines/deploy) or undeploy it")

    class Pipeline:
        def status(self) -> dict:
            return {"status": "Error", "details": [detail], "engines": []}

    class Workspace:
        def pipeline(self, name: str) -> Pipeline:
            assert name == "fraud"
            return Pipeline()

    class Client:
        def current_workspace(self) -> Workspace:
            return Workspace()

    monkeypatch.setattr(cli, "_client", lambda workspace=None: Client())
    monkeypatch.setattr(cli, "out", Console(width=1000, soft_wrap=False))
    assert cli.main(["pipelines", "status", "fraud"]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == "fraud: Error"
    assert detail in printed


def test_pipelines_deploy_prints_the_inference_url_whole(monkeypatch, capsys):
    """The deploy's table cut the URL to `http://127.0.0.1:18000/v1/api/…` on an 80-column terminal: no use for
    curl. It is a line of its own now (the table keeps the rest; --json is unchanged)."""
    url = "http://127.0.0.1:18000/v1/api/pipelines/infer/fraud-2/fraud"

    class Deployment:
        name = "fraud-2"

        def status(self) -> dict:
            return {"status": "Running", "details": [], "engines": [{}]}

    class Pipeline:
        def clear(self) -> None:
            pass

        def deploy(self, *args, **kwargs) -> None:
            pass

        def deployment(self) -> Deployment:
            return Deployment()

        def url(self) -> str:
            return url

    class Client:
        def current_workspace(self):
            return type("Workspace", (), {"pipeline": lambda self, name: Pipeline()})()

    monkeypatch.setattr(cli, "_client", lambda workspace=None: Client())
    monkeypatch.setattr(cli, "out", Console(width=80, soft_wrap=False))
    assert cli.main(["pipelines", "deploy", "fraud", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"url {url}" in printed.splitlines() and "Running" in printed
    assert cli.main(["pipelines", "deploy", "fraud", "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["url"] == url


def test_signing_in_again_keeps_the_workspace_chosen_with_use(tmp_path, monkeypatch):
    """`railyard login` again (refresh tokens last 30 min) dropped `railyard workspaces use`'s choice: every
    command then went to the first workspace ('pipeline not found in workspace admin - Default Workspace').
    Kept per server and user: another user starts without one, and (since the choice is per user) signing in as
    them no longer drops the first user's (the old code kept one choice, the last user's)."""
    from railyard_client.session import read_credentials, saved_choice, write_credentials

    credentials = tmp_path / "credentials.json"
    monkeypatch.setenv("RAILYARD_CLIENT_CREDENTIALS", str(credentials))
    for name in ("RAILYARD_CLIENT_URL", "RAILYARD_CLIENT_USERNAME", "RAILYARD_CLIENT_PASSWORD",
                 "RAILYARD_CLIENT_SECRET", "RAILYARD_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)

    class Session:  # signs in without a server
        def __init__(self, url, *, username, **kwargs) -> None:
            self.url, self.username = url, username

        def credentials(self) -> dict:
            return {"url": self.url, "username": self.username, "access_token": "t"}

        def close(self) -> None:
            pass

    monkeypatch.setattr(cli, "Session", Session)
    login = ["login", "--url", "http://127.0.0.1:18000", "--password", "p", "--client-secret", "s"]
    write_credentials({"url": "http://127.0.0.1:18000", "username": "admin", "workspace": 2}, credentials)
    url = "http://127.0.0.1:18000"
    assert cli.main([*login, "--username", "admin"]) == 0
    assert saved_choice(read_credentials(credentials), url, "admin") == 2
    assert cli.main([*login, "--username", "bob"]) == 0
    assert saved_choice(read_credentials(credentials), url, "bob") is None
    assert cli.main([*login, "--username", "admin"]) == 0
    assert saved_choice(read_credentials(credentials), url, "admin") == 2  # the old code: None, dropped by bob's


def test_datasets_files_lists_and_downloads_an_images_datasets_files(tmp_path, monkeypatch, capsys):
    """`railyard datasets read` of an images dataset says it has files, not rows, and no command listed or fetched
    them (only the SDK's Lineage.files / download_file): `railyard datasets files` does, and writes nothing for a
    name that is not a plain file name."""
    from railyard_client import cli_lineage

    stored = {"digit.png": b"\x89PNG...", "cat.jpg": b"\xff\xd8..."}

    class Lineage:
        def files(self, dataset_id: int, version_id: int | None = None) -> list[dict]:
            assert dataset_id == 6 and version_id in (None, 2)
            return [{"name": name, "sha256": "ab" * 32, "size": len(body), "content_type": "image/png",
                     "labels": {"digit": 6}} for name, body in sorted(stored.items())]

        def download_file(self, dataset_id: int, name: str, version_id: int | None = None) -> bytes:
            return stored[name]

    monkeypatch.setattr(cli_lineage, "_lineage", lambda workspace: Lineage())
    monkeypatch.setattr(cli, "out", Console(width=120, soft_wrap=False))
    folder = tmp_path / "dl"
    assert cli.main(["datasets", "files", "6", "--version-id", "2", "--download", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert "digit.png" in printed and "cat.jpg" in printed and f"2 files written to {folder}" in printed
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == stored
    assert cli.main(["datasets", "files", "6", "--json"]) == 0
    assert [f["name"] for f in json.loads(capsys.readouterr().out)] == ["cat.jpg", "digit.png"]
    stored["zz/../../escape.png"] = b"x"  # listed last: nothing at all is written
    assert cli.main(["datasets", "files", "6", "--download", str(tmp_path / "other")]) == 2
    assert not (tmp_path / "escape.png").exists() and not (tmp_path / "other").exists()


def test_assays_results_marks_windows_scored_without_every_logged_record(monkeypatch, capsys):
    """A result with `logs_complete: false` (scored after max_log_wait while the log store lagged) printed like any
    other: the table had window_start, score and status only. It says INCOMPLETE in a logs column now, with a line
    saying what that means; a complete window says complete, an old result without the field nothing; --json is the
    API's answer as it was."""
    results = [{"window_start": "2026-12-03T02:00:00+00:00", "score": 0.5, "status": "Warning", "logs_complete": True},
               {"window_start": "2026-12-03T01:00:00+00:00", "score": 1.5, "status": "Alert", "logs_complete": False},
               {"window_start": "2026-12-01T01:00:00+00:00", "score": 0.1, "status": "Ok"}]

    class Assay:
        id = 7

        def results(self, limit=None) -> list[dict]:
            return results

    class Pipeline:
        def assays(self) -> list:
            return [Assay()]

    class Workspace:
        def pipeline(self, name: str) -> Pipeline:
            return Pipeline()

    class Client:
        def current_workspace(self) -> Workspace:
            return Workspace()

    monkeypatch.setattr(cli, "_client", lambda workspace=None: Client())
    monkeypatch.setattr(cli, "out", Console(width=1000, soft_wrap=False))
    assert cli.main(["assays", "results", "fraud", "7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split("│")[1].strip(): line.split("│")[4].strip() for line in lines if "2026-12" in line}
    assert rows == {"2026-12-03T02:00:00+00:00": "complete", "2026-12-03T01:00:00+00:00": "INCOMPLETE",
                    "2026-12-01T01:00:00+00:00": ""}, lines
    assert [line for line in lines if line.startswith("1 window(s) INCOMPLETE: scored without every logged record")]

    results.pop(1)  # every window complete (or from before the field): no explanation
    assert cli.main(["assays", "results", "fraud", "7"]) == 0
    assert "INCOMPLETE" not in capsys.readouterr().out

    results.insert(1, {"window_start": "2026-12-03T01:00:00+00:00", "logs_complete": False})
    assert cli.main(["assays", "results", "fraud", "7", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == results


def test_pipelines_list_counts_the_versions_a_cut_record_leaves_out():
    """A pipeline record whose versions pass 4 MiB lists the newest ones and the deployed one with versions_omitted
    (2a3bfb2): `railyard pipelines list` counted only the listed ones (the UI counts both since c1a9c92)."""

    class Pipeline:
        def __init__(self, record: dict) -> None:
            self.record = record

        def to_dict(self) -> dict:
            return self.record

    listed = [{"id": key, "version": f"v{key}", "definition": {}} for key in (2, 9, 10)]
    cut = {"id": 4, "name": "p", "versions": listed, "deployment": None, "versions_cursor": "9",
           "versions_omitted": 7, "created_at": ""}
    row = cli._pipeline_row(Pipeline(cut))
    assert row["versions"] == 10 and row["latest_version"] == "v10"
    whole = {key: value for key, value in cut.items() if not key.startswith("versions_")}
    assert cli._pipeline_row(Pipeline(whole))["versions"] == 3


def test_logs_and_arrow_answers_show_a_readable_time_and_no_metadata_columns(monkeypatch, tmp_path, capsys):
    """`railyard pipelines logs` and `railyard infer` of Arrow rows printed `time` as epoch milliseconds (cut to
    `1796384…` on 80 columns) and the logs' four metadata columns, which left the inputs and outputs a few characters
    each; `infer` of JSON rows already printed a UTC time without them. Now all three print the same; --json keeps
    the answer as it came."""
    import pyarrow as pa
    import pyarrow.feather as feather

    answer = pa.table({"time": pa.array([1796384850632], pa.int64()), "in.tensor": [[0.25] * 3],
                       "out.dense_1": [[0.75]], "metadata.last_model": ['{"model_name": "ccfraud"}'],
                       "metadata.pipeline_version": ["3bf0405e-1ec5-4c8a-a164-d0f86f172caa"],
                       "metadata.elapsed": [[635714, 43402566]], "metadata.dropped": [[]]})

    class Pipeline:
        def logs(self, start, end, limit, arrow) -> pa.Table:
            assert arrow
            return answer

        def infer(self, rows) -> pa.Table:
            return answer

    class Client:
        def current_workspace(self):
            return type("Workspace", (), {"pipeline": lambda self, name: Pipeline()})()

    monkeypatch.setattr(cli, "_client", lambda workspace=None: Client())
    rows = tmp_path / "rows.arrow"
    feather.write_feather(pa.table({"tensor": [[0.25] * 3]}), rows)
    for args in (["pipelines", "logs", "fraud"], ["infer", "fraud", str(rows)]):
        console = Console(width=80, record=True, soft_wrap=False, file=io.StringIO())
        monkeypatch.setattr(cli, "out", console)
        assert cli.main(args) == 0
        text = console.export_text()
        assert "2026-12-04 11:47:30.632" in text and "metadata" not in text, (args, text)  # the old: 1796384…
        assert "[0.75]" in text and "0.25" in text
        assert cli.main([*args, "--json"]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed[0]["time"] == 1796384850632 and printed[0]["metadata.dropped"] == []


def test_a_status_is_printed_whole_beside_a_uuid_on_a_narrow_terminal():
    """`railyard tasks runs` and `tasks list` on 80 columns (or a pipe) printed a run's status as `succ…` and a
    task's as `star…` beside the whole run id: the one thing those lists are read for. A short status is kept whole
    (the other columns give way), as the ids are."""
    rows = [{"run_id": str(uuid.uuid4()), "status": status, "exit_code": 0, "reason": None,
             "created_at": "2026-12-04T11:48:11.646523+00:00", "updated_at": "2026-12-04T11:48:12.646523+00:00"}
            for status in ("success", "failure", "running")]
    console = Console(width=80, record=True, soft_wrap=False, file=io.StringIO())
    cli.out, saved = console, cli.out
    try:
        cli.show(rows, ["run_id", "status", "exit_code", "reason", "created_at", "updated_at"], as_json=False)
    finally:
        cli.out = saved
    text = console.export_text()
    assert all(f" {status} " in text for status in ("success", "failure", "running")), text  # the old: succ…
    assert all(row["run_id"] in text for row in rows) and max(len(line) for line in text.splitlines()) <= 80


def test_logged_float32_values_print_in_their_shortest_form():
    """`railyard pipelines logs --json` printed a logged float32 input 0.1 as 0.10000000149011612 (Arrow's exact
    double), where the log store's JSON page prints 0.1 (docs/logs.md); float64 columns, nulls, NaN and times as
    before."""
    import math
    from datetime import UTC, datetime

    import pyarrow as pa
    from railyard_client import data

    table = pa.table({
        "time": pa.array([datetime(2026, 12, 4, tzinfo=UTC)] * 2, pa.timestamp("ms", "UTC")),
        "in.tensor": pa.array([[0.1, 0.2], None], pa.list_(pa.float32())),
        "in.scalar": pa.array([0.3, float("nan")], pa.float32()),
        "in.nested": pa.array([[[0.7], [None]], [[1e-8]]], pa.list_(pa.list_(pa.float32()))),
        "in.half": pa.array([0.1, None], pa.float16()),
        "out.double": pa.array([0.1, 1 / 3], pa.float64()),
    })
    rows = data.table_to_jsonable(table)
    assert rows[0]["time"] == "2026-12-04T00:00:00+00:00"
    assert rows[0]["in.tensor"] == [0.1, 0.2] and rows[1]["in.tensor"] is None
    assert rows[0]["in.scalar"] == 0.3 and math.isnan(rows[1]["in.scalar"])
    assert rows[0]["in.nested"] == [[0.7], [None]] and rows[1]["in.nested"] == [[1e-8]]
    assert rows[0]["in.half"] == 0.099975586 and rows[1]["in.half"] is None
    assert rows[0]["out.double"] == 0.1 and rows[1]["out.double"] == 1 / 3
    assert json.dumps(rows[0]["in.tensor"]) == "[0.1, 0.2]"
