"""Seed 003's feedback on the real stack: predictions made through the prediction routes (predict_bytes on a real
digits classifier and square detector, monitor_bytes for predictions made elsewhere) are reviewed (accepted,
corrected, re-reviewed); the feedback loop writes them into an attached images dataset as new project versions, once
each; the training-data reference is computed in the background; get_stats answers every ServiceMetrics value, checked
against numbers computed here; a continuous training waits for the feedback loop to write its reviews off the review
path. Outsiders, inference tokens and bad input are refused with nothing changed."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import time
import uuid
import zipfile
from collections import Counter
from datetime import UTC, datetime

import asyncpg
import numpy as np
import pytest
from PIL import Image
from railyard_client import Lineage, Orchestrations, ServiceMetrics

from shared import subjects
from shared.images import image_features
from shared.messages.monitoring_feedback import SERVICE_METRICS
from shared.sealed import sealed_request
from tests.image_models import (
    detector_image_config,
    detector_onnx,
    digit_png,
    digits_classifier_onnx,
    digits_image_config,
    squares_png,
)
from tests.integration.bus_events import announced
from tests.integration.conftest import inference_token, make_account, post, query, undeploy_all
from tests.integration.conftest import sdk_client as sdk
from tests.stack import service_process, wait_serving

pytestmark = pytest.mark.integration


def ok(response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def wait_for(condition, timeout: float = 30.0, what: str = "condition", show=lambda: None):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {show()}"
        time.sleep(0.2)


def review_events(stack, ids: set[str], timeout: float = 10.0) -> set[str]:
    """Which of these review ids have a review_created event (waits until all have, or timeout)."""
    return announced(stack, subjects.EVENT_MONITORING_REVIEW_CREATED, "review_id", ids, timeout)


async def bus_statuses(stack, subject: str, body: dict, tokens: list[str | None], identity: str = "client"
                       ) -> list[int]:
    """The status of the same command sent onto the bus by an outside client (or a service's identity) with each
    token."""
    import json

    import nats

    from shared.messages import Reply

    nc = await nats.connect(stack.nats_url(identity), inbox_prefix=f"_INBOX.{identity}")
    try:
        out = []
        for token in tokens:
            headers = {"authorization": f"Bearer {token}"} if token else None
            reply = Reply.model_validate_json((await sealed_request(nc, subject, json.dumps(body).encode(), timeout=10,
                                                                    headers=headers)).data)
            out.append(reply.status)
        return out
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def owner(stack, admin):
    account = make_account(stack, admin, "feedback")
    yield account
    undeploy_all(stack, account)


@pytest.fixture(scope="module")
def deployed(stack, owner) -> dict:
    """A digits classifier and a square detector, deployed side by side; a project with an images dataset for the
    feedback loop and one of training images."""
    client = sdk(stack, owner)
    digits = client.upload_model("digits", digits_classifier_onnx(), progress=False)
    detector = client.upload_model("squares", detector_onnx(), progress=False)
    classifier = client.build_pipeline("fb-digits").add_model_step(digits, image=digits_image_config())
    finder = client.build_pipeline("fb-squares").add_model_step(detector, image=detector_image_config())
    for pipeline in (classifier, finder):
        pipeline.deploy(replicas=1, cpus=0.5, wait=False)
    lineage = Lineage(client, owner.workspace_id)
    project = lineage.create_project("feedback")
    reviewed = lineage.create_dataset(project["id"], "reviewed", kind="images")
    training = lineage.create_dataset(project["id"], "training", kind="images")
    for index in range(20, 32):
        image, label = digit_png(index)
        lineage.upload_file(training["id"], image, name=f"digit-{index}.png", labels={"label": label}, progress=False)
    for pipeline in (classifier, finder):
        pipeline.deployment().wait_until_running(180)
    return {"client": client, "lineage": lineage, "project": project, "reviewed": reviewed, "training": training,
            "digits": client.get_deployment("fb-digits"), "squares": client.get_deployment("fb-squares")}


def call(stack, token, route: str, body: dict):
    return post(stack, f"deployments/{route}", token, body)


def top(fmt: dict) -> int:
    return fmt["detection_classes"][int(np.argmax(fmt["detection_scores"]))]


def check_training_baseline_assay(stack, owner, bob, deployed, images: dict, predicted: list) -> None:
    """An assay whose baseline is the deployment's training reference scores brightness_mean of its predictions
    (interactively with the caller's token, and by the scheduler without one) against the training images."""
    name = deployed["digits"].name
    pipeline = next(p for p in ok(post(stack, "pipelines/list", owner.token, {"workspace_id": owner.workspace_id})
                                  )["pipelines"] if p["name"] == "fb-digits")
    start = time.time() - 7200
    summarizer = {"type": "UnivariateContinuous", "bin_mode": "Quantile", "aggregation": "Density", "metric": "PSI",
                  "num_bins": 5, "add_outlier_edges": True}
    body = {"name": "brightness vs training", "pipeline_id": pipeline["id"], "pipeline_name": "fb-digits",
            "iopath": "input brightness_mean", "baseline": {"Training": {"deployment": name}},
            "window": {"pipeline": "fb-digits", "width": "1 hour",
                       "start": datetime.fromtimestamp(start, UTC).isoformat()},
            "summarizer": summarizer, "alert_threshold": 0.25, "workspace_id": owner.workspace_id}
    # computed here: the training images' quantiles bin each window's predictions (the monitored one an hour ago,
    # then the five of now)
    train = [image_features(Image.open(io.BytesIO(digit_png(i)[0])))["brightness_mean"] for i in range(20, 32)]
    bounds = np.quantile(train, np.linspace(0, 1, 6))
    at = {p["id"]: p["predicted_at"] for p in predicted}
    old = [pid for pid in images if datetime.fromisoformat(str(at[pid]).replace("Z", "+00:00")).timestamp()
           < start + 3600]
    assert len(old) == 1
    windows = [old, [pid for pid in images if pid not in old]]
    expected = []
    for ids in windows:
        values = np.asarray([image_features(Image.open(io.BytesIO(images[pid])))["brightness_mean"] for pid in ids])
        inner = np.clip(np.searchsorted(bounds, values, side="right") - 1, 0, 4)
        density = np.concatenate([[np.mean(values < bounds[0])],
                                  [np.mean((inner == k) & (values >= bounds[0]) & (values <= bounds[-1]))
                                   for k in range(5)], [np.mean(values > bounds[-1])]])
        base = [0.0, 0.2, 0.2, 0.2, 0.2, 0.2, 0.0]
        expected.append(sum(((w or 0.005) - (b or 0.005)) * np.log((w or 0.005) / (b or 0.005))
                            for b, w in zip(base, density, strict=True)))
    baseline = ok(post(stack, "assays/run_interactive_baseline", owner.token, body))
    assert baseline["baseline_summary"]["count"] == 12
    assert baseline["baseline_summary"]["edges"][:6] == pytest.approx(bounds.tolist())
    assert baseline["baseline_summary"]["aggregated_values"] == pytest.approx([0.0, 0.2, 0.2, 0.2, 0.2, 0.2, 0.0])
    runs = ok(post(stack, "assays/run_interactive", owner.token, body))
    assert [r["window_summary"]["count"] for r in runs] == [1, 5]
    assert [r["score"] for r in runs] == pytest.approx(expected)
    # the scheduler (no user token) scores the same windows of the stored assay
    assay_id = ok(post(stack, "assays/create", owner.token, body))["assay_id"]
    results = lambda: ok(post(stack, "assays/get_results", owner.token, {"assay_id": assay_id}))  # noqa: E731
    wait_for(lambda: len(results()) == 2, 15, "the scheduler's two windows", show=results)
    assert sorted(r["score"] for r in results()) == pytest.approx(sorted(expected))
    ok(post(stack, "assays/set_active", owner.token, {"id": assay_id, "active": False}))
    # an unknown feature is a 400 naming the valid ones; an outsider's token does not reach the reference
    bad = post(stack, "assays/run_interactive", owner.token, {**body, "iopath": "input loudness"})
    assert bad.status_code == 400 and "brightness_mean" in bad.json()["msg"]
    # the monitoring side, asked as the assay runner: the caller's token decides; without one the id must be of the
    # workspace named; an outside client may not ask at all
    query_body = {"workspace_id": owner.workspace_id, "deployment": name, "feature": "brightness_mean"}
    by_id = {"workspace_id": owner.workspace_id, "deployment_id": deployed["digits"].id, "feature": "brightness_mean"}
    feature = subjects.MONITORING_REFERENCE_FEATURE
    assert asyncio.run(bus_statuses(stack, feature, query_body, [owner.token, bob.token], "assay_runner")) == [200, 404]
    assert asyncio.run(bus_statuses(stack, feature, {**by_id, "workspace_id": bob.workspace_id}, [None],
                                    "assay_runner")) == [404]
    assert asyncio.run(bus_statuses(stack, feature, by_id, [None], "assay_runner")) == [200]
    assert asyncio.run(client_refused(stack, feature, by_id))


async def client_refused(stack, subject: str, body: dict) -> bool:
    """True when the bus refuses an outside client the subject (NATS reports a publish permissions violation)."""
    import json

    import nats

    refused: asyncio.Future = asyncio.get_running_loop().create_future()

    async def on_error(exc: Exception) -> None:
        if "permissions violation" in str(exc).lower() and subject in str(exc) and not refused.done():
            refused.set_result(True)

    nc = await nats.connect(stack.nats_url("client"), inbox_prefix="_INBOX.client", error_cb=on_error)
    try:
        await nc.publish(subject, json.dumps(body).encode(), reply="_INBOX.client.refused")
        await nc.flush()
        return await asyncio.wait_for(refused, 5)
    finally:
        await nc.close()


def test_reviews_feedback_loop_reference_and_stats(stack, owner, deployed, bob, tmp_path):
    digits, lineage = deployed["digits"], deployed["lineage"]
    name = digits.name
    # predictions through the prediction routes: four by the model, two made elsewhere (one an hour ago)
    images = {}
    predicted = []
    for index in range(4):
        image, _ = digit_png(index)
        result = digits.predict_bytes(f"d{index}.png", image, tags=["cam-1"] if index < 2 else ["cam-2"])
        images[result["id"]] = image
        predicted.append(result)
    for index, when in ((4, time.time() - 3600), (5, None)):
        image, label = digit_png(index)
        result = digits.monitor_bytes(image, "image/png", f"m{index}.png", latency=0.02, height=8, width=8,
                                      prediction={"detection_classes": [label], "detection_scores": [0.8]},
                                      tags=["elsewhere"], timestamp=when)
        images[result["id"]] = image
        predicted.append(result)
    ids = [p["id"] for p in predicted]

    # the review queue (HTTP and SDK) and its images
    queue = ok(call(stack, owner.token, "list_predictions_to_review", {"deployment": name, "limit": 100}))
    assert queue["pending"] == 6 and {p["id"] for p in queue["predictions"]} == set(ids)
    assert queue["labels"] == [str(digit) for digit in range(10)]
    assert digits.list_predictions_to_review(limit=2)["pending"] == 6
    response = call(stack, owner.token, "get_prediction_image", {"deployment": name, "prediction_id": ids[0]})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content == images[ids[0]] == digits.get_prediction_image(ids[0])

    # the feedback loop, set up before the reviews arrive
    status = digits.setup_feedback_loop(deployed["reviewed"])
    assert status["configured"] and status["active"] and [d["dataset_id"] for d in status["datasets"]] == [
        deployed["reviewed"]["id"]]

    # reviews: accept two, correct two (HTTP and SDK), then correct an accepted one again (it replaces it)
    truths = {}
    review_ids = []
    for prediction in predicted[:2]:
        review = digits.review_prediction(prediction["id"])
        review_ids.append(review["review_id"])
        assert (review["decision"], review["revision"]) == ("accepted", 1)
        truths[prediction["id"]] = top(prediction["prediction"])
    wrong = [(predicted[2], (top(predicted[2]["prediction"]) + 1) % 10),
             (predicted[3], (top(predicted[3]["prediction"]) + 2) % 10)]
    review = ok(call(stack, owner.token, "review_prediction", {
        "deployment": name, "prediction_id": wrong[0][0]["id"], "decision": "corrected",
        "ground_truth": {"detection_classes": [wrong[0][1]]}}))
    assert review["ground_truth"] == {"detection_classes": [wrong[0][1]], "detection_scores": [1.0]}
    review_ids.append(review["review_id"])
    review_ids.append(digits.review_prediction(wrong[1][0]["id"], {"detection_classes": [wrong[1][1]],
                                                                   "detection_scores": [1.0]})["review_id"])
    truths.update({p["id"]: t for p, t in wrong})
    assert digits.list_predictions_to_review()["pending"] == 2

    def written() -> dict | None:
        state = digits.check_feedback_loop_status()
        data = state["datasets"][0]
        return state if data["pending_reviews"] == 0 and data["exported_reviews"] == 4 else None

    state = wait_for(written, what="the feedback loop to write 4 reviews", show=digits.check_feedback_loop_status)
    assert state["reviews"] == 4 and state["pending_reviews"] == 0 and state["datasets"][0]["last_error"] is None
    first_version = state["datasets"][0]["last_version_number"]
    summary = digits.retrieve_information()["feedback"]
    assert summary["reviews"] == 4 and summary["feedback_loop"]["active"] is True
    assert summary["feedback_loop"]["datasets"][0]["last_version_id"] == state["datasets"][0]["last_version_id"]
    files = {f["name"]: f for f in lineage.files(deployed["reviewed"]["id"])}
    assert set(files) == {f"{pid}.png" for pid in truths}
    for pid, truth in truths.items():
        labels = files[f"{pid}.png"]["labels"]
        assert top(labels["ground_truth"]) == truth and labels["prediction_id"] == pid
        assert lineage.download_file(deployed["reviewed"]["id"], f"{pid}.png") == images[pid]

    # a dataset attached later (HTTP, with the project version it starts from: one that holds it, else 404) receives
    # every review so far
    second = lineage.create_dataset(deployed["project"]["id"], "reviewed-later", kind="images")
    holding = lineage.create_version(deployed["project"]["id"], "with reviewed-later")
    attached = ok(call(stack, owner.token, "attach_dataset_version_to_feedback_loop", {
        "deployment": name, "dataset_version": {"dataset_id": second["id"], "version_id": holding["id"]}}))
    assert [d["dataset_id"] for d in attached["datasets"]] == [deployed["reviewed"]["id"], second["id"]]
    assert attached["datasets"][1]["attached_version_id"] == holding["id"]
    wait_for(lambda: digits.list_feedback_loop_datasets()[1]["exported_reviews"] == 4, what="the later dataset",
             show=digits.list_feedback_loop_datasets)
    assert {f["name"] for f in lineage.files(second["id"])} == {f"{pid}.png" for pid in truths}
    assert [d["dataset_id"] for d in digits.detach_dataset_version_from_feedback_loop(second["id"])["datasets"]] == [
        deployed["reviewed"]["id"]]
    first_version = digits.list_feedback_loop_datasets()[0]["last_version_number"]

    # a re-review replaces the first: one more version, the file's labels replaced, still one file per prediction
    again = digits.review_prediction(predicted[0]["id"], {"detection_classes": [7], "detection_scores": [1.0]})
    assert (again["decision"], again["revision"]) == ("corrected", 2)
    review_ids.append(again["review_id"])
    truths[predicted[0]["id"]] = 7
    wait_for(lambda: (digits.list_feedback_loop_datasets()[0]["last_version_number"] or 0) > first_version
             and digits.list_feedback_loop_datasets()[0]["pending_reviews"] == 0, what="the replacing version")
    files = {f["name"]: f for f in lineage.files(deployed["reviewed"]["id"])}
    assert len(files) == 4 and top(files[f"{predicted[0]['id']}.png"]["labels"]["ground_truth"]) == 7
    versions = lineage.list_versions(deployed["project"]["id"])
    assert len(versions) == digits.list_feedback_loop_datasets()[0]["last_version_number"]
    assert query(stack, "SELECT count(*) AS n FROM monitoring.reviews WHERE prediction_id = ANY($1::uuid[])",
                 ids)[0]["n"] == 4

    # toggle off: a new review waits; back on: it is written
    assert digits.toggle_feedback_loop(False)["active"] is False
    review_ids.append(digits.review_prediction(predicted[4]["id"])["review_id"])
    truths[predicted[4]["id"]] = top(predicted[4]["prediction"])
    time.sleep(0.5)
    assert digits.check_feedback_loop_status()["datasets"][0]["pending_reviews"] == 1
    assert digits.toggle_feedback_loop(True)["active"] is True
    wait_for(lambda: digits.check_feedback_loop_status()["pending_reviews"] == 0, what="the resumed loop")
    assert len(lineage.files(deployed["reviewed"]["id"])) == 5

    # a crash between the exporter's steps repeats only idempotent work: forget a recorded version and a written file
    versions = len(lineage.list_versions(deployed["project"]["id"]))
    query(stack, "UPDATE monitoring.feedback_exports SET version_id = NULL WHERE prediction_id = $1::uuid", ids[1])
    query(stack, "DELETE FROM monitoring.feedback_exports WHERE prediction_id = $1::uuid", ids[2])
    # a restarted process's exporter looks at once; this one, with nothing left to write, waits its minute
    # (sweeps.IDLE_WAIT): turning the loop on again wakes it, as any command that makes work does
    assert digits.toggle_feedback_loop(True)["active"] is True
    wait_for(lambda: digits.list_feedback_loop_datasets()[0]["exported_reviews"] == 5
             and digits.list_feedback_loop_datasets()[0]["pending_reviews"] == 0, what="the repeated round")
    assert len(lineage.list_versions(deployed["project"]["id"])) == versions
    assert len(lineage.files(deployed["reviewed"]["id"])) == 5

    # every review (the replacing one too) was announced after it was stored
    seen = review_events(stack, set(review_ids))
    assert seen == set(review_ids)

    # get_stats: classification over the five reviews, against a count made here
    stats = digits.get_stats(ServiceMetrics.REVIEWS_CLASSIFICATION_STATS)
    by_id = {p["id"]: p for p in predicted}
    expected = np.mean([top(by_id[pid]["prediction"]) == truth for pid, truth in truths.items()])
    champion = stats["stats"]["champion"]
    assert stats["predictions"] == 6 and champion["rows"] == 5 and champion["accuracy"] == pytest.approx(expected)
    assert (stats["stats"]["accepted"], stats["stats"]["corrected"]) == (2, 3)
    distribution = digits.get_stats("REVIEWS_LABEL_DISTRIBUTION_STATS")["stats"]
    assert distribution["ground_truth"]["counts"] == dict(Counter(str(t) for t in truths.values()))

    # filters: tags, time, ids; all predictions' label distribution
    assert digits.get_stats("AGGREGATED_PREDICTIONS_DATA", tags=["cam-1"])["predictions"] == 2
    aggregated = digits.get_stats("AGGREGATED_PREDICTIONS_DATA", since=600)["stats"]
    assert aggregated["count"] == 5 and aggregated["origin"] == {"predict": 4, "monitor": 1}
    assert digits.get_stats("PREDICTIONS_DATA", to_timestamp=time.time() - 1800)["predictions"] == 1
    assert digits.get_stats("PREDICTIONS_DATA", includes=ids[:3], excludes=[ids[0]])["predictions"] == 2
    assert digits.get_stats("PREDICTIONS_DATA", model_version="digits")["predictions"] == 6
    unknown = {"name": "digits", "version": str(uuid.uuid4())}  # not the workspace's: 404 naming it, not 0
    refused = call(stack, owner.token, "get_stats", {"deployment": name, "service": "PREDICTIONS_DATA",
                                                     "model_version": unknown})
    assert refused.status_code == 404 and unknown["version"] in refused.json()["msg"], refused.text
    labels = digits.get_stats(ServiceMetrics.AGGREGATED_LABEL_DISTRIBUTION)["stats"]["predicted"]["counts"]
    assert labels == dict(Counter(str(top(p["prediction"])) for p in predicted))

    # the training reference: computed in the background, then the outlying score against it
    for service in ("PREDICTIONS_OUTLYING_SCORE", "AGGREGATED_DRIFTING_PREDICTIONS"):
        refused = call(stack, owner.token, "get_stats", {"deployment": name, "service": service})
        assert refused.status_code == 409 and "set_training_data" in refused.json()["msg"]
    started = digits.set_training_data(deployed["training"])
    assert started["status"] in ("computing", "ready") and started["images_total"] == 12
    done = digits.wait_for_training_data(60)
    assert done["status"] == "ready" and done["images_done"] == 12, done
    assert digits.check_training_data_metrics_status() == "ready"
    assert digits.retrieve_information()["feedback"]["training_data"]["images_done"] == 12
    with_reference = digits.get_stats("AGGREGATED_LABEL_DISTRIBUTION")["stats"]
    assert with_reference["reference"]["counts"] == dict(sorted(Counter(str(digit_png(i)[1]) for i in range(20, 32)
                                                                        ).items()))
    expected_tv = 0.5 * sum(abs(with_reference["reference"]["proportions"].get(k, 0.0)
                                - with_reference["predicted"]["proportions"].get(k, 0.0))
                            for k in {*with_reference["reference"]["proportions"],
                                      *with_reference["predicted"]["proportions"]})
    assert with_reference["total_variation"] == pytest.approx(expected_tv)
    reference = [image_features(Image.open(io.BytesIO(digit_png(i)[0]))) for i in range(20, 32)]
    names = sorted(reference[0])
    mean = {n: np.mean([r[n] for r in reference]) for n in names}
    std = {n: np.std([r[n] for r in reference]) for n in names}

    def score(pid: str) -> float:
        features = image_features(Image.open(io.BytesIO(images[pid])))
        z = [((features[n] - mean[n]) / (std[n] if std[n] > 1e-9 else 1.0)) ** 2 for n in names]
        return float(np.sqrt(np.mean(z)))

    outlying = digits.get_stats("PREDICTIONS_OUTLYING_SCORE")["stats"]
    assert {s["prediction_id"]: pytest.approx(score(s["prediction_id"]), rel=1e-4) for s in outlying["scores"]} == {
        pid: score(pid) for pid in ids}
    drift = digits.get_stats("AGGREGATED_DRIFTING_PREDICTIONS")["stats"]
    assert drift["predictions"] == 6 and drift["drifting"] == sum(score(pid) > 3 for pid in ids)
    assert set(drift["features"]) == set(names)
    check_training_baseline_assay(stack, owner, bob, deployed, images, predicted)
    # a reference left `computing` (as by a process stopped mid-way) is picked up and finished: by the first look of a
    # process that starts (a running one looks for such a reference once a minute, sweeps.IDLE_WAIT)
    query(stack, "UPDATE monitoring.training_references SET status = 'computing', images_done = 0, reference = NULL"
                 " WHERE deployment_id = $1", digits.id)
    assert digits.check_training_data_metrics_status() == "computing"
    log = tmp_path / "monitoring-2.log"
    with service_process(stack, "monitoring", log) as restarted:
        wait_serving(restarted, log, "a second monitoring process")
        assert digits.wait_for_training_data(30)["status"] == "ready"
    assert digits.disable_training_data_reference()["status"] == "disabled"
    assert call(stack, owner.token, "get_stats", {"deployment": name, "service": "PREDICTIONS_OUTLYING_SCORE"}
                ).status_code == 409

    # every ServiceMetrics answers; an unknown one is a 400 listing them
    for service in SERVICE_METRICS:
        if service not in ("PREDICTIONS_OUTLYING_SCORE", "AGGREGATED_DRIFTING_PREDICTIONS"):
            assert ok(call(stack, owner.token, "get_stats", {"deployment": name, "service": service}))[
                "service"] == service
    unknown = call(stack, owner.token, "get_stats", {"deployment": name, "service": "PREDICTIONS_EVERYTHING"})
    assert unknown.status_code == 400 and unknown.json()["code"] == "invalid_request"
    assert all(service in unknown.json()["msg"] for service in SERVICE_METRICS)

    # detach and disable
    assert digits.detach_dataset_version_from_feedback_loop(deployed["reviewed"])["datasets"] == []
    assert digits.disable_feedback_loop()["configured"] is False


def test_detection_reviews_are_scored_with_coco(stack, owner, deployed):
    squares = deployed["squares"]
    squares.update(min_threshold=0.5)  # only the lit cells' boxes
    assert squares.retrieve_information()["feedback"] == {"reviews": 0, "feedback_loop": None, "training_data": None}
    found = squares.predict_bytes("squares.png", squares_png({(0, 0): 255, (2, 3): 255}), tags=["grid"])
    other = squares.predict_bytes("one.png", squares_png({(1, 1): 255}))
    first, second = len(found["prediction"]["detection_boxes"]), len(other["prediction"]["detection_boxes"])
    assert first >= 1 and second >= 1, (found, other)
    assert [48, 48, 64, 64] not in other["prediction"]["detection_boxes"], other
    # accept the first image as is; on the second keep its first box and add one the model missed
    squares.review_prediction(found["id"])
    kept = other["prediction"]["detection_boxes"][0]
    truth = {"detection_classes": [other["prediction"]["detection_classes"][0], 0],
             "detection_boxes": [kept, [48, 48, 64, 64]]}
    squares.review_prediction(other["id"], truth)
    stats = squares.get_stats("REVIEWS_OBJECT_DETECTION_STATS")["stats"]["champion"]
    # by hand: every accepted box matches itself, on the second image one detection matches and one box is missed
    matched = first + 1
    assert (stats["ground_truth_boxes"], stats["detections"]) == (first + 2, first + second)
    assert stats["precision_50"] == pytest.approx(matched / (first + second))
    assert stats["recall_50"] == pytest.approx(matched / (first + 2))
    aggregated = squares.get_stats("AGGREGATED_OBJECT_DETECTION_STATS")["stats"]
    assert (aggregated["images"], aggregated["boxes"]) == (2, first + second)


def test_outsiders_and_bad_input_change_nothing(stack, owner, deployed, bob):
    digits = deployed["digits"]
    name = digits.name
    image, label = digit_png(9)
    prediction = digits.monitor_bytes(image, "image/png", "x.png", latency=0.01, height=8, width=8,
                                      prediction={"detection_classes": [label], "detection_scores": [0.9]})
    pid = prediction["id"]

    def reviews() -> int:
        return query(stack, "SELECT count(*) AS n FROM monitoring.reviews")[0]["n"]

    before = reviews()
    review = {"deployment": name, "prediction_id": pid, "decision": "accepted"}
    # another workspace's member: the deployment and the prediction do not exist
    for route, body in (("review_prediction", review), ("get_prediction_image", {"deployment": name,
                                                                                  "prediction_id": pid}),
                        ("list_predictions_to_review", {"deployment": name}),
                        ("setup_feedback_loop", {"deployment": name}),
                        ("set_training_data", {"deployment": name,
                                               "dataset_version": {"dataset_id": deployed["training"]["id"]}}),
                        ("get_stats", {"deployment": name, "service": "PREDICTIONS_DATA"})):
        assert call(stack, bob.token, route, body).status_code == 404, route
    assert call(stack, inference_token(stack, owner), "review_prediction", review).status_code == 403
    assert call(stack, None, "review_prediction", review).status_code == 401
    # bob's own deployment cannot reach alice's prediction either: 404 like a missing one
    missing = {**review, "prediction_id": "00000000-0000-0000-0000-000000000000"}
    assert call(stack, owner.token, "review_prediction", missing).status_code == 404
    # bad reviews: 400, nothing stored
    for body in ({**review, "decision": "corrected"},
                 {**review, "ground_truth": {"detection_classes": [1]}},
                 {**review, "decision": "corrected", "ground_truth": {"detection_classes": []}},
                 {**review, "decision": "corrected", "ground_truth": {"detection_classes": [1],
                                                                      "detection_boxes": [[0, 0, 1, 1]]}},
                 {**review, "decision": "corrected", "ground_truth": {"detection_classes": [-1]}},
                 {**review, "decision": "corrected", "ground_truth": {"detection_classes": [10]}},  # 10 labels
                 {**review, "decision": "maybe"}, {**review, "prediction_id": "not-a-uuid"}):
        response = call(stack, owner.token, "review_prediction", body)
        assert response.status_code == 400 and response.json()["code"] == "invalid_request", (body, response.text)
    squares = deployed["squares"]
    boxed = squares.predict_bytes("b.png", squares_png({(0, 0): 255}))
    outside = call(stack, owner.token, "review_prediction", {
        "deployment": squares.name, "prediction_id": boxed["id"], "decision": "corrected",
        "ground_truth": {"detection_classes": [0], "detection_boxes": [[0, 0, 65, 10]]}})
    assert outside.status_code == 400 and "inside" in outside.json()["msg"]
    # a prediction of another deployment of the same workspace is not this deployment's
    assert call(stack, owner.token, "review_prediction", {**review, "deployment": squares.name}).status_code == 404
    assert reviews() == before

    # the bus front door (commands published straight onto NATS) applies the same rules
    statuses = asyncio.run(bus_statuses(stack, subjects.MONITORING_REVIEW_PREDICTION, review,
                                        [None, bob.token, owner.token]))
    assert statuses[:2] == [401, 404] and statuses[2] == 200
    assert reviews() == before + 1

    # feedback-loop and reference arguments
    for route, body, status in (
            ("toggle_feedback_loop", {"deployment": name, "active": True}, 409),
            ("attach_dataset_version_to_feedback_loop",
             {"deployment": name, "dataset_version": {"dataset_id": deployed["reviewed"]["id"]}}, 409),
            ("disable_training_data_reference", {"deployment": name}, 409),
            ("set_training_data", {"deployment": name, "dataset_version": {"dataset_id": 0}}, 400),
            ("get_stats", {"deployment": name, "service": "PREDICTIONS_DATA", "includes": ["x"]}, 400),
            ("get_stats", {"deployment": name, "service": "PREDICTIONS_DATA", "from_timestamp": 10,
                           "to_timestamp": 5}, 400)):
        if route == "disable_training_data_reference" and digits.check_training_data_metrics_status() != "none":
            continue  # the first test set (and disabled) one
        response = call(stack, owner.token, route, body)
        assert response.status_code == status, (route, response.text)
    tabular = deployed["lineage"].create_dataset(deployed["project"]["id"], "rows")
    bobs = Lineage(sdk(stack, bob), bob.workspace_id)
    foreign = bobs.create_dataset(bobs.create_project("mine")["id"], "theirs", kind="images")
    refused = call(stack, owner.token, "setup_feedback_loop", {"deployment": name,
                                                               "dataset_version": {"dataset_id": tabular["id"]}})
    assert refused.status_code == 400 and "images" in refused.json()["msg"]
    assert call(stack, owner.token, "setup_feedback_loop", {
        "deployment": name, "dataset_version": {"dataset_id": foreign["id"]}}).status_code == 404
    assert call(stack, owner.token, "set_training_data", {
        "deployment": name, "dataset_version": {"dataset_id": deployed["reviewed"]["id"], "version_id": 999999}}
                ).status_code == 404
    assert not query(stack, "SELECT 1 FROM monitoring.feedback_loops l JOIN monitoring.feedback_loop_datasets d"
                            " USING (deployment_id) WHERE d.dataset_id = ANY($1::int[])",
                     [tabular["id"], foreign["id"]])


# A training recipe that reads every file of the datasets its run is given (task_args' `datasets`) with the SDK, as a
# user's would, prints what it read, and fails (it trains nothing)
READS_THE_DATASETS = """
import hashlib, json
from railyard_client import Client, Lineage, task_args

client = Client()
lineage = Lineage(client, client.current_workspace().id)
for alias, ref in sorted(task_args()["datasets"].items()):
    for record in lineage.files(int(ref["dataset_id"]), ref.get("version_id")):
        data = lineage.download_file(int(ref["dataset_id"]), record["name"], ref.get("version_id"))
        print("read", json.dumps({"alias": alias, "name": record["name"], "sha256": hashlib.sha256(data).hexdigest(),
                                  "ground_truth": (record.get("labels") or {}).get("ground_truth")}), flush=True)
raise SystemExit("this recipe trains nothing")
"""


def test_a_training_waits_for_the_feedback_loop_off_the_review_path(stack, owner, deployed):
    """The reviews that trigger a training are in a dataset the feedback loop has not written yet: the training
    waits for them without holding up the deployment (its commands answer at once), then exactly one run starts,
    after the reviews were written, and reads them (the files and ground truths the loop wrote) with the SDK."""
    digits, client = deployed["digits"], deployed["client"]
    shared = deployed["lineage"].create_dataset(deployed["project"]["id"], "written-then-trained", kind="images")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("main.py", READS_THE_DATASETS)
    orchestrations = Orchestrations(client, owner.workspace_id)
    recipe = orchestrations.upload(archive.getvalue(), "trains-nothing", progress=False)
    digits.setup_feedback_loop(shared)
    wait_for(lambda: digits.check_feedback_loop_status()["pending_reviews"] == 0, what="the earlier reviews written")
    digits.setup_continuous_training(deployed["project"], shared, threshold=2, experiment_parameters={},
                                     orchestration=recipe)

    def runs() -> list[dict]:
        return [t for t in orchestrations.tasks() if t["orch_id"] == recipe["id"]]

    # a slow export: the test holds the exporter's lock on (deployment, dataset), as a replica mid-export would
    lock_loop = asyncio.new_event_loop()
    conn = lock_loop.run_until_complete(asyncpg.connect(stack.settings().postgres.dsn))
    try:
        assert lock_loop.run_until_complete(conn.fetchval(
            "SELECT pg_try_advisory_lock(hashtextextended('monitoring.feedback:' || $1::int || ':' || $2::int, 0))",
            digits.id, shared["id"]))
        reviewed = {}  # the file the loop writes for each review: its bytes' sha256 and the ground truth
        for index in (2, 3):
            png, label = digit_png(index)
            prediction_id = digits.monitor_bytes(
                png, "image/png", f"ct-{index}.png", latency=0.01, height=8, width=8,
                prediction={"detection_classes": [label], "detection_scores": [0.9]})["id"]
            digits.review_prediction(prediction_id)
            reviewed[f"{prediction_id}.png"] = (hashlib.sha256(png).hexdigest(), [label])
        training = wait_for(lambda: (t := digits.retrieve_information()["continuous"]["last_training"]) and t,
                            what="the training")
        asked = time.monotonic()
        toggled = digits.toggle_continuous_training(True)  # checks the trigger: it no longer waits behind the run
        assert time.monotonic() - asked < 2.5 and toggled["last_training"]["state"] == "starting", toggled
        time.sleep(1.0)  # the starter looks every 0.25 s while the reviews are unwritten: it must not start
        assert not runs() and digits.check_feedback_loop_status()["pending_reviews"] == 2
    finally:
        lock_loop.run_until_complete(conn.close())  # the lock goes with the session: the export proceeds
        lock_loop.close()
    started = wait_for(runs, what="the training run")
    assert len(started) == 1 and started[0]["input_data"]["reviews"] == training["reviews"]
    written, claimed = query(
        stack, "SELECT (SELECT max(exported_at) FROM monitoring.feedback_exports WHERE deployment_id = $1 AND"
        " dataset_id = $2) AS written, (SELECT run_claimed_at FROM monitoring.trainings WHERE id = $3) AS claimed",
        digits.id, shared["id"], uuid.UUID(training["id"]))[0]
    assert written <= claimed  # the run was created once both reviews were in the dataset
    ended = wait_for(lambda: (t := digits.retrieve_information()["continuous"]["last_training"])["state"] == "failed"
                     and t, what="the run to fail")
    assert "training run failed" in ended["reason"], ended
    assert len(runs()) == 1
    # the run read both reviews from the dataset the loop wrote them into (given as `train`, its only dataset), as the
    # loop wrote them: the reviewed images' bytes and ground truths
    read = [json.loads(line.split(" read ", 1)[1]) for line in orchestrations.logs(ended["run_id"]) if " read " in line]
    assert {r["alias"] for r in read} == {"train"}, read
    found = {r["name"]: (r["sha256"], r["ground_truth"]["detection_classes"]) for r in read if r["name"] in reviewed}
    assert found == reviewed, read
    digits.toggle_continuous_training(False)
    digits.disable_feedback_loop()


def test_delete_refuses_to_lose_feedback_unless_forced(stack, owner, deployed):
    digits = deployed["digits"]
    if not digits.check_feedback_loop_status()["reviews"]:
        digits.review_prediction(digits.monitor_bytes(
            digit_png(1)[0], "image/png", "r.png", latency=0.01, height=8, width=8,
            prediction={"detection_classes": [1], "detection_scores": [0.9]})["id"])
    digits.setup_feedback_loop(deployed["reviewed"])
    refused = call(stack, owner.token, "delete", {"deployment": digits.name})
    assert refused.status_code == 409 and "reviews, a feedback loop" in refused.json()["msg"], refused.text
    assert digits.check_feedback_loop_status()["configured"]
    digits.delete(force_delete=True)
    deployment_id = digits.id
    assert not query(stack, "SELECT 1 FROM monitoring.feedback_loops WHERE deployment_id = $1", deployment_id)
    assert not query(stack, "SELECT 1 FROM monitoring.training_references WHERE deployment_id = $1", deployment_id)
