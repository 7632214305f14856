"""Messages of the workflow-lineage service: projects, datasets and workspace files (the graph's data cards),
project versions (seed 000 "data versioning"), and the workflow graph with its cards' customization
(`WorkflowSettings` / `WorkflowMeta`, seed 000)."""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from shared.errors import describe_pattern
from shared.messages.base import (
    CONTROL_CHARACTERS,
    INT32,
    MAX_JSON_OBJECT,
    WITHOUT_CONTROLS,
    Command,
    Event,
    Message,
    json_at_most,
)
from shared.messages.monitoring_predictions import ImageConfig

NAME_MAX_CHARS = 200
NAME_PATTERN = describe_pattern(rf"^[^/{CONTROL_CHARACTERS}]{{1,{NAME_MAX_CHARS}}}$",
                                f"use 1-{NAME_MAX_CHARS} characters without '/' or control characters")
STORED_NAME_PATTERN = describe_pattern(rf"^[^/\x00-\x1f]{{1,{NAME_MAX_CHARS}}}$",
                                       f"use 1-{NAME_MAX_CHARS} characters without '/' or a control character "
                                       "below U+0020 (tab, newline and the like)")
"""A dataset file's name as it may be stored: NAME_PATTERN until session 38 (cb581b6e), which took DEL and C1
(\\x7f-\\x9f; U+0085 comes of a Windows-1252 name read as Latin-1). What names a file to read or delete and the
name a list_files cursor continues after, so a file added before is still reached; a new file's name is
NAME_PATTERN's."""
HEX_COLOR = re.compile(r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})$")
ICON_NAME = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
TASK_ID = describe_pattern(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$", "use 1-100 ASCII letters, digits, '_', '.', "
                           "':' or '-', starting with a letter or digit")
DatasetKind = Literal["tabular", "images", "files"]


def a_dataset_of_kind(kind: str) -> str:
    """"a tabular dataset", "an images dataset", "a files dataset": how error messages name a dataset's kind."""
    return f"{'an' if kind[:1] in 'aeiou' else 'a'} {kind} dataset"


class CountEvents(Command):
    """How many domain events the lineage service has recorded (optionally for one subject)."""

    subject: str | None = None


class EventCount(Message):
    """The number of recorded events."""

    count: int


# --- projects and datasets -------------------------------------------------------------------------------


class CreateProject(Command):
    """A project: a container of datasets in a workspace."""

    workspace_id: int
    name: str = Field(pattern=NAME_PATTERN)
    description: str = Field("", max_length=2000)


class ProjectRef(Command):
    """A project by id (get, delete, list its datasets or versions)."""

    project_id: int


class ListProjects(Command):
    """The projects of a workspace."""

    workspace_id: int


class DatasetInfo(Message):
    """A dataset: rows (an Arrow table) for `tabular`, files with optional labels for `images` and `files`."""

    id: int
    project_id: int
    workspace_id: int
    name: str
    kind: DatasetKind
    row_count: int
    file_count: int
    rows_sha256: str | None = Field(None, description="Content hash of the rows (Parquet), None when empty.")
    created_at: datetime
    updated_at: datetime


class ProjectInfo(Message):
    """A project with its datasets and its current content hash (the manifest a version would record)."""

    id: int
    workspace_id: int
    name: str
    description: str
    created_at: datetime
    updated_at: datetime
    restored_from_version: int | None = None
    content_sha256: str
    datasets: list[DatasetInfo] = []


class Projects(Message):
    projects: list[ProjectInfo]


class CreateDataset(Command):
    """A dataset in a project; `kind` decides what it holds (rows, images, other files)."""

    project_id: int
    name: str = Field(pattern=NAME_PATTERN)
    kind: DatasetKind = "tabular"


class DatasetRef(Command):
    """A dataset by id."""

    dataset_id: int


class Datasets(Message):
    datasets: list[DatasetInfo]


