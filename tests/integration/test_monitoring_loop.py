"""Seed 003's whole loop on the real stack: an image classifier deployed; predictions with tags and predictions made
elsewhere (monitor); reviews (accepted and corrected); the review threshold starts exactly one training task run
(a real orchestration registering, with the SDK, a logistic regression on scikit-learn's digits fitted for the run's
parameters) whose model version arrives and is drawn in the lineage graph; under DEPLOY_SHADOW it runs as the shadow
challenger, and as reviews keep arriving the always-valid sequential test promotes a better challenger (its evidence
and get_stats checked against the outcomes counted here), and rolls back a worse one; a failed run, DEPLOY_MANUAL and
DEPLOY_AUTO. Also: continuous training/deployment arguments checked (400/404/409, nothing stored) and out of
outsiders' reach."""

from __future__ import annotations

import asyncio
import io
import time
import zipfile

import numpy as np
import pytest
from faststream.nats import NatsBroker
from railyard_client import Lineage, Orchestrations, ServiceMetrics
from railyard_client.monitoring_continuous import ContinuousDeploymentPolicy

from shared import subjects
from shared.bus import request
from shared.messages import CountEvents, EventCount
from tests.image_models import digit_png, digits_classifier_onnx, digits_image_config
from tests.integration.conftest import inference_token, make_account, post, undeploy_all
from tests.integration.conftest import sdk_client as sdk

pytestmark = pytest.mark.integration

TRAIN = '''
"""Continuous training: the digits classifier fitted with the run's parameters, registered with the SDK."""
from pathlib import Path

from railyard_client import Client, task_args

args = task_args()
if "scan_config" in args:  # a scan: one fit per training-set size; the largest is kept (a real one would validate)
    scan = args["scan_config"]
    params = {"train_size": max(scan["train_size"]), "seed": scan.get("seed", 0)}
else:
    params = args["experiment_parameters"]
print("training", args["model_name"], "for", args["deployment"], "at", args["reviews"], "reviews;",
      "datasets", sorted(args["datasets"]), "parameters", params)
fitted = Path(__file__).parent / "fitted" / f"{int(params['train_size'])}-{int(params.get('seed', 0))}.onnx"
version = Client().upload_model(args["model_name"], fitted.read_bytes(), progress=False)
print("registered", version.version)
'''
# The fits the runs above ask for, (train_size, seed): made by the test process, which has scikit-learn and skl2onnx
# imported already (tests.image_models), and packed with main.py. A run that fitted its own imported them first:
# ~2 s of CPU each of the file's four fits (and ~0.5 s to exit), which the test, about what Railyard does with a
# training run and its model version, does not need. A run whose parameters name no fit here fails (FileNotFoundError)
FITS = ((1200, 1), (40, 2), (300, 4), (300, 5))


