"""Lineage routes of the gateway: the JSON route table (forwarded as commands like every other JSON route) and
the routes that carry bytes (dataset rows and files, the workspace file space).

Uploads are staged in object storage (`staging/<user id>/<uuid>`, shared/staging.py) and the workflow-lineage
service is told the key: it takes it from that user only, checks the caller and the bytes, keeps them under their
sha256 and deletes the staged copy. Downloads ask the
service first (which checks the caller) and then stream the content-addressed object it names."""

from __future__ import annotations

import io
import json
from typing import Any
from urllib.parse import quote

import pyarrow.parquet as pq
from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from services.gateway import handlers, json_body
from services.gateway.accept import answer_type
from services.gateway.openapi_body import request_schema
from shared import subjects
from shared.arrow_codec import (
    NO_ROWS,
    from_ipc,
    records_json_to_table,
    table_to_records,
    to_ipc_file,
    to_ipc_stream,
)
from shared.authz import Principal
from shared.errors import InvalidRequest, NotFound, RailyardError, validation_message
from shared.messages import lineage as lin
from shared.objectstore import BUCKET_DATASETS, content_key
from shared.service import Runtime
from shared.staging import staged_key

ARROW_FILE = "application/vnd.apache.arrow.file"
ARROW_STREAM = "application/vnd.apache.arrow.stream"
PARQUET = "application/vnd.apache.parquet"

_LINK_MODELS = {"project": lin.ProjectLink, "dataset": lin.DatasetLink, "file": lin.FileLink,
                "folder": lin.FolderLink, "task": lin.TaskLink, "job": lin.JobLink, "app": lin.AppLink}

# (path, subject, request model, reply model, summary[, unwrap, status, long_running]) rows for http.py's JSON
# route table
JSON_ROUTE_SPECS: list[tuple[Any, ...]] = [
    ("/projects/create", subjects.LINEAGE_PROJECTS_CREATE, lin.CreateProject, lin.ProjectInfo,
     "Create a project (a container of datasets) in a workspace."),
    ("/projects/list", subjects.LINEAGE_PROJECTS_LIST, lin.ListProjects, lin.Projects, "List a workspace's projects."),
    ("/projects/get", subjects.LINEAGE_PROJECTS_GET, lin.ProjectRef, lin.ProjectInfo,
     "Get a project with its datasets and content hash."),
    ("/projects/delete", subjects.LINEAGE_PROJECTS_DELETE, lin.ProjectRef, lin.Deleted,
     "Delete a project, its datasets and versions."),
    ("/projects/create_version", subjects.LINEAGE_VERSIONS_CREATE, lin.CreateProjectVersion, lin.ProjectVersionInfo,
     "Save a project version (unchanged since the last version: that version's id comes back)."),
    ("/projects/list_versions", subjects.LINEAGE_VERSIONS_LIST, lin.ListProjectVersions, lin.ProjectVersions,
     "List a project's versions, with filters."),
    ("/projects/restore_version", subjects.LINEAGE_VERSIONS_RESTORE, lin.RestoreProjectVersion, lin.ProjectRestored,
     "Recreate a version (by id or number) as a new project (manifest copy; skip_missed_entities)."),
    ("/projects/verify_version", subjects.LINEAGE_VERSIONS_VERIFY, lin.VersionRef, lin.VersionVerification,
     "Check a version's manifest against its hash and its objects against storage."),
    ("/datasets/create", subjects.LINEAGE_DATASETS_CREATE, lin.CreateDataset, lin.DatasetInfo,
     "Create a dataset (tabular, images or files) in a project."),
    ("/datasets/list", subjects.LINEAGE_DATASETS_LIST, lin.ProjectRef, lin.Datasets, "List a project's datasets."),
    ("/datasets/get", subjects.LINEAGE_DATASETS_GET, lin.DatasetRef, lin.DatasetInfo, "Get a dataset."),
    ("/datasets/delete", subjects.LINEAGE_DATASETS_DELETE, lin.DatasetRef, lin.Deleted, "Delete a dataset."),
    ("/datasets/list_files", subjects.LINEAGE_DATASETS_LIST_FILES, lin.DatasetFilesQuery, lin.DatasetFiles,
     "List a dataset's files with their labels (now, or as a project version saved them: version_id)."),
    ("/datasets/get_file_info", subjects.LINEAGE_DATASETS_GET_FILE, lin.DatasetFileQuery, lin.DatasetFile,
     "A dataset file's hash, size, type and labels (now, or as a project version saved it: version_id)."),
    ("/datasets/delete_file", subjects.LINEAGE_DATASETS_DELETE_FILE, lin.DatasetFileRef, lin.Deleted,
     "Delete a dataset's file."),
    ("/files/list", subjects.LINEAGE_FILES_LIST, lin.ListWorkspaceFiles, lin.WorkspaceFolder,
     "The files and folders under a folder of the workspace's file space."),
    ("/files/get_info", subjects.LINEAGE_FILES_GET, lin.WorkspaceFileRef, lin.WorkspaceFile,
     "A workspace file's hash and size."),
    ("/files/delete", subjects.LINEAGE_FILES_DELETE, lin.WorkspaceFileRef, lin.Deleted, "Delete a workspace file."),
    ("/workflow/graph", subjects.LINEAGE_WORKFLOW_GRAPH, lin.GetWorkflowGraph, lin.WorkflowGraph,
     "A card's ancestors and descendants to a depth (nodes and edges), or a workspace's whole graph."),
    ("/benchmarks/run_classification", subjects.LINEAGE_BENCHMARKS_CLASSIFICATION, lin.RunClassificationBenchmark,
     lin.BenchmarkReport, "Run a tabular dataset through deployments: classification metrics and speed, stored.",
     None, 200, True),
    ("/benchmarks/evaluate_detections", subjects.LINEAGE_BENCHMARKS_DETECTION, lin.EvaluateDetections,
     lin.BenchmarkReport, "Score detections against an images dataset's boxes (COCO mAP), stored.", None, 200, True),
    ("/benchmarks/get", subjects.LINEAGE_BENCHMARKS_GET, lin.ReportRef, lin.BenchmarkReport, "A benchmark report."),
    ("/benchmarks/list", subjects.LINEAGE_BENCHMARKS_LIST, lin.ListReports, lin.BenchmarkReports,
     "A workspace's benchmark reports."),
    ("/maintenance/collect_objects", subjects.LINEAGE_OBJECTS_COLLECT, lin.CollectObjects, lin.ObjectsCollected,
     "Delete dataset objects nothing refers to any more (administrators).", None, 200, True),
    ("/benchmarks/compare", subjects.LINEAGE_BENCHMARKS_COMPARE, lin.CompareReports, lin.ReportComparison,
     "Reports' candidates side by side, each metric with its difference from the first."),
] + [
    (f"/workflow/{subject.rsplit('.', 1)[-1]}", subject, _LINK_MODELS[subject.rsplit("_", 1)[-1]], lin.LinkAdded,
     f"Seed {subject.rsplit('.', 1)[-1]}: connect a card to a task run.")
    for subject in subjects.LINEAGE_WORKFLOW_LINKS
]


