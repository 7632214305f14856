"""Inference credentials are scoped to one workspace. A user of workspace B, with every credential it can get
(its user token, the login client's id and secret, its own workspace's inference client), cannot infer on
workspace A's deployment over the seed route, OIP v2 or the bus, and the answer is the same 404 that a
deployment that does not exist gets (no "exists elsewhere" oracle). Inference clients are created by owners,
shown once, listed without secrets and revocable; their secrets are kept as a keyed hash."""

from __future__ import annotations

import json

import asyncpg
import httpx
import pytest

from shared.sealed import sealed_request
from tests.integration.conftest import (
    Account,
    client_credentials,
    inference_client,
    inference_token,
    post,
)
from tests.integration.test_pipelines import deployed, infer  # noqa: F401 - the fixture is reused
from tests.models import sample_rows

pytestmark = pytest.mark.integration

ROW = [{"tensor": sample_rows(1)[0].tolist()}]


def _credentials_of(stack, intruder: Account) -> dict[str, str]:
    """Every token the intruder can get (the login client's client_credentials grant yields none)."""
    secrets = stack.secrets()
    login_client = client_credentials(stack, secrets["client_id"], secrets["client_secret"])
    assert login_client.status_code == 400 and login_client.json()["error"] == "unauthorized_client", \
        login_client.text
    return {"user token": intruder.token, "own inference client": inference_token(stack, intruder)}


def _without(name: str, text: str) -> str:
    return text.replace(name, "<deployment>")


def test_the_login_client_gets_no_inference_token(stack):
    secrets = stack.secrets()
    response = client_credentials(stack, secrets["client_id"], secrets["client_secret"])
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "unauthorized_client" and "create_inference_client" in body["error_description"]


def test_a_foreign_deployment_is_not_found_like_a_missing_one(stack, alice, bob, deployed):  # noqa: F811
    name = deployed["name"]
    missing = f"pipelinemodels-{deployed['deployment_id'] + 100000}"
    base = deployed["url"].split("/v1/api/")[0]
    for what, token in _credentials_of(stack, bob).items():
        for pipeline in ("pipelinemodels", "otherpipeline"):  # a wrong pipeline name says nothing more
            real = infer(f"{base}/v1/api/pipelines/infer/{name}/{pipeline}", token, ROW)
            absent = infer(f"{base}/v1/api/pipelines/infer/{missing}/{pipeline}", token, ROW)
            assert real.status_code == 404 and absent.status_code == 404, (what, real.text)
            assert _without(name, real.text) == _without(missing, absent.text), (what, real.text, absent.text)
        for method, suffix in (("GET", ""), ("GET", "/ready"), ("POST", "/infer")):
            body = {"inputs": [{"name": "tensor", "shape": [1, 29], "datatype": "FP32", "data": ROW[0]["tensor"]}]}
            answers = [httpx.request(method, f"{base}/v2/models/{target}{suffix}", json=body,
                                     headers={"Authorization": f"Bearer {token}"}, timeout=30)
                       for target in (name, missing)]
            assert [a.status_code for a in answers] == [404, 404], (what, suffix, answers[0].text)
            assert _without(name, answers[0].text) == _without(missing, answers[1].text), (what, suffix)
    # the owner's own credentials still work
    assert infer(deployed["url"], alice.token, ROW).status_code == 200
    assert infer(deployed["url"], inference_token(stack, alice), ROW).status_code == 200


async def test_resolving_a_foreign_deployment_on_the_bus_is_not_found(stack, bob, deployed):  # noqa: F811
    import nats

    nc = await nats.connect(stack.nats_url("client"), inbox_prefix="_INBOX.client")
    try:
        for token in _credentials_of(stack, bob).values():
            reply = await sealed_request(nc, "deployer.deployments.resolve",
                                         json.dumps({"name": deployed["name"]}).encode(),
                                         headers={"authorization": f"Bearer {token}"}, timeout=10)
            answer = json.loads(reply.data)
            assert not answer["ok"] and answer["status"] == 404, answer
            assert answer["error"]["msg"] == f"deployment {deployed['name']!r} not found"
    finally:
        await nc.close()