STAGED_UPLOAD_DESCRIPTION = (
    "Key of the uploaded bytes in the datasets bucket, staging/<user id>/<uuid> (staging/<user id>/ws-<workspace id>/"
    "<uuid> for a task run's token): staged for the caller by the HTTP upload (another user's key: 403; one staged "
    "with another token scope: 403 out_of_scope).")


class PutDatasetRows(Command):
    """Append to or replace a tabular dataset's rows with an Arrow IPC table staged in object storage (the
    gateway stages the upload; the service reads it, stores it content-addressed and deletes the staged copy)."""

    dataset_id: int
    staged_key: str = Field(description=STAGED_UPLOAD_DESCRIPTION)
    mode: Literal["append", "replace"] = "append"


class DatasetRows(Message):
    """Where a dataset's rows are (read by the gateway from object storage, never shown to clients)."""

    dataset_id: int
    row_count: int
    rows_sha256: str | None


class AddDatasetFile(Command):
    """Add (or replace, by name) a file of an `images` or `files` dataset, staged in object storage."""

    dataset_id: int
    name: str = Field(pattern=NAME_PATTERN)
    staged_key: str = Field(description=STAGED_UPLOAD_DESCRIPTION)
    labels: dict[str, Any] | list[Any] | None = None


class DatasetFileRef(Command):
    """A file of a dataset, by name."""

    dataset_id: int
    name: str = Field(pattern=STORED_NAME_PATTERN)


