"""`railyard datasets ...`: projects, datasets, uploads (with progress), reads and project versions from the
command line, over `railyard_client.lineage.Lineage`."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from railyard_client._lazy import pa, pacsv, pq
from railyard_client.data import read_table, to_ipc_file
from railyard_client.errors import InvalidInput
from railyard_client.lineage import Lineage

ROW_SUFFIXES = {".parquet", ".pq", ".arrow", ".feather", ".ipc", ".arrows", ".json", ".jsonl", ".ndjson"}
CSV_SUFFIXES = {".csv": ",", ".tsv": "\t"}  # rows too, for a tabular dataset (what `read --out x.csv` writes)


def _csv_rows(path: Path, schema: pa.Schema | None = None) -> pa.Table:
    """A CSV (or TSV) file's rows (a header line names the columns): typed as `schema` (the dataset's, when rows
    are appended to it) says, other columns' types inferred by pyarrow. CSV carries no types: inferred, a float
    column `read --out x.csv` wrote as `1` came back int64 and a quoted `"01"` as the integer 1, so appending the
    export to its own dataset was refused (another schema), or its values changed."""
    types = {field.name: field.type for field in schema} if schema is not None else None
    try:
        table = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter=CSV_SUFFIXES[path.suffix.lower()]),
                               convert_options=pacsv.ConvertOptions(column_types=types))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise InvalidInput(f"{path} is not a readable {path.suffix[1:]} file: {exc}") from None
    if not table.num_rows and schema is None:  # its columns would be stored as nulls, refusing every later append
        raise InvalidInput(f"{path} has a header line and no rows: nothing to upload, and no types for the columns")
    return table


def _rows_schema(lineage: Lineage, dataset: dict) -> pa.Schema | None:
    """The schema of a tabular dataset's stored rows (its Parquet footer, of the whole file read), None without."""
    if dataset.get("rows_sha256") is None:
        return None
    return pq.read_schema(pa.BufferReader(lineage.read_parquet(dataset["id"])))


class _WithoutPandas:
    """Refuses pandas while `datasets upload` makes an Arrow table of a rows file. pyarrow's conversion of Python
    values (`pa.Table.from_pylist`, `pa.array`) asks its pandas shim whether each column is a pandas object, and the
    shim's first question imports pandas (0.2-0.6 s of the command, docs/performance.md item 46's leftover) for rows
    read from JSON, which hold none. Refused, the shim takes pandas for missing: the same table, as pandas plays no
    part in converting plain values."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if fullname == "pandas" or fullname.startswith("pandas."):
            raise ModuleNotFoundError("pandas is not needed to make a table of plain rows", name=fullname)


@contextlib.contextmanager
def _pandas_declined() -> Iterator[None]:
    """pandas refused for the block, in the `railyard` command's process only and only while nothing has imported
    pandas: the shim keeps its answer for the process (a later DataFrame conversion imports pandas again, but
    `pa.array` no longer recognises a pandas object by itself), which an SDK user's process must not be left with;
    the command ends after its upload."""
    from railyard_client.session import _in_the_railyard_command

    if "pandas" in sys.modules or not _in_the_railyard_command():
        yield
        return
    finder = _WithoutPandas()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def _lineage(workspace: str | None) -> Lineage:
    from railyard_client.cli import _client

    client = _client(workspace)
    return Lineage(client, client.current_workspace().id)


def _show(rows, columns, as_json, payload=None, *, data: bool = False) -> None:
    from railyard_client.cli import show

    show(rows, columns, as_json, payload, data=data)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts) instead of a table.")
workspace_option = click.option("--workspace", "-w", help="Workspace name or id (default: as for every command).")


@click.group("datasets")
def datasets_app() -> None:
    """Projects, datasets (rows, images, files) and project versions."""


@datasets_app.command("projects")
@workspace_option
@json_option
def projects(workspace: str | None, as_json: bool) -> None:
    """The workspace's projects."""
    rows = _lineage(workspace).projects()
    _show(rows, ["id", "name", "description", "content_sha256"], as_json)


@datasets_app.command("create-project")
@click.argument("name")
@click.option("--description", default="", help="What the project holds.")
@workspace_option
@json_option
def create_project(name: str, description: str, workspace: str | None, as_json: bool) -> None:
    """Create project NAME."""
    record = _lineage(workspace).create_project(name, description)
    _show([record], ["id", "name"], as_json, record)


