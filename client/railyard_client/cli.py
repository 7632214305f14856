"""The `railyard` command: sign in, workspaces, models, pipelines, inference, logs and assays.

Every command has `--help`, prints a table for people and JSON with `--json`, and exits with a code that says
what happened (see EXIT_CODES). Installed together with the server, `railyard up|status|down` come from the
server's `railyard.commands` entry point and appear here as well.
"""

from __future__ import annotations

import json
import os
import re
import sys
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from railyard_client import data
from railyard_client._lazy import pa
from railyard_client.assays import Assay
from railyard_client.client import Client
from railyard_client.errors import (
    AuthenticationError,
    ConfigurationError,
    ConnectionFailed,
    InvalidInput,
    InvalidRequest,
    NotFound,
    RailyardError,
    WaitTimeout,
)
from railyard_client.pipelines import Pipeline
from railyard_client.progress import wanted
from railyard_client.session import (
    ENV_WORKSPACE,
    SIGN_IN_KEYS,
    Session,
    TokensNotSaved,
    UnsafeCredentials,
    credentials_path,
    end_saved_session,
    forget_sign_in,
    read_credentials,
    save_sign_in,
    update_credentials,
    with_choice,
)

EXIT_CODES = {
    0: "success",
    1: "the server refused the request or the operation failed",
    2: "bad usage or bad input (unknown option, missing or unreadable file, invalid request)",
    3: "not signed in, or wrong credentials",
    4: "not found (workspace, model, pipeline, deployment, assay)",
    5: "the server could not be reached",
    6: "a wait timed out (deploy until Running)",
    130: "interrupted",
}
PLUGIN_GROUP = "railyard.commands"
EPILOG = "Exit codes: " + "; ".join(f"{code} {text}" for code, text in EXIT_CODES.items())



def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """`--version` (click.version_option's output), the version read only then (`railyard_client.__version__`)."""
    if value and not ctx.resilient_parsing:
        from railyard_client import __version__

        click.echo(f"railyard {__version__}")
        ctx.exit()


@click.group(name="railyard", epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"],
                                                               "max_content_width": 110})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version and exit.")
def app() -> None:
    """Railyard MLOps platform: the SDK's command line.

    Shell completion: eval "$(_RAILYARD_COMPLETE=bash_source railyard)" (zsh_source, fish_source).
    """


@app.group("workspaces")
def workspaces_app() -> None:
    """List, create and choose workspaces."""


@app.group("models")
def models_app() -> None:
    """Upload models and list their versions."""


@app.group("pipelines")
def pipelines_app() -> None:
    """Create, deploy, inspect and undeploy pipelines; read their logs."""


@app.group("assays")
def assays_app() -> None:
    """List drift assays and their results."""


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts) instead of a table.")
workspace_option = click.option("--workspace", "-w", help="Workspace name or id (default: RAILYARD_CLIENT_WORKSPACE,"
                                " the one chosen with `railyard workspaces use`, else your first).")
progress_option = click.option("--progress/--no-progress", default=None,
                               help="Show a progress bar (default: on a terminal).")