MAX_FILES_PAGE = 10_000
"""The most files one list_files page asks for (`limit`)."""
MAX_FILES_CURSOR = -(-4 * 4 * NAME_MAX_CHARS // 3)
"""The longest list_files cursor: the longest name's UTF-8 (4 bytes a character at most) in unpadded base64url
(4 characters for every 3 bytes, services/workflow_lineage/file_pages.py): 1,067 characters."""


class DatasetFilesQuery(Command):
    """A dataset's files, in name order: as they are now, or as a project version of its project saved them
    (`version_id`); all of them, or a page (`limit`, then `cursor`)."""

    dataset_id: int
    version_id: int | None = Field(None, gt=0, description="A version of the dataset's project: its files as that "
                                   "version saved them (404 when it is another project's or has no such dataset).")
    limit: int | None = Field(None, ge=1, le=MAX_FILES_PAGE, description="A page of at most this many files "
                              "(fewer when their answer would pass half the bus payload limit), with `next_cursor` "
                              "when more follow. Without it every file comes in one answer, as before paging: a "
                              "dataset whose list passes the bus limit then answers 422 reply_too_large.")
    cursor: str | None = Field(None, min_length=1, max_length=MAX_FILES_CURSOR, description="`next_cursor` of the "
                               "previous page: the files after it (pass it as it came, with the same dataset_id and "
                               "version_id).")


class DatasetFileQuery(Command):
    """A file of a dataset, by name: as it is now, or as a project version saved it (`version_id`)."""

    dataset_id: int
    name: str = Field(pattern=STORED_NAME_PATTERN)
    version_id: int | None = Field(None, gt=0, description="A version of the dataset's project: the file as that "
                                   "version saved it.")
    labels: bool = Field(True, description="False: without its labels (`labels` null): what download_file asks, "
                         "which needs only the hash, so a file whose labels pass the bus limit still downloads.")


class DatasetFile(Message):
    name: str
    sha256: str
    size: int
    content_type: str
    labels: dict[str, Any] | list[Any] | None = None
    created_at: datetime


class DatasetFiles(Message):
    """A dataset's files (a page of them when `next_cursor` is set)."""

    files: list[DatasetFile]
    next_cursor: str | None = Field(None, description="Set when more files follow this page: pass it as `cursor` "
                                    "(with the same `limit`, or another) for the next page.")


class SavedDatasetQuery(Command):
    """Does a version of the dataset's project hold the dataset? (a small answer whatever the dataset's size)"""

    dataset_id: int
    version_id: int = Field(gt=0, description="A version of the dataset's project (404 when it is another "
                            "project's or was saved before the dataset existed).")


class SavedDatasetInfo(Message):
    """A dataset as a project version saved it: how many files and rows, not the files themselves."""

    dataset_id: int
    version_id: int
    number: int
    file_count: int
    row_count: int
    saved_at: datetime


# --- the workspace file space ----------------------------------------------------------------------------


class PutWorkspaceFile(Command):
    """Store a file at a path of the workspace's file space (folders are path prefixes), staged upload."""

    workspace_id: int
    path: str
    staged_key: str = Field(description=STAGED_UPLOAD_DESCRIPTION)


class WorkspaceFileRef(Command):
    workspace_id: int
    path: str


class ListWorkspaceFiles(Command):
    """The files and sub-folders directly under a folder of the workspace's file space."""

    workspace_id: int
    folder: str = "/"


class WorkspaceFile(Message):
    path: str
    sha256: str
    size: int
    created_at: datetime


class WorkspaceFolder(Message):
    folder: str
    files: list[WorkspaceFile]
    folders: list[str]


class Deleted(Message):
    """What a delete removed."""

    deleted: int


# --- project versions (seed 000 "data versioning") -------------------------------------------------------


class CreateProjectVersion(Command):
    """Save a project's state; when nothing changed since the last version, that version comes back."""

    project_id: int
    version_title: str | None = Field(None, max_length=200, pattern=WITHOUT_CONTROLS)  # part of its card's title
    version_description: str | None = Field(None, max_length=2000)


class ProjectVersionRecord(Message):
    """An immutable project version: its manifest is verifiable by `manifest_sha256`. A row of
    projects/list_versions."""

    id: int
    project_id: int
    workspace_id: int
    number: int
    title: str | None
    description: str | None
    manifest_sha256: str
    created_by: str
    created_at: datetime


class ProjectVersionInfo(ProjectVersionRecord):
    """projects/create_version's answer: the version, and whether this call created it. Only that answer says it: a
    listed row (ProjectVersionRecord) carried `created: true` before 2026-12-05, whoever created it and whenever."""

    created: bool = Field(True, description="False when an identical existing version was returned.")


class VersionFilter(Message):
    """One filter of list_versions: `field operator value`."""

    field: Literal["id", "number", "title", "description", "created_at", "created_by"]
    operator: Literal["=", "!=", "<", "<=", ">", ">=", "in", "contains"] = "="
    value: Any


class ListProjectVersions(Command):
    project_id: int
    filters: list[VersionFilter] = []


class ProjectVersions(Message):
    versions: list[ProjectVersionRecord]


class RestoreProjectVersion(Command):
    """Recreate a project version as a new project (a manifest copy: objects are shared, never copied).
    `skip_missed_entities`: leave out files whose objects are gone instead of failing."""

    project_id: int
    version_id: int | None = None
    version_num: int | None = None
    skip_missed_entities: bool = False
    name: str | None = Field(None, pattern=NAME_PATTERN)

    @model_validator(mode="after")
    def _one_version(self) -> RestoreProjectVersion:
        if (self.version_id is None) == (self.version_num is None):
            raise ValueError("give exactly one of version_id or version_num")
        return self


class ProjectRestored(Message):
    project: ProjectInfo
    version_id: int
    skipped: list[str] = Field([], description="Entities left out because their objects were missing.")


class VersionRef(Command):
    version_id: int


class VersionVerification(Message):
    """A version's manifest checked against its hash, and its objects against storage."""

    version_id: int
    manifest_sha256: str
    computed_sha256: str
    ok: bool
    missing: list[str]


# --- the workflow graph ----------------------------------------------------------------------------------


def relative_url_problem(url: str) -> str | None:
    """Why `url` is not a link relative to the instance (None when it is): a card's url (WorkflowSettings) and a
    labeling job's (JobLink, services/workflow_lineage/links.py). One '/' first, not '//' (another host) nor a
    scheme; and no backslash, whitespace or control character anywhere: a browser reads '\\' as '/' and drops a
    tab or a newline, so '/\\evil.example/x' and '/<tab>/evil.example/x' also went to another host (an open
    redirect from an instance link)."""
    if not url.startswith("/") or url.startswith("//"):
        return "url must start with a single '/' (relative to the instance, e.g. /projects/1)"
    for index, char in enumerate(url):
        if char == "\\" or char.isspace() or unicodedata.category(char) == "Cc":
            return (f"url must hold no backslash, whitespace or control character (found {char!r} at position "
                    f"{index}): write '/' for a path separator and percent-encode the others (a space as %20)")
    return None


class WorkflowSettings(Message):
    """How a card looks (seed 000): every field optional. As the graph answers it: its title and url_title as stored,
    without a request's bounds (NewWorkflowSettings): a card's default title is the name of what it stands for, which
    may hold a tab (a workspace file's) or be longer than 200 characters (a folder's path, a version card's
    '<project> v<n>: <version title>', an assay's name of up to 255)."""

    title: str | None = None
    description: str | None = Field(None, max_length=1000)
    icon: str | None = Field(None, description="A Material Design icon name, without the 'zmdi-' prefix.")
    icon_color: str | None = Field(None, description="Hexadecimal color, e.g. #2196F3.")
    icon_bg_color: str | None = Field(None, description="Hexadecimal color, e.g. #E3F2FD.")
    url: str | None = Field(None, max_length=2000, description="Relative to the instance: starts with '/'.")
    url_title: str | None = None

    @field_validator("icon")
    @classmethod
    def _icon(cls, value: str | None) -> str | None:
        if value is not None and (value.startswith("zmdi-") or not ICON_NAME.fullmatch(value)):
            raise ValueError("icon must be a Material Design icon name like 'folder' (no 'zmdi-' prefix)")
        return value

    @field_validator("icon_color", "icon_bg_color")
    @classmethod
    def _color(cls, value: str | None) -> str | None:
        if value is not None and not HEX_COLOR.fullmatch(value):
            raise ValueError("colors are hexadecimal: #RGB, #RRGGBB or #RRGGBBAA")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and (problem := relative_url_problem(value)):
            raise ValueError(problem)
        return value


class NewWorkflowSettings(WorkflowSettings):
    """A card's settings as a request gives them (WorkflowMeta): its title and url_title hold at most 200 characters
    and no control character (since session 39). Answers (WorkflowNode, WorkflowEdge) read WorkflowSettings, without
    these bounds: the gateway checks an answer against its model (and the service built it), so a card titled with a
    control character (stored before, or a file whose name holds a tab) or with more than 200 characters (its default
    title: a long folder path) made the whole workflow/graph a 500."""

    title: str | None = Field(None, max_length=200, pattern=WITHOUT_CONTROLS)
    url_title: str | None = Field(None, max_length=200, pattern=WITHOUT_CONTROLS)


class WorkflowMeta(Message):
    """Customization of the two cards an input/output call touches: the relation (the data card) and the
    main node (the task run). The last write to a main node wins."""

    relation_settings: NewWorkflowSettings | None = None
    node_settings: NewWorkflowSettings | None = None


class WorkflowLink(Command):
    """Base of the seed's add_input_* / add_output_* calls: the task run (`task_id`) and the card's meta.
    `task_id` would default to the calling task run's scoped token; until task runs exist it is required."""

    workspace_id: int
    task_id: str | None = Field(None, pattern=TASK_ID)
    meta: WorkflowMeta | None = None


class EvaluationSpec(Message):
    """Declares an input of a task run as its evaluation set: each model version the run outputs is benchmarked on
    it automatically, once, when a deployment serves that model version (a tabular dataset: classification with
    `label_column` / `output_column`; an images dataset: detection through the engine with `image`)."""

    dataset_name: str | None = Field(None, description="A project version's dataset to evaluate on (project links).")
    label_column: str = Field("label", description="Classification: the rows' true class column.")
    output_column: str | None = Field(None, description="Classification: the deployment's output column.")
    class_names: list[str] | None = None
    image: ImageConfig | None = Field(None, description="Detection: the pipeline's image configuration.")
    batch_size: int = Field(64, ge=1, le=10_000)


MAX_COLUMN_NAME = 1024
"""Characters of an evaluation set's column name at most (as an assay's iopath)."""
MAX_CLASS_NAMES = 10_000
"""Class names of an evaluation at most (as an image configuration's labels)."""


class NewEvaluationSpec(EvaluationSpec):
    """`evaluation` as an input link sends it: an EvaluationSpec whose names are bounded and whose whole JSON takes at
    most MAX_JSON_OBJECT bytes. The run's card keeps it (`data.evaluation`), shown in every workflow graph answer;
    unbounded, a few MB of class names or image labels made the graph larger than a reply. The automatic benchmark
    reads the stored declaration with EvaluationSpec, without these bounds, so one stored before them still runs."""

    dataset_name: str | None = Field(None, max_length=NAME_MAX_CHARS, description="A project version's dataset to "
                                     "evaluate on (project links).")
    label_column: str = Field("label", max_length=MAX_COLUMN_NAME, description="Classification: the rows' true "
                              "class column.")
    output_column: str | None = Field(None, max_length=MAX_COLUMN_NAME, description="Classification: the "
                                      "deployment's output column.")
    class_names: list[str] | None = Field(None, max_length=MAX_CLASS_NAMES)

    @model_validator(mode="after")
    def _bounded(self) -> NewEvaluationSpec:
        try:
            json_at_most(self.model_dump(mode="json", exclude_none=True))
        except ValueError as exc:  # what the run's card keeps (links._evaluation stores this dump)
            raise ValueError(f"{exc} (class_names and image.labels are the large parts)") from None
        return self


def _checked_evaluation(cls: type, value: Any) -> Any:
    """An EvaluationSpec built in code is checked as a NewEvaluationSpec (bounds included), as a dict would be."""
    if isinstance(value, EvaluationSpec) and not isinstance(value, NewEvaluationSpec):
        return value.model_dump(exclude_unset=True)
    return value


class ProjectLink(WorkflowLink):
    """add_input_project / add_output_project: a project, or one of its versions (by id or number)."""

    project_id: int
    version_id: int | None = None
    version_num: int | None = Field(None, ge=INT32[0], le=INT32[1])  # project_versions.number is an `integer`
    evaluation: NewEvaluationSpec | None = Field(None, description="add_input_project of a version only: evaluate "
                                                 "the run's model versions on the version's dataset `dataset_name`; "
                                                 f"at most {MAX_JSON_OBJECT} bytes of JSON.")

    _evaluation = field_validator("evaluation", mode="before")(classmethod(_checked_evaluation))


class DatasetLink(WorkflowLink):
    dataset_id: int
    evaluation: NewEvaluationSpec | None = Field(None, description="add_input_dataset only: evaluate the run's "
                                                 "model versions on this dataset (as it is when the benchmark runs); "
                                                 f"at most {MAX_JSON_OBJECT} bytes of JSON.")

    _evaluation = field_validator("evaluation", mode="before")(classmethod(_checked_evaluation))


class FileLink(WorkflowLink):
    """A file of the workspace's file space; `model_weight` marks model weights."""

    path: str
    model_weight: bool = False


class FolderLink(WorkflowLink):
    path: str


class TaskLink(WorkflowLink):
    """Another task run as input (`input_task_id`) or output (`output_task_id`)."""

    input_task_id: str | None = Field(None, pattern=TASK_ID)
    output_task_id: str | None = Field(None, pattern=TASK_ID)


class JobLink(WorkflowLink):
    """A labeling job (an external reference)."""

    id: str = Field(pattern=TASK_ID)
    url: str | None = Field(None, max_length=2000, description="Where the job is, relative to the instance (at most "
                            "2000 characters, as a card's meta url).")


class AppLink(WorkflowLink):
    """add_output_app: the task's application with a GUI has an offline session holding its results."""


class WorkflowNode(Message):
    """A card of the graph: its kind, the id of what it stands for, and how it looks."""

    id: int
    kind: str
    ref: str
    title: str
    settings: WorkflowSettings
    data: dict[str, Any] = {}
    created_at: datetime
    updated_at: datetime


class WorkflowEdge(Message):
    """An arrow of the graph: `source` feeds `target`; `origin` tells event-made from explicit."""

    id: int
    source: int
    target: int
    relation: str
    origin: Literal["event", "explicit"]
    settings: WorkflowSettings


class LinkAdded(Message):
    """The two cards an input/output call connected and the edge between them."""

    node: WorkflowNode
    main_node: WorkflowNode
    edge: WorkflowEdge


class GetWorkflowGraph(Command):
    """Ancestors and descendants of a card to a depth, or (without kind/ref) a workspace's whole graph."""

    workspace_id: int
    kind: str | None = None
    ref: str | None = None
    depth: int = Field(3, ge=0, le=20)
    direction: Literal["both", "ancestors", "descendants"] = "both"

    @model_validator(mode="after")
    def _both_or_neither(self) -> GetWorkflowGraph:
        if (self.kind is None) != (self.ref is None):
            raise ValueError("give both kind and ref (a card), or neither (the whole workspace)")
        return self


class WorkflowGraph(Message):
    """Nodes and edges, drawable as they are; `root` is the card the query started from."""

    root: int | None
    nodes: list[WorkflowNode]
    edges: list[WorkflowEdge]


# --- events ----------------------------------------------------------------------------------------------


class ProjectChanged(Event):
    """events.project.changed: a project was created, restored, deleted, or its datasets' content changed."""

    workspace_id: int
    project_id: int
    action: Literal["created", "restored", "deleted", "content_changed"]
    content_sha256: str | None = None


class ProjectVersionCreated(Event):
    """events.project.version_created: a new (never a deduplicated) project version."""

    workspace_id: int
    project_id: int
    version_id: int
    number: int
    manifest_sha256: str


class WorkflowLinkAdded(Event):
    """events.workflow.link_added: an input/output edge was added to the graph (explicitly or from an event)."""

    workspace_id: int
    source_kind: str
    source_ref: str
    target_kind: str
    target_ref: str
    relation: str
    origin: Literal["event", "explicit"]


# --- benchmark reports (seed 002) ------------------------------------------------------------------------


class DatasetChoice(Command):
    """A dataset as it is now (`dataset_id`) or as a project version saved it (`version_id` + `dataset_name`)."""

    workspace_id: int
    name: str = Field(pattern=NAME_PATTERN, description="The report's name.")
    dataset_id: int | None = None
    version_id: int | None = None
    dataset_name: str | None = None

    @model_validator(mode="after")
    def _one_dataset(self) -> DatasetChoice:
        if (self.dataset_id is None) == (self.version_id is None):
            raise ValueError("give dataset_id, or version_id with dataset_name")
        if self.version_id is not None and not self.dataset_name:
            raise ValueError("dataset_name is required with version_id")
        return self


class RunClassificationBenchmark(DatasetChoice):
    """Run a tabular dataset's rows through each deployment's engine and score the predictions against
    `label_column`. Output column values that are lists are class scores: the class is their argmax (named by
    `class_names` when given, else its index)."""

    label_column: str
    output_column: str
    deployments: list[str] = Field(min_length=1, max_length=8, description="Deployment names, <deploy_id>-<id>.")
    class_names: list[str] | None = None
    batch_size: int = Field(256, ge=1, le=10_000)


class Detection(Message):
    bbox: list[float] = Field(min_length=4, max_length=4, description="[x, y, width, height] in pixels.")
    category: str
    score: float = Field(1.0, ge=0, le=1)


class DetectionCandidate(Message):
    """One model version's detections, by image file name."""

    name: str = Field(min_length=1, max_length=200)
    model_version: str | None = None
    detections: dict[str, list[Detection]]


class EvaluateDetections(DatasetChoice):
    """Score detections against an images dataset's labels (`{"boxes": [{"bbox", "category"}]}` per file) with
    COCO's evaluator: submitted ones (`candidates`) and/or those of detection deployments, which run every image
    through their engine as `image` (the pipeline's image configuration, kind detection) says."""

    candidates: list[DetectionCandidate] = Field(default_factory=list, max_length=8)
    deployments: list[str] = Field(default_factory=list, max_length=8,
                                   description="Detection deployments to run, <deploy_id>-<id>.")
    image: ImageConfig | None = Field(None, description="With deployments: how images become the model's input and "
                                      "its outputs boxes (kind detection).")
    batch_size: int = Field(16, ge=1, le=1000, description="Images per engine call.")

    @model_validator(mode="after")
    def _something_to_score(self) -> EvaluateDetections:
        if not self.candidates and not self.deployments:
            raise ValueError("give candidates (submitted detections) or deployments (run through the engine)")
        if self.deployments and (self.image is None or self.image.kind != "detection"):
            raise ValueError("deployments need `image`: the pipeline's image configuration, kind detection")
        return self


class BenchmarkCandidate(Message):
    name: str
    deployment: str | None = None
    pipeline_version: str | None = None
    model: str | None = Field(None, description="The model that answered (the engine's last_model).")
    model_version: str | None = None
    metrics: dict[str, Any]
    speed: dict[str, float] | None = None


class BenchmarkReport(Message):
    """A stored benchmark: the data it ran on (by content hash) and each candidate's metrics."""

    id: int
    workspace_id: int
    name: str
    task: Literal["classification", "detection"]
    dataset: dict[str, Any]
    candidates: list[BenchmarkCandidate]
    created_by: str
    created_at: datetime


class ReportRef(Command):
    report_id: int


class ListReports(Command):
    workspace_id: int


class BenchmarkReports(Message):
    reports: list[BenchmarkReport]


class CompareReports(Command):
    """Line up the candidates of one or more reports metric by metric."""

    report_ids: list[int] = Field(min_length=1, max_length=10)


class ReportComparison(Message):
    candidates: list[dict[str, Any]] = Field(description="[{report_id, name}] in column order.")
    metrics: list[dict[str, Any]] = Field(description="[{metric, values, diff}]: diff from the first column.")


class BenchmarkCompleted(Event):
    """events.benchmark.completed: a report was stored."""

    workspace_id: int
    report_id: int
    task: str
    name: str


# --- maintenance ---------------------------------------------------------------------------------------------


class CollectObjects(Command):
    """Delete the content-addressed objects nothing refers to any more (administrators; docs/lineage.md)."""

    grace_seconds: int = Field(3600, ge=0, le=30 * 24 * 3600,
                               description="Keep unreferenced objects younger than this (an upload may be under way).")
    dry_run: bool = Field(False, description="Only list what would be deleted.")


class ObjectsCollected(Message):
    """What a collection found and deleted (or, in a dry run, would delete)."""

    objects: int = Field(description="Content-addressed objects in storage.")
    referenced: int
    young: int = Field(description="Unreferenced but younger than the grace period: kept.")
    deleted: list[str] = Field(description="The sha256 of each object deleted.")
    staged_deleted: int = Field(description="Staged uploads left behind for more than a day, deleted.")
    dry_run: bool
