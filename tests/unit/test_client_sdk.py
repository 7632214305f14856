"""The client distribution without a server: its reference page is current and complete, its version is the
server's, errors are typed from the server's answers, files become tables, task runs are recognized, and the
`railyard` command fails with one line and a meaningful exit code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from uuid import UUID

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import railyard_client
from railyard_client import _docgen, cli, data
from railyard_client.errors import (
    AuthenticationError,
    InvalidInput,
    InvalidRequest,
    NotFound,
    Unavailable,
    error_from_answer,
)

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "sdk.md"


def test_the_reference_page_is_current():
    assert PAGE.read_text() == _docgen.render(), "docs/sdk.md is stale: run `make docs`"


def test_every_public_sdk_member_has_a_docstring_and_a_place_in_the_reference():
    assert _docgen.missing_docstrings() == []
    page = PAGE.read_text()
    for name in _docgen.documented_classes():
        cls = getattr(railyard_client, name)
        for member, _ in _docgen.public_members(cls):
            assert f"\n{_docgen.heading(name, member)}\n" in page, f"{name}.{member} is not in docs/sdk.md"
    assert set(_docgen.CLASSES) <= set(_docgen.documented_classes()), "the curated classes are all exported"


def test_every_option_of_every_command_is_on_the_reference_page():
    """An option `--help` lists is on docs/sdk.md too, with or without a help text of its own: the page left out the
    ones without (`railyard tasks runs --status` was not there)."""
    import click

    page = _docgen.render()
    sections = {chunk.split("`", 1)[0]: chunk for chunk in page.split("\n### `")[1:]}
    missing = []
    for path, command in _docgen._commands(cli.build_command(), "railyard"):
        with click.Context(command, info_name=path) as ctx:
            for param in command.get_params(ctx):
                record = param.get_help_record(ctx)
                if isinstance(param, click.Option) and record and record[0] not in ("-h, --help", "--help"):
                    if f"- `{record[0]}`" not in sections.get(path, ""):
                        missing.append(f"{path} {record[0]}")
    assert missing == []


def test_the_checks_catch_an_undocumented_method(monkeypatch):
    def undocumented(self):
        return None

    monkeypatch.setattr(railyard_client.Pipeline, "brand_new", undocumented, raising=False)
    assert "Pipeline.brand_new" in _docgen.missing_docstrings()
    assert _docgen.render() != PAGE.read_text()


def test_the_client_version_is_the_servers():
    from shared import __version__

    assert railyard_client.__version__ == __version__ == (REPO / "client" / "VERSION").read_text().strip()


def test_server_answers_become_typed_errors():
    err = error_from_answer(404, {"code": "not_found", "msg": "pipeline 'x' not found"})
    assert isinstance(err, NotFound) and (err.status, err.code, err.message) == (404, "not_found",
                                                                                   "pipeline 'x' not found")
    oauth = error_from_answer(401, {"error": "invalid_grant", "error_description": "wrong password"})
    assert isinstance(oauth, AuthenticationError) and oauth.code == "invalid_grant"
    assert isinstance(error_from_answer(503, None), Unavailable)
    # the token endpoint's refusals in RFC 6749's 400 (an authorization code's since session 37): still a sign-in
    # refused, not an InvalidRequest; the API's own {"code", "msg"} 400 and OAuth's other 400s are unchanged
    for code in ("invalid_grant", "account_locked", "invalid_client"):
        refused = error_from_answer(400, {"error": code, "error_description": "no", "code": code, "msg": "no"})
        assert isinstance(refused, AuthenticationError) and (refused.status, refused.code) == (400, code)
    assert isinstance(error_from_answer(400, {"error": "unsupported_grant_type"}), InvalidRequest)
    assert isinstance(error_from_answer(400, {"code": "invalid_grant", "msg": "an API answer"}), InvalidRequest)


@pytest.mark.parametrize("status", [400, 401])
def test_a_refused_refresh_token_signs_in_again_whatever_its_status(tmp_path, status):
    """A refresh token refused with RFC 6749's 400 invalid_grant (as Keycloak answers an expired one) is the same as
    the gateway's 401: the session signs in with the password it has, else says to run `railyard login`, where a
    400 was an InvalidRequest out of every call."""
    import httpx
    from railyard_client.session import Session

    asked = []

    def token_endpoint(request: httpx.Request) -> httpx.Response:
        asked.append(request.content.decode())
        if b"grant_type=refresh_token" in request.content:
            return httpx.Response(status, json={"error": "invalid_grant", "error_description": "Token is not active"})
        return httpx.Response(200, json={"access_token": "fresh", "refresh_token": "r2", "expires_in": 300})

    with_password, without = (Session("http://gateway.test", token="old", client_secret="s",
                                      credentials_file=tmp_path / "none.json") for _ in range(2))
    with_password.username, with_password.password = "alice", "pw"
    for session in (with_password, without):
        session.http = httpx.Client(base_url="http://gateway.test", transport=httpx.MockTransport(token_endpoint))
        session.refresh_token, session.expires_at = "r1", 0
    try:
        assert with_password.token == "fresh" and "grant_type=password" in asked[-1]
        with pytest.raises(AuthenticationError, match="railyard login"):
            without.refresh()
    finally:
        with_password.close()
        without.close()


def test_files_become_tables(tmp_path):
    rows = [{"tensor": [1.0, 2.0]}, {"tensor": [3.0, 4.0]}]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, tmp_path / "rows.parquet")
    (tmp_path / "rows.arrow").write_bytes(data.to_ipc_file(table))
    for name, kind in (("rows.json", "json"), ("rows.parquet", "parquet"), ("rows.arrow", "arrow")):
        read, found = data.read_table(tmp_path / name)
        assert found == kind and read.column("tensor").to_pylist() == [[1.0, 2.0], [3.0, 4.0]]
    with pytest.raises(InvalidInput, match="no such file"):
        data.read_table(tmp_path / "missing.json")
    (tmp_path / "rows.csv").write_text("a\n1\n")
    with pytest.raises(InvalidInput, match="unknown file type"):
        data.read_table(tmp_path / "rows.csv")
    with pytest.raises(InvalidInput, match="pandas-records"):
        data.parse_json_records(b"[1, 2]")


def test_in_task_and_task_args_read_the_task_environment(tmp_path):
    """The contract the task scheduler fulfils (railyard_client.tasks): no configuration in the task's code."""
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"workspace_name": "ws", "pipeline_name": "p"}))
    code = "import json, railyard_client as rc; print(json.dumps([rc.in_task(), rc.task_args()]))"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    outside = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(outside.stdout) == [False, {}]
    env |= {"TASK_ID": "1cb1b550-384f-4476-8619-03e0aca71409", "ORCH_SHA": "d3b9", "TASK_ARGS_FILE": str(args_file)}
    inside = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(inside.stdout) == [True, {"workspace_name": "ws", "pipeline_name": "p"}]
    env.pop("TASK_ARGS_FILE")
    env["TASK_ARGS"] = '{"n": 3}'
    inline = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(inline.stdout) == [True, {"n": 3}]