class _Console:
    """Rich's console, made at its first use: a command that prints JSON (`--json`) needs no Rich, whose import
    was ~20-50 ms of its start (docs/performance.md item 46). Tests put a `rich.console.Console` in its place."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return getattr(self._console, name)


out: Any = _Console(soft_wrap=False)
_ID_COLUMNS = {"id", "run_id", "model_version"}  # the ids other commands take: printed whole when UUIDs
_STATE_COLUMNS = {"status"}  # short states: printed whole too
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


# --- output -------------------------------------------------------------------------------------------------


def _cell(value: Any, width: int = 48, null: str = "") -> str:
    if value is None:
        return null
    if hasattr(value, "isoformat"):
        value = value.isoformat()
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def _is_whole(value: Any) -> bool:
    """An id the next command takes (a model version, an orchestration, task or run): printed whole, never `…`."""
    return isinstance(value, str) and _UUID.fullmatch(value) is not None


def show(rows: list[dict[str, Any]], columns: list[str] | None, as_json: bool, payload: Any = None, *,
         data: bool = False) -> None:
    """JSON (`payload`, else the rows) with --json, else a table of `columns` (default: every key). A value that is
    none is an empty cell, as a key a row lacks: the tables of records (a model version's sha before it is ready, a
    task's last run) showed JSON's `null`. With `data` (inference results, logged rows, a dataset's rows) a null is
    a value of the data (a missing input or output) and is printed `null`, apart from a column the row lacks."""
    if as_json:
        print(json.dumps(payload if payload is not None else rows, default=str, indent=1))
        return
    if not rows:
        out.print("(none)")
        return
    from rich.table import Table

    columns = columns or list(dict.fromkeys(key for row in rows for key in row))
    table = Table(show_lines=False)
    whole = {c for c in columns if c in _ID_COLUMNS and any(_is_whole(row.get(c)) for row in rows)}
    # a state (`success`, `Running`) is what a list is read for: beside a whole UUID on 80 columns it was `succ…`
    whole |= {c for c in columns if c in _STATE_COLUMNS and all(len(str(row.get(c, ""))) <= 12 for row in rows)}
    null = "null" if data else ""

    def text(row: dict[str, Any], column: str) -> str:
        value = row.get(column, "")
        if column in whole:
            return null if value is None else str(value)
        return _cell(value, null=null)

    for column in columns:
        width = max((len(text(row, column)) for row in rows), default=0) if column in whole else None
        table.add_column(column, no_wrap=column in whole, min_width=width)
    for row in rows:
        table.add_row(*(text(row, c) for c in columns))
    out.print(table)


def _client(workspace: str | None = None) -> Client:
    return Client(workspace=workspace)


# --- sign in ------------------------------------------------------------------------------------------------


@app.command()
@click.option("--url", help="Server URL (default: RAILYARD_CLIENT_URL, else the embedded stack's).")
@click.option("--username", help="User (default: RAILYARD_CLIENT_USERNAME, else the embedded stack's admin). An"
              " empty one is refused, nothing sent (exit 3).")
@click.option("--password", help="Password (default: RAILYARD_CLIENT_PASSWORD, else the embedded stack's). An empty"
              " one is refused, nothing sent (exit 3): no user has one, the server sets none shorter than 8"
              " characters.")
@click.option("--client-id", help="OAuth2 client id (default: RAILYARD_CLIENT_ID, else the embedded stack's).")
@click.option("--client-secret", help="OAuth2 client secret (default: RAILYARD_CLIENT_SECRET, else the stack's).")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Embedded stack data directory to take defaults"
              " from (default: RAILYARD_STACK__DATA_DIR, else .railyard).")
@json_option
def login(url: str | None, username: str | None, password: str | None, client_id: str | None,
          client_secret: str | None, data_dir: Path | None, as_json: bool) -> None:
    """Sign in and keep the tokens in the credentials file (0600) for every other command and Client().

    The server's `python -m shared.cli login` is this command (its exit codes: 1 for this one's 3 and 5, 2 with
    nothing to sign in with)."""
    env = os.environ
    folder = (data_dir or Path(env.get("RAILYARD_STACK__DATA_DIR") or ".railyard")).expanduser()
    # the stack's own files, not the credentials file: read whatever their mode (run/stack.json is written as the
    # umask says, in the 0700 run folder)
    secrets = read_credentials(folder / "secrets.json", checked=False)
    state = read_credentials(folder / "run" / "stack.json", checked=False)
    url = url or env.get("RAILYARD_CLIENT_URL") or state.get("api_url") or "http://127.0.0.1:18000"
    if username == "":  # as an empty --password (below): refused, not read as "no --username". It signed in as the
        # variable's user or the embedded stack's admin, and saved their tokens, where `--username "$NAME"` with an
        # unset NAME meant someone else
        raise ConfigurationError("--username is empty: give the user's name or email, or leave --username out for"
                                 " RAILYARD_CLIENT_USERNAME's or the embedded stack's admin")
    username = username or env.get("RAILYARD_CLIENT_USERNAME") or secrets.get("admin_username")
    if password == "":  # decision: refused here, nothing sent, not read as "no --password" (the variable's or the
        # stack's): no user has one (the server sets none shorter than 8 characters, and an empty bootstrap password
        # makes no admin), and the gateway reads an empty form field as a missing one (400 "needs username and
        # password"); `python -m shared.cli login` exits 2 with it, as with nothing to sign in with
        raise ConfigurationError("--password is empty: no user has an empty password (the server sets none shorter"
                                 " than 8 characters); give the password, or leave --password out for"
                                 " RAILYARD_CLIENT_PASSWORD's or the embedded stack's")
    if password is None:
        password = env.get("RAILYARD_CLIENT_PASSWORD") or (
            secrets.get("admin_password") if username == secrets.get("admin_username") else None)
    if not (username and password):
        if secrets and username:  # the stack's secrets hold its admin's password only
            raise ConfigurationError(f"give --password for {username} (the secrets in {folder} hold only"
                                     f" {secrets.get('admin_username')}'s)")
        # what is missing: the message asked for --username and --password when one of them was given
        missing = ("--username and --password" if not (username or password) else
                   f"--password for {username} (or set RAILYARD_CLIENT_PASSWORD)" if username else
                   "--username (or set RAILYARD_CLIENT_USERNAME)")
        raise ConfigurationError(f"no embedded stack secrets in {folder}: give --data-dir (the folder `railyard up`"
                                 f" used) or {missing}")
    client_secret = client_secret or env.get("RAILYARD_CLIENT_SECRET") or secrets.get("client_secret")
    if not client_secret:  # the SDK's own message names Client()'s argument, not the option
        raise ConfigurationError(f"no client secret: give --client-secret or set RAILYARD_CLIENT_SECRET (no embedded"
                                 f" stack secrets in {folder}; --data-dir names the folder `railyard up` used)")
    try:
        session = Session(url, username=username, password=password,
                          client_id=client_id or env.get("RAILYARD_CLIENT_ID") or secrets.get("client_id"),
                          client_secret=client_secret, credentials_file=Path(os.devnull))
    except AuthenticationError as exc:  # the server's words, said as the sign-in's failure
        raise AuthenticationError(exc.status, exc.code, f"login failed: {exc.message}") from None
    # signing in again (the refresh token expired), or as another user, keeps every user's `workspaces use` choice
    # (each server's and user's own: session.py's module doc)
    try:
        path = save_sign_in(session.credentials())
    except (OSError, UnsafeCredentials) as exc:  # a full disk, a read-only folder, a file others may write: the
        # file is as it was (was "unexpected OSError")
        raise RailyardError(f"signed in, but the tokens could not be saved in {credentials_path()}: {exc}") from None
    finally:
        session.close()
    if as_json:
        show([], None, True, {"url": session.url, "username": username, "credentials": str(path)})
    else:
        # one line, never wrapped: Rich broke a long path at 80 columns (piped), so it could not be copied whole
        out.print(f"logged in to {session.url} as {username} (tokens in {path})", soft_wrap=True, markup=False,
                  highlight=False)


@app.command()
def logout() -> None:
    """Sign out: end the saved session at its server (its refresh token and every token of it stop working there)
    and remove the tokens from the credentials file. Every server's and user's `workspaces use` choice stays. When
    the server cannot end the session (unreachable, an older server), the tokens are removed all the same, with a
    warning: the refresh token then works until it expires. A sign-in saved meanwhile (`railyard login` while the
    server was asked) is kept."""
    path = credentials_path()
    saved = read_credentials(path)
    if not any(saved.get(key) for key in SIGN_IN_KEYS):
        out.print(f"not logged in (no tokens in {path})")
        return
    why_not = end_saved_session(saved)
    if why_not:
        print(f"railyard: warning: the session was not ended at the server ({why_not}); its refresh token works "
              "until it expires", file=sys.stderr)
    who = f" as {saved['username']}" if saved.get("username") else ""
    # only this sign-in's tokens: a `railyard login` while the server was asked (up to 10 s) wrote its own, and kept
    if forget_sign_in(path, refresh_token=saved.get("refresh_token")):
        out.print(f"logged out of {saved.get('url') or 'the server'}{who} (tokens removed from {path})")
    else:
        out.print(f"logged out of {saved.get('url') or 'the server'}{who}; {path} holds another sign-in saved meanwhile"
                  " (another `railyard login`): kept")


@app.command()
def token() -> None:
    """Print a valid access token, refreshed when needed: TOKEN=$(railyard token).

    A refreshed token that could not be saved in the credentials file (a full disk, a read-only folder) is printed
    all the same, valid for its lifetime, with the failure on stderr, and the command exits 0: the old refresh token
    is spent, so the next refresh needs `railyard login` again once the file can be written. The server's
    `python -m shared.cli token` is this command (its exit codes: 1 for this one's 3 and 5)."""
    client = Client()
    with warnings.catch_warnings():  # said below in the command's own words
        warnings.simplefilter("ignore", TokensNotSaved)
        value = client.token
    not_saved = client.tokens_not_saved
    if not_saved is not None:
        print(f"railyard: the refreshed tokens could not be saved in {not_saved.path} ({not_saved.error}); the token"
              " printed is valid, but run `railyard login` again once the file can be written", file=sys.stderr)
    print(value)


# --- workspaces ---------------------------------------------------------------------------------------------


@workspaces_app.command("list")
@json_option
def workspaces_list(as_json: bool) -> None:
    """The workspaces you belong to."""
    rows = [w.to_dict() for w in _client().workspaces()]
    show(rows, ["id", "name", "created_at", "models", "pipelines"], as_json)


@workspaces_app.command("create")
@click.argument("name")
@json_option
def workspaces_create(name: str, as_json: bool) -> None:
    """Create a workspace you own, named NAME."""
    workspace = _client().create_workspace(name)
    show([workspace.to_dict()], ["id", "name", "created_at"], as_json, workspace.to_dict())


@workspaces_app.command("use")
@click.argument("workspace")
@json_option
def workspaces_use(workspace: str, as_json: bool) -> None:
    """Make WORKSPACE (name or id) the default of every command and of Client() for you on this server (kept in the
    credentials file, each user's own)."""
    client = _client()
    found = client.workspace(workspace)
    # kept for this server and this user only: another user signing in to the same server from this machine has
    # their own choice (they ran in this one, or failed as not its member)
    update_credentials(lambda saved: with_choice(saved, client.url, client.username, found.id))
    # RAILYARD_CLIENT_WORKSPACE comes before the file's choice (Client(), every command's default): set to another
    # workspace, the choice was saved and printed and the next command still went on in the variable's
    overriding = os.environ.get(ENV_WORKSPACE)
    if overriding and overriding not in (str(found.id), found.name):
        print(f"railyard: warning: {ENV_WORKSPACE}={overriding} is set and comes before this choice: unset it for"
              f" {found.name} to be the next command's workspace", file=sys.stderr)
    show([found.to_dict()], ["id", "name"], as_json, found.to_dict())


# --- models -------------------------------------------------------------------------------------------------


@models_app.command("upload")
@click.argument("name")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--framework", default="onnx", show_default=True, help="onnx, python, custom, sklearn or xgboost.")
@workspace_option
@progress_option
@json_option
def models_upload(name: str, file: Path, framework: str, workspace: str | None, progress: bool | None,
                  as_json: bool) -> None:
    """Upload FILE as a new version of model NAME (streamed, with a progress bar) and wait for any conversion."""
    if not file.is_file():
        raise InvalidInput(f"no such file: {file}")
    version = _client(workspace).upload_model(name, file, framework=framework,
                                              progress=wanted(progress, file.stat().st_size))
    record = version.to_dict()
    show([record], ["model_id", "model_version", "framework", "status", "sha"], as_json, record)


@models_app.command("list")
@workspace_option
@json_option
def models_list(workspace: str | None, as_json: bool) -> None:
    """The models of a workspace."""
    rows = [m.to_dict() for m in _client(workspace).current_workspace().models()]
    show(rows, ["id", "name", "created_at", "updated_at"], as_json)


@models_app.command("versions")
@click.argument("name")
@workspace_option
@json_option
def models_versions(name: str, workspace: str | None, as_json: bool) -> None:
    """The versions of model NAME, oldest first."""
    rows = [v.to_dict() for v in _client(workspace).current_workspace().model(name).versions()]
    show(rows, ["model_version", "framework", "status", "sha", "error"], as_json)


# --- pipelines ----------------------------------------------------------------------------------------------


def _pipeline_row(pipeline: Pipeline) -> dict[str, Any]:
    record = pipeline.to_dict()
    versions = record.get("versions") or []
    deployment = record.get("deployment") or {}
    # a record whose versions pass 4 MiB lists the newest (and the deployed one) and counts the rest apart; a value
    # there is none of (no deployment, no version) is an empty cell, as a key a row lacks: it read `null` (JSON's
    # word; --json prints the record itself)
    row = {"id": record.get("id"), "name": record.get("name"),
           "versions": len(versions) + (record.get("versions_omitted") or 0),
           "latest_version": versions[-1]["version"] if versions else None,
           "deployment": deployment.get("name"), "created_at": record.get("created_at")}
    return {key: "" if value is None else value for key, value in row.items()}


@pipelines_app.command("list")
@workspace_option
@json_option
def pipelines_list(workspace: str | None, as_json: bool) -> None:
    """The pipelines of a workspace."""
    pipelines = _client(workspace).current_workspace().pipelines()
    show([_pipeline_row(p) for p in pipelines], None, as_json, [p.to_dict() for p in pipelines])


@pipelines_app.command("create")
@click.argument("name")
@click.option("--model", "-m", "models", multiple=True, required=True,
              help="A model step, in order: NAME (its newest version) or NAME:VERSION_UUID. Repeat for more steps.")
@workspace_option
@json_option
def pipelines_create(name: str, models: tuple[str, ...], workspace: str | None, as_json: bool) -> None:
    """Create pipeline NAME (or a new version of it) from model steps."""
    ws = _client(workspace).current_workspace()
    pipeline = ws.build_pipeline(name)
    for ref in models:
        model_name, _, version = ref.partition(":")
        found = ws.model(model_name)
        if version:
            matches = [v for v in found.versions() if v.version == version]
            if not matches:
                raise NotFound(404, "not_found", f"model {model_name} has no version {version}")
            pipeline.add_model_step(matches[0])
        else:
            pipeline.add_model_step(found)
    pipeline.create()
    show([_pipeline_row(pipeline)], None, as_json, pipeline.to_dict())


@pipelines_app.command("deploy")
@click.argument("name")
@click.option("--replicas", type=int, help="Engine replicas (engine_config.replica_count).")
@click.option("--cpus", type=float, help="CPUs per replica (engine_config.cpus).")
@click.option("--deploy-id", help="Deployment name prefix (default: the pipeline's name).")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait until the deployment is Running (its replicas serve, or the others while one crash-loops).")
@click.option("--timeout", type=float, default=300.0, show_default=True, help="Seconds to wait for Running.")
@workspace_option
@progress_option
@json_option
def pipelines_deploy(name: str, replicas: int | None, cpus: float | None, deploy_id: str | None, wait: bool,
                     timeout: float, workspace: str | None, progress: bool | None, as_json: bool) -> None:
    """Deploy the latest version of pipeline NAME and wait until it is Running."""
    pipeline = _client(workspace).current_workspace().pipeline(name)
    pipeline.clear()  # deploy the stored latest version as it is
    pipeline.deploy(deploy_id, replicas=replicas, cpus=cpus, wait=wait, timeout=timeout,
                    progress=wanted(progress, 1 << 62))
    deployment = pipeline.deployment()
    status = deployment.status()
    row = {"pipeline": name, "deployment": deployment.name, "status": status["status"],
           "replicas": len(status.get("engines", [])), "url": pipeline.url()}
    if as_json:
        show([row], None, True, row)
        return
    show([row], [c for c in row if c != "url"], False)
    out.print(f"url {row['url']}", markup=False, highlight=False)  # whole, for curl (a table column cut it)


@pipelines_app.command("status")
@click.argument("name")
@workspace_option
@json_option
def pipelines_status(name: str, workspace: str | None, as_json: bool) -> None:
    """The deployment status of pipeline NAME and its engine replicas."""
    status = _client(workspace).current_workspace().pipeline(name).status()
    if as_json:
        show([], None, True, status)
        return
    out.print(f"{name}: {status['status']}")
    for detail in status.get("details") or []:  # why it is not Running (a failed restore says what to do)
        out.print(f"  {detail}", markup=False, highlight=False)
    engines = [{"name": e.get("name"), "status": e.get("status"), "pid": e.get("pid"), "restarts": e.get("restarts")}
               for e in status.get("engines", [])]
    if engines:
        show(engines, None, False)


@pipelines_app.command("undeploy")
@click.argument("name")
@workspace_option
@json_option
def pipelines_undeploy(name: str, workspace: str | None, as_json: bool) -> None:
    """Stop the deployment of pipeline NAME."""
    _client(workspace).current_workspace().pipeline(name).undeploy()
    row = {"pipeline": name, "status": "NotDeployed"}
    show([row], None, as_json, row)


@pipelines_app.command("logs")
@click.argument("name")
@click.option("--limit", type=int, default=100, show_default=True, help="The newest N rows (0 = every row).")
@click.option("--start", type=click.DateTime(), help="From this time (UTC).")
@click.option("--end", type=click.DateTime(), help="Until this time (UTC).")
@click.option("--output", "-o", type=click.Path(path_type=Path), help="Write the rows to a .parquet, .arrow, "
              ".json or .jsonl (one row a line) file.")
@workspace_option
@json_option
def pipelines_logs(name: str, limit: int, start: datetime | None, end: datetime | None, output: Path | None,
                   workspace: str | None, as_json: bool) -> None:
    """The inference logs of pipeline NAME, oldest first (paged for you)."""
    if output is not None:  # before any page is read
        data.check_output_suffix(output)
    pipeline = _client(workspace).current_workspace().pipeline(name)
    table = pipeline.logs(start, end, limit or None, arrow=True)
    if output:
        data.write_table(table, output)
        out.print(f"{table.num_rows} rows written to {output}")
        return
    show_rows(data.table_to_jsonable(table), as_json)


# --- inference ----------------------------------------------------------------------------------------------


def _flatten(record: dict[str, Any]) -> dict[str, Any]:
    """A records answer's row for the table (--json prints the answer as it came): nested columns spread out, and
    `time` (epoch milliseconds in the API's answer) as a UTC time a reader can read."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict) and (key in ("in", "out", "metadata") or key.startswith("out_")):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        elif key == "time" and isinstance(value, int) and not isinstance(value, bool):
            flat[key] = datetime.fromtimestamp(value / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        else:
            flat[key] = value
    return flat


def show_rows(rows: list[dict[str, Any]], as_json: bool) -> None:
    """Inference results or logged rows: with --json as they came; as a table, `time` (epoch milliseconds in the
    API's answer and in Arrow) as a UTC time and without the `metadata.*` columns (--json and -o keep them). The
    Arrow answer's and the logs' tables showed `time` as `1796384…` and, for the logs, four metadata columns that
    squeezed the inputs and outputs to a few characters each."""
    if as_json:
        show(rows, None, True)
        return
    flat = [_flatten(r) for r in rows]
    show(flat, [c for c in dict.fromkeys(k for r in flat for k in r) if not c.startswith("metadata.")] or None,
         False, data=True)


def _read_stdin(input_format: str | None) -> Any:
    if sys.stdin.isatty():
        raise InvalidInput("give an input file, or pipe rows into stdin")
    raw = sys.stdin.buffer.read()
    if not raw.strip():
        raise InvalidInput("stdin is empty: expected JSON records, Arrow or Parquet")
    kind = input_format or ("json" if raw.lstrip()[:1] in (b"[", b"{") else
                            "parquet" if raw[:4] == b"PAR1" else "arrow")
    if kind == "json":
        return data.inference_records(raw, "stdin")
    try:
        return data.read_ipc_or_parquet(raw)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidInput(f"stdin is not {kind}: {exc}") from None


@app.command()
@click.argument("pipeline")
@click.argument("input_file", metavar="[INPUT]", required=False,
                type=click.Path(exists=True, dir_okay=False, readable=True, allow_dash=True))
@click.option("--format", "input_format", type=click.Choice(["json", "arrow", "parquet"]),
              help="Format of stdin (default: guessed).")
@click.option("--output", "-o", type=click.Path(path_type=Path), help="Write the results to a .parquet, .arrow, "
              ".json or .jsonl (one row a line) file (JSON rows in: .json or .jsonl only).")
@workspace_option
@json_option
def infer(pipeline: str, input_file: str | None, input_format: str | None, output: Path | None,
          workspace: str | None, as_json: bool) -> None:
    """Run rows through deployed PIPELINE. INPUT is a .json (pandas-records), .arrow/.feather or .parquet file;
    '-' or nothing reads stdin. JSON in gives the API's JSON records; Arrow or Parquet in gives Arrow columns
    (time, in.*, out.*, check_failures). The input is checked before anything is sent: JSON must be a list of
    row objects with the same keys, each column one type (no nulls), tensors of one shape."""
    if output is not None:  # before the rows are sent (and logged), not after
        data.check_output_suffix(output)
    if input_file in (None, "-"):
        rows: Any = _read_stdin(input_format)
    else:
        path = Path(input_file)  # the file is checked before signing in
        if path.suffix.lower() in data.JSON_SUFFIXES:  # sent as the records they are, like stdin's JSON
            rows = data.read_json_records(path)
        else:
            rows, _ = data.read_table(path)
    if output is not None and isinstance(rows, list) and output.suffix.lower() not in data.JSON_SUFFIXES:
        raise InvalidInput(f"JSON rows get the API's JSON records back: write them to a .json file, not {output}"
                           " (or send .parquet/.arrow rows for an Arrow or Parquet answer)")
    result = _client(workspace).current_workspace().pipeline(pipeline).infer(rows)
    if not isinstance(result, list):  # an Arrow table (`pa.Table` here would import pyarrow for JSON rows)
        if output:
            data.write_table(result, output)
            out.print(f"{result.num_rows} rows written to {output}")
            return
        show_rows(data.table_to_jsonable(result), as_json)
        return
    if output:
        data.write_json_rows(result, output)
        out.print(f"{len(result)} rows written to {output}")
        return
    show_rows(result, as_json)


# --- assays -------------------------------------------------------------------------------------------------


@assays_app.command("list")
@click.argument("pipeline")
@workspace_option
@json_option
def assays_list(pipeline: str, workspace: str | None, as_json: bool) -> None:
    """The drift assays of PIPELINE."""
    assays = [a.to_dict() for a in _client(workspace).current_workspace().pipeline(pipeline).assays()]
    show(assays, ["id", "name", "active", "status", "iopath", "alert_threshold"], as_json, assays)


@assays_app.command("results")
@click.argument("pipeline")
@click.argument("assay_id", type=int)
@click.option("--limit", type=int, help="At most N results.")
@workspace_option
@json_option
def assays_results(pipeline: str, assay_id: int, limit: int | None, workspace: str | None, as_json: bool) -> None:
    """The scored windows of assay ASSAY_ID of PIPELINE."""
    assays = _client(workspace).current_workspace().pipeline(pipeline).assays()
    found = [a for a in assays if a.id == assay_id]
    if not found:
        raise NotFound(404, "not_found", f"pipeline {pipeline} has no assay {assay_id}")
    results = found[0].results(limit=limit)
    if as_json:
        show(results, None, as_json)
        return
    # logs_complete false: scored after max_log_wait without every logged record (absent before 2026-12-02)
    shown = [{**r, "logs": {True: "complete", False: "INCOMPLETE"}.get(r.get("logs_complete"), "")} for r in results]
    show(shown, ["window_start", "score", "status", "logs"], as_json)
    incomplete = Assay.incomplete_logs(results)
    if incomplete:
        out.print(f"{len(incomplete)} window(s) INCOMPLETE: scored without every logged record (the log store had "
                  "not stored them all when the assay runner stopped waiting, after max_log_wait); late rows are "
                  "not in their scores. Check the log store, then score the window again with an interactive run "
                  "(Pipeline.run_assay) to compare.", markup=False)


# --- entry point --------------------------------------------------------------------------------------------


def exit_code(exc: RailyardError) -> int:
    """The exit code for an SDK error (see EXIT_CODES)."""
    if isinstance(exc, (AuthenticationError, ConfigurationError)):
        return 3
    if isinstance(exc, NotFound):
        return 4
    if isinstance(exc, InvalidRequest):
        return 2
    if isinstance(exc, ConnectionFailed):
        return 5
    if isinstance(exc, WaitTimeout):
        return 6
    return 1


def _add_lineage_commands() -> None:
    from railyard_client.cli_lineage import datasets_app
    from railyard_client.cli_orchestrations import orchestrations_app, tasks_app

    app.add_command(datasets_app)
    app.add_command(orchestrations_app)
    app.add_command(tasks_app)


_add_lineage_commands()


def build_command(args: list[str] | None = None) -> click.Group:
    """Every command: the SDK's own plus those of installed plugins (entry point group `railyard.commands`;
    the server adds `up`, `status`, `down`). With `args` naming one of the SDK's own commands, the plugins are
    not looked for: reading the installed distributions' entry points (importlib.metadata) was 40-100 ms of
    every command's start (docs/performance.md item 46)."""
    if args and args[0] in app.commands and not os.environ.get("_RAILYARD_COMPLETE"):
        return app
    from importlib.metadata import entry_points

    for plugin in entry_points(group=PLUGIN_GROUP):
        try:
            plugin.load()(app)
        except Exception as exc:  # a broken plugin must not take the user's commands down with it
            print(f"railyard: plugin {plugin.name!r} not loaded: {exc}", file=sys.stderr)
    return app


def _fail(message: str, code: int) -> int:
    print(f"railyard: error: {' '.join(str(message).split())}", file=sys.stderr)
    return code


def _show_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """A TokensNotSaved warning as a line of the command's own (`railyard: warning: ...`), any other as Python's."""
    if issubclass(category, TokensNotSaved):
        print(f"railyard: warning: {message}", file=sys.stderr)
    else:
        _python_show_warning(message, category, *args, **kwargs)


_python_show_warning = warnings.showwarning


def main(argv: list[str] | None = None, *, codes: Callable[[RailyardError], int] = exit_code) -> int:
    """Run the command line; returns (and, as a script, exits with) the exit code. `codes`: the exit code of an SDK
    error (`exit_code`'s, EXIT_CODES; the server's `python -m shared.cli login` gives its own)."""
    command = build_command(sys.argv[1:] if argv is None else argv)
    with warnings.catch_warnings():  # showwarning restored on the way out (main is called in-process by tests)
        warnings.showwarning = _show_warning
        return _run(command, argv, codes)


def _run(command: click.Group, argv: list[str] | None, codes: Callable[[RailyardError], int] = exit_code) -> int:
    try:
        result = command.main(args=argv, prog_name="railyard", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        print(exc.ctx.get_help() if exc.ctx else exc.format_message())
        return 2
    except click.ClickException as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if isinstance(exc, click.UsageError) and exc.ctx else ""
        return _fail(exc.format_message() + hint, exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        return _fail("interrupted", 130)
    except RailyardError as exc:
        return _fail(str(exc), codes(exc))
    except Exception as exc:  # no traceback for users; RAILYARD_CLIENT_DEBUG=1 shows it
        if os.environ.get("RAILYARD_CLIENT_DEBUG"):
            raise
        return _fail(f"unexpected {type(exc).__name__}: {exc}", 1)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