def _json_kind(value: Any) -> str:
    """What a JSON value is, for a message: "a string", "a number", "true"."""
    if isinstance(value, bool):
        return str(value).lower()
    return "a string" if isinstance(value, str) else "a number" if isinstance(value, (int, float)) else "null"


def add_lineage_routes(app: FastAPI, runtime: Runtime, user_caller, bearer_token) -> None:
    """The byte-carrying lineage routes."""
    timeout = runtime.settings.nats.request_timeout
    upload_timeout = timeout + 60.0

    async def stage(principal: Principal, data: Any, length: int = -1) -> str:
        key = staged_key(principal)  # the lineage service takes it from this user and token scope only
        if isinstance(data, bytes):
            await runtime.objects.put_bytes(BUCKET_DATASETS, key, data)
        else:
            await runtime.objects.put_stream(BUCKET_DATASETS, key, data, length=length)
        return key

    async def forward_staged(request: Request, subject: str, build: Any, key: str) -> Any:
        try:
            command = build(key)
        except ValidationError as exc:
            await runtime.objects.delete(BUCKET_DATASETS, key)
            raise InvalidRequest(validation_message(exc.errors())) from None
        try:
            return await handlers.forward(runtime.broker, subject, command, bearer_token(request), upload_timeout)
        except RailyardError as exc:
            if exc.code in ("upstream_timeout", "unavailable"):  # the service never saw it: clean up here
                await runtime.objects.delete(BUCKET_DATASETS, key)
            raise

    async def multipart(request: Request) -> tuple[Any, dict[str, str]]:
        form = await request.form(max_files=1, max_fields=10)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise InvalidRequest("the multipart body needs a 'file' part")
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        return upload, fields

    @app.post("/v1/api/datasets/upload_rows", tags=["datasets"], response_model=lin.DatasetInfo)
    async def upload_rows(request: Request, dataset_id: int, mode: str = "append",
                          principal: Principal = Depends(user_caller)) -> Any:
        """Append (`mode=append`, default) or replace (`mode=replace`) a tabular dataset's rows: the body is an
        Arrow IPC file/stream or pandas-records JSON (`?dataset_id=...&mode=...`)."""
        body = await request.body()
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind in (ARROW_FILE, ARROW_STREAM):
            # every buffer checked (the staged rows are read again later), and no compression bomb (413); from_ipc
            # says what is wrong with a body in an InvalidRequest of its own
            if not from_ipc(body, max_decoded_bytes=runtime.settings.gateway.max_body_bytes, validate=True).num_rows:
                # as records `[]` and `{}` (records_json_to_table): nothing staged, nothing put
                raise InvalidRequest(f"{NO_ROWS} (an Arrow table of 0 rows)")
            data = body
        elif kind in ("application/json", ""):
            data = to_ipc_stream(records_json_to_table(body))
        else:
            raise InvalidRequest(f"unsupported Content-Type {kind!r}: send {ARROW_FILE!r} or application/json")
        key = await stage(principal, data)
        return await forward_staged(request, subjects.LINEAGE_DATASETS_PUT_ROWS, lambda k: lin.PutDatasetRows(
            dataset_id=dataset_id, staged_key=k, mode=mode), key)

    @app.post("/v1/api/datasets/get_rows", tags=["datasets"], openapi_extra=request_schema(lin.DatasetRef))
    async def get_rows(request: Request, principal: Principal = Depends(user_caller)) -> Any:
        """A tabular dataset's rows ({"dataset_id": ...}): pandas-records JSON, or Arrow / Parquet by `Accept`
        (application/vnd.apache.arrow.file, ...arrow.stream, application/vnd.apache.parquet); 406 for none of them."""
        body = await _json_body(request)
        cmd = _validated(lin.DatasetRef, body)
        accept = rows_type(request.headers.get("accept", ""))  # a 406 before the lineage service is asked
        located = lin.DatasetRows.model_validate(await handlers.forward(
            runtime.broker, subjects.LINEAGE_DATASETS_ROWS, cmd, bearer_token(request), timeout))
        if located.rows_sha256 is None:
            import pyarrow as pa
            table = pa.table({})
            raw = None
        else:
            raw = await runtime.objects.get_bytes(BUCKET_DATASETS, content_key(located.rows_sha256))
            if accept == PARQUET:
                return Response(raw, media_type=PARQUET)
            table = pq.read_table(io.BytesIO(raw))
        if accept == ARROW_FILE:
            return Response(to_ipc_file(table), media_type=ARROW_FILE)
        if accept == ARROW_STREAM:
            return Response(to_ipc_stream(table), media_type=ARROW_STREAM)
        if accept == PARQUET:
            sink = io.BytesIO()
            pq.write_table(table, sink)
            return Response(sink.getvalue(), media_type=PARQUET)
        return Response(json.dumps(table_to_records(table), default=str), media_type="application/json")

    @app.post("/v1/api/datasets/upload_file", tags=["datasets"], response_model=lin.DatasetFile)
    async def upload_file(request: Request, principal: Principal = Depends(user_caller)) -> Any:
        """Add a file to an images/files dataset: multipart with `dataset_id`, `name` (default: the file's name),
        optional `labels` (JSON) and the `file` part."""
        upload, fields = await multipart(request)
        labels = None
        if fields.get("labels"):
            try:
                labels = json_body.loads(fields["labels"], "labels")
            except ValueError:
                raise InvalidRequest("labels must be JSON: an object or an array (e.g. {\"boxes\": [{\"bbox\": [x, y,"
                                     " w, h], \"category\": ...}]}, what a detection benchmark reads)") from None
            if labels is not None and not isinstance(labels, (dict, list)):
                # a file's labels are free JSON, but an object or an array (lin.AddDatasetFile): a bare 5 or "cat"
                # was refused by the command's union ("labels.dict[str,any]: Input should be a valid dictionary;
                # labels.list[any]: ..."), and only after the file was staged
                raise InvalidRequest(f"labels must be a JSON object or array (e.g. {{\"boxes\": [...]}}), not"
                                     f" {_json_kind(labels)}")

        def command(key: str) -> lin.AddDatasetFile:
            return lin.AddDatasetFile(dataset_id=fields.get("dataset_id"),
                                      name=fields.get("name") or upload.filename or "", staged_key=key, labels=labels)

        try:  # checked before anything is staged: a wrong dataset_id or name leaves nothing behind, and costs no upload
            command("staging/")
        except ValidationError as exc:
            raise InvalidRequest(validation_message(exc.errors())) from None
        key = await stage(principal, upload.file, upload.size if upload.size is not None else -1)
        return await forward_staged(request, subjects.LINEAGE_DATASETS_ADD_FILE, command, key)

    @app.post("/v1/api/datasets/download_file", tags=["datasets"],
              openapi_extra=request_schema(lin.DatasetFileQuery))
    async def download_file(request: Request, principal: Principal = Depends(user_caller)) -> Any:
        """A dataset file's bytes ({"dataset_id": ..., "name": ...}; "version_id": as a project version saved it)."""
        cmd = _validated(lin.DatasetFileQuery, await _json_body(request)).model_copy(update={"labels": False})
        info = lin.DatasetFile.model_validate(await handlers.forward(  # the hash only: any labels' size downloads
            runtime.broker, subjects.LINEAGE_DATASETS_GET_FILE, cmd, bearer_token(request), timeout))
        return await _stream(runtime, info.sha256, info.content_type, info.name)

    @app.post("/v1/api/files/upload", tags=["files"], response_model=lin.WorkspaceFile)
    async def upload_workspace_file(request: Request, principal: Principal = Depends(user_caller)) -> Any:
        """Store a file in the workspace's file space: multipart with `workspace_id`, `path` (e.g.
        /models/best.onnx; folders are path prefixes) and the `file` part."""
        upload, fields = await multipart(request)
        key = await stage(principal, upload.file, upload.size if upload.size is not None else -1)
        return await forward_staged(request, subjects.LINEAGE_FILES_PUT, lambda k: lin.PutWorkspaceFile(
            workspace_id=fields.get("workspace_id"), path=fields.get("path") or "", staged_key=k), key)

    @app.post("/v1/api/files/download", tags=["files"], openapi_extra=request_schema(lin.WorkspaceFileRef))
    async def download_workspace_file(request: Request, principal: Principal = Depends(user_caller)) -> Any:
        """A workspace file's bytes ({"workspace_id": ..., "path": ...})."""
        cmd = _validated(lin.WorkspaceFileRef, await _json_body(request))
        info = lin.WorkspaceFile.model_validate(await handlers.forward(
            runtime.broker, subjects.LINEAGE_FILES_GET, cmd, bearer_token(request), timeout))
        return await _stream(runtime, info.sha256, "application/octet-stream", info.path.rsplit("/", 1)[-1])


