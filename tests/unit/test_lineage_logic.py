"""Pure parts of the workflow-lineage service: the manifest and its hash, paths of the workspace file space,
version filters, and the seed's WorkflowSettings / WorkflowMeta checks."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from services.workflow_lineage import manifest
from services.workflow_lineage.handlers import _check_filter, _matches, file_path, folder_path
from shared.errors import InvalidRequest
from shared.messages.lineage import (
    GetWorkflowGraph,
    RestoreProjectVersion,
    VersionFilter,
    WorkflowMeta,
    WorkflowSettings,
)

DATASETS = [
    {"name": "train", "kind": "images", "rows_sha256": None, "row_count": 0,
     "files": [{"name": "b.png", "sha256": "bb", "size": 2, "content_type": "image/png", "labels": {"y": 1}},
               {"name": "a.png", "sha256": "aa", "size": 1, "content_type": "image/png", "labels": None}]},
    {"name": "meta", "kind": "tabular", "rows_sha256": "cc", "row_count": 3, "files": []},
]


def test_manifest_is_order_independent_and_hashes_its_canonical_text():
    one = manifest.build(DATASETS)
    two = manifest.build([DATASETS[1], {**DATASETS[0], "files": list(reversed(DATASETS[0]["files"]))}])
    assert manifest.canonical(one) == manifest.canonical(two)
    assert manifest.digest(one) == hashlib.sha256(manifest.canonical(one).encode()).hexdigest()
    assert [d["name"] for d in one["datasets"]] == ["meta", "train"]


def test_manifest_changes_with_content_labels_and_rows():
    base = manifest.digest(manifest.build(DATASETS))
    relabeled = [{**DATASETS[0], "files": [{**DATASETS[0]["files"][0], "labels": {"y": 2}}, DATASETS[0]["files"][1]]},
                 DATASETS[1]]
    assert manifest.digest(manifest.build(relabeled)) != base
    more_rows = [DATASETS[0], {**DATASETS[1], "rows_sha256": "dd", "row_count": 4}]
    assert manifest.digest(manifest.build(more_rows)) != base


def test_manifest_objects_and_skipping_missing_entities():
    built = manifest.build(DATASETS)
    assert manifest.objects(built) == [("meta#rows", "cc"), ("train/a.png", "aa"), ("train/b.png", "bb")]
    trimmed = manifest.without(built, {"train/a.png", "meta#rows"})
    assert manifest.objects(trimmed) == [("train/b.png", "bb")]
    assert trimmed["datasets"][0]["rows"] is None


@pytest.mark.parametrize("path", ["/models/best.onnx", "/a", "/a/b/c.txt"])
def test_file_paths_accepted(path):
    assert file_path(path) == path


@pytest.mark.parametrize("path", ["models/x", "/a/", "/a//b", "/a/../b", "/./a", "", "/a\x00b"])
def test_file_paths_refused(path):
    with pytest.raises(InvalidRequest):
        file_path(path)


def test_folder_paths():
    assert folder_path("/") == "/"
    assert folder_path("") == "/"
    assert folder_path("/models") == "/models/"
    assert folder_path("/models/") == "/models/"
    with pytest.raises(InvalidRequest):
        folder_path("/models/../x")
    assert folder_path("/models//") == "/models/"


@pytest.mark.parametrize(("folder", "said"), [
    ("models", "folder 'models' must start with '/'"), ("/a\x00", "must start with '/'"),
    ("//", "folder '//' has an empty, '.' or '..' segment"), ("/a//b/", "has an empty, '.' or '..' segment"),
])
def test_a_refused_folder_is_told_in_a_folders_words(folder, said):
    """files/list's folder 'models' was told "name a file (no trailing '/')", a slash it had not written."""
    with pytest.raises(InvalidRequest) as refused:
        folder_path(folder)
    assert said in str(refused.value) and "name a file" not in str(refused.value)


ROW = {"id": 7, "number": 3, "title": "After labeling", "description": None,
       "created_at": datetime(2026, 1, 2, tzinfo=UTC), "created_by": "u1"}


@pytest.mark.parametrize(("field", "operator", "value", "expected"), [
    ("number", "=", 3, True), ("number", ">", 3, False), ("number", ">=", 3, True), ("number", "in", [1, 3], True),
    ("title", "contains", "label", True), ("title", "!=", "x", True), ("description", "contains", "x", False),
    ("created_at", "<", "2026-01-03T00:00:00Z", True), ("created_at", ">", "2026-01-03T00:00:00+00:00", False),
])
def test_version_filters(field, operator, value, expected):
    _check_filter(VersionFilter(field=field, operator=operator, value=value))  # every filter here is a good one
    assert _matches(ROW, VersionFilter(field=field, operator=operator, value=value)) is expected


