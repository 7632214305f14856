"""Workflow lineage over HTTP (seeds 000 and 002): projects, datasets (rows and labeled images), the workspace
file space, project versions (dedupe, filters, restore as a manifest copy, skip_missed_entities, verification),
the graph drawn from domain events and from the seed's explicit input/output calls, isolation on every route,
and bad input answered 4xx with nothing stored.

Task runs: the "Done when" flow names its task run explicitly (`task_id`) in add_input_project / add_output_file;
test_a_real_task_run_declares_its_inputs_and_outputs runs a real orchestration whose main.py makes the same calls
through the SDK without a task_id (the run's scoped token names the run)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import struct
import time
import uuid
import zlib

import httpx
import nats as nats_client
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from shared.arrow_codec import from_ipc, to_ipc_file
from shared.objectstore import BUCKET_DATASETS, MinioObjectStore, content_key
from shared.sealed import sealed_request
from tests.integration.conftest import Account, post
from tests.local_nats import subscribed
from tests.models import ccfraud_onnx

pytestmark = pytest.mark.integration
ARROW_FILE = "application/vnd.apache.arrow.file"
PARQUET = "application/vnd.apache.parquet"


def png(color: tuple[int, int, int], size: int = 8) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), color).save(out, format="PNG")
    return out.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims a size (and holds no pixels): a decompression bomb for any reader that believes it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def ok(response: httpx.Response, status: int = 200) -> dict:
    assert response.status_code == status, response.text
    return response.json()


def upload_file(stack, account: Account, dataset_id: int, name: str, content: bytes, labels=None) -> httpx.Response:
    data = {"dataset_id": str(dataset_id), "name": name}
    if labels is not None:
        data["labels"] = json.dumps(labels)
    return httpx.post(f"{stack.api}/datasets/upload_file", data=data, files={"file": (name, content)},
                      headers={"Authorization": f"Bearer {account.token}"}, timeout=60)


def upload_workspace_file(stack, account: Account, workspace_id: int, path: str, content: bytes) -> httpx.Response:
    return httpx.post(f"{stack.api}/files/upload", data={"workspace_id": str(workspace_id), "path": path},
                      files={"file": (path.rsplit("/", 1)[-1], content)},
                      headers={"Authorization": f"Bearer {account.token}"}, timeout=60)


def upload_rows(stack, account: Account, dataset_id: int, body: bytes, content_type: str,
                mode: str = "append") -> httpx.Response:
    return httpx.post(f"{stack.api}/datasets/upload_rows", params={"dataset_id": dataset_id, "mode": mode},
                      content=body, headers={"Authorization": f"Bearer {account.token}",
                                             "Content-Type": content_type}, timeout=60)


def make_project(stack, account: Account, name: str | None = None) -> dict:
    """A project with an images dataset (two labeled PNGs) and a tabular dataset (three rows)."""
    project = ok(post(stack, "projects/create", account.token, {
        "workspace_id": account.workspace_id, "name": name or f"cats-{uuid.uuid4().hex[:6]}",
        "description": "cats and dogs"}))
    images = ok(post(stack, "datasets/create", account.token,
                     {"project_id": project["id"], "name": "images", "kind": "images"}))
    ok(upload_file(stack, account, images["id"], "cat.png", png((200, 10, 10)), {"class": "cat", "bbox": [1, 1, 5, 5]}))
    ok(upload_file(stack, account, images["id"], "dog.png", png((10, 200, 10)), {"class": "dog"}))
    table = ok(post(stack, "datasets/create", account.token,
                    {"project_id": project["id"], "name": "meta", "kind": "tabular"}))
    ok(upload_rows(stack, account, table["id"], json.dumps([{"x": 1.5, "y": "a"}, {"x": 2.5, "y": "b"}]).encode(),
                   "application/json"))
    ok(upload_rows(stack, account, table["id"], to_ipc_file(pa.table({"x": [3.5], "y": ["c"]})), ARROW_FILE))
    project = ok(post(stack, "projects/get", account.token, {"project_id": project["id"]}))
    return {"project": project, "images": images, "table": table}


def test_datasets_rows_files_and_workspace_files(stack, alice):
    made = make_project(stack, alice)
    table_id = made["table"]["id"]
    arrow = from_ipc(httpx.post(f"{stack.api}/datasets/get_rows", json={"dataset_id": table_id}, timeout=30,
                                headers={"Authorization": f"Bearer {alice.token}", "Accept": ARROW_FILE}).content)
    assert arrow.to_pydict() == {"x": [1.5, 2.5, 3.5], "y": ["a", "b", "c"]}
    parquet = pq.read_table(io.BytesIO(httpx.post(
        f"{stack.api}/datasets/get_rows", json={"dataset_id": table_id}, timeout=30,
        headers={"Authorization": f"Bearer {alice.token}", "Accept": PARQUET}).content))
    assert parquet.equals(arrow)
    assert ok(post(stack, "datasets/get_rows", alice.token, {"dataset_id": table_id}))[2] == {"x": 3.5, "y": "c"}
    replaced = ok(upload_rows(stack, alice, table_id, json.dumps([{"x": 9.0, "y": "z"}]).encode(),
                              "application/json", mode="replace"))
    assert replaced["row_count"] == 1

    files = ok(post(stack, "datasets/list_files", alice.token, {"dataset_id": made["images"]["id"]}))["files"]
    assert [(f["name"], f["content_type"], f["labels"]) for f in files] == [
        ("cat.png", "image/png", {"class": "cat", "bbox": [1, 1, 5, 5]}), ("dog.png", "image/png", {"class": "dog"})]
    got = httpx.post(f"{stack.api}/datasets/download_file", json={"dataset_id": made["images"]["id"],
                     "name": "dog.png"}, headers={"Authorization": f"Bearer {alice.token}"}, timeout=30)
    assert got.status_code == 200 and got.content == png((10, 200, 10))

    weights = ccfraud_onnx()
    stored = ok(upload_workspace_file(stack, alice, alice.workspace_id, "/models/run1/best.onnx", weights))
    again = ok(upload_workspace_file(stack, alice, alice.workspace_id, "/models/run2/best.onnx", weights))
    assert stored["sha256"] == again["sha256"]  # the same bytes, stored once under their hash
    listing = ok(post(stack, "files/list", alice.token, {"workspace_id": alice.workspace_id, "folder": "/models"}))
    assert listing["folders"] == ["/models/run1/", "/models/run2/"] and listing["files"] == []
    assert ok(post(stack, "files/list", alice.token, {"workspace_id": alice.workspace_id,
                                                      "folder": "/models/run1"}))["files"][0]["size"] == len(weights)
    got = httpx.post(f"{stack.api}/files/download", json={"workspace_id": alice.workspace_id,
                     "path": "/models/run1/best.onnx"}, headers={"Authorization": f"Bearer {alice.token}"}, timeout=30)
    assert got.content == weights
    ok(post(stack, "files/delete", alice.token, {"workspace_id": alice.workspace_id, "path": "/models/run2/best.onnx"}))
    assert post(stack, "files/get_info", alice.token, {"workspace_id": alice.workspace_id,
                                                       "path": "/models/run2/best.onnx"}).status_code == 404
    ok(post(stack, "datasets/delete_file", alice.token, {"dataset_id": made["images"]["id"], "name": "cat.png"}))
    ok(post(stack, "datasets/delete", alice.token, {"dataset_id": table_id}))
    assert len(ok(post(stack, "datasets/list", alice.token, {"project_id": made["project"]["id"]}))["datasets"]) == 1


def test_versions_dedupe_filter_restore_and_verify(stack, alice):
    made = make_project(stack, alice)
    project_id = made["project"]["id"]
    first = ok(post(stack, "projects/create_version", alice.token,
                    {"project_id": project_id, "version_title": "labeled", "version_description": "after labeling"}))
    same = ok(post(stack, "projects/create_version", alice.token, {"project_id": project_id, "version_title": "x"}))
    assert (same["id"], same["created"], first["number"]) == (first["id"], False, 1)
    assert first["manifest_sha256"] == made["project"]["content_sha256"]
    ok(upload_file(stack, alice, made["images"]["id"], "bird.png", png((1, 2, 3))))
    second = ok(post(stack, "projects/create_version", alice.token,
                     {"project_id": project_id, "version_title": "more"}))
    assert (second["number"], second["created"]) == (2, True) and second["manifest_sha256"] != first["manifest_sha256"]

    listed = ok(post(stack, "projects/list_versions", alice.token, {"project_id": project_id}))["versions"]
    assert [v["number"] for v in listed] == [1, 2]
    filtered = ok(post(stack, "projects/list_versions", alice.token, {"project_id": project_id, "filters": [
        {"field": "title", "operator": "contains", "value": "label"}]}))["versions"]
    assert [v["id"] for v in filtered] == [first["id"]]
    assert ok(post(stack, "projects/list_versions", alice.token, {"project_id": project_id, "filters": [
        {"field": "number", "operator": ">", "value": 1}]}))["versions"][0]["id"] == second["id"]

    restored = ok(post(stack, "projects/restore_version", alice.token, {"project_id": project_id, "version_num": 1}))
    assert restored["project"]["content_sha256"] == first["manifest_sha256"]
    assert restored["project"]["restored_from_version"] == first["id"] and restored["skipped"] == []
    names = {d["name"]: d for d in restored["project"]["datasets"]}
    assert names["meta"]["row_count"] == 3 and names["images"]["file_count"] == 2
    verified = ok(post(stack, "projects/verify_version", alice.token, {"version_id": first["id"]}))
    assert verified["ok"] and verified["computed_sha256"] == first["manifest_sha256"]


async def test_restore_with_a_missing_object(stack, alice):
    made = make_project(stack, alice)
    project_id = made["project"]["id"]
    unique = png((7, 7, uuid.uuid4().int % 250), size=9)
    ok(upload_file(stack, alice, made["images"]["id"], "only.png", unique))
    version = ok(post(stack, "projects/create_version", alice.token, {"project_id": project_id}))
    sha = next(f["sha256"] for f in ok(post(stack, "datasets/list_files", alice.token,
                                            {"dataset_id": made["images"]["id"]}))["files"] if f["name"] == "only.png")
    await MinioObjectStore(stack.settings().s3).delete(BUCKET_DATASETS, content_key(sha))
    refused = post(stack, "projects/restore_version", alice.token, {"project_id": project_id,
                                                                     "version_id": version["id"]})
    assert refused.status_code == 409 and "skip_missed_entities" in refused.json()["msg"]
    before = len(ok(post(stack, "projects/list", alice.token, {"workspace_id": alice.workspace_id}))["projects"])
    assert before == 1  # the refused restore made no project
    restored = ok(post(stack, "projects/restore_version", alice.token, {
        "project_id": project_id, "version_id": version["id"], "skip_missed_entities": True, "name": "partial"}))
    assert restored["skipped"] == ["images/only.png"]
    files = ok(post(stack, "datasets/list_files", alice.token, {
        "dataset_id": next(d["id"] for d in restored["project"]["datasets"] if d["name"] == "images")}))["files"]
    assert sorted(f["name"] for f in files) == ["cat.png", "dog.png"]
    verified = ok(post(stack, "projects/verify_version", alice.token, {"version_id": version["id"]}))
    assert verified["ok"] is False and verified["missing"] == ["images/only.png"]


async def test_unreferenced_objects_are_collected(stack, alice, admin, tmp_path, monkeypatch, capsys):
    """maintenance/collect_objects deletes an object nothing refers to any more (a deleted workspace file's) and
    keeps one only a version refers to (its dataset file deleted since: the version still verifies and restores)
    and one a workspace file refers to; a dry run (the CLI's) and the grace period delete nothing; non-admins are
    refused."""
    from railyard_client.cli import main

    objects = MinioObjectStore(stack.settings().s3)
    ws = alice.workspace_id
    orphan_bytes = b"orphan " + uuid.uuid4().bytes
    orphan = ok(upload_workspace_file(stack, alice, ws, "/gc/orphan.bin", orphan_bytes))["sha256"]
    ok(post(stack, "files/delete", alice.token, {"workspace_id": ws, "path": "/gc/orphan.bin"}))
    live = ok(upload_workspace_file(stack, alice, ws, "/gc/live.bin", b"live " + uuid.uuid4().bytes))["sha256"]
    project = ok(post(stack, "projects/create", alice.token, {"workspace_id": ws, "name": "gc"}))
    images = ok(post(stack, "datasets/create", alice.token, {"project_id": project["id"], "name": "images",
                                                             "kind": "images"}))
    versioned = ok(upload_file(stack, alice, images["id"], "only.png",
                               png((uuid.uuid4().int % 250, 3, 3), size=11)))["sha256"]
    version = ok(post(stack, "projects/create_version", alice.token, {"project_id": project["id"]}))
    ok(post(stack, "datasets/delete_file", alice.token, {"dataset_id": images["id"], "name": "only.png"}))

    route = "maintenance/collect_objects"
    assert post(stack, route, alice.token, {"grace_seconds": 0}).status_code == 403
    young = ok(post(stack, route, admin.token, {}))  # the default grace: an hour
    assert orphan not in young["deleted"] and young["young"] >= 1
    for key in [k for k in os.environ if k.startswith("RAILYARD_CLIENT")]:
        monkeypatch.delenv(key)
    secrets = stack.secrets()
    for key, value in [("URL", stack.base_url), ("USERNAME", secrets["admin_username"]),
                       ("PASSWORD", secrets["admin_password"]), ("SECRET", secrets["client_secret"])]:
        monkeypatch.setenv(f"RAILYARD_CLIENT_{key}", value)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    capsys.readouterr()
    assert main(["datasets", "collect-objects", "--grace-seconds", "0", "--dry-run", "--json"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert orphan in dry["deleted"] and versioned not in dry["deleted"] and live not in dry["deleted"]
    assert await objects.exists(BUCKET_DATASETS, content_key(orphan))
    done = ok(post(stack, route, admin.token, {"grace_seconds": 0}))
    assert orphan in done["deleted"] and versioned not in done["deleted"] and live not in done["deleted"]
    assert not await objects.exists(BUCKET_DATASETS, content_key(orphan))
    assert await objects.exists(BUCKET_DATASETS, content_key(versioned))
    assert await objects.exists(BUCKET_DATASETS, content_key(live))
    assert ok(post(stack, "projects/verify_version", alice.token, {"version_id": version["id"]}))["ok"] is True
    restored = ok(post(stack, "projects/restore_version", alice.token, {"project_id": project["id"],
                                                                         "version_id": version["id"]}))
    assert restored["skipped"] == [] and restored["project"]["content_sha256"] == version["manifest_sha256"]
    # the same bytes uploaded again after their object was collected are stored again
    ok(upload_workspace_file(stack, alice, ws, "/gc/orphan.bin", orphan_bytes))
    assert await objects.exists(BUCKET_DATASETS, content_key(orphan))


def graph(stack, account: Account, **query) -> dict:
    return ok(post(stack, "workflow/graph", account.token, {"workspace_id": account.workspace_id, **query}))


def wait_graph(stack, account: Account, wanted_kinds: set[str], timeout: float = 30.0, **query) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        drawn = graph(stack, account, **query)
        if wanted_kinds <= {n["kind"] for n in drawn["nodes"]} or time.monotonic() > deadline:
            return drawn
        time.sleep(0.3)


def test_done_when_flow(stack, alice):
    """Project with labeled images → version (twice: same id) → a task run takes the version as input and outputs
    a model file → the model is uploaded, a pipeline built and deployed, an assay created: the graph from the
    version shows the whole chain with the customized cards; a restore has the same content hash."""
    made = make_project(stack, alice)
    project_id = made["project"]["id"]
    version = ok(post(stack, "projects/create_version", alice.token, {"project_id": project_id,
                                                                      "version_title": "train set"}))
    assert ok(post(stack, "projects/create_version", alice.token, {"project_id": project_id}))["id"] == version["id"]

    run = f"run-{uuid.uuid4().hex[:8]}"
    weights = ccfraud_onnx()
    ok(upload_workspace_file(stack, alice, alice.workspace_id, f"/runs/{run}/model.onnx", weights))
    linked = ok(post(stack, "workflow/add_input_project", alice.token, {
        "workspace_id": alice.workspace_id, "task_id": run, "project_id": project_id, "version_id": version["id"],
        "meta": {"relation_settings": {"title": "ignored for projects"},
                 "node_settings": {"title": "Train first try", "icon": "memory"}}}))
    assert linked["node"]["kind"] == "project_version" and linked["main_node"]["kind"] == "task_run"
    assert linked["node"]["settings"]["title"] != "ignored for projects"
    ok(post(stack, "workflow/add_output_file", alice.token, {
        "workspace_id": alice.workspace_id, "task_id": run, "path": f"/runs/{run}/model.onnx", "model_weight": True,
        "meta": {"relation_settings": {"title": "Best checkpoint", "icon": "memory", "icon_color": "#1976D2",
                                       "url": f"/files/runs/{run}", "url_title": "open folder"},
                 "node_settings": {"title": "Train YOLO", "description": "epoch 10", "icon": "play-circle"}}}))

    uploaded = httpx.post(f"{stack.api}/models/upload_stream", files={"file": ("model.onnx", weights)},
                          data={"name": "lineagemodel", "workspace_id": alice.workspace_id},
                          headers={"Authorization": f"Bearer {alice.token}"}, timeout=60)
    model_id = ok(uploaded)["insert_models"]["returning"][0]["models"][0]["id"]
    model = ok(post(stack, "models/list_versions", alice.token, {"models_pk_id": model_id}))[-1]
    pipeline = ok(post(stack, "pipelines/create", alice.token, {
        "pipeline_id": "lineagepipe", "workspace_id": alice.workspace_id, "definition": {"steps": [
            {"ModelInference": {"models": [{"name": model["model_id"], "version": model["model_version"],
                                            "sha": model["sha"]}]}}]}}))
    deployed = ok(post(stack, "pipelines/deploy", alice.token, {
        "deploy_id": "lineagepipe", "pipeline_version_pk_id": pipeline["pipeline_variant_pk_id"],
        "pipeline_id": pipeline["pipeline_pk_id"],
        "models": [{"name": model["model_id"], "version": model["model_version"], "sha": model["sha"]}]}))
    # the deployment event must be drawn before the assay's, so the assay hangs off the deployment
    wait_graph(stack, alice, {"deployment"}, kind="project_version", ref=str(version["id"]), depth=10)
    ok(post(stack, "assays/create", alice.token, {
        "name": "drift", "pipeline_id": pipeline["pipeline_pk_id"], "pipeline_name": "lineagepipe", "active": False,
        "status": "created", "iopath": "output dense_1 0", "baseline": {"Static": {"values": [0.1, 0.2, 0.3, 0.4]}},
        "window": {"pipeline": "lineagepipe", "width": "1 hours"},
        "summarizer": {"type": "UnivariateContinuous", "bin_mode": "Quantile", "aggregation": "Density",
                       "metric": "PSI", "num_bins": 5},
        "warning_threshold": 0.0, "alert_threshold": 0.1, "workspace_id": alice.workspace_id}))

    chain = ["project_version", "task_run", "file", "model_version", "pipeline_version", "deployment", "assay"]
    drawn = wait_graph(stack, alice, set(chain), kind="project_version", ref=str(version["id"]), depth=10)
    nodes = {n["id"]: n for n in drawn["nodes"]}
    by_kind = {n["kind"]: n for n in drawn["nodes"]}
    assert set(chain) | {"project"} <= set(by_kind), sorted(by_kind)
    arrows = {(nodes[e["source"]]["kind"], nodes[e["target"]]["kind"]) for e in drawn["edges"]}
    assert set(zip(chain, chain[1:], strict=False)) <= arrows, arrows
    assert ("project", "project_version") in arrows
    assert by_kind["deployment"]["ref"] == str(deployed["id"])
    task = by_kind["task_run"]
    assert task["settings"]["title"] == "Train YOLO" and task["settings"]["description"] == "epoch 10"
    assert task["settings"]["icon"] == "play-circle"  # the last write to the main node won, whole
    card = by_kind["file"]
    assert (card["settings"]["title"], card["settings"]["icon_color"], card["settings"]["url"]) == (
        "Best checkpoint", "#1976D2", f"/files/runs/{run}")
    assert card["data"]["model_weight"] is True
    origins = {(nodes[e["source"]]["kind"], nodes[e["target"]]["kind"]): e["origin"] for e in drawn["edges"]}
    assert origins[("file", "model_version")] == "event" and origins[("task_run", "file")] == "explicit"

    ancestors = graph(stack, alice, kind="assay", ref=next(n["ref"] for n in drawn["nodes"] if n["kind"] == "assay"),
                      depth=2, direction="ancestors")
    assert {n["kind"] for n in ancestors["nodes"]} == {"assay", "deployment", "pipeline_version"}
    whole = graph(stack, alice)
    assert len(whole["nodes"]) >= len(drawn["nodes"]) and whole["root"] is None

    restored = ok(post(stack, "projects/restore_version", alice.token, {"project_id": project_id,
                                                                         "version_id": version["id"]}))
    assert restored["project"]["content_sha256"] == version["manifest_sha256"]
    after = graph(stack, alice, kind="project_version", ref=str(version["id"]), depth=1, direction="descendants")
    assert str(restored["project"]["id"]) in {n["ref"] for n in after["nodes"] if n["kind"] == "project"}


def test_explicit_cards_of_every_kind(stack, alice):
    made = make_project(stack, alice)
    ok(upload_workspace_file(stack, alice, alice.workspace_id, "/exports/a.zip", b"zip bytes"))
    run = f"run-{uuid.uuid4().hex[:8]}"
    base = {"workspace_id": alice.workspace_id, "task_id": run}
    calls = [
        ("add_input_project", {"project_id": made["project"]["id"]}, "project"),
        ("add_input_dataset", {"dataset_id": made["images"]["id"]}, "dataset"),
        ("add_input_folder", {"path": "/exports"}, "folder"),
        ("add_input_task", {"input_task_id": "run-before"}, "task_run"),
        ("add_input_job", {"id": "job-7", "url": "/jobs/7"}, "labeling_job"),
        ("add_output_dataset", {"dataset_id": made["table"]["id"]}, "dataset"),
        ("add_output_folder", {"path": "/exports/"}, "folder"),
        ("add_output_task", {"output_task_id": "run-after"}, "task_run"),
        ("add_output_job", {"id": "job-8"}, "labeling_job"),
        ("add_output_app", {}, "app_session"),
        ("add_output_project", {"project_id": made["project"]["id"], "version_num": None}, "project"),
    ]
    for method, body, kind in calls:
        assert ok(post(stack, f"workflow/{method}", alice.token, {**base, **body}))["node"]["kind"] == kind, method
    drawn = graph(stack, alice, kind="task_run", ref=run, depth=1)
    nodes = {n["id"]: n for n in drawn["nodes"]}
    inputs = {nodes[e["source"]]["kind"] for e in drawn["edges"] if nodes[e["target"]]["ref"] == run}
    outputs = {nodes[e["target"]]["kind"] for e in drawn["edges"] if nodes[e["source"]]["ref"] == run}
    assert inputs == {"project", "dataset", "folder", "task_run", "labeling_job"}
    assert outputs == {"dataset", "folder", "task_run", "labeling_job", "app_session", "project"}


async def test_events_are_published(stack, alice):
    nc = await nats_client.connect(stack.settings().nats.url)
    seen: list[tuple[str, dict]] = []

    async def collect(msg) -> None:
        seen.append((msg.subject, json.loads(msg.data)))

    await nc.subscribe("events.project.>", cb=collect)
    await nc.subscribe("events.workflow.>", cb=collect)
    await subscribed(nc)  # the subscriptions are on the server before the (blocking) HTTP calls below
    try:
        project = ok(post(stack, "projects/create", alice.token, {"workspace_id": alice.workspace_id, "name": "ev"}))
        version = ok(post(stack, "projects/create_version", alice.token, {"project_id": project["id"]}))
        ok(post(stack, "workflow/add_input_project", alice.token, {"workspace_id": alice.workspace_id,
                                                                    "task_id": "r1", "project_id": project["id"]}))
        for _ in range(50):
            if len(seen) >= 3:
                break
            await asyncio.sleep(0.1)
    finally:
        await nc.close()
    subjects_seen = [s for s, _ in seen]
    assert "events.project.changed" in subjects_seen
    assert ("events.project.version_created", version["id"]) in {(s, e.get("version_id")) for s, e in seen}
    assert "events.workflow.link_added" in subjects_seen


def test_bad_input_is_4xx_and_stores_nothing(stack, alice):
    made = make_project(stack, alice)
    images, table = made["images"]["id"], made["table"]["id"]
    before = ok(post(stack, "projects/get", alice.token, {"project_id": made["project"]["id"]}))["content_sha256"]

    not_image = upload_file(stack, alice, images, "fake.png", b"this is not an image")
    assert not_image.status_code == 400 and "not an image" in not_image.json()["msg"]
    bomb = upload_file(stack, alice, images, "bomb.png", png_header(20000, 20000))
    assert bomb.status_code == 400 and "pixels" in bomb.json()["msg"]
    rows_to_images = upload_rows(stack, alice, images, json.dumps([{"x": 1}]).encode(), "application/json")
    assert rows_to_images.status_code == 400 and "tabular" in rows_to_images.json()["msg"]
    assert f"dataset {images} is an images dataset:" in rows_to_images.json()["msg"]  # not "a images"
    rows_of_images = post(stack, "datasets/get_rows", alice.token, {"dataset_id": images})
    assert rows_of_images.status_code == 400 and "is an images dataset: it has files" in rows_of_images.json()["msg"]
    file_to_table = upload_file(stack, alice, table, "a.png", png((1, 1, 1)))
    assert file_to_table.status_code == 400
    # the HTTP route that takes rows, not the bus subject behind it (datasets/put_rows is no route)
    assert "takes rows (datasets/upload_rows), not files" in file_to_table.json()["msg"]
    wrong_schema = upload_rows(stack, alice, table, json.dumps([{"other": 1}]).encode(), "application/json")
    assert wrong_schema.status_code == 400 and "schema" in wrong_schema.json()["msg"]
    assert upload_rows(stack, alice, table, b"\x00garbage", ARROW_FILE).status_code == 400
    assert upload_rows(stack, alice, table, b"[]", "application/json", mode="sideways").status_code == 400
    # a filter whose value can never be the field's was an empty list (200), as if no version matched
    for flt, said in (({"field": "number", "operator": "=", "value": "abc"}, "filter on number needs an integer"),
                      ({"field": "id", "operator": "in", "value": [1, "2"]}, "filter on id needs an integer"),
                      ({"field": "title", "operator": "=", "value": 5}, "filter on title needs a string"),
                      ({"field": "created_at", "operator": "=", "value": 5}, "needs an ISO 8601 time")):
        refused = post(stack, "projects/list_versions", alice.token,
                       {"project_id": made["project"]["id"], "filters": [flt]})
        assert refused.status_code == 400 and said in refused.json()["msg"], (flt, refused.text)
    after = ok(post(stack, "projects/get", alice.token, {"project_id": made["project"]["id"]}))["content_sha256"]
    assert after == before

    for path, body in [
        ("projects/restore_version", {"project_id": made["project"]["id"], "version_id": 987654}),
        ("projects/restore_version", {"project_id": made["project"]["id"], "version_num": 5}),
        ("projects/verify_version", {"version_id": 987654}),
        ("datasets/get", {"dataset_id": 987654}),
        ("workflow/graph", {"workspace_id": alice.workspace_id, "kind": "project", "ref": "987654"}),
        ("workflow/add_input_project", {"workspace_id": alice.workspace_id, "task_id": "r", "project_id": 987654}),
        ("workflow/add_input_file", {"workspace_id": alice.workspace_id, "task_id": "r", "path": "/missing.bin"}),
    ]:
        assert post(stack, path, alice.token, body).status_code == 404, path
    for path, body in [
        ("projects/restore_version", {"project_id": made["project"]["id"]}),
        ("projects/create", {"workspace_id": alice.workspace_id, "name": "a/b"}),
        ("datasets/create", {"project_id": made["project"]["id"], "name": "x", "kind": "videos"}),
        ("workflow/add_input_dataset", {"workspace_id": alice.workspace_id, "dataset_id": images}),
        ("workflow/add_input_dataset", {"workspace_id": alice.workspace_id, "task_id": "r", "dataset_id": images,
                                        "meta": {"relation_settings": {"url": "https://evil.example"}}}),
        ("workflow/add_input_dataset", {"workspace_id": alice.workspace_id, "task_id": "r", "dataset_id": images,
                                        "meta": {"node_settings": {"icon": "zmdi-memory"}}}),
        ("workflow/graph", {"workspace_id": alice.workspace_id, "kind": "spaceship", "ref": "1"}),
        ("workflow/add_input_job", {"workspace_id": alice.workspace_id, "task_id": "r", "id": "j",
                                    "url": "//evil.example/x"}),
        ("files/list", {"workspace_id": alice.workspace_id, "folder": "/a/../b"}),
    ]:
        response = post(stack, path, alice.token, body)
        assert response.status_code == 400 and response.json()["code"] == "invalid_request", (path, response.text)
    bad_path = upload_workspace_file(stack, alice, alice.workspace_id, "relative/x.bin", b"x")
    assert bad_path.status_code == 400
    assert ok(post(stack, "files/list", alice.token, {"workspace_id": alice.workspace_id}))["files"] == []
    duplicate = post(stack, "projects/create", alice.token, {"workspace_id": alice.workspace_id,
                                                             "name": made["project"]["name"]})
    assert duplicate.status_code == 409
    # nothing drawn for the refused links: the dataset card never appeared
    assert "dataset" not in {n["kind"] for n in graph(stack, alice)["nodes"]}


async def test_a_staged_upload_is_consumed_by_its_uploader_only(stack, alice, bob):
    """A staged upload's key holds its uploader's id (`staging/<user id>/<uuid>`, shared/staging.py) and the
    lineage service takes it from that user only: bob, naming alice's key on the bus, gets 403 and the object is
    neither stored in his workspace nor deleted; alice's own command then stores it."""
    objects = MinioObjectStore(stack.settings().s3)
    key, data = f"staging/{alice.user_id}/{uuid.uuid4()}", b"alice's " + uuid.uuid4().bytes
    await objects.put_bytes(BUCKET_DATASETS, key, data)
    nc = await nats_client.connect(stack.nats_url("client"), inbox_prefix="_INBOX.client")

    async def put(account: Account) -> dict:
        command = {"workspace_id": account.workspace_id, "path": "/staged/a.bin", "staged_key": key}
        reply = await sealed_request(nc, "workflow_lineage.files.put", json.dumps(command).encode(),
                                     headers={"authorization": f"Bearer {account.token}"}, timeout=30)
        return json.loads(reply.data)

    try:
        refused = await put(bob)
        assert not refused["ok"] and refused["status"] == 403, refused
        assert refused["error"]["msg"] == "the staged upload was made by another user"
        assert await objects.get_bytes(BUCKET_DATASETS, key) == data  # untouched
        assert post(stack, "files/list", bob.token, {"workspace_id": bob.workspace_id}).json()["files"] == []
        stored = await put(alice)
        assert stored["ok"], stored
        assert [k for k, _ in await objects.list_keys(BUCKET_DATASETS, key)] == []  # consumed
    finally:
        await nc.close()


def test_isolation_on_every_route(stack, alice, bob):
    made = make_project(stack, alice)
    project_id, images, table = made["project"]["id"], made["images"]["id"], made["table"]["id"]
    version = ok(post(stack, "projects/create_version", alice.token, {"project_id": project_id}))
    ok(upload_workspace_file(stack, alice, alice.workspace_id, "/secret/w.bin", b"secret"))
    ok(post(stack, "workflow/add_input_project", alice.token, {"workspace_id": alice.workspace_id, "task_id": "r1",
                                                                "project_id": project_id}))
    ws = alice.workspace_id
    attempts = [
        ("projects/create", {"workspace_id": ws, "name": "intruder"}),
        ("projects/list", {"workspace_id": ws}),
        ("projects/get", {"project_id": project_id}),
        ("projects/delete", {"project_id": project_id}),
        ("projects/create_version", {"project_id": project_id}),
        ("projects/list_versions", {"project_id": project_id}),
        ("projects/restore_version", {"project_id": project_id, "version_id": version["id"]}),
        ("projects/verify_version", {"version_id": version["id"]}),
        ("datasets/create", {"project_id": project_id, "name": "x"}),
        ("datasets/list", {"project_id": project_id}),
        ("datasets/get", {"dataset_id": images}),
        ("datasets/delete", {"dataset_id": images}),
        ("datasets/list_files", {"dataset_id": images}),
        ("datasets/get_file_info", {"dataset_id": images, "name": "cat.png"}),
        ("datasets/delete_file", {"dataset_id": images, "name": "cat.png"}),
        ("datasets/download_file", {"dataset_id": images, "name": "cat.png"}),
        ("datasets/get_rows", {"dataset_id": table}),
        ("files/list", {"workspace_id": ws}),
        ("files/get_info", {"workspace_id": ws, "path": "/secret/w.bin"}),
        ("files/download", {"workspace_id": ws, "path": "/secret/w.bin"}),
        ("files/delete", {"workspace_id": ws, "path": "/secret/w.bin"}),
        ("workflow/graph", {"workspace_id": ws}),
        ("workflow/graph", {"workspace_id": ws, "kind": "project", "ref": str(project_id)}),
        ("workflow/add_input_project", {"workspace_id": ws, "task_id": "x", "project_id": project_id}),
        # bob's own workspace naming alice's cards: they do not exist there
        ("workflow/add_input_project", {"workspace_id": bob.workspace_id, "task_id": "x", "project_id": project_id}),
        ("workflow/add_output_dataset", {"workspace_id": bob.workspace_id, "task_id": "x", "dataset_id": images}),
        ("workflow/add_output_file", {"workspace_id": bob.workspace_id, "task_id": "x", "path": "/secret/w.bin"}),
        ("workflow/add_input_folder", {"workspace_id": bob.workspace_id, "task_id": "x", "path": "/secret"}),
    ] + [(f"workflow/add_{d}_{c}", {"workspace_id": ws, "task_id": "x", **extra}) for d, c, extra in [
        ("input", "dataset", {"dataset_id": images}), ("input", "file", {"path": "/secret/w.bin"}),
        ("input", "folder", {"path": "/secret"}), ("input", "task", {"input_task_id": "y"}),
        ("input", "job", {"id": "j"}), ("output", "project", {"project_id": project_id}),
        ("output", "dataset", {"dataset_id": images}), ("output", "file", {"path": "/secret/w.bin"}),
        ("output", "folder", {"path": "/secret"}), ("output", "task", {"output_task_id": "y"}),
        ("output", "job", {"id": "j"}), ("output", "app", {})]]
    for path, body in attempts:
        response = post(stack, path, bob.token, body)
        assert response.status_code == 404, (path, response.status_code, response.text)
    assert upload_file(stack, bob, images, "x.png", png((0, 0, 0))).status_code == 404
    assert upload_rows(stack, bob, table, b'[{"x": 1.0, "y": "q"}]', "application/json").status_code == 404
    assert upload_workspace_file(stack, bob, ws, "/x.bin", b"x").status_code == 404
    assert post(stack, "projects/list", None, {"workspace_id": ws}).status_code == 401
    # nothing of bob's attempts landed
    after = ok(post(stack, "projects/get", alice.token, {"project_id": project_id}))
    assert after["content_sha256"] == made["project"]["content_sha256"]
    assert [p["name"] for p in ok(post(stack, "projects/list", alice.token, {"workspace_id": ws}))["projects"]] == [
        made["project"]["name"]]
    assert len(ok(post(stack, "projects/list_versions", alice.token, {"project_id": project_id}))["versions"]) == 1
    assert {n["ref"] for n in graph(stack, alice)["nodes"] if n["kind"] == "task_run"} == {"r1"}
    assert graph(stack, bob)["nodes"] == []


def test_sdk_lineage_methods(stack, alice, tmp_path):
    """The client distribution's Lineage module drives the same routes (rows, files with progress readers,
    versions, links, graph)."""
    from railyard_client import Client
    from railyard_client.lineage import Lineage

    client = Client(stack.base_url, token=alice.token, credentials_file=tmp_path / "credentials.json")
    lineage = Lineage(client, alice.workspace_id)
    project = lineage.create_project("sdk-project")
    table = lineage.create_dataset(project["id"], "rows")
    lineage.upload_rows(table["id"], pa.table({"a": [1, 2]}))
    lineage.upload_rows(table["id"], pa.table({"a": [3]}))
    assert lineage.read_rows(table["id"]).to_pydict() == {"a": [1, 2, 3]}
    images = lineage.create_dataset(project["id"], "images", kind="images")
    lineage.upload_file(images["id"], png((5, 5, 5)), name="x.png", labels={"class": "x"}, progress=False)
    assert lineage.download_file(images["id"], "x.png") == png((5, 5, 5))
    lineage.put_file("/weights/w.bin", b"weights", progress=False)
    assert lineage.get_file("/weights/w.bin") == b"weights"
    version = lineage.create_version(project["id"], "first")
    assert lineage.create_version(project["id"], "again")["id"] == version["id"]
    assert [v["id"] for v in lineage.list_versions(project["id"])] == [version["id"]]
    lineage.add_input_project(project["id"], version_id=version["id"], task_id="sdk-run")
    lineage.add_output_file("/weights/w.bin", True, task_id="sdk-run",
                            meta={"node_settings": {"title": "SDK run"}})
    drawn = lineage.graph("project_version", version["id"], depth=3)
    assert {"project_version", "task_run", "file"} <= {n["kind"] for n in drawn["nodes"]}
    restored = lineage.restore_version(project["id"], version_num=1)
    assert restored["project"]["content_sha256"] == version["manifest_sha256"]


async def test_task_id_defaults_to_the_calling_task(stack, alice, bob):
    """A task run's scoped token (minted as the task scheduler does) names its run: add_* calls without task_id
    land on the run's card (a token minted without a run: the task's); without such a token task_id is required;
    the scoped token reaches its workspace only."""
    from faststream.nats import NatsBroker

    from shared import subjects
    from shared.bus import request
    from shared.messages.tasks import IssueTaskToken, TaskTokenIssued

    broker = NatsBroker(stack.settings().nats.url)
    await broker.connect()
    try:
        issued = await request(broker, subjects.AUTH_TOKEN_ISSUE_TASK, IssueTaskToken(
            user_id=alice.user_id, workspace_id=alice.workspace_id, ttl=300, task_id="task-under-test",
            run_id="run-under-test"), timeout=10, reply_model=TaskTokenIssued)
        runless = await request(broker, subjects.AUTH_TOKEN_ISSUE_TASK, IssueTaskToken(
            user_id=alice.user_id, workspace_id=alice.workspace_id, ttl=300, task_id="task-under-test"),
            timeout=10, reply_model=TaskTokenIssued)
    finally:
        await broker.stop()
    project = ok(post(stack, "projects/create", alice.token, {"workspace_id": alice.workspace_id, "name": "scoped"}))
    linked = ok(post(stack, "workflow/add_input_project", issued.access_token,
                     {"workspace_id": alice.workspace_id, "project_id": project["id"]}))
    assert (linked["main_node"]["kind"], linked["main_node"]["ref"]) == ("task_run", "run-under-test")
    linked = ok(post(stack, "workflow/add_input_project", runless.access_token,
                     {"workspace_id": alice.workspace_id, "project_id": project["id"]}))
    assert (linked["main_node"]["kind"], linked["main_node"]["ref"]) == ("task_run", "task-under-test")
    missing = post(stack, "workflow/add_input_project", alice.token,
                   {"workspace_id": alice.workspace_id, "project_id": project["id"]})
    assert missing.status_code == 400 and "task_id" in missing.json()["msg"]
    # alice is in bob's workspace too, but her task's token reaches the task's workspace only
    ok(post(stack, "workspaces/add_user", bob.token, {"workspace_id": bob.workspace_id, "email": alice.email}))
    assert ok(post(stack, "projects/list", alice.token, {"workspace_id": bob.workspace_id}))["projects"] == []
    assert post(stack, "projects/list", issued.access_token, {"workspace_id": bob.workspace_id}).status_code == 404


TRAIN_MAIN = '''
import os

import railyard_client as railyard
from railyard_client.lineage import Lineage

client = railyard.Client()
args = client.task_args()
lineage = Lineage(client, args["workspace_id"])
run = os.environ["TASK_RUN_ID"]
lineage.add_input_project(args["project_id"], version_id=args["version_id"],
                          meta={"node_settings": {"title": "Train in a task run", "icon": "play-circle"}})
path = f"/runs/{run}/model.bin"
lineage.put_file(path, b"weights of " + run.encode(), progress=False)
lineage.add_output_file(path, model_weight=True, meta={"relation_settings": {"title": "Best checkpoint"}})
print("linked", run)
'''


def test_a_real_task_run_declares_its_inputs_and_outputs(stack, alice):
    """An orchestration's task run calls the SDK's add_input_project / add_output_file without a task_id (the SDK
    sends none): the server takes the run from the run's scoped token, so the cards land on the run's card, the
    same one events.task_run.* draw (with the orchestration that ran it)."""
    from tests.integration.test_orchestrations import logs, ready_orchestration, run_once, text_of, wait_run

    made = make_project(stack, alice)
    version = ok(post(stack, "projects/create_version", alice.token, {"project_id": made["project"]["id"]}))
    orch = ready_orchestration(stack, alice, {"main.py": TRAIN_MAIN})
    task_id = run_once(stack, alice, orch, {"workspace_id": alice.workspace_id, "project_id": made["project"]["id"],
                                            "version_id": version["id"]}, timeout=120)
    run = wait_run(stack, alice, task_id, {"success", "failure"}, timeout=180)
    assert run["status"] == "success", text_of(logs(stack, alice, run["run_id"]))[-20:]
    drawn = wait_graph(stack, alice, {"task_run", "file", "orchestration", "project_version"}, kind="task_run",
                       ref=run["run_id"], depth=1)
    nodes = {n["id"]: n for n in drawn["nodes"]}
    runs_drawn = [n for n in drawn["nodes"] if n["kind"] == "task_run"]
    assert [n["ref"] for n in runs_drawn] == [run["run_id"]]
    card = runs_drawn[0]
    assert card["settings"]["title"] == "Train in a task run" and card["data"]["task_id"] == task_id
    arrows = {(nodes[e["source"]]["kind"], nodes[e["target"]]["kind"]) for e in drawn["edges"]}
    assert {("project_version", "task_run"), ("task_run", "file"), ("orchestration", "task_run")} <= arrows, arrows
    orchestration = next(n for n in drawn["nodes"] if n["kind"] == "orchestration")
    assert orchestration["ref"] == orch["id"]
    # titled by the name it was uploaded with, with an icon like every other kind (it read "orchestration <id>"
    # with no icon: the run events named no orchestration)
    assert (orchestration["settings"]["title"], orchestration["settings"]["icon"]) == (orch["name"], "widgets")
    assert next(n for n in drawn["nodes"] if n["kind"] == "file")["settings"]["title"] == "Best checkpoint"


def test_cli_datasets_commands(stack, alice, tmp_path, monkeypatch, capsys):
    """`railyard datasets ...`: create, upload rows and an image (labels), read to Parquet, version twice (same
    id), restore."""
    from railyard_client.cli import main

    from tests.integration.conftest import PASSWORD

    for key in [k for k in os.environ if k.startswith("RAILYARD_CLIENT")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("RAILYARD_CLIENT_URL", stack.base_url)
    monkeypatch.setenv("RAILYARD_CLIENT_USERNAME", alice.email)
    monkeypatch.setenv("RAILYARD_CLIENT_PASSWORD", PASSWORD)
    monkeypatch.setenv("RAILYARD_CLIENT_SECRET", stack.secrets()["client_secret"])
    monkeypatch.setenv("RAILYARD_CLIENT_WORKSPACE", str(alice.workspace_id))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))

    def run(*args: str):
        capsys.readouterr()
        assert main([*args, "--json"] if args[-1] != "--no-json" else list(args[:-1])) == 0
        return json.loads(capsys.readouterr().out)

    project = run("datasets", "create-project", "cli-project")
    table = run("datasets", "create", str(project["id"]), "rows")
    images = run("datasets", "create", str(project["id"]), "pics", "--kind", "images")
    rows_file = tmp_path / "rows.json"
    rows_file.write_text(json.dumps([{"a": 1.0}, {"a": 2.0}]))
    image_file = tmp_path / "cat.png"
    image_file.write_bytes(png((9, 9, 9)))
    run("datasets", "upload", str(table["id"]), str(rows_file))
    run("datasets", "upload", str(images["id"]), str(image_file), "--labels", '{"class": "cat"}', "--no-progress")
    assert [d["name"] for d in run("datasets", "list", str(project["id"]))] == ["pics", "rows"]
    out = tmp_path / "out.parquet"
    capsys.readouterr()
    assert main(["datasets", "read", str(table["id"]), "--out", str(out)]) == 0
    assert pq.read_table(out).to_pydict() == {"a": [1.0, 2.0]}
    first = run("datasets", "version", str(project["id"]), "--title", "v1")
    assert run("datasets", "version", str(project["id"]))["id"] == first["id"]
    restored = run("datasets", "restore", str(project["id"]), "--number", "1")
    assert restored["project"]["content_sha256"] == first["manifest_sha256"]
    assert main(["datasets", "restore", str(project["id"])]) != 0  # neither --version-id nor --number: refused