ROWS_TYPES = ("application/json", ARROW_FILE, ARROW_STREAM, PARQUET)  # the first: the default


def rows_type(accept: str) -> str:
    """The type datasets/get_rows answers for an Accept header (services/gateway/accept.py): the first type listed
    that it has; `*/*`, `application/*` or no Accept: JSON. NotAcceptable (406) when it lists none of them:
    `Accept: text/csv` was answered JSON with a 200."""
    return answer_type(accept, ROWS_TYPES, "datasets/get_rows")


def attachment(name: str) -> str:
    """A Content-Disposition naming the file (`curl -OJ`, a browser's save): RFC 6266's `filename*` in UTF-8 and an
    ASCII `filename` for clients that read only that one."""
    ascii_name = "".join(c if " " <= c < "\x7f" and c not in '"\\' else "_" for c in name) or "download"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


async def _stream(runtime: Runtime, sha256: str, media_type: str, name: str) -> StreamingResponse:
    key = content_key(sha256)
    if not await runtime.objects.exists(BUCKET_DATASETS, key):
        raise NotFound("the file's content is missing from storage")
    return StreamingResponse(runtime.objects.get_stream(BUCKET_DATASETS, key), media_type=media_type,
                             headers={"Content-Disposition": attachment(name)})


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json_body.loads(raw) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError) as exc:  # orjson says where: "unexpected character: line 1 ..."
        raise InvalidRequest(f"request body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


def _validated(model: Any, body: dict[str, Any]) -> Any:
    try:
        command = model.model_validate(body)
    except ValidationError as exc:
        raise InvalidRequest(validation_message(exc.errors())) from None
    json_body.refuse_lax_scalars(body, command)
    return command
