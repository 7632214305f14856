"""Continuous deployment of an object detector on the real stack: the sequential test pairs reviewed detections by
per-image F1 at IoU 0.5 (services/monitoring/challenge_pairs.py). The bright-square detector is deployed with a low
"white" threshold (it calls grey squares white); a training run (a real orchestration registering a detector with
the SDK) brings a challenger with the right threshold, which serves in shadow under DEPLOY_SHADOW and is promoted as
reviews of images with grey squares arrive; the next training brings a worse one back, which is rolled back. The
evidence is checked against outcomes known by construction: on an image holding a grey square only the right
detector finds every square with its class; on an image of white squares both do (a tie)."""

from __future__ import annotations

import io
import time
import uuid
import zipfile
from pathlib import Path

import pytest
from railyard_client import Lineage, Orchestrations

from tests.image_models import GRID, detector_image_config, detector_onnx, squares_png
from tests.integration.conftest import make_account, undeploy_all
from tests.integration.conftest import sdk_client as sdk

pytestmark = pytest.mark.integration

TRAIN = '''
"""Continuous training of the square detector: register one with the run's white threshold."""
from railyard_client import Client, task_args

from image_models import detector_onnx

args = task_args()
threshold = float(args["experiment_parameters"]["white_above"])
version = Client().upload_model(args["model_name"], detector_onnx(white_above=threshold), progress=False)
print("registered", version.version, "white above", threshold)
'''

SIZE = 64
CELL = SIZE // GRID
WHITE, GREY = 255, 150  # mean brightness 1.0 and 0.59: "white" for every detector here, "grey" for the right one


