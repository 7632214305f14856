"""A tenant removed from a workspace loses the workspace's deployments at once, inference included.

Every route refuses a removed member at once (test_isolation.py::test_a_removed_member_loses_access). Inference was
the exception: the gateway's fast path caches a user's membership for MEMBER_TTL (30 s) and re-checks only when the
entry expires, so while the deployment stayed in use (its owner inferring kept the cached route fresh) a member
removed by the owner went on scoring on it, and reading its answers, for up to 30 s. The gateway now drops the
cached membership when `events.workspace.membership_changed` arrives."""

from __future__ import annotations

import threading
import time

import pytest

from tests.integration.conftest import post, undeploy_all
from tests.integration.test_pipelines import create_pipeline, infer, upload_model

pytestmark = pytest.mark.integration

ROWS = [{"tensor": [0.1] * 29}]


def test_a_removed_member_is_refused_inference_at_once_while_the_deployment_is_busy(stack, alice, bob):
    version = upload_model(stack, alice, "shared")
    pipeline = create_pipeline(stack, alice, "shared", version)
    deployed = post(stack, "pipelines/deploy", alice.token, {
        "deploy_id": "shared", "pipeline_version_pk_id": pipeline["pipeline_variant_pk_id"],
        "pipeline_id": pipeline["pipeline_pk_id"]})
    assert deployed.status_code == 200, deployed.text
    url = f"{stack.api}/pipelines/infer/shared-{deployed.json()['id']}/shared"
    alice.client.post("workspaces/add_user", {"email": bob.email, "workspace_id": alice.workspace_id})
    stop = threading.Event()
    owner_answers: list[int] = []

    def owner_keeps_scoring() -> None:  # the owner's traffic keeps the gateway's route fresh with her token
        while not stop.is_set():
            owner_answers.append(infer(url, alice.token, ROWS).status_code)
            stop.wait(0.1)

    owner = threading.Thread(target=owner_keeps_scoring, daemon=True)
    try:
        for _ in range(3):  # bob, a member: his membership is now cached by the gateway
            answer = infer(url, bob.token, ROWS)
            assert answer.status_code == 200, answer.text
        owner.start()
        alice.client.post("workspaces/remove_user", {"user_id": bob.user_id, "workspace_id": alice.workspace_id})
        removed = time.monotonic()
        # the event reaches the gateway right after the commit; on a loaded machine allow a few seconds
        while (answer := infer(url, bob.token, ROWS)).status_code == 200:
            assert time.monotonic() - removed < 15, "still infers 15 s after the removal (old TTL: 30 s)"
            time.sleep(0.2)
        assert answer.status_code == 404 and answer.json()["code"] == "not_found", answer.text
        # and stays refused while the owner's traffic keeps the route warm (the old cache answered 200 for 30 s)
        for _ in range(10):
            answer = infer(url, bob.token, ROWS)
            assert answer.status_code == 404, (round(time.monotonic() - removed, 1), answer.text)
            time.sleep(0.2)
        assert post(stack, "pipelines/get_logs", bob.token, {
            "pipeline_id": "shared", "workspace_id": alice.workspace_id}).status_code == 404
    finally:
        stop.set()
        if owner.is_alive():
            owner.join(30)
        undeploy_all(stack, alice)
    assert owner_answers and set(owner_answers) == {200}, owner_answers  # the owner was never refused