@datasets_app.command("create")
@click.argument("project_id", type=int)
@click.argument("name")
@click.option("--kind", type=click.Choice(["tabular", "images", "files"]), default="tabular", show_default=True)
@workspace_option
@json_option
def create(project_id: int, name: str, kind: str, workspace: str | None, as_json: bool) -> None:
    """Create dataset NAME in project PROJECT_ID."""
    record = _lineage(workspace).create_dataset(project_id, name, kind)
    _show([record], ["id", "name", "kind"], as_json, record)


@datasets_app.command("list")
@click.argument("project_id", type=int)
@workspace_option
@json_option
def list_datasets(project_id: int, workspace: str | None, as_json: bool) -> None:
    """The datasets of project PROJECT_ID."""
    rows = _lineage(workspace).datasets(project_id)
    _show(rows, ["id", "name", "kind", "row_count", "file_count"], as_json)


@datasets_app.command("upload")
@click.argument("dataset_id", type=int)
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--labels", help="Labels of the file(s), as JSON.")
@click.option("--replace", is_flag=True, help="Rows: replace the dataset's rows instead of appending.")
@click.option("--progress/--no-progress", default=None, help="Show a progress bar (default: on a terminal).")
@workspace_option
@json_option
def upload(dataset_id: int, files: tuple[Path, ...], labels: str | None, replace: bool, progress: bool | None,
           workspace: str | None, as_json: bool) -> None:
    """Upload FILES to dataset DATASET_ID: rows files (.parquet, .arrow, .json, .csv) into a tabular dataset, any
    file (images into an images dataset) as a file into the others."""
    lineage = _lineage(workspace)
    try:
        parsed = json.loads(labels) if labels else None
    except ValueError:
        raise InvalidInput("--labels must be JSON") from None
    for path in files:
        if not path.is_file():
            raise InvalidInput(f"no such file: {path}")
    dataset = lineage._post("datasets/get", {"dataset_id": dataset_id})
    tabular = dataset["kind"] == "tabular"
    if tabular:  # every file is rows, checked before any is sent (a CSV was sent as a file, and refused)
        for path in files:
            if path.suffix.lower() not in ROW_SUFFIXES | CSV_SUFFIXES.keys():
                raise InvalidInput(f"{path} is not a rows file: a tabular dataset takes rows from .parquet, "
                                   ".arrow/.feather, .json/.jsonl or .csv/.tsv files (images and other files go "
                                   "to an images or files dataset)")
    results = []
    # rows appended to stored rows must have their schema: a CSV is read with it (fetched once, when needed)
    schema: pa.Schema | None = None
    schema_known = replace
    for path in files:
        if tabular:
            if path.suffix.lower() in CSV_SUFFIXES:
                if not schema_known:
                    schema, schema_known = _rows_schema(lineage, dataset), True
                table = _csv_rows(path, schema)
            else:
                with _pandas_declined():
                    table, _ = read_table(path)
            # --replace replaces the rows with all the files: the first replaces, the others append to it (each
            # replaced the one before, leaving the last file's rows)
            results.append(lineage.upload_rows(dataset_id, table, replace=replace and not results))
            schema, schema_known = (table.schema if schema is None else schema), True
        else:
            results.append(lineage.upload_file(dataset_id, path, labels=parsed, progress=progress))
    _show(results, None, as_json, results)


@datasets_app.command("read")
@click.argument("dataset_id", type=int)
@click.option("--out", "-o", type=click.Path(path_type=Path), help="Write the rows to a .parquet, .arrow or .csv"
              " file instead of printing the first ones.")
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True,
              help="Rows printed without --out.")
@workspace_option
@json_option
def read(dataset_id: int, out: Path | None, limit: int, workspace: str | None, as_json: bool) -> None:
    """A tabular dataset's rows."""
    table = _lineage(workspace).read_rows(dataset_id)
    if out is None:
        # never past the rows there are: a dataset with no rows yet reads as a table without columns, whose slice
        # made up `limit` rows ({} twenty times) instead of none
        shown = table.slice(0, min(limit, table.num_rows)).to_pylist()
        _show(shown, None, as_json, data=True)  # a null is a missing value: shown
        return
    suffix = out.suffix.lower()
    if suffix in (".parquet", ".pq"):
        pq.write_table(table, out)
    elif suffix in (".arrow", ".feather", ".ipc"):
        out.write_bytes(to_ipc_file(table))
    elif suffix == ".csv":
        nested = [f"{field.name} ({field.type})" for field in table.schema if pa.types.is_nested(field.type)]
        if nested:  # pyarrow's own error ("unexpected ArrowInvalid: Unsupported Type") named neither
            raise InvalidInput(f"CSV cannot hold the list or struct columns {', '.join(nested)}: write a .parquet or"
                               " .arrow file instead")
        pacsv.write_csv(table, out)
    else:
        raise InvalidInput("--out must end with .parquet, .arrow or .csv")
    print(f"{table.num_rows} rows written to {out}")


