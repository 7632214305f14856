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