def test_inference_tokens_of_another_workspace_and_of_a_revoked_client_are_refused(stack, alice, deployed):  # noqa: F811
    client_id, secret = inference_client(alice, "scoring")
    token = client_credentials(stack, client_id, secret).json()["access_token"]
    assert infer(deployed["url"], token, ROW).status_code == 200
    listed = alice.client.post("workspaces/list_inference_clients", {"workspace_id": alice.workspace_id})["clients"]
    assert [c["client_id"] for c in listed if c["name"] == "scoring"] == [client_id]
    assert all("secret" not in json.dumps(c) for c in listed)
    # an inference client has no password grant, and its token is for inference only
    password = httpx.post(f"{stack.base_url}/auth/realms/master/protocol/openid-connect/token",
                          data={"grant_type": "password", "username": alice.email, "password": "x" * 10},
                          auth=(client_id, secret), timeout=30)
    assert password.status_code == 400 and password.json()["error"] == "unauthorized_client"
    assert post(stack, "workspaces/list", token).status_code == 403
    duplicate = post(stack, "workspaces/create_inference_client", alice.token,
                     {"workspace_id": alice.workspace_id, "name": "scoring"})
    assert duplicate.status_code == 409

    alice.client.post("workspaces/revoke_inference_client", {"workspace_id": alice.workspace_id,
                                                              "client_id": client_id})
    # at once: the revoke answers once its event is published, so the very next inference is refused (it inferred
    # for ~5-20 ms after the 200 while the event was still in auth's outbox; this test polled for 5 s)
    refused = infer(deployed["url"], token, ROW)
    assert refused.status_code == 401, refused.text
    for name in ("scoring-2", "scoring-3"):  # and again: not a race it won once
        other_id, other_secret = inference_client(alice, name)
        other = client_credentials(stack, other_id, other_secret).json()["access_token"]
        assert infer(deployed["url"], other, ROW).status_code == 200
        alice.client.post("workspaces/revoke_inference_client", {"workspace_id": alice.workspace_id,
                                                                  "client_id": other_id})
        assert infer(deployed["url"], other, ROW).status_code == 401
    assert client_credentials(stack, client_id, secret).status_code == 401
    listed = alice.client.post("workspaces/list_inference_clients", {"workspace_id": alice.workspace_id})["clients"]
    assert client_id not in [c["client_id"] for c in listed]


def test_only_owners_create_and_revoke_inference_clients(stack, alice, bob):
    alice.client.post("workspaces/add_user", {"email": bob.email, "workspace_id": alice.workspace_id})
    body = {"workspace_id": alice.workspace_id, "name": "collab"}
    assert post(stack, "workspaces/create_inference_client", bob.token, body).status_code == 403
    client_id, _ = inference_client(alice)
    revoke = {"workspace_id": alice.workspace_id, "client_id": client_id}
    assert post(stack, "workspaces/revoke_inference_client", bob.token, revoke).status_code == 403
    assert post(stack, "workspaces/list_inference_clients", bob.token,
                {"workspace_id": alice.workspace_id}).status_code == 200
    bad = post(stack, "workspaces/create_inference_client", alice.token,
               {"workspace_id": alice.workspace_id, "name": "no spaces"})
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_request"


def test_copy_does_not_reveal_pipeline_names_of_other_workspaces(stack, alice, bob, deployed):  # noqa: F811
    own = post(stack, "pipelines/create", bob.token,
               {"pipeline_id": "bobpipe", "workspace_id": bob.workspace_id, "definition": {}}).json()
    answers = [post(stack, "pipelines/copy", bob.token, {"name": name, "workspace_id": alice.workspace_id,
                                                          "source_pipeline": own["pipeline_pk_id"]})
               for name in ("pipelinemodels", "nosuchpipeline")]  # the first exists in alice's workspace
    assert [a.status_code for a in answers] == [404, 404], answers[0].text
    assert answers[0].json() == answers[1].json()


async def test_client_secrets_are_kept_as_keyed_hashes(stack, alice):
    client_id, secret = inference_client(alice)
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        rows = await conn.fetch("SELECT client_id, secret_hash FROM auth.clients WHERE NOT public")
    finally:
        await conn.close()
    assert rows and all(r["secret_hash"].startswith("hmac-sha256$") for r in rows)  # the web UI's has no secret
    assert secret not in {r["secret_hash"] for r in rows}