def wait_for(condition, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def continuous(deployment) -> dict:
    return deployment.retrieve_information()["continuous"]


def scene(index: int) -> dict[tuple[int, int], int]:
    """Two lit cells, not touching; every third image has only white squares (a tie), the others a grey one."""
    first = (index % GRID, (index // GRID) % 2)
    second = ((index + 2) % GRID, 2 + (index // GRID) % 2)
    return {first: WHITE, second: WHITE if index % 3 == 0 else GREY}


def truth_of(cells: dict[tuple[int, int], int]) -> dict:
    """The review: every lit cell's box ([top, left, bottom, right] in pixels) with its class (1 white, 0 grey)."""
    ordered = sorted(cells)
    return {"detection_classes": [1 if cells[c] == WHITE else 0 for c in ordered],
            "detection_boxes": [[r * CELL, c * CELL, (r + 1) * CELL, (c + 1) * CELL] for r, c in ordered]}


def exact(prediction: dict | None, truth: dict) -> bool:
    """The prediction names exactly the reviewed boxes with their classes (its image F1 at IoU 0.5 is 1)."""
    if prediction is None:
        return False
    found = sorted(zip(map(tuple, prediction["detection_boxes"]), prediction["detection_classes"], strict=True))
    return found == sorted(zip(map(tuple, truth["detection_boxes"]), truth["detection_classes"], strict=True))


@pytest.fixture(scope="module")
def owner(stack, admin):
    account = make_account(stack, admin, "detloop")
    yield account
    undeploy_all(stack, account)


@pytest.fixture(scope="module")
def loop(stack, owner) -> dict:
    """The worse detector (grey squares called white) deployed, keeping boxes scored 0.3 and above (the lit cells);
    the training orchestration; a project with an images dataset."""
    client = sdk(stack, owner)
    worse = client.upload_model("squares", detector_onnx(white_above=0.3), progress=False)
    pipeline = client.build_pipeline("loop-squares").add_model_step(worse, image=detector_image_config())
    pipeline.deploy(replicas=1, cpus=0.5, wait=False)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("main.py", TRAIN)
        zipped.writestr("image_models.py", (Path(__file__).parents[1] / "image_models.py").read_text())
    orchestration = Orchestrations(client, owner.workspace_id).upload(archive.getvalue(), "train-squares",
                                                                       progress=False)
    lineage = Lineage(client, owner.workspace_id)
    project = lineage.create_project("continuous-detection")
    train = lineage.create_dataset(project["id"], "train", kind="images")
    pipeline.deployment().wait_until_running(180)
    deployment = client.get_deployment("loop-squares")
    deployment.update(min_threshold=0.3)
    return {"deployment": deployment, "worse": worse, "orchestration": orchestration, "project": project,
            "train": train, "next_image": iter(range(1000))}


def predict_and_review(loop, count: int, shadowed: tuple[str, str] | None = None) -> list[tuple[bool, bool]]:
    """Predict `count` scenes and review each with its true squares; the (champion exact, challenger exact) outcomes
    of the predictions that `shadowed` = (champion, challenger version) both answered."""
    deployment = loop["deployment"]
    pairs = []
    for _ in range(count):
        index = next(loop["next_image"])
        cells = scene(index)
        truth = truth_of(cells)
        result = deployment.predict_bytes(f"scene-{index}.png", squares_png(cells, size=SIZE), tags=["detloop"])
        if shadowed and result["shadow_prediction"] is not None and \
                (result["model_version"] or {}).get("version") == shadowed[0] and \
                (result["shadow_model_version"] or {}).get("version") == shadowed[1]:
            pairs.append((exact(result["prediction"], truth), exact(result["shadow_prediction"], truth)))
        deployment.review_prediction(result["id"], truth)
    return pairs


def challenger_after_training(loop, white_above: float) -> dict:
    """Set up a training of `white_above`, cross its threshold of 3 reviews, wait for its challenger to shadow."""
    deployment = loop["deployment"]
    before = continuous(deployment)["last_training"]
    info = deployment.setup_continuous_training(loop["project"], loop["train"], threshold=3,
                                                experiment_parameters={"white_above": white_above},
                                                orchestration=loop["orchestration"])
    last = info["last_training"]
    # setting up again keeps the last training's count: after the first challenge's reviews the set-up opens the
    # training at once, and reviews made while it is open would open another at its end (continuous.recheck_after)
    if last is None or (before is not None and last["id"] == before["id"]) or \
            last["state"] not in ("starting", "running", "succeeded"):
        predict_and_review(loop, 3)
    state = wait_for(lambda: (s := continuous(deployment))["challenge"] and s["challenge"]["state"] == "running"
                     and s["last_training"] and s["last_training"]["outcome"] == "shadow" and s, 180,
                     "the shadow challenger")
    deployment.toggle_continuous_training(False)
    challenger = state["last_training"]["model_version"]
    assert wait_for(lambda: deployment.get_shadow_model(), 60, "the shadow model")["version"] == challenger["version"]
    return state["challenge"]


def run_until_decided(loop, challenge: dict, wanted: str, most: int = 60) -> tuple[dict, list]:
    deployment = loop["deployment"]
    versions = (challenge["champion"]["version"], challenge["challenger"]["version"])
    pairs: list[tuple[bool, bool]] = []
    while True:
        pairs += predict_and_review(loop, 4, versions)
        challenge = continuous(deployment)["challenge"]
        if challenge["state"] != "running" or len(pairs) >= most:
            break
    assert challenge["state"] in (wanted, {"promoted": "promoting", "rolled_back": "rolling_back"}[wanted]), challenge
    challenge = wait_for(lambda: (c := continuous(deployment)["challenge"])["state"] == wanted and c, 120,
                         f"the challenge {wanted}")
    return challenge, pairs


def check_evidence(challenge: dict, pairs: list[tuple[bool, bool]], decision: str) -> None:
    """The evidence is the per-image F1 pairing of the reviews up to the decision: on these scenes one model is exact
    and the other misses a class (F1 0.5), or both are exact (a tie), so the outcomes counted here are the pairs."""
    evidence = challenge["evidence"]
    assert evidence["decision"] == decision and evidence["metric"] == "f1_iou50"
    assert evidence["pairs"] >= 12 and evidence["log_evidence"] >= evidence["threshold"]
    prefixes = [(n, sum(a and not b for a, b in pairs[:n]), sum(b and not a for a, b in pairs[:n]),
                 sum(a and b for a, b in pairs[:n])) for n in range(1, len(pairs) + 1)]
    assert (evidence["pairs"], evidence["n10"], evidence["n01"], evidence["n11"]) in prefixes
    n = evidence["pairs"]
    exact_champion, exact_challenger = (evidence["n11"] + evidence["n10"]) / n, (evidence["n11"] + evidence["n01"]) / n
    assert evidence["champion_accuracy"] == pytest.approx(exact_champion)
    assert evidence["challenger_accuracy"] == pytest.approx(exact_challenger)
    # an image with a grey square: the wrong detector finds 1 of 2 squares and reports 1 false one, F1 = 2/(2+1+1)
    assert evidence["champion_score"] == pytest.approx(exact_champion + 0.5 * (1 - exact_champion))
    assert evidence["challenger_score"] == pytest.approx(exact_challenger + 0.5 * (1 - exact_challenger))


def test_a_better_detector_is_promoted(stack, owner, loop):
    deployment = loop["deployment"]
    deployment.setup_continuous_deployment("DEPLOY_SHADOW", alpha=0.05, min_sample=12)
    challenge = challenger_after_training(loop, 0.75)
    assert challenge["champion"]["version"] == loop["worse"].version
    challenge, pairs = run_until_decided(loop, challenge, "promoted")
    assert pairs and all(b for _, b in pairs) and not all(a for a, _ in pairs)  # the scenes did what they should
    check_evidence(challenge, pairs, "promote")
    assert challenge["evidence"]["challenger_score"] > challenge["evidence"]["champion_score"]
    assert deployment.get_model_version()["version"] == challenge["challenger"]["version"]
    assert deployment.get_shadow_model() is None
    loop["better"] = challenge["challenger"]


def test_a_worse_detector_is_rolled_back(stack, owner, loop):
    deployment = loop["deployment"]
    if "better" not in loop:
        pytest.skip("needs the promoted detector of test_a_better_detector_is_promoted")
    challenge = challenger_after_training(loop, 0.35)  # calls grey squares white again (other bytes: a new version)
    assert challenge["champion"]["version"] == loop["better"]["version"]
    challenge, pairs = run_until_decided(loop, challenge, "rolled_back")
    check_evidence(challenge, pairs, "roll_back")
    assert challenge["evidence"]["challenger_score"] < challenge["evidence"]["champion_score"]
    assert deployment.get_model_version()["version"] == loop["better"]["version"]
    assert deployment.get_shadow_model() is None


def test_the_pre_aggregated_label_distribution_is_the_recomputed_one(loop):
    """AGGREGATED_LABEL_DISTRIBUTION through the route reads the hourly aggregate; any `excludes` makes get_stats
    compute from the rows: both answer the same under each filter (test_monitoring_stats_aggregates.py varies them on
    the database)."""
    deployment = loop["deployment"]
    worse = loop["worse"]
    kept = 0
    for filters in ({}, {"tags": ["detloop"]}, {"since": 3600}, {"model_version": {"name": "squares",
                                                                                  "version": worse.version}},
                    {"from_timestamp": time.time() - 20, "to_timestamp": time.time()}):
        aggregated = deployment.get_stats("AGGREGATED_LABEL_DISTRIBUTION", **filters)
        recomputed = deployment.get_stats("AGGREGATED_LABEL_DISTRIBUTION", excludes=[str(uuid.uuid4())], **filters)
        assert aggregated == recomputed, filters
        kept += aggregated["predictions"]
    assert kept > 0
