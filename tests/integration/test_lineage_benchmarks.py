"""Benchmark reports over HTTP (seed 002): a classification benchmark of two digits classifiers run through their
deployments' engines (metrics equal scikit-learn's on the same predictions, speed measured), a detection benchmark
scored like COCO's evaluator on a synthetic set, compare, bad input and isolation."""

from __future__ import annotations

import httpx
import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from shared.arrow_codec import tensor_array, to_ipc_file
from tests.integration.conftest import Account, post
from tests.integration.test_lineage import ARROW_FILE, ok, png, upload_file, upload_rows
from tests.local_nats import subscribed
from tests.unit.test_benchmarks import cocoeval_directly, synthetic_detection

pytestmark = pytest.mark.integration


def digits_onnx(train_rows: int) -> bytes:
    """A logistic regression on the first `train_rows` digits: `tensor` float[N,64] -> `probabilities` [N,10]."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    digits = load_digits()
    model = LogisticRegression(max_iter=300).fit(digits.data[:train_rows], digits.target[:train_rows])
    onx = convert_sklearn(model, initial_types=[("tensor", FloatTensorType([None, 64]))],
                          options={id(model): {"zipmap": False}}, target_opset=17)
    return onx.SerializeToString()


def deploy_onnx(stack, account: Account, name: str, content: bytes) -> str:
    uploaded = httpx.post(f"{stack.api}/models/upload_stream", files={"file": (f"{name}.onnx", content)},
                          data={"name": name, "workspace_id": account.workspace_id},
                          headers={"Authorization": f"Bearer {account.token}"}, timeout=60)
    model_id = ok(uploaded)["insert_models"]["returning"][0]["models"][0]["id"]
    version = ok(post(stack, "models/list_versions", account.token, {"models_pk_id": model_id}))[-1]
    ref = {"name": version["model_id"], "version": version["model_version"], "sha": version["sha"]}
    pipeline = ok(post(stack, "pipelines/create", account.token, {
        "pipeline_id": name, "workspace_id": account.workspace_id,
        "definition": {"steps": [{"ModelInference": {"models": [ref]}}]}}))
    deployed = ok(post(stack, "pipelines/deploy", account.token, {
        "deploy_id": name, "pipeline_version_pk_id": pipeline["pipeline_variant_pk_id"],
        "pipeline_id": pipeline["pipeline_pk_id"], "models": [ref]}))
    return f"{name}-{deployed['id']}"


def expected_predictions(content: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(content, providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"tensor": x})[0].argmax(axis=1)


def test_classification_benchmark_and_compare(stack, alice, bob):
    digits = load_digits()
    x, y = digits.data[1200:1500].astype(np.float32), digits.target[1200:1500]
    small, large = digits_onnx(100), digits_onnx(1000)
    project = ok(post(stack, "projects/create", alice.token, {"workspace_id": alice.workspace_id, "name": "digits"}))
    dataset = ok(post(stack, "datasets/create", alice.token, {"project_id": project["id"], "name": "test",
                                                              "kind": "tabular"}))
    ok(upload_rows(stack, alice, dataset["id"], to_ipc_file(pa.table({
        "tensor": tensor_array(x), "label": pa.array([str(v) for v in y])})), ARROW_FILE))
    version = ok(post(stack, "projects/create_version", alice.token, {"project_id": project["id"]}))
    first = deploy_onnx(stack, alice, "digitsmall", small)
    second = deploy_onnx(stack, alice, "digitlarge", large)

    report = ok(post(stack, "benchmarks/run_classification", alice.token, {
        "workspace_id": alice.workspace_id, "name": "digits v1 vs v2", "version_id": version["id"],
        "dataset_name": "test", "label_column": "label", "output_column": "probabilities",
        "deployments": [first, second], "batch_size": 64}))
    assert report["task"] == "classification" and report["dataset"]["version_id"] == version["id"]
    for candidate, content in zip(report["candidates"], (small, large), strict=True):
        predicted = expected_predictions(content, x)
        metrics = candidate["metrics"]
        assert metrics["accuracy"] == pytest.approx(accuracy_score(y, predicted))
        assert metrics["macro"]["f1"] == pytest.approx(f1_score(y, predicted, average="macro"))
        precision, recall, _, support = precision_recall_fscore_support(y, predicted, labels=list(range(10)),
                                                                        zero_division=0)
        assert [metrics["per_class"][str(c)]["precision"] for c in range(10)] == pytest.approx(precision.tolist())
        assert [metrics["per_class"][str(c)]["support"] for c in range(10)] == support.tolist()
        assert metrics["confusion_matrix"] == confusion_matrix(y, predicted, labels=list(range(10))).tolist()
        speed = candidate["speed"]
        assert speed["calls"] == 5 and speed["rows"] == 300 and 0 < speed["p50_ms"] <= speed["p99_ms"]
        assert speed["rows_per_s"] > 0 and candidate["model"]
    assert report["candidates"][1]["metrics"]["accuracy"] > report["candidates"][0]["metrics"]["accuracy"]

    compared = ok(post(stack, "benchmarks/compare", alice.token, {"report_ids": [report["id"]]}))
    accuracy = next(r for r in compared["metrics"] if r["metric"] == "accuracy")
    a, b = (c["metrics"]["accuracy"] for c in report["candidates"])
    assert accuracy["values"] == pytest.approx([a, b]) and accuracy["diff"] == pytest.approx([0.0, b - a])
    assert any(r["metric"] == "speed.p99_ms" for r in compared["metrics"])
    assert [r["id"] for r in ok(post(stack, "benchmarks/list", alice.token,
                                     {"workspace_id": alice.workspace_id}))["reports"]] == [report["id"]]
    drawn = ok(post(stack, "workflow/graph", alice.token, {"workspace_id": alice.workspace_id, "kind": "benchmark",
                                                           "ref": str(report["id"]), "depth": 1}))
    assert {n["kind"] for n in drawn["nodes"]} == {"benchmark", "project_version", "deployment"}

    # bad input: 4xx, no report stored
    images = ok(post(stack, "datasets/create", alice.token, {"project_id": project["id"], "name": "pics",
                                                             "kind": "images"}))
    base = {"workspace_id": alice.workspace_id, "name": "bad", "label_column": "label",
            "output_column": "probabilities", "deployments": [first]}
    for body, status in [({"dataset_id": images["id"]}, 400), ({"version_id": 987654, "dataset_name": "test"}, 404),
                         ({"dataset_id": dataset["id"], "deployments": ["nosuch-999"]}, 404),
                         ({"dataset_id": dataset["id"], "label_column": "nope"}, 400),
                         ({"dataset_id": dataset["id"], "output_column": "nope"}, 400),
                         ({"dataset_id": dataset["id"], "version_id": version["id"]}, 400)]:
        response = post(stack, "benchmarks/run_classification", alice.token, {**base, **body})
        assert response.status_code == status, (body, response.text)
    assert len(ok(post(stack, "benchmarks/list", alice.token, {"workspace_id": alice.workspace_id}))["reports"]) == 1

    # isolation: bob reads nothing, runs nothing on alice's data or deployments
    for path, body in [("benchmarks/get", {"report_id": report["id"]}), ("benchmarks/compare",
                       {"report_ids": [report["id"]]}), ("benchmarks/list", {"workspace_id": alice.workspace_id}),
                       ("benchmarks/run_classification", {**base, "dataset_id": dataset["id"]}),
                       ("benchmarks/run_classification", {**base, "workspace_id": bob.workspace_id,
                                                          "dataset_id": dataset["id"]}),
                       ("benchmarks/evaluate_detections", {"workspace_id": alice.workspace_id, "name": "x",
                                                           "dataset_id": images["id"], "candidates": [
                                                               {"name": "m", "detections": {}}]})]:
        response = post(stack, path, bob.token, body)
        assert response.status_code == 404, (path, response.text)
    bob_project = ok(post(stack, "projects/create", bob.token, {"workspace_id": bob.workspace_id, "name": "b"}))
    bob_data = ok(post(stack, "datasets/create", bob.token, {"project_id": bob_project["id"], "name": "t"}))
    ok(upload_rows(stack, bob, bob_data["id"], to_ipc_file(pa.table({
        "tensor": tensor_array(x[:5]), "label": pa.array([str(v) for v in y[:5]])})), ARROW_FILE))
    stolen = post(stack, "benchmarks/run_classification", bob.token, {
        **base, "workspace_id": bob.workspace_id, "dataset_id": bob_data["id"]})
    assert stolen.status_code == 404, stolen.text  # alice's deployment does not exist for bob


def test_detection_benchmark_equals_cocoeval(stack, alice):
    truth, found = synthetic_detection(seed=3)
    worse = {name: [{**d, "bbox": [d["bbox"][0] + 12, *d["bbox"][1:]]} for d in dets] for name, dets in found.items()}
    project = ok(post(stack, "projects/create", alice.token, {"workspace_id": alice.workspace_id, "name": "boxes"}))
    images = ok(post(stack, "datasets/create", alice.token, {"project_id": project["id"], "name": "val",
                                                             "kind": "images"}))
    for i, (name, boxes) in enumerate(sorted(truth.items())):
        ok(upload_file(stack, alice, images["id"], name, png((i * 10 % 255, 0, 0), size=16), {"boxes": boxes}))
    report = ok(post(stack, "benchmarks/evaluate_detections", alice.token, {
        "workspace_id": alice.workspace_id, "name": "det", "dataset_id": images["id"],
        "candidates": [{"name": "v1", "detections": found}, {"name": "v2", "detections": worse}]}))
    for candidate, detections in zip(report["candidates"], (found, worse), strict=True):
        stats = cocoeval_directly(truth, detections)
        assert candidate["metrics"]["map_50_95"] == pytest.approx(stats[0])
        assert candidate["metrics"]["map_50"] == pytest.approx(stats[1])
    compared = ok(post(stack, "benchmarks/compare", alice.token, {"report_ids": [report["id"]]}))
    row = next(r for r in compared["metrics"] if r["metric"] == "map_50_95")
    assert row["diff"][1] < 0  # shifted boxes score lower

    table = ok(post(stack, "datasets/create", alice.token, {"project_id": project["id"], "name": "rows"}))
    no_boxes = ok(post(stack, "datasets/create", alice.token, {"project_id": project["id"], "name": "plain",
                                                               "kind": "images"}))
    ok(upload_file(stack, alice, no_boxes["id"], "a.png", png((1, 1, 1)), {"class": "cat"}))
    for body in [{"dataset_id": table["id"]}, {"dataset_id": no_boxes["id"]},
                 {"dataset_id": images["id"], "candidates": [{"name": "x", "detections": {
                     "unknown.png": [{"bbox": [0, 0, 1, 1], "category": "cat"}]}}]},
                 {"dataset_id": images["id"], "candidates": [{"name": "x", "detections": {
                     "img0.png": [{"bbox": [0, 0, 1], "category": "cat"}]}}]}]:
        response = post(stack, "benchmarks/evaluate_detections", alice.token, {
            "workspace_id": alice.workspace_id, "name": "bad", "candidates": [{"name": "x", "detections": {}}],
            **body})
        assert response.status_code == 400, (body, response.text)
    assert len(ok(post(stack, "benchmarks/list", alice.token, {"workspace_id": alice.workspace_id}))["reports"]) == 1


async def test_automatic_benchmark_of_a_task_runs_model(stack, alice):
    """A task run declares a version's tabular dataset as its evaluation set and outputs a model-weight file; the
    same bytes uploaded as a model, built into a pipeline and deployed: a classification report appears without
    anyone asking (metrics equal scikit-learn's), linked to the version, the deployment and the model version, with
    events.benchmark.completed; the chain drawn again by a later event adds no second report."""
    import asyncio
    import json
    import uuid

    import nats as nats_client

    from shared import subjects
    from tests.integration.conftest import query
    from tests.integration.test_dead_letters import handled
    from tests.integration.test_lineage import upload_workspace_file

    digits = load_digits()
    x, y = digits.data[1500:1560].astype(np.float32), digits.target[1500:1560]
    content = digits_onnx(200)
    ws = alice.workspace_id
    project = ok(post(stack, "projects/create", alice.token, {"workspace_id": ws, "name": "auto-eval"}))
    dataset = ok(post(stack, "datasets/create", alice.token, {"project_id": project["id"], "name": "eval",
                                                              "kind": "tabular"}))
    ok(upload_rows(stack, alice, dataset["id"], to_ipc_file(pa.table({
        "tensor": tensor_array(x), "label": pa.array([str(v) for v in y])})), ARROW_FILE))
    version = ok(post(stack, "projects/create_version", alice.token, {"project_id": project["id"]}))
    run = f"run-{uuid.uuid4().hex[:8]}"
    path = f"/runs/{run}/digits.onnx"
    ok(upload_workspace_file(stack, alice, ws, path, content))
    evaluation = {"dataset_name": "eval", "label_column": "label", "output_column": "probabilities"}
    link = {"workspace_id": ws, "task_id": run, "project_id": project["id"], "version_id": version["id"]}
    for route, body in [("workflow/add_output_project", {**link, "evaluation": evaluation}),
                        ("workflow/add_input_project", {**link, "version_id": None, "evaluation": evaluation}),
                        ("workflow/add_input_project", {**link, "evaluation": {**evaluation, "dataset_name": "x"}}),
                        ("workflow/add_input_project", {**link, "evaluation": {"dataset_name": "eval"}})]:
        response = post(stack, route, alice.token, body)
        assert response.status_code == 400, (body, response.text)
    assert post(stack, "workflow/graph", alice.token, {"workspace_id": ws, "kind": "task_run",
                                                       "ref": run}).status_code == 404  # nothing stored
    ok(post(stack, "workflow/add_input_project", alice.token, {**link, "evaluation": evaluation}))
    ok(post(stack, "workflow/add_output_file", alice.token, {"workspace_id": ws, "task_id": run, "path": path,
                                                             "model_weight": True}))

    nc = await nats_client.connect(stack.settings().nats.url)
    seen: dict[str, list[dict]] = {"events.benchmark.completed": [], "events.pipeline.deployed": []}
    completed = asyncio.Event()

    async def collect(msg) -> None:
        seen[msg.subject].append(json.loads(msg.data))
        if msg.subject == "events.benchmark.completed":
            completed.set()

    for subject in seen:
        await nc.subscribe(subject, cb=collect)
    await subscribed(nc)
    try:
        deployment = await asyncio.to_thread(deploy_onnx, stack, alice, "autodigits", content)

        def automatic() -> list[dict]:
            reports = ok(post(stack, "benchmarks/list", alice.token, {"workspace_id": ws}))["reports"]
            return [r for r in reports if r["dataset"].get("automatic", {}).get("task_run") == run]

        await asyncio.wait_for(completed.wait(), 90)
        found = await asyncio.to_thread(automatic)
        assert len(found) == 1, found
        report = found[0]
        assert report["task"] == "classification" and report["dataset"]["version_id"] == version["id"]
        candidate = report["candidates"][0]
        assert candidate["deployment"] == deployment and candidate["speed"]["rows"] == len(y)
        assert candidate["metrics"]["accuracy"] == pytest.approx(
            accuracy_score(y, expected_predictions(content, x)))
        assert report["created_by"] == alice.user_id
        drawn = ok(post(stack, "workflow/graph", alice.token, {"workspace_id": ws, "kind": "benchmark",
                                                               "ref": str(report["id"]), "depth": 1}))
        assert {n["kind"] for n in drawn["nodes"]} == {"benchmark", "project_version", "deployment", "model_version"}
        assert next(n for n in drawn["nodes"] if n["kind"] == "model_version")["ref"] == \
            report["dataset"]["automatic"]["model_version"]
        assert report["id"] in {e["report_id"] for e in seen["events.benchmark.completed"]}

        # the same deployment drawn again (a new event, as a second deliverer would send): the claim exists already
        again = {**next(e for e in seen["events.pipeline.deployed"] if e["name"] == deployment),
                 "event_id": str(uuid.uuid4())}
        js = nc.jetstream()
        seq = (await js.publish("events.pipeline.deployed", json.dumps(again).encode())).seq
        # recorded (the lineage consumer acknowledges an event once its transaction, claims included, committed), so
        # a second claim would be there now, and one not done yet would become a report: every claim of the run is
        # the one done (a fixed 2 s sleep could end before a duplicate claim's report on a slow host)
        await handled(js, subjects.LINEAGE_EVENTS_DURABLE, seq)
        claims = await asyncio.to_thread(query, stack, "SELECT status, report_id FROM workflow_lineage.auto_benchmarks"
                                         " WHERE workspace_id = $1 AND task_run = $2", ws, run)
        assert [(c["status"], c["report_id"]) for c in claims] == [("done", report["id"])], claims
        assert len(await asyncio.to_thread(automatic)) == 1
    finally:
        await nc.close()


# (row, col) -> gray level of each detector cell, per image; 64x64 images, cells of 16 pixels. The detector scores
# every cell by its brightness (class white above 0.75, else grey), so its detections are known without running it.
DETECTION_IMAGES = {"a.png": {(0, 0): 255, (1, 2): 150}, "b.png": {(3, 3): 255, (2, 1): 255},
                    "c.png": {(0, 1): 150}, "d.png": {(2, 2): 255}}


def _cell_box(row: int, col: int, shift: int = 0) -> list[float]:
    return [col * 16.0 + shift, row * 16.0, 16.0, 16.0]


def test_detection_benchmark_through_the_engine(stack, alice):
    """A detection model deployed as any other: the benchmark runs the images dataset through its engine (the
    pipeline image configuration's preprocessing, boxes back in image pixels) and scores with COCO's evaluator,
    equal to COCOeval on the detector's known answer; bad input is 400 and stores nothing."""
    from tests.image_models import detector_image_config, detector_onnx, squares_png

    truth = {name: [{"bbox": _cell_box(r, c, shift=4 if name == "d.png" else 0),
                     "category": "white" if level > 0.75 * 255 else "grey"} for (r, c), level in cells.items()]
             for name, cells in DETECTION_IMAGES.items()}
    expected = {name: [{"bbox": _cell_box(r, c), "score": cells.get((r, c), 0) / 255,
                        "category": "white" if cells.get((r, c), 0) / 255 > 0.75 else "grey"}
                       for r in range(4) for c in range(4)] for name, cells in DETECTION_IMAGES.items()}
    project = ok(post(stack, "projects/create", alice.token, {"workspace_id": alice.workspace_id,
                                                              "name": "squares"}))
    images = ok(post(stack, "datasets/create", alice.token, {"project_id": project["id"], "name": "val",
                                                             "kind": "images"}))
    for name, cells in DETECTION_IMAGES.items():
        ok(upload_file(stack, alice, images["id"], name, squares_png(cells), {"boxes": truth[name]}))
    deployment = deploy_onnx(stack, alice, "squaresdet", detector_onnx())
    body = {"workspace_id": alice.workspace_id, "name": "squares", "dataset_id": images["id"],
            "deployments": [deployment], "image": detector_image_config(), "batch_size": 3}
    report = ok(post(stack, "benchmarks/evaluate_detections", alice.token, body))
    candidate = report["candidates"][0]
    stats = cocoeval_directly(truth, expected)
    assert candidate["deployment"] == deployment and candidate["metrics"]["detections"] == 16 * 4
    assert candidate["metrics"]["map_50_95"] == pytest.approx(stats[0], abs=1e-6)
    assert candidate["metrics"]["map_50"] == pytest.approx(stats[1], abs=1e-6)
    assert 0 < stats[0] < stats[1]  # d.png's shifted box matches at IoU 0.5, not at 0.75
    assert candidate["speed"]["calls"] == 2 and candidate["speed"]["rows"] == 4

    bmp = ok(post(stack, "datasets/create", alice.token, {"project_id": project["id"], "name": "bmp",
                                                          "kind": "images"}))
    ok(upload_file(stack, alice, bmp["id"], "x.bmp", squares_png({(0, 0): 255}, fmt="BMP"),
                   {"boxes": [{"bbox": [0, 0, 16, 16], "category": "white"}]}))
    for changed in [{"dataset_id": bmp["id"]}, {"image": None}, {"image": {**detector_image_config(), "input": "x"}},
                    {"deployments": ["nosuch-999"]}]:
        response = post(stack, "benchmarks/evaluate_detections", alice.token, {**body, **changed})
        assert response.status_code in (400, 404), (changed, response.text)
        assert response.status_code == (404 if "deployments" in changed else 400), (changed, response.text)
    assert [r["id"] for r in ok(post(stack, "benchmarks/list", alice.token, {"workspace_id": alice.workspace_id}))[
        "reports"] if r["name"] == "squares"] == [report["id"]]