@datasets_app.command("files")
@click.argument("dataset_id", type=int)
@click.option("--version-id", type=int, help="As this version of the project saved them.")
@click.option("--download", type=click.Path(file_okay=False, path_type=Path),
              help="Also write every file into this folder (created if needed), under its own name.")
@workspace_option
@json_option
def files(dataset_id: int, version_id: int | None, download: Path | None, workspace: str | None,
          as_json: bool) -> None:
    """The files of an images or files dataset (name, sha256, size, type, labels); `read` is for rows."""
    lineage = _lineage(workspace)
    listed = lineage.files(dataset_id, version_id)
    if not listed and lineage._post("datasets/get", {"dataset_id": dataset_id})["kind"] == "tabular":
        # the API lists a tabular dataset's files as none: `(none)` read as an empty dataset, where `read` refuses
        # an images dataset saying what it holds
        raise InvalidInput(f"dataset {dataset_id} is a tabular dataset: it has rows, not files (`railyard datasets "
                           f"read {dataset_id}` shows them)")
    if download is not None:
        names = [str(file["name"]) for file in listed]
        for name in names:  # the server never names a file so; checked before anything is written
            if Path(name).name != name or name in (".", ".."):
                raise InvalidInput(f"the file name {name!r} is not a plain file name")
        download.mkdir(parents=True, exist_ok=True)
        for name in names:
            (download / name).write_bytes(lineage.download_file(dataset_id, name, version_id))
    _show(listed, ["name", "sha256", "size", "content_type", "labels"], as_json, listed)
    if download is not None and not as_json:
        print(f"{len(listed)} file{'' if len(listed) == 1 else 's'} written to {download}")


@datasets_app.command("delete")
@click.argument("dataset_id", type=int)
@workspace_option
def delete(dataset_id: int, workspace: str | None) -> None:
    """Delete dataset DATASET_ID."""
    _lineage(workspace).delete_dataset(dataset_id)


@datasets_app.command("version")
@click.argument("project_id", type=int)
@click.option("--title", help="The version's title.")
@click.option("--description", help="The version's description.")
@workspace_option
@json_option
def version(project_id: int, title: str | None, description: str | None, workspace: str | None,
            as_json: bool) -> None:
    """Save project PROJECT_ID's state (nothing changed since the last version: that version is shown)."""
    record = _lineage(workspace).create_version(project_id, title, description)
    _show([record], ["id", "number", "title", "created", "manifest_sha256"], as_json, record)


@datasets_app.command("versions")
@click.argument("project_id", type=int)
@workspace_option
@json_option
def versions(project_id: int, workspace: str | None, as_json: bool) -> None:
    """The versions of project PROJECT_ID."""
    rows = _lineage(workspace).list_versions(project_id)
    _show(rows, ["id", "number", "title", "created_at", "manifest_sha256"], as_json)


@datasets_app.command("restore")
@click.argument("project_id", type=int)
@click.option("--version-id", type=int, help="The version's id.")
@click.option("--number", type=int, help="The version's number.")
@click.option("--skip-missed", is_flag=True, help="Leave out files whose objects are gone instead of failing.")
@click.option("--name", help="The new project's name (default: '<name> (v<n>)').")
@workspace_option
@json_option
def restore(project_id: int, version_id: int | None, number: int | None, skip_missed: bool, name: str | None,
            workspace: str | None, as_json: bool) -> None:
    """Recreate a version of project PROJECT_ID as a new project."""
    if (version_id is None) == (number is None):  # the server's words named its fields, version_id or version_num
        raise InvalidInput("give the version to restore: --version-id or --number (one of them; `railyard datasets "
                           f"versions {project_id}` lists them)")
    record = _lineage(workspace).restore_version(project_id, version_id, number, skip_missed_entities=skip_missed,
                                                 name=name)
    project = record["project"]
    _show([{"id": project["id"], "name": project["name"], "content_sha256": project["content_sha256"],
            "skipped": record["skipped"]}], None, as_json, record)


@datasets_app.command("collect-objects")
@click.option("--grace-seconds", type=int, default=3600, show_default=True,
              help="Keep unreferenced objects younger than this (an upload may be under way).")
@click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")
@json_option
def collect_objects(grace_seconds: int, dry_run: bool, as_json: bool) -> None:
    """Administrators: delete stored objects no dataset, file or version refers to any more."""
    from railyard_client.cli import _client

    record = Lineage(_client(None), 0).collect_objects(grace_seconds, dry_run=dry_run)
    _show([{k: len(v) if k == "deleted" else v for k, v in record.items()}], None, as_json, record)
