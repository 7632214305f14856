"""A shadow deployment of ML backends (seed 004) on the real stack: the coloured-squares backend of
test_ml_backend_predictions.py packaged three times, as `railyard-ml deploy railyard` does, and deployed as one
`ShadowDeploy` step (champion; a challenger answering under another control name; a challenger whose `predict`
raises). Through the gateway, the champion answers; the inference log holds the working challenger's outputs as
`out_<challenger>.<output>` and nothing of the failing one; seed 003's predict gets the challenger's answer as its
shadow prediction."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from shared.arrow_codec import from_ipc
from tests.integration.conftest import make_account, post, undeploy_all
from tests.integration.conftest import sdk_client as sdk
from tests.integration.test_ml_backend_predictions import BACKEND, DETECTION_CONFIG, squares

pytestmark = pytest.mark.integration

RIVAL_CONFIG = DETECTION_CONFIG.replace('name="found"', 'name="spotted"')  # the same boxes, another control name
BROKEN_CONFIG = DETECTION_CONFIG.replace('value="$image"', 'value="$picture"')  # predict raises KeyError('picture')
ARROW = "application/vnd.apache.arrow.file"


def upload_backend(client, folder, name: str, label_config: str):
    """The test backend packaged with this labeling config (`railyard-ml deploy railyard`'s steps), uploaded."""
    from railyard_ml.railyard_step import package

    (folder := folder / name).mkdir()
    (folder / "squares.py").write_text(BACKEND)
    (folder / "railyard-ml.json").write_text(json.dumps({"script": "squares.py", "model_class": "Squares"}))
    (folder / "requirements.txt").write_text("railyard-ml\n")
    archive, _ = package(folder, None, label_config)
    return client.upload_model(name, archive, framework="custom", progress=False)


@pytest.fixture(scope="module")
def owner(stack, admin):
    account = make_account(stack, admin, "mlshadow")
    yield account
    undeploy_all(stack, account)


def test_a_shadowed_backend_answers_with_its_champion_and_logs_its_challengers(stack, owner, tmp_path):
    from tests.ml_backend.conftest import wait_until

    client = sdk(stack, owner)
    champion, rival, broken = (upload_backend(client, tmp_path, name, config) for name, config in (
        ("squares-champion", DETECTION_CONFIG), ("squares-rival", RIVAL_CONFIG), ("squares-broken", BROKEN_CONFIG)))
    pipeline = client.build_pipeline("squares-shadowed").add_shadow_deploy(champion, [rival, broken])
    pipeline.deploy(replicas=1, cpus=0.5, wait=False)
    pipeline.deployment().wait_until_running(180)

    # through the gateway: the champion answers (control "found"); the challengers run after the answer
    png = squares((16, 16), [((200, 0, 0), (2, 4, 10, 12))])
    task = json.dumps({"id": 1, "data": {"image": "data:image/png;base64," + base64.b64encode(png).decode()}})
    url = post(stack, "admin/get_pipeline_external_url", owner.token,
               {"workspace_id": owner.workspace_id, "pipeline_name": "squares-shadowed"}).json()["url"]
    answer = httpx.post(url, json=[{"task": task}], timeout=60, headers={
        "Authorization": f"Bearer {owner.token}", "Content-Type": "application/json; format=pandas-records"})
    assert answer.status_code == 200, answer.text
    record = answer.json()[0]
    assert json.loads(record["metadata"]["last_model"])["model_name"] == "squares-champion"
    assert {k for k in record["out"]} == {"prediction", "score", "model_version"}
    found = json.loads(record["out"]["prediction"])["result"]
    assert [(r["from_name"], r["value"]["rectanglelabels"]) for r in found] == [("found", ["Red"])]

    # the log: the rival's outputs as out_squares-rival.*, nothing of the challenger whose predict raised
    def logged():
        response = httpx.post(f"{stack.api}/pipelines/get_logs", timeout=30, json={
            "pipeline_id": "squares-shadowed", "workspace_id": owner.workspace_id, "order": "Asc"},
            headers={"Authorization": f"Bearer {owner.token}", "Accept": ARROW})
        table = from_ipc(response.content) if response.status_code == 200 else None
        return table if table is not None and "out_squares-rival.prediction" in table.column_names else None

    table = wait_until(logged, timeout=30, every=0.2)
    assert table.num_rows == 1 and not [c for c in table.column_names if c.startswith("out_squares-broken")]
    assert table.column("out.prediction").to_pylist() == [record["out"]["prediction"]]
    spotted = json.loads(table.column("out_squares-rival.prediction")[0].as_py())["result"]
    assert [(r["from_name"], r["value"]) for r in spotted] == [("spotted", found[0]["value"])]

    # seed 003's predict runs the challengers inline: the rival's boxes, read from its own control ("spotted") with
    # the champion's labels, are the shadow prediction (read as the champion's "found", they were an empty one)
    predicted = client.get_deployment("squares-shadowed").predict_bytes("red.png", png)
    assert predicted["model_version"]["name"] == "squares-champion"
    assert predicted["shadow_model_version"]["name"] == "squares-rival"
    assert predicted["prediction"]["detection_classes"] == predicted["shadow_prediction"]["detection_classes"] == [1]
    assert predicted["shadow_prediction"]["detection_boxes"] == [[2, 4, 10, 12]]
    assert predicted["shadow_latency"] > 0