def wait_for(condition, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


CONTINUOUS_EVENTS = (subjects.EVENT_MONITORING_TRAINING_STARTED, subjects.EVENT_MONITORING_TRAINING_FINISHED,
                     subjects.EVENT_MONITORING_CHALLENGER_DECIDED, subjects.EVENT_MONITORING_MODEL_SWAPPED)


def event_counts(stack) -> dict[str, int]:
    """How many of each continuous event the lineage service's durable consumer has recorded (all workspaces)."""
    async def count() -> dict[str, int]:
        broker = NatsBroker(stack.settings().nats.url)
        await broker.connect()
        try:
            return {subject: (await request(broker, subjects.LINEAGE_EVENTS_COUNT, CountEvents(subject=subject),
                                            timeout=5, reply_model=EventCount)).count for subject in CONTINUOUS_EVENTS}
        finally:
            await broker.stop()

    return asyncio.run(count())


def top(fmt: dict) -> int:
    return fmt["detection_classes"][int(np.argmax(fmt["detection_scores"]))]


@pytest.fixture(scope="module")
def owner(stack, admin):
    account = make_account(stack, admin, "loop")
    yield account
    undeploy_all(stack, account)


@pytest.fixture(scope="module")
def loop(stack, owner) -> dict:
    """A weak digits classifier (40 training images) deployed; a good version of the same model; the training
    orchestration; a project with two images datasets."""
    client = sdk(stack, owner)
    weak = client.upload_model("digits", digits_classifier_onnx(train_size=40), progress=False)
    pipeline = client.build_pipeline("loop-digits").add_model_step(weak, image=digits_image_config())
    pipeline.deploy(replicas=1, cpus=0.5, wait=False)
    good = client.upload_model("digits", digits_classifier_onnx(train_size=1200), progress=False)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("main.py", TRAIN)
        for train_size, seed in FITS:
            zipped.writestr(f"fitted/{train_size}-{seed}.onnx", digits_classifier_onnx(train_size, seed))
    orchestrations = Orchestrations(client, owner.workspace_id)
    orchestration = orchestrations.upload(archive.getvalue(), "train-digits", progress=False)
    lineage = Lineage(client, owner.workspace_id)
    project = lineage.create_project("continuous")
    train = lineage.create_dataset(project["id"], "train", kind="images")
    holdout = lineage.create_dataset(project["id"], "holdout", kind="images")
    pipeline.deployment().wait_until_running(180)
    return {"client": client, "deployment": client.get_deployment("loop-digits"), "weak": weak, "good": good,
            "orchestration": orchestration, "orchestrations": orchestrations, "project": project, "train": train,
            "holdout": holdout, "next_image": iter(range(300))}


def continuous(deployment) -> dict:
    return deployment.retrieve_information()["continuous"]


def predict_and_review(deployment, images, shadowed: tuple[str, str] | None = None, tag: str = "loop",
                       seen: list | None = None) -> list[tuple[bool, bool]]:
    """Predict each held-out digit, review it (accepted when right, corrected otherwise); the paired outcomes
    (champion right, challenger right) of the predictions that `shadowed` = (champion, challenger version) made.
    `seen` collects (true class, champion's class, challenger's class or None) of every prediction."""
    pairs = []
    for index in images:
        image, label = digit_png(index)
        result = deployment.predict_bytes(f"digit-{index}.png", image, tags=[tag, f"batch-{index // 10}"],
                                          source="camera-1")
        answer = top(result["prediction"])
        if seen is not None:
            seen.append((label, answer, top(result["shadow_prediction"]) if result["shadow_prediction"] else None))
        if shadowed and result["shadow_prediction"] is not None and \
                (result["model_version"] or {}).get("version") == shadowed[0] and \
                (result["shadow_model_version"] or {}).get("version") == shadowed[1]:
            # the pairs the test counts: that champion and that challenger both answered (not a row mid-swap)
            pairs.append((answer == label, top(result["shadow_prediction"]) == label))
        if answer == label:
            deployment.review_prediction(result["id"])
        else:
            deployment.review_prediction(result["id"], {"detection_classes": [label], "detection_scores": [1.0]})
    return pairs


def opened_at_set_up(info: dict, before: dict | None) -> bool:
    """Whether setting continuous training up (its answer `info`) opened a training at once: setting up again keeps
    the count of the last training, so the reviews made since (while it was inactive, a challenge being decided)
    reach a threshold at once. The test then makes no reviews of its own: reviews made while a training is open count
    towards the next one, which opens when this one ends (continuous.recheck_after)."""
    last = info["last_training"]
    return last is not None and (before is None or last["id"] != before["id"]) and \
        last["state"] in ("starting", "running", "succeeded")


def training_tasks(loop) -> list[dict]:
    return [t for t in loop["orchestrations"].tasks() if (t["name"] or "").startswith("continuous training of")]


def run_until_decided(loop, deployment, wanted: str, batch: int = 8, most: int = 160,
                      seen: list | None = None) -> tuple[dict, list]:
    """Reviews keep arriving (batches of predictions reviewed) until the open challenge is decided."""
    pairs: list[tuple[bool, bool]] = []
    challenge = continuous(deployment)["challenge"]
    versions = (challenge["champion"]["version"], challenge["challenger"]["version"])
    while True:
        pairs += predict_and_review(deployment, [next(loop["next_image"]) for _ in range(batch)], versions,
                                    tag=wanted, seen=seen)
        challenge = continuous(deployment)["challenge"]
        if challenge["state"] != "running" or len(pairs) >= most:
            break
    assert challenge["state"] in (wanted, {"promoted": "promoting", "rolled_back": "rolling_back"}[wanted]), challenge
    challenge = wait_for(lambda: (c := continuous(deployment)["challenge"])["state"] == wanted and c, 120,
                         f"the challenge {wanted}")
    return challenge, pairs


def check_evidence(challenge: dict, pairs: list[tuple[bool, bool]], decision: str) -> None:
    """The decision's evidence matches the outcomes counted here on the reviews made up to the decision."""
    evidence = challenge["evidence"]
    assert evidence["decision"] == decision and evidence["alpha"] == 0.05 and evidence["min_sample"] == 12
    assert evidence["pairs"] >= 12 and evidence["log_evidence"] >= evidence["threshold"]
    prefixes = []
    for n in range(1, len(pairs) + 1):
        seen = pairs[:n]
        prefixes.append((n, sum(a and not b for a, b in seen), sum(b and not a for a, b in seen)))
    assert (evidence["pairs"], evidence["n10"], evidence["n01"]) in prefixes


def test_continuous_settings_checked_and_isolated(stack, owner, bob, loop):
    deployment = loop["deployment"]
    name = deployment.name
    longest_run = stack.settings().tasks.max_timeout
    valid = {"deployment": name, "project_id": loop["project"]["id"], "threshold": 5,
             "orchestration_id": loop["orchestration"]["id"], "experiment_parameters": {"train_size": 100}}
    bad = [("setup_continuous_training", valid | {"scan_config": {"grid": [1, 2]}}, 400),
           ("setup_continuous_training", {k: v for k, v in valid.items() if k != "experiment_parameters"}, 400),
           ("setup_continuous_training", valid | {"threshold": 0}, 400),
           # no orchestration: only an ML backend's deployment trains through its own fit (test_ml_backend_continuous)
           ("setup_continuous_training", {k: v for k, v in valid.items() if k != "orchestration_id"}, 400),
           ("setup_continuous_training", valid | {"project_id": 999999}, 404),
           ("setup_continuous_training", valid | {"orchestration_id": "00000000-0000-0000-0000-000000000001"}, 404),
           ("setup_continuous_training", valid | {"dataset_version": {"dataset_id": 999999}}, 404),
           ("setup_continuous_training", valid | {"trigger": "EVERY_TUESDAY"}, 400),
           # a timeout the task scheduler would refuse when the training starts, in the background
           ("setup_continuous_training", valid | {"timeout": longest_run + 1}, 400),
           ("toggle_continuous_training", {"deployment": name, "active": True}, 409),
           ("attach_dataset_version_to_continuous_training",
            {"deployment": name, "alias": "train", "dataset_version": {"dataset_id": loop["train"]["id"]}}, 409),
           ("setup_continuous_deployment", {"deployment": name, "policy": "DEPLOY_SOMETIMES"}, 400),
           ("setup_continuous_deployment", {"deployment": name, "policy": "DEPLOY_SHADOW", "alpha": 0.7}, 400),
           ("toggle_continuous_deployment", {"deployment": name, "active": False}, 409)]
    for route, body, status in bad:
        answer = post(stack, f"deployments/{route}", owner.token, body)
        assert answer.status_code == status, (route, body, answer.text)
        assert answer.json()["code"] and answer.json()["msg"], answer.text
    too_long = post(stack, "deployments/setup_continuous_training", owner.token, valid | {"timeout": longest_run + 1})
    assert too_long.json()["code"] == "timeout_too_long" and f"{longest_run} s" in too_long.json()["msg"]
    scoring = inference_token(stack, owner)
    outsider = bob
    for route, body in [("setup_continuous_training", valid), ("setup_continuous_deployment",
                                                                {"deployment": name, "policy": "DEPLOY_AUTO"}),
                        ("toggle_continuous_training", {"deployment": name, "active": True}),
                        ("toggle_continuous_deployment", {"deployment": name, "active": True}),
                        ("attach_dataset_version_to_continuous_training",
                         {"deployment": name, "alias": "x", "dataset_version": {"dataset_id": loop["train"]["id"]}}),
                        ("detach_dataset_version_from_continuous_training",
                         {"deployment": name, "dataset_version": {"dataset_id": loop["train"]["id"]}})]:
        assert post(stack, f"deployments/{route}", outsider.token, body).status_code == 404, route
        assert post(stack, f"deployments/{route}", scoring, body).status_code == 403, route
        assert post(stack, f"deployments/{route}", None, body).status_code == 401, route
    state = continuous(deployment)
    assert state["training"] is None and state["deployment"] is None and state["last_training"] is None


def test_threshold_trains_once_shadow_first_then_the_better_model_is_promoted(stack, owner, loop):
    deployment = loop["deployment"]
    events_before = event_counts(stack)
    info = deployment.setup_continuous_deployment(ContinuousDeploymentPolicy.DEPLOY_SHADOW, alpha=0.05,
                                                  min_sample=12)
    assert info["deployment"] == {"active": True, "policy": "DEPLOY_SHADOW", "alpha": 0.05, "min_sample": 12,
                                  "suspended_reason": None}
    info = deployment.setup_continuous_training(loop["project"], loop["train"], threshold=8,
                                                experiment_parameters={"train_size": 1200, "seed": 1},
                                                orchestration=loop["orchestration"])
    assert info["training"]["active"] and info["training"]["threshold"] == 8
    assert info["training"]["model_name"] == "digits" and info["training"]["reviews_at_last_training"] == 0
    deployment.attach_dataset_version_to_continuous_training("holdout", loop["holdout"])
    deployment.attach_dataset_version_to_continuous_training("test", loop["holdout"])  # the alias moves
    info = deployment.detach_dataset_version_from_continuous_training(loop["holdout"])
    assert info["training"]["datasets"] == {"train": {"dataset_id": loop["train"]["id"], "version_id": None}}
    deployment.attach_dataset_version_to_continuous_training("test", loop["holdout"])
    assert post(stack, "deployments/detach_dataset_version_from_continuous_training", owner.token, {
        "deployment": deployment.name, "dataset_version": {"dataset_id": 999999}}).status_code == 404

    # 6 predictions by the model (tags, source) and 2 made elsewhere; 7 reviews: below the threshold
    predict_and_review(deployment, [next(loop["next_image"]) for _ in range(5)])
    elsewhere = []
    for _ in range(2):
        index = next(loop["next_image"])
        image, label = digit_png(index)
        elsewhere.append((deployment.monitor_bytes(
            image, "image/png", f"elsewhere-{index}.png", latency=0.01, height=8, width=8,
            prediction={"detection_classes": [(label + 1) % 10], "detection_scores": [0.6]}, tags=["edge"]), label))
    deployment.review_prediction(elsewhere[0][0]["id"], {"detection_classes": [elsewhere[0][1]]})
    predict_and_review(deployment, [next(loop["next_image"])])
    assert continuous(deployment)["training"]["reviews"] == 7 and not training_tasks(loop)
    # the 8th review starts exactly one training run
    deployment.review_prediction(elsewhere[1][0]["id"], {"detection_classes": [elsewhere[1][1]]})
    tasks = wait_for(lambda: training_tasks(loop), 30, "the training task")
    predict_and_review(deployment, [next(loop["next_image"])])  # one more review: no second run
    assert len(tasks) == 1 and tasks[0]["input_data"]["experiment_parameters"] == {"train_size": 1200, "seed": 1}
    assert tasks[0]["input_data"]["datasets"] == {"train": {"dataset_id": loop["train"]["id"], "version_id": None},
                                                  "test": {"dataset_id": loop["holdout"]["id"], "version_id": None}}
    assert tasks[0]["input_data"]["reviews"] == 8

    # its model version arrives, is linked to the run in the graph, and runs as the shadow challenger
    state = wait_for(lambda: (s := continuous(deployment))["challenge"] and s, 120, "the shadow challenger")
    training = state["last_training"]
    assert training["state"] == "done" and training["outcome"] == "shadow" and training["reviews"] == 8
    trained = training["model_version"]
    assert trained["name"] == "digits" and trained["version"] not in (loop["weak"].version, loop["good"].version)
    assert state["challenge"]["state"] == "running"
    assert state["challenge"]["champion"]["version"] == loop["weak"].version
    assert wait_for(lambda: deployment.get_shadow_model(), 60, "the shadow model")["version"] == trained["version"]
    assert len(training_tasks(loop)) == 1
    runs = loop["orchestrations"].runs(tasks[0]["id"])
    assert [r["status"] for r in runs] == ["success"] and str(runs[0]["run_id"]) == training["run_id"]
    graph = post(stack, "workflow/graph", owner.token, {"workspace_id": owner.workspace_id, "kind": "model_version",
                                                          "ref": trained["version"], "direction": "ancestors"})
    assert graph.status_code == 200, graph.text
    nodes = {(n["kind"], n["ref"]) for n in graph.json()["nodes"]}
    assert ("task_run", training["run_id"]) in nodes and ("orchestration", loop["orchestration"]["id"]) in nodes
    deployment.toggle_continuous_training(False)

    # reviews keep arriving: the sequential test promotes the better challenger, which then serves alone
    seen: list[tuple[int, int, int | None]] = []
    challenge, pairs = run_until_decided(loop, deployment, "promoted", seen=seen)
    check_evidence(challenge, pairs, "promote")
    # get_stats on the same reviews (the predictions tagged "promoted"), against the numbers counted here
    stats = deployment.get_stats(ServiceMetrics.REVIEWS_CLASSIFICATION_STATS, tags=["promoted"])["stats"]
    shadowed = [(label, shadow) for label, _, shadow in seen if shadow is not None]
    assert stats["reviews"] == len(seen) and stats["accepted"] == sum(label == answer for label, answer, _ in seen)
    assert stats["champion"]["accuracy"] == pytest.approx(np.mean([label == answer for label, answer, _ in seen]))
    assert stats["shadow"]["rows"] == len(shadowed)
    assert stats["shadow"]["accuracy"] == pytest.approx(np.mean([label == shadow for label, shadow in shadowed]))
    assert challenge["evidence"]["challenger_accuracy"] > challenge["evidence"]["champion_accuracy"]
    assert deployment.get_model_version()["version"] == trained["version"]
    assert deployment.get_shadow_model() is None
    assert len(training_tasks(loop)) == 1
    loop["trained"] = trained
    # one training started and finished, one decision, two swaps (shadow set, promoted): each an event
    wanted = dict(zip(CONTINUOUS_EVENTS, (1, 1, 1, 2), strict=True))
    wait_for(lambda: {k: v - events_before[k] for k, v in event_counts(stack).items()} == wanted, 20, "the events")


def test_a_worse_challenger_is_rolled_back(stack, owner, loop):
    deployment = loop["deployment"]
    champion = deployment.get_model_version()
    if champion["version"] != loop.get("trained", {}).get("version"):  # the promoted model (1200 images) is good
        champion = deployment.set_model(loop["good"])["model_version"]
    before = continuous(deployment)["last_training"]
    info = deployment.setup_continuous_training(loop["project"], threshold=4, orchestration=loop["orchestration"],
                                                experiment_parameters={"train_size": 40, "seed": 2})
    if not opened_at_set_up(info, before):  # after the first test it is: its reviews reach 4 at once
        predict_and_review(deployment, [next(loop["next_image"]) for _ in range(4)])
    state = wait_for(lambda: (s := continuous(deployment))["challenge"]["state"] == "running" and
                     s["last_training"]["outcome"] == "shadow" and s, 120, "the second challenger")
    worse = state["last_training"]["model_version"]
    assert state["challenge"]["champion"]["version"] == champion["version"]
    assert wait_for(lambda: deployment.get_shadow_model(), 60, "the shadow model")["version"] == worse["version"]
    deployment.toggle_continuous_training(False)
    challenge, pairs = run_until_decided(loop, deployment, "rolled_back")
    check_evidence(challenge, pairs, "roll_back")
    assert deployment.get_model_version()["version"] == champion["version"]
    assert deployment.get_shadow_model() is None
    assert len(training_tasks(loop)) == 2


def test_a_failed_run_changes_nothing_manual_waits_and_automatic_serves(stack, owner, loop):
    deployment = loop["deployment"]
    served = deployment.get_model_version()
    deployment.setup_continuous_deployment("DEPLOY_MANUAL")

    def train(parameters: dict | None = None, scan: dict | None = None) -> dict:
        last = continuous(deployment)["last_training"]
        before = last["id"]
        info = deployment.setup_continuous_training(loop["project"], threshold=2, orchestration=loop["orchestration"],
                                                    experiment_parameters=parameters, scan_config=scan)
        if not opened_at_set_up(info, last):  # the first set-up here opens one at once (the challenge's reviews)
            predict_and_review(deployment, [next(loop["next_image"]) for _ in range(2)])
        return wait_for(lambda: (t := continuous(deployment)["last_training"])["id"] != before and
                        t["state"] in ("done", "failed") and t, 120, "the training")

    failed = train({"train_size": "many"})  # the run raises: the training fails, nothing is served
    assert failed["outcome"] == "failed" and "training run failed" in failed["reason"], failed
    assert failed["model_version"] is None
    pending = train({"train_size": 300, "seed": 4})  # DEPLOY_MANUAL: the version waits for a person
    assert pending["outcome"] == "pending"
    assert continuous(deployment)["pending_model_version"] == pending["model_version"]
    assert deployment.get_model_version() == served and deployment.get_shadow_model() is None
    deployment.setup_continuous_deployment("DEPLOY_AUTO")
    deployed = train(scan={"train_size": [100, 300], "seed": 5})  # DEPLOY_AUTO: served at once
    assert deployed["outcome"] == "deployed"
    assert [t["input_data"].get("scan_config") for t in training_tasks(loop)].count(
        {"train_size": [100, 300], "seed": 5}) == 1
    new = deployed["model_version"]["version"]
    assert wait_for(lambda: deployment.get_model_version()["version"] == new, 60, "the automatic deployment")
    assert deployment.get_shadow_model() is None
    deployment.toggle_continuous_training(False)
    deployment.toggle_continuous_deployment(False)
    state = continuous(deployment)
    assert not state["training"]["active"] and not state["deployment"]["active"]
    assert len(training_tasks(loop)) == 5
    refused = post(stack, "deployments/delete", owner.token, {"deployment": deployment.name})
    assert refused.status_code == 409 and "continuous training" in refused.json()["msg"], refused.text
