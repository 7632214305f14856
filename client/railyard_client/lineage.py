"""Workflow lineage from Python (seeds 000 and 002): projects, datasets (rows and labeled files), the workspace
file space, project versions, the seed's workflow input/output calls, the graph, and benchmark reports.

    from railyard_client import Client
    from railyard_client.lineage import Lineage

    lineage = Lineage(Client(), workspace_id)
    project = lineage.create_project("cats")
    images = lineage.create_dataset(project["id"], "images", kind="images")
    lineage.upload_file(images["id"], "cat.png", labels={"class": "cat"})
    version = lineage.create_version(project["id"], "labeled")      # the same id again when nothing changed
    lineage.add_input_project(project["id"], version_id=version["id"], task_id=run_id)
    lineage.graph("project_version", version["id"], depth=5)        # {"nodes": [...], "edges": [...]}
"""

from __future__ import annotations

import io
import json
import numbers
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from railyard_client._lazy import pa, pd, pq
from railyard_client.data import ARROW_FILE, dataframe_to_table, from_ipc, refuse_no_rows, to_ipc_file
from railyard_client.errors import InvalidInput, boolean_input
from railyard_client.progress import ProgressReader, upload_bar, wanted

PARQUET = "application/vnd.apache.parquet"


def _source(source: str | Path | bytes | IO[bytes], name: str | None) -> tuple[IO[bytes], str, int, bool]:
    """(handle, file name, size, opened here) of a path, bytes or an open binary file."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise InvalidInput(f"no such file: {path}")
        return open(path, "rb"), name or path.name, path.stat().st_size, True  # noqa: SIM115 - closed by caller
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not name:
            raise InvalidInput("give a name for bytes")
        return io.BytesIO(bytes(source)), name, len(source), False
    size = os.fstat(source.fileno()).st_size if hasattr(source, "fileno") else 0
    return source, name or os.path.basename(str(getattr(source, "name", "file"))), size, False


def _ref(value: Any, key: str = "id", what: str = "project") -> Any:
    """The id (or a file's path) of what seed 000 takes as "ID or Info": a number (a numpy integer too), or the
    record this SDK handed out for it (`create_project`, `project`, `create_dataset`, `datasets`, `put_file` answer
    dicts). A string or float goes as it is (the server answers its 400); what the body cannot carry or would read
    as another id (True is 1) is refused before sending."""
    if isinstance(value, Mapping):
        if key not in value:
            raise InvalidInput(f"a record without {key!r} where an id or its record was expected: {sorted(value)}")
        value = value[key]
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, str, float)):
        raise InvalidInput(f"{what}: expected {'a path' if key == 'path' else 'an id'} or the record this SDK "
                           f"handed out, not {type(value).__name__}")
    return int(value) if isinstance(value, numbers.Integral) else value


def _named(seed: str, value: Any, earlier: str, earlier_value: Any) -> Any:
    """The argument given under seed 000's name (`seed`) or the SDK's earlier one, not both, not neither."""
    if value is not None and earlier_value is not None:
        raise InvalidInput(f"give {seed}= or {earlier}= (the same argument), not both")
    if value is None and earlier_value is None:
        raise InvalidInput(f"{seed} is required ({earlier}= is taken too)")
    return earlier_value if value is None else value


class Lineage:
    """The lineage API of one workspace, over a `Client` (or anything with the client's session)."""

    def __init__(self, client: Any, workspace_id: int) -> None:
        """`Lineage(client, client.current_workspace().id)`: the lineage API of that workspace, signed in as the
        client is."""
        self._session = client._session
        self.workspace_id = int(workspace_id)

    def _post(self, route: str, body: dict[str, Any]) -> Any:
        return self._session.post(route, body)

    def _upload(self, route: str, fields: dict[str, str], source: Any, name: str | None,
                progress: bool | None) -> dict[str, Any]:
        handle, file_name, size, opened = _source(source, name)
        try:
            with upload_bar(file_name, size, wanted(progress, size)) as (bar, task):
                reader = ProgressReader(handle, size, bar, task)
                response = self._session.send("POST", f"/v1/api/{route}", data=fields,
                                              files={"file": (file_name, reader, "application/octet-stream")})
        finally:
            if opened:
                handle.close()
        return response.json()

    # --- projects and datasets -------------------------------------------------------------------------

    def create_project(self, name: str, description: str = "") -> dict[str, Any]:
        """A new project (a container of datasets)."""
        return self._post("projects/create", {"workspace_id": self.workspace_id, "name": name,
                                              "description": description})

    def projects(self) -> list[dict[str, Any]]:
        """The workspace's projects with their datasets and content hashes."""
        return self._post("projects/list", {"workspace_id": self.workspace_id})["projects"]

    def project(self, project_id: int) -> dict[str, Any]:
        """A project with its datasets and content hash."""
        return self._post("projects/get", {"project_id": project_id})

    def delete_project(self, project_id: int) -> None:
        """Delete a project, its datasets and versions."""
        self._post("projects/delete", {"project_id": project_id})

    def create_dataset(self, project_id: int, name: str, kind: str = "tabular") -> dict[str, Any]:
        """A dataset of `kind` tabular (rows), images (image files) or files (any files)."""
        return self._post("datasets/create", {"project_id": project_id, "name": name, "kind": kind})

    def datasets(self, project_id: int) -> list[dict[str, Any]]:
        """A project's datasets."""
        return self._post("datasets/list", {"project_id": project_id})["datasets"]

    def delete_dataset(self, dataset_id: int) -> None:
        """Delete a dataset."""
        self._post("datasets/delete", {"dataset_id": dataset_id})

    def upload_rows(self, dataset_id: int, rows: pd.DataFrame | pa.Table | pa.RecordBatch, *,
                    replace: bool = False) -> dict[str, Any]:
        """Append rows (a DataFrame, Arrow table or record batch) to a tabular dataset, or replace them with
        `replace=True`. Rows of none are InvalidInput before anything is sent (the API's no-rows 400)."""
        if isinstance(rows, pa.RecordBatch):
            rows = pa.Table.from_batches([rows])
        # a table of 0 rows was sent and answered the API's 400; a DataFrame's is refused by dataframe_to_table
        table = refuse_no_rows(rows) if isinstance(rows, pa.Table) else dataframe_to_table(rows)
        response = self._session.send(
            "POST", "/v1/api/datasets/upload_rows", params={"dataset_id": dataset_id,
                                                           "mode": "replace" if replace else "append"},
            content=to_ipc_file(table), headers={"Content-Type": ARROW_FILE})
        return response.json()

    def read_rows(self, dataset_id: int) -> pa.Table:
        """A tabular dataset's rows as an Arrow table (`.to_pandas()` for a DataFrame)."""
        response = self._session.send("POST", "/v1/api/datasets/get_rows", json={"dataset_id": dataset_id},
                                      headers={"Accept": ARROW_FILE})
        return from_ipc(response.content)

    def read_parquet(self, dataset_id: int) -> bytes:
        """A tabular dataset's rows as Parquet bytes."""
        return self._session.send("POST", "/v1/api/datasets/get_rows", json={"dataset_id": dataset_id},
                                  headers={"Accept": PARQUET}).content

    def upload_file(self, dataset_id: int, source: str | Path | bytes | IO[bytes], *, name: str | None = None,
                    labels: Any = None, progress: bool | None = None) -> dict[str, Any]:
        """Add a file (an image to an images dataset) with optional labels; a progress bar for large files."""
        fields = {"dataset_id": str(dataset_id)}
        if name:
            fields["name"] = name
        if labels is not None:
            fields["labels"] = json.dumps(labels)
        return self._upload("datasets/upload_file", fields, source, name, progress)

    def files(self, dataset_id: int, version_id: int | None = None, *, page_size: int = 1000) -> list[dict[str, Any]]:
        """A dataset's files with hashes, sizes, types and labels, in name order (`version_id`: as that version of
        its project saved them), read page by page (`page_size` files at most per request): one answer holding a
        large dataset's list would pass the server's bus limit."""
        return [file for page in self.file_pages(dataset_id, version_id, page_size=page_size) for file in page]

    def file_pages(self, dataset_id: int, version_id: int | None = None, *,
                   page_size: int = 1000) -> Iterator[list[dict[str, Any]]]:
        """A dataset's files page by page, in name order: each page at most `page_size` files (fewer when their
        labels are large), the next one asked for only when the loop reaches it."""
        body: dict[str, Any] = {"dataset_id": dataset_id, "limit": page_size}
        if version_id is not None:
            body["version_id"] = version_id
        while True:
            page = self._post("datasets/list_files", body)
            yield page["files"]
            if not page.get("next_cursor"):
                return
            body["cursor"] = page["next_cursor"]

    def download_file(self, dataset_id: int, name: str, version_id: int | None = None) -> bytes:
        """A dataset file's bytes (`version_id`: as that version of its project saved it)."""
        body: dict[str, Any] = {"dataset_id": dataset_id, "name": name}
        if version_id is not None:
            body["version_id"] = version_id
        return self._session.send("POST", "/v1/api/datasets/download_file", json=body).content

    # --- the workspace file space ----------------------------------------------------------------------

    def put_file(self, path: str, source: str | Path | bytes | IO[bytes], *,
                 progress: bool | None = None) -> dict[str, Any]:
        """Store a file at `path` (e.g. /models/run1/best.onnx) in the workspace's file space."""
        return self._upload("files/upload", {"workspace_id": str(self.workspace_id), "path": path}, source,
                            path.rsplit("/", 1)[-1], progress)

    def list_files(self, folder: str = "/") -> dict[str, Any]:
        """The files and sub-folders directly under a folder."""
        return self._post("files/list", {"workspace_id": self.workspace_id, "folder": folder})

    def get_file(self, path: str) -> bytes:
        """A workspace file's bytes."""
        return self._session.send("POST", "/v1/api/files/download",
                                  json={"workspace_id": self.workspace_id, "path": path}).content

    # --- project versions ------------------------------------------------------------------------------

    def create_version(self, project_info: int | Mapping[str, Any] | None = None, version_title: str | None = None,
                       version_description: str | None = None, *,
                       project_id: int | Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Save the project's state (`project_info`, seed 000's name, or `project_id`: a project id or the
        project's record); unchanged since the last version, that version comes back (`created` false)."""
        project = _ref(_named("project_info", project_info, "project_id", project_id), what="project_info")
        return self._post("projects/create_version", {"project_id": project, "version_title": version_title,
                                                      "version_description": version_description})

    def list_versions(self, project_id: int | Mapping[str, Any], filters: list[dict[str, Any]] | None = None
                      ) -> list[dict[str, Any]]:
        """A project's versions; filters like `{"field": "number", "operator": ">", "value": 2}`."""
        body = {"project_id": _ref(project_id, what="project_id"), "filters": filters or []}
        return self._post("projects/list_versions", body)["versions"]

    def restore_version(self, project_info: int | Mapping[str, Any] | None = None, version_id: int | None = None,
                        version_num: int | None = None, *, skip_missed_entities: bool = False,
                        name: str | None = None, project_id: int | Mapping[str, Any] | None = None
                        ) -> dict[str, Any]:
        """Recreate a version (by id or number) of the project (`project_info`, seed 000's name, or `project_id`)
        as a new project; `skip_missed_entities` leaves out lost objects."""
        project = _ref(_named("project_info", project_info, "project_id", project_id), what="project_info")
        return self._post("projects/restore_version", {
            "project_id": project, "version_id": version_id, "version_num": version_num,
            "skip_missed_entities": boolean_input(skip_missed_entities, "skip_missed_entities"), "name": name})

    # --- the workflow graph (seed 000) -----------------------------------------------------------------

    def _link(self, method: str, task_id: str | None, meta: dict[str, Any] | None, **body: Any) -> dict[str, Any]:
        # no task_id: the server takes the run from this task run's scoped token (the seed's default)
        return self._post(f"workflow/{method}", {"workspace_id": self.workspace_id, "task_id": task_id,
                                                 "meta": meta, **body})

    def add_input_project(self, project: int | Mapping[str, Any] | None = None, version_id: int | None = None,
                          version_num: int | None = None, *,
                          task_id: str | None = None, meta: dict[str, Any] | None = None,
                          evaluation: dict[str, Any] | None = None,
                          project_id: int | Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A project (`project`, seed 000's name, or `project_id`: its id or record), or one of its versions, is an
        input of the task run (default: this task run). With `evaluation` ({dataset_name, label_column,
        output_column} or {dataset_name, image}), the version's dataset is the run's evaluation set: each model
        version the run outputs is benchmarked on it once deployed."""
        project = _ref(_named("project", project, "project_id", project_id))
        return self._link("add_input_project", task_id, meta, project_id=project, version_id=version_id,
                          version_num=version_num, **({"evaluation": evaluation} if evaluation else {}))

    def add_output_project(self, project: int | Mapping[str, Any] | None = None, version_id: int | None = None,
                           version_num: int | None = None, *,
                           task_id: str | None = None, meta: dict[str, Any] | None = None,
                           project_id: int | Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A project (`project` or `project_id`, as add_input_project), or a version, is an output of the task run."""
        project = _ref(_named("project", project, "project_id", project_id))
        return self._link("add_output_project", task_id, meta, project_id=project, version_id=version_id,
                          version_num=version_num)

    def add_input_dataset(self, dataset: int | Mapping[str, Any] | None = None, *, task_id: str | None = None,
                          meta: dict[str, Any] | None = None, evaluation: dict[str, Any] | None = None,
                          dataset_id: int | Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A dataset (`dataset`, seed 000's name, or `dataset_id`: its id or record) is an input of the task run
        (with `evaluation`: its evaluation set, as add_input_project)."""
        dataset = _ref(_named("dataset", dataset, "dataset_id", dataset_id), what="dataset")
        return self._link("add_input_dataset", task_id, meta, dataset_id=dataset,
                          **({"evaluation": evaluation} if evaluation else {}))

    def add_output_dataset(self, dataset: int | Mapping[str, Any] | None = None, *, task_id: str | None = None,
                           meta: dict[str, Any] | None = None,
                           dataset_id: int | Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A dataset (`dataset` or `dataset_id`, as add_input_dataset) is an output of the task run."""
        dataset = _ref(_named("dataset", dataset, "dataset_id", dataset_id), what="dataset")
        return self._link("add_output_dataset", task_id, meta, dataset_id=dataset)

    def add_input_file(self, file: str | Mapping[str, Any] | None = None, model_weight: bool = False, *,
                       task_id: str | None = None, meta: dict[str, Any] | None = None,
                       path: str | Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A workspace file (`file`, seed 000's name, or `path`: its path or record) is an input of the task run
        (`model_weight` marks model weights)."""
        file = _ref(_named("file", file, "path", path), "path", what="file")
        return self._link("add_input_file", task_id, meta, path=file,
                          model_weight=boolean_input(model_weight, "model_weight"))

    def add_output_file(self, file: str | Mapping[str, Any] | None = None, model_weight: bool = False, *,
                        task_id: str | None = None, meta: dict[str, Any] | None = None,
                        path: str | Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A workspace file (`file` or `path`, as add_input_file) is an output of the task run."""
        file = _ref(_named("file", file, "path", path), "path", what="file")
        return self._link("add_output_file", task_id, meta, path=file,
                          model_weight=boolean_input(model_weight, "model_weight"))

    def add_input_folder(self, path: str, *, task_id: str | None = None,
                         meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """A workspace folder is an input of the task run."""
        return self._link("add_input_folder", task_id, meta, path=path)

    def add_output_folder(self, path: str, *, task_id: str | None = None,
                          meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """A workspace folder is an output of the task run."""
        return self._link("add_output_folder", task_id, meta, path=path)

    def add_input_task(self, input_task_id: str, *, task_id: str | None = None,
                       meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Another task run is an input of the task run."""
        return self._link("add_input_task", task_id, meta, input_task_id=input_task_id)

    def add_output_task(self, output_task_id: str, *, task_id: str | None = None,
                        meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Another task run is an output of the task run."""
        return self._link("add_output_task", task_id, meta, output_task_id=output_task_id)

    def add_input_job(self, id: str, url: str | None = None, *, task_id: str | None = None,  # noqa: A002
                      meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """A labeling job is an input of the task run."""
        return self._link("add_input_job", task_id, meta, id=id, url=url)

    def add_output_job(self, id: str, url: str | None = None, *, task_id: str | None = None,  # noqa: A002
                       meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """A labeling job is an output of the task run."""
        return self._link("add_output_job", task_id, meta, id=id, url=url)

    def add_output_app(self, *, task_id: str | None = None, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """The task run's application has an offline session holding its results."""
        return self._link("add_output_app", task_id, meta)

    def graph(self, kind: str | None = None, ref: Any = None, depth: int = 3,
              direction: str = "both") -> dict[str, Any]:
        """A card's ancestors and descendants to `depth` (or, without a card, the workspace's whole graph)."""
        return self._post("workflow/graph", {"workspace_id": self.workspace_id, "kind": kind,
                                             "ref": None if ref is None else str(ref), "depth": depth,
                                             "direction": direction})

    # --- benchmark reports (seed 002) ------------------------------------------------------------------

    def benchmark_classification(self, name: str, deployments: list[str], label_column: str, output_column: str,
                                 *, dataset_id: int | None = None, version_id: int | None = None,
                                 dataset_name: str | None = None, class_names: list[str] | None = None,
                                 batch_size: int = 256) -> dict[str, Any]:
        """Run a tabular dataset (or a version's) through deployments and store a classification report."""
        return self._post("benchmarks/run_classification", {
            "workspace_id": self.workspace_id, "name": name, "deployments": deployments,
            "label_column": label_column, "output_column": output_column, "dataset_id": dataset_id,
            "version_id": version_id, "dataset_name": dataset_name, "class_names": class_names,
            "batch_size": batch_size})

    def benchmark_detections(self, name: str, candidates: list[dict[str, Any]] | None = None, *,
                             deployments: list[str] | None = None, image: dict[str, Any] | None = None,
                             dataset_id: int | None = None, version_id: int | None = None,
                             dataset_name: str | None = None, batch_size: int = 16) -> dict[str, Any]:
        """Score detections against an images dataset's boxes (COCO) and store the report: submitted `candidates`
        and/or detection `deployments` run through their engines (`image`: the pipeline's image configuration)."""
        return self._post("benchmarks/evaluate_detections", {
            "workspace_id": self.workspace_id, "name": name, "candidates": candidates or [],
            "deployments": deployments or [], "image": image, "dataset_id": dataset_id, "version_id": version_id,
            "dataset_name": dataset_name, "batch_size": batch_size})

    def collect_objects(self, grace_seconds: int = 3600, *, dry_run: bool = False) -> dict[str, Any]:
        """Administrators: delete stored objects no dataset, file or version refers to any more (older than
        `grace_seconds`); `dry_run` only lists them. Objects are shared by all workspaces, whatever this one is."""
        return self._post("maintenance/collect_objects", {"grace_seconds": grace_seconds,
                                                          "dry_run": boolean_input(dry_run, "dry_run")})

    def reports(self) -> list[dict[str, Any]]:
        """The workspace's benchmark reports."""
        return self._post("benchmarks/list", {"workspace_id": self.workspace_id})["reports"]

    def compare(self, *report_ids: int) -> pd.DataFrame:
        """Reports side by side: one row per metric, one column per candidate, and each difference from the
        first candidate."""
        answer = self._post("benchmarks/compare", {"report_ids": list(report_ids)})
        names = [f"{c['name']} (#{c['report_id']})" for c in answer["candidates"]]
        rows = []
        for metric in answer["metrics"]:
            row = {"metric": metric["metric"], **dict(zip(names, metric["values"], strict=True))}
            row.update({f"diff {n}": d for n, d in zip(names[1:], metric["diff"][1:], strict=True)})
            rows.append(row)
        return pd.DataFrame(rows).set_index("metric") if rows else pd.DataFrame()


def read_parquet_bytes(data: bytes) -> pa.Table:
    """Parquet bytes (from `Lineage.read_parquet`) as an Arrow table."""
    return pq.read_table(io.BytesIO(data))