@pytest.mark.parametrize(("field", "operator", "value"), [
    ("description", "=", None), ("description", "in", ["a", None]), ("title", "contains", 5), ("created_by", "=", "u1"),
])
def test_filters_of_the_fields_type_are_taken(field, operator, value):
    _check_filter(VersionFilter(field=field, operator=operator, value=value))


@pytest.mark.parametrize(("field", "operator", "value"), [
    ("number", "=", "3"), ("number", ">", True), ("id", "in", [1, None]), ("title", "<", None),
    ("created_at", ">", 20260101), ("created_at", "=", "yesterday"), ("number", "in", 3),
])
def test_filters_no_value_of_the_field_could_match_are_refused(field, operator, value):
    with pytest.raises(InvalidRequest):
        _check_filter(VersionFilter(field=field, operator=operator, value=value))


def test_version_filters_refuse_bad_values():
    with pytest.raises(InvalidRequest):
        _matches(ROW, VersionFilter(field="number", operator="in", value=3))
    with pytest.raises(InvalidRequest):
        _matches(ROW, VersionFilter(field="created_at", operator="<", value="yesterday"))
    with pytest.raises(InvalidRequest):
        _matches(ROW, VersionFilter(field="number", operator="<", value="three"))


@pytest.mark.parametrize(("operator", "value", "expected"), [
    ("in", ["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"], True), ("in", ["2026-01-02T01:00:00+01:00"], True),
    ("in", ["2026-01-03T00:00:00Z"], False), ("=", "2026-01-02T00:00:00", True), ("=", "2026-01-02", True),
    ("<", "2026-01-03", True), (">=", "2026-01-02T00:00", True), ("!=", "2026-01-02", False),
])
def test_created_at_filters_compare_times_an_in_list_and_times_without_an_offset_as_utc(operator, value, expected):
    """Passed by _check_filter, an `in` list of times was compared as strings (never equal to the row's time: []),
    and a time without an offset matched nothing (=) or was "cannot be compared" (<) on a timestamptz."""
    flt = VersionFilter(field="created_at", operator=operator, value=value)
    _check_filter(flt)
    assert _matches(ROW, flt) is expected


def test_workflow_settings_follow_the_seed():
    ok = WorkflowSettings(title="Train", icon="memory", icon_color="#2196F3", icon_bg_color="#fff",
                          url="/projects/1", url_title="open")
    assert ok.url == "/projects/1"
    for bad in ({"url": "https://x.example/"}, {"url": "//evil.example/x"}, {"icon": "zmdi-memory"},
                {"icon": "Memory Card"}, {"icon_color": "blue"}, {"icon_bg_color": "#12345"}, {"tilte": "typo"}):
        with pytest.raises(ValidationError):
            WorkflowSettings(**bad)
    meta = WorkflowMeta(relation_settings={"title": "in"}, node_settings={"title": "main"})
    assert meta.node_settings.title == "main"


def test_a_card_whose_default_title_is_longer_than_a_request_may_give_is_answered():
    """A card's default title is the name of what it stands for: a folder's path (up to 1024 characters), a version
    card's '<project> v<n>: <version title>' (200 + 200), an assay's name (255). WorkflowSettings bounded title to
    200, so node_model failed on such a card and the workspace's whole workflow/graph with it (and the gateway checks
    the answer against the same model). A request's title is still bounded."""
    from services.workflow_lineage import graph
    from shared.messages.lineage import WorkflowGraph

    now = datetime.now(UTC)
    titles = {"folder": "/" + "deep/" * 200, "project_version": "p" * 200 + " v12: " + "t" * 200, "assay": "a" * 255}
    nodes = [graph.node_model({"id": i, "kind": kind, "ref": str(i), "title": title, "settings": {}, "data": {},
                               "created_at": now, "updated_at": now}) for i, (kind, title) in enumerate(titles.items())]
    assert [(n.title, n.settings.title) for n in nodes] == [(t, t) for t in titles.values()]
    answered = WorkflowGraph.model_validate(WorkflowGraph(root=None, nodes=nodes, edges=[]).model_dump(mode="json"))
    assert [n.settings.title for n in answered.nodes] == list(titles.values())  # as the gateway reads it
    for field in ("title", "url_title"):
        with pytest.raises(ValidationError, match="at most 200 characters"):
            WorkflowMeta(relation_settings={field: "t" * 201})


def test_commands_refuse_ambiguous_requests():
    with pytest.raises(ValidationError):
        RestoreProjectVersion(project_id=1)
    with pytest.raises(ValidationError):
        RestoreProjectVersion(project_id=1, version_id=1, version_num=1)
    with pytest.raises(ValidationError):
        GetWorkflowGraph(workspace_id=1, kind="project")
    with pytest.raises(ValidationError):
        GetWorkflowGraph(workspace_id=1, kind="project", ref="1", depth=99)