@pytest.mark.parametrize(("argv", "code", "text"), [
    (["pipelinez"], 2, "No such command"),
    (["pipelines", "deploy"], 2, "Missing argument"),
    (["models", "list"], 3, "not logged in"),
    (["infer", "p", "missing.parquet"], 2, "Invalid value for '[INPUT]': File 'missing.parquet' does not exist"),
    (["login"], 3, "no embedded stack secrets in .railyard: give --data-dir (the folder `railyard up` used)"),
    (["login", "--username", "u", "--password", "p"], 3, "no client secret: give --client-secret or set"),
    # what is missing, not "--username and --password" when one was given; an empty password is none (nothing sent)
    (["login", "--username", "u"], 3, "no embedded stack secrets in .railyard: give --data-dir (the folder `railyard"
     " up` used) or --password for u (or set RAILYARD_CLIENT_PASSWORD)"),
    (["login", "--password", "p"], 3, "give --data-dir (the folder `railyard up` used) or --username (or set"
     " RAILYARD_CLIENT_USERNAME)"),
    (["login", "--username", "u", "--password", "", "--client-secret", "s"], 3, "--password is empty: no user has an"
     " empty password (the server sets none shorter than 8 characters); give the password, or leave --password out"),
    (["tasks", "logs", "999"], 2, "'RUN_ID': '999' is not an id (a UUID; `railyard tasks runs TASK_ID` lists them)"),
])
def test_the_command_fails_with_one_line_and_an_exit_code(argv, code, text, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    for name in ("RAILYARD_CLIENT_URL", "RAILYARD_CLIENT_TOKEN", "RAILYARD_CLIENT_CREDENTIALS",
                 "RAILYARD_CLIENT_USERNAME", "RAILYARD_CLIENT_PASSWORD", "RAILYARD_STACK__DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == code
    err = capsys.readouterr().err
    assert err.startswith("railyard: error: ") and text in err and len(err.strip().splitlines()) == 1, err


def test_the_server_adds_its_stack_commands_to_the_same_command():
    commands = cli.build_command().commands
    assert {"up", "status", "down"} <= set(commands), "shared.cli:register (railyard.commands entry point)"
    assert {"login", "token", "infer", "models", "pipelines", "workspaces", "assays"} <= set(commands)


def test_the_stack_commands_document_their_options(tmp_path, capsys, monkeypatch):
    """`railyard down --help` had no description and an undocumented --timeout; docs/sdk.md listed no option of
    up/status/down. A status with no stack says how to start one or name another data directory."""
    from shared import cli as server_cli

    commands = cli.build_command().commands
    for name in ("up", "status", "down"):
        assert "- `--data-dir DIR`: data directory" in commands[name].help, name
        with pytest.raises(SystemExit):
            server_cli.main([name, "--help"])
        assert "--data-dir DIR" in capsys.readouterr().out
    assert "- `--timeout SECONDS`: how long to wait" in commands["down"].help
    monkeypatch.setenv("RAILYARD_STACK__DATA_DIR", str(tmp_path))  # --data-dir sets it; restored after the test
    assert server_cli.main(["status", "--data-dir", str(tmp_path)]) == 1
    assert "`railyard up` starts one; --data-dir names another" in capsys.readouterr().out


def test_the_cli_and_sdk_import_without_the_table_libraries():
    """`railyard --help` and `import railyard_client` load pandas, pyarrow and numpy only when a table is read or
    written (railyard_client/_lazy.py): they were most of the command's start-up time."""
    probe = ("import sys, railyard_client, railyard_client.cli; "
             "print(sorted(m for m in ('pandas', 'pyarrow', 'numpy') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
    used = ("import sys; from railyard_client import data; "
            "t = data.dataframe_to_table(data.pd.DataFrame({'x': [1.0]})); print(t.num_rows, 'pyarrow' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", used], capture_output=True, text=True,
                          check=True).stdout.split() == ["1", "True"]


def test_the_cli_with_the_server_commands_starts_without_pydantic():
    """Every `railyard` command loads the server's plugin (shared.cli:register, for up/status/down); it reads the
    settings only when one of those runs, so pydantic and the settings tree (~0.1 s of a 0.4 s start) stay out of
    the others."""
    probe = ("import sys, railyard_client.cli as cli; commands = cli.build_command().commands; "
             "print('up' in commands, sorted(m for m in ('pydantic', 'shared.settings') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "True []"


def test_datasets_read_to_csv_refuses_list_columns_by_name(tmp_path, monkeypatch, capsys):
    """A tensor column written with -o rows.csv failed as 'unexpected ArrowInvalid: Unsupported Type' (exit 1) and
    left an empty file; it is now bad input naming the column and the formats that hold it, and writes nothing."""
    from types import SimpleNamespace

    from railyard_client import cli_lineage

    table = pa.table({"tensor": [[0.1, 0.2]], "label": ["a"]})
    monkeypatch.setattr(cli_lineage, "_lineage", lambda workspace: SimpleNamespace(read_rows=lambda _id: table))
    out = tmp_path / "rows.csv"
    assert cli.main(["datasets", "read", "1", "-o", str(out)]) == 2
    assert "CSV cannot hold the list or struct columns tensor (list<item: double>): write a .parquet or .arrow" \
        in capsys.readouterr().err
    assert not out.exists()
    assert cli.main(["datasets", "read", "1", "-o", str(tmp_path / "rows.parquet")]) == 0
    assert pq.read_table(tmp_path / "rows.parquet").equals(table)


def test_datasets_read_of_a_dataset_without_rows_shows_none(monkeypatch, capsys):
    """A tabular dataset with no rows yet reads as a table without columns: `railyard datasets read` printed 20 empty
    rows of it (`[{}, {}, ...]` with --json, 20 blank lines as a table), as pyarrow's slice of a table without
    columns makes up the rows asked for."""
    from types import SimpleNamespace

    from railyard_client import cli_lineage

    tables = {1: pa.table({}), 2: pa.table({"label": ["a", "b", "c"]})}
    monkeypatch.setattr(cli_lineage, "_lineage", lambda workspace: SimpleNamespace(read_rows=tables.__getitem__))
    assert cli.main(["datasets", "read", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert cli.main(["datasets", "read", "1"]) == 0
    assert capsys.readouterr().out.strip() == "(none)"
    assert cli.main(["datasets", "read", "2", "--json", "--limit", "2"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"label": "a"}, {"label": "b"}]
    assert cli.main(["datasets", "read", "2", "--limit", "-1"]) == 2  # was no row at all, silently


@pytest.mark.parametrize("options", [[], ["--number", "1", "--version-id", "2"]])
def test_datasets_restore_asks_for_its_own_options(options, monkeypatch, capsys):
    """`railyard datasets restore 1` without a version (or with both) was sent and refused in the API's words, "give
    exactly one of version_id or version_num", fields the command does not have: it says --version-id or --number,
    before anything is sent."""
    from types import SimpleNamespace

    from railyard_client import cli_lineage

    sent = []
    monkeypatch.setattr(cli_lineage, "_lineage", lambda workspace: SimpleNamespace(
        restore_version=lambda *args, **kwargs: sent.append(args)))
    assert cli.main(["datasets", "restore", "1", *options]) == 2
    err = capsys.readouterr().err
    assert "--version-id or --number" in err and "railyard datasets versions 1" in err
    assert sent == []


def test_datasets_files_of_a_tabular_dataset_says_it_has_rows(monkeypatch, capsys):
    """`railyard datasets files` of a tabular dataset printed `(none)` (the API lists its files as none), as if a
    dataset of rows were empty; `read` of an images dataset says what it holds. An empty images dataset is still
    `(none)`."""
    from types import SimpleNamespace

    from railyard_client import cli_lineage

    kinds = {1: "tabular", 2: "images"}
    monkeypatch.setattr(cli_lineage, "_lineage", lambda workspace: SimpleNamespace(
        files=lambda dataset_id, version_id: [],
        _post=lambda route, body: {"id": body["dataset_id"], "kind": kinds[body["dataset_id"]]}))
    assert cli.main(["datasets", "files", "1"]) == 2
    assert "dataset 1 is a tabular dataset: it has rows, not files (`railyard datasets read 1`" in \
        capsys.readouterr().err
    assert cli.main(["datasets", "files", "2"]) == 0
    assert capsys.readouterr().out.strip() == "(none)"


def test_the_start_banner_names_the_data_dir_the_commands_need(tmp_path, monkeypatch):
    """`railyard up --data-dir D` printed "`railyard login` signs in with them", but `railyard login` alone reads
    ./.railyard and failed; the banner now prints each command as it must be typed for that stack. A first start
    that failed left the next one to print only "in the secrets file": it shows them until a start printed them."""
    from shared.embedded.servers import Secrets
    from shared.embedded.stack import EmbeddedStack
    from shared.settings import Settings

    monkeypatch.chdir(tmp_path)
    for folder, expected in ((tmp_path / "elsewhere", f"railyard login --data-dir {tmp_path / 'elsewhere'}"),
                             (tmp_path / ".railyard", "railyard login")):
        monkeypatch.setenv("RAILYARD_STACK__DATA_DIR", str(folder))
        stack = EmbeddedStack(Settings())
        stack.secrets, stack.new_secrets = Secrets.load_or_create(tmp_path / f"{folder.name}.json")
        banner = stack.banner(1.0)
        assert f"`{expected}` signs in with them" in banner
        assert f"`{expected.replace('login', 'down')}`, stops everything" in banner
    # a first start that failed (a port in use) created the secrets; the next start still shows them, once
    stack.new_secrets = []
    assert stack.secrets.values["admin_password"] not in stack.banner(1.0)
    stack.unshown_marker.parent.mkdir(parents=True, exist_ok=True)
    stack.unshown_marker.touch()
    assert f"password {stack.secrets.values['admin_password']}" in stack.banner(1.0)


def _saved_admin(tmp_path, monkeypatch):
    """A credentials file as `railyard login` saves it for admin (api-client), and no RAILYARD_CLIENT_* set."""
    for name in ("RAILYARD_CLIENT_URL", "RAILYARD_CLIENT_TOKEN", "RAILYARD_CLIENT_ID", "RAILYARD_CLIENT_SECRET",
                 "RAILYARD_CLIENT_USERNAME", "RAILYARD_CLIENT_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    saved = tmp_path / "credentials.json"
    saved.write_text(json.dumps({"url": "http://h:1", "client_id": "api-client", "client_secret": "api-secret",
                                 "username": "admin", "access_token": "admin-token", "refresh_token": "r",
                                 "expires_at": 9e99}))
    saved.chmod(0o600)  # as railyard login writes it: a group-writable file (a umask of 002) is refused
    return saved


def test_an_inference_clients_id_and_secret_never_run_as_the_saved_user(tmp_path, monkeypatch):
    """Client(url, client_id=<inference client>, client_secret=...) on a machine where `railyard login` had saved a
    user's tokens ran as that user (the saved admin's token, all of its rights) instead of signing in as the
    inference client; the same with RAILYARD_CLIENT_ID/SECRET. The saved tokens and secret belong to the saved
    client only."""
    from railyard_client.errors import ConfigurationError
    from railyard_client.session import Session

    saved = _saved_admin(tmp_path, monkeypatch)
    grants = []

    def grant(session, form):
        grants.append((session.client_id, session.client_secret, form["grant_type"]))
        session.access_token = f"{session.client_id}-token"

    monkeypatch.setattr(Session, "_grant", grant)
    given = Session("http://h:1", client_id="inference-1", client_secret="i-secret", credentials_file=saved)
    assert (given.access_token, given.username, grants) == (
        "inference-1-token", None, [("inference-1", "i-secret", "client_credentials")])
    monkeypatch.setenv("RAILYARD_CLIENT_ID", "inference-2")
    monkeypatch.setenv("RAILYARD_CLIENT_SECRET", "i2-secret")
    assert Session(credentials_file=saved).access_token == "inference-2-token"
    monkeypatch.delenv("RAILYARD_CLIENT_SECRET")
    with pytest.raises(ConfigurationError):  # the saved secret is api-client's, not inference-2's
        Session(credentials_file=saved)
    monkeypatch.delenv("RAILYARD_CLIENT_ID")
    assert Session(credentials_file=saved).access_token == "admin-token"  # the saved user, as before
    assert len(grants) == 2


def test_login_as_another_user_of_the_stack_asks_for_that_users_password(tmp_path, monkeypatch, capsys):
    """`railyard login --username bob` next to a stack said its secrets were missing (they hold the admin's)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    for name in ("RAILYARD_CLIENT_PASSWORD", "RAILYARD_CLIENT_USERNAME"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "secrets.json").write_text(json.dumps(
        {"admin_username": "admin", "admin_password": "a", "client_id": "api-client", "client_secret": "s"}))
    assert cli.main(["login", "--data-dir", str(tmp_path / "data"), "--username", "bob"]) == 3
    assert f"give --password for bob (the secrets in {tmp_path / 'data'} hold only admin's)" in capsys.readouterr().err


def test_a_refused_second_start_keeps_the_running_stacks_state(tmp_path, monkeypatch, capsys):
    """`railyard up` on the data directory of a running stack said "already running", then deleted that stack's
    run/stack.json on its way out: `railyard down` and `status` answered "no stack is running" and the stack was
    left running with nothing to stop it."""
    import os
    import signal

    from shared.embedded import stack as embedded
    from shared.settings import Settings

    state = tmp_path / "run" / "stack.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"supervisor_pid": os.getppid(), "components": {}}))  # a live process
    monkeypatch.setenv("RAILYARD_STACK__DATA_DIR", str(tmp_path))
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # up() installs its handlers; not in pytest
    assert embedded.up(Settings()) == 2
    assert "a stack is already running" in capsys.readouterr().err
    assert json.loads(state.read_text())["supervisor_pid"] == os.getppid()


def test_a_username_without_its_password_never_runs_as_the_saved_user(tmp_path, monkeypatch):
    """Session(url, username="bob") with no password, on a machine where `railyard login` had saved admin's tokens,
    ran as admin (the saved tokens, all of admin's rights); the same with RAILYARD_CLIENT_USERNAME=bob. The saved
    tokens are used only when no username is given or it is the saved one; otherwise the password is asked for."""
    from railyard_client.errors import ConfigurationError
    from railyard_client.session import Session

    saved = _saved_admin(tmp_path, monkeypatch)
    grants = []

    def grant(session, form):
        grants.append((form["grant_type"], form.get("username")))
        session.access_token = f"{form.get('username')}-token"

    monkeypatch.setattr(Session, "_grant", grant)
    with pytest.raises(ConfigurationError, match=r"no password for 'bob': pass password .* --username bob"):
        Session("http://h:1", username="bob", credentials_file=saved)
    monkeypatch.setenv("RAILYARD_CLIENT_USERNAME", "bob")
    with pytest.raises(ConfigurationError, match="no password for 'bob'"):
        Session(credentials_file=saved)
    monkeypatch.setenv("RAILYARD_CLIENT_PASSWORD", "bobs-password")
    assert Session(credentials_file=saved).access_token == "bob-token"  # bob's password: bob signs in
    monkeypatch.delenv("RAILYARD_CLIENT_USERNAME")
    monkeypatch.delenv("RAILYARD_CLIENT_PASSWORD")
    assert grants == [("password", "bob")]
    for same in ({}, {"username": "admin"}):  # no username, or the saved one: the saved tokens, as before
        session = Session("http://h:1", credentials_file=saved, **same)
        assert (session.access_token, session.username) == ("admin-token", "admin")
    assert len(grants) == 1


def test_tasks_logs_checks_the_given_task_with_or_without_follow(monkeypatch, capsys):
    """`railyard tasks logs --task` says "checked if given": it was checked with --follow only."""
    from railyard_client import cli_orchestrations

    run_id, task_id, other = "5f0c8a3e-0000-4000-8000-000000000001", "5f0c8a3e-0000-4000-8000-000000000002", \
        "5f0c8a3e-0000-4000-8000-000000000003"

    class Runs:  # the run's answer as task/get_logs_for_run gives it
        def run_logs(self, run_id_: str, lines: int | None = None) -> dict:
            assert run_id_ == run_id
            return {"task": task_id, "status": "success", "logs": ["2026-12-01T00:00:00Z stdout F hi"]}

        def logs(self, run_id_: str, lines: int | None = None) -> list[str]:
            return self.run_logs(run_id_, lines)["logs"]

        def run_logs_from(self, run_id_: str, cursor: str | None = None) -> dict:  # --follow's reads (66c8f88)
            assert cursor is None  # one poll: the run has finished and every line is read (no next_cursor)
            return {**self.run_logs(run_id_), "next_cursor": None}

    monkeypatch.setattr(cli_orchestrations, "_orchestrations", lambda workspace: Runs())
    for follow in ([], ["--follow"]):
        assert cli.main(["tasks", "logs", run_id, "--task", other, *follow]) == 2
        assert f"is a run of task {task_id}, not of {other}" in capsys.readouterr().err
        assert cli.main(["tasks", "logs", run_id, "--task", task_id, "-n", "1", *follow]) == 0
        assert capsys.readouterr().out == "2026-12-01T00:00:00Z stdout F hi\n"


def test_tasks_logs_follow_prints_lines_a_failed_run_writes_after_its_end(monkeypatch, capsys):
    """A run marked failed as lost whose supervisor was only paused writes its last lines after that status (the
    scheduler stores them whatever it is). `railyard tasks logs -f` stopped at the first read that saw the end: the
    late line was never printed. Now a failed run's lines from the same cursor are read again, past those printed,
    until two reads in a row bring none; a run that succeeded still ends at once."""
    from railyard_client import cli_orchestrations

    run_id = "5f0c8a3e-0000-4000-8000-000000000001"
    line = "2026-12-01T00:00:0{}Z stdout F {}".format

    class Runs:
        def __init__(self, answers: list[tuple[str | None, dict]]) -> None:
            self.answers, self.reads = answers, 0

        def run_logs_from(self, run_id_: str, cursor: str | None = None) -> dict:
            expected, answer = self.answers[min(self.reads, len(self.answers) - 1)]
            self.reads += 1
            assert cursor == expected, (self.reads, cursor)
            # one page from `cursor`, as the SDK's run_logs_from says where its last page was read from
            return {"task": "t", "next_cursor": None, "last_page_cursor": cursor,
                    "last_page_lines": len(answer["logs"]), **answer}

    monkeypatch.setattr(cli_orchestrations.time, "sleep", lambda seconds: None)
    lost = Runs([(None, {"status": "running", "logs": [line(0, "a")], "next_cursor": "1"}),
                 ("1", {"status": "failure", "logs": []}),  # marked lost: its supervisor paused
                 ("1", {"status": "failure", "logs": [line(1, "b")]}),  # it woke and wrote its last line
                 ("1", {"status": "failure", "logs": [line(1, "b")]})])
    monkeypatch.setattr(cli_orchestrations, "_orchestrations", lambda workspace: lost)
    assert cli.main(["tasks", "logs", run_id, "-f"]) == 0
    assert capsys.readouterr().out == f"{line(0, 'a')}\n{line(1, 'b')}\n"  # the old code: the first line alone
    assert lost.reads == 5  # then two reads with nothing new
    done = Runs([(None, {"status": "success", "logs": [line(0, "a")]})])
    monkeypatch.setattr(cli_orchestrations, "_orchestrations", lambda workspace: done)
    assert cli.main(["tasks", "logs", run_id, "-f"]) == 0
    assert capsys.readouterr().out == f"{line(0, 'a')}\n" and done.reads == 1


def test_tasks_logs_follow_reads_a_failed_run_again_from_its_last_page(monkeypatch, capsys):
    """`railyard tasks logs -f` of a run that had failed before it started, over the SDK's run_logs_from: the first
    read reads every page; the reads after the end (for a late line, SETTLE_QUIET) read again from the cursor of the
    last page, past its lines printed. Before, they started from the cursor the first read started at (none: the
    first line), so every page of the log was read again at each of them (four times more here)."""
    from types import SimpleNamespace

    from railyard_client import cli_orchestrations
    from railyard_client.orchestrations import Orchestrations

    run_id = "5f0c8a3e-0000-4000-8000-000000000001"
    written = [f"2026-12-01T00:00:0{n}Z stdout F {n}" for n in range(5)]

    class Service:  # task/get_logs_for_run of a finished run by limit/cursor; pages of 2 lines (as past 4 MiB)
        def __init__(self) -> None:
            self.asked: list[str | None] = []

        def post(self, route: str, body: dict) -> dict:
            assert route == "task/get_logs_for_run" and body["id"] == run_id and body["limit"] > 2
            self.asked.append(body.get("cursor"))
            start = int(body.get("cursor") or 0)
            following = str(start + 2) if start + 2 < len(written) else None  # a finished run's last page: none
            return {"logs": written[start:start + 2], "task": "t", "status": "failure", "next_cursor": following}

    sleeps = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:  # after the first read again: a run marked lost writes its last line
            written.append("2026-12-01T00:00:09Z stdout F late")

    service = Service()
    monkeypatch.setattr(cli_orchestrations.time, "sleep", sleep)
    monkeypatch.setattr(cli_orchestrations, "_orchestrations",
                        lambda workspace: Orchestrations(SimpleNamespace(_session=service), 1))
    assert cli.main(["tasks", "logs", run_id, "-f"]) == 0
    assert capsys.readouterr().out == "".join(f"{line}\n" for line in written)  # each line once, the late one too
    # the first read's three pages, then its last page (from "4") again: nothing, the late line, nothing, nothing.
    # The old code: [None, "2", "4"] five times over
    assert service.asked == [None, "2", "4", "4", "4", "4", "4"]


@pytest.mark.parametrize("suffix", [".jsonl", ".ndjson"])
def test_json_lines_outputs_hold_one_row_a_line(tmp_path: Path, suffix: str):
    """`-o out.jsonl` (infer's JSON answer and every table output) wrote one JSON array, which JSON lines readers
    take as one record; a .json file keeps the array."""
    rows = [{"a": 1, "t": [0.5, 1.5]}, {"a": 2, "t": [2.5, 3.5]}]
    data.write_json_rows(rows, tmp_path / f"out{suffix}")
    lines = (tmp_path / f"out{suffix}").read_text().splitlines()
    assert [json.loads(line) for line in lines] == rows
    data.write_table(pa.Table.from_pylist(rows), tmp_path / f"table{suffix}")
    assert [json.loads(line) for line in (tmp_path / f"table{suffix}").read_text().splitlines()] == rows
    data.write_json_rows(rows, tmp_path / "out.json")
    assert json.loads((tmp_path / "out.json").read_text()) == rows


def test_the_infer_table_shows_time_as_a_utc_time():
    """The table (not --json) showed the records answer's `time` as epoch milliseconds."""
    row = cli._flatten({"time": 1_000_123, "in": {"x": 1.0}, "out": {"y": [2.0]}, "check_failures": []})
    assert row == {"time": "1970-01-01 00:16:40.123", "in.x": 1.0, "out.y": [2.0], "check_failures": []}


def test_only_the_railyard_command_goes_without_httpx_command_line():
    """The `railyard` command does not load httpx's own command line client (rich.syntax, pygments: ~40-60 ms of
    every command's start); a process that imports the SDK keeps httpx whole (`httpx.main` works there)."""
    sdk = subprocess.run([sys.executable, "-c", "import sys, railyard_client, httpx; "
                          "print('httpx._main' in sys.modules, type(httpx.main).__name__)"],
                         capture_output=True, text=True, timeout=120, check=True)
    assert sdk.stdout.split() == ["True", "Command"]  # the real click command, not the extras-missing stub
    for command in ([sys.executable, "-X", "importtime", "-m", "railyard_client.cli", "--help"],
                    [sys.executable, "-X", "importtime", str(Path(sys.executable).with_name("railyard")), "--help"]):
        run = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
        loaded = {line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time")}
        assert "railyard_client.session" in loaded and "rich.syntax" not in loaded and "pygments" not in loaded, command


class _Sent:
    """A session that answers nothing and keeps what it was sent: (route, body) a post."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []

    def post(self, route: str, body: dict) -> None:
        self.sent.append((route, body))


def test_a_user_is_deactivated_and_activated_by_email_or_by_id():
    """users/deactivate and users/activate take the user's email (seed 001) or its user_id (5b5800da); the SDK sent
    the email only, so a user invited before the 254-character limit with a longer one (which every command refuses)
    could not be stopped from the SDK. `by_id=True` names the user by id; by default, such a user is named by id."""
    from railyard_client.workspaces import EMAIL_MAX, User

    session = _Sent()
    user_id = "0b6a8c1e-6f1d-4d59-9a4b-2c7f3e1d0a55"
    alice = User(session, {"id": user_id, "email": "alice@example.com", "enabled": True})
    alice.deactivate()
    alice.activate(by_id=True)
    long = User(session, {"id": user_id, "email": "a" * (EMAIL_MAX - 11) + "@example.com"})
    long.deactivate()
    long.activate(by_id=False)
    longest = User(session, {"id": user_id, "email": "a" * (EMAIL_MAX - 12) + "@example.com"})
    longest.deactivate()  # EMAIL_MAX characters: one the server takes, so by email as seed 001 names users
    assert session.sent == [("users/deactivate", {"email": "alice@example.com"}),
                            ("users/activate", {"user_id": user_id}),
                            ("users/deactivate", {"user_id": user_id}),  # before: its email, which the server refuses
                            ("users/activate", {"email": long.email}),
                            ("users/deactivate", {"email": longest.email})]
    assert alice.enabled and long.enabled and len(longest.email) == EMAIL_MAX
    # the client cannot import the server: its copy of the bound is checked here (the longest email a command takes)
    from shared.messages.auth import NAME_CHARS

    assert EMAIL_MAX == NAME_CHARS


def test_a_password_is_set_by_email_or_by_user_id_one_of_them_sent():
    """users/update_password takes the user's user_id beside its email (51b52d9d), for a user whose email no command
    takes (invited before the 254-character limit); the SDK set the caller's own password only (no email, no id).
    `Client.update_password` takes `email` or `user_id`, exactly one of them sent (both: ValueError, nothing sent);
    `User.set_password` names a listed user as `User.deactivate` does (by id for such an email)."""
    from railyard_client.client import Client
    from railyard_client.workspaces import EMAIL_MAX, User

    session = _Sent()
    client = Client.__new__(Client)
    client._session = session
    user_id = "0b6a8c1e-6f1d-4d59-9a4b-2c7f3e1d0a55"
    client.update_password("new password", "old password")
    client.update_password("new password", email="bob@example.com")
    client.update_password("new password", user_id=UUID(user_id))
    with pytest.raises(ValueError, match="not both"):
        client.update_password("new password", email="bob@example.com", user_id=user_id)
    long = User(session, {"id": user_id, "email": "a" * (EMAIL_MAX - 11) + "@example.com"})
    long.set_password("new password")
    long.set_password("new password", by_id=False)
    assert session.sent == [
        ("users/update_password", {"password": "new password", "current_password": "old password"}),
        ("users/update_password", {"password": "new password", "email": "bob@example.com"}),
        ("users/update_password", {"password": "new password", "user_id": user_id}),
        ("users/update_password", {"password": "new password", "user_id": user_id}),
        ("users/update_password", {"password": "new password", "email": long.email})]
