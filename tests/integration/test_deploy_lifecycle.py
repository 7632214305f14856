"""The deploy/undeploy lifecycle's edges over HTTP on the real stack (docs/inference.md, "Deployments"): a redeploy
whose replicas fail to start changes nothing, and the engine replica processes that run are always exactly the
active deployment's (none orphaned); a failed deploy's replica logs stay until the undeploy, which removes the
deployment's folders (docs/deployment.md, "What an undeploy removes")."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import threading
import time
import zipfile
from pathlib import Path

import onnx
import psutil
import pytest
import requests
import urllib3

from shared.objectstore import BUCKET_ARTIFACTS, content_key
from tests.integration.conftest import Account, post
from tests.integration.test_registry import s3
from tests.models import byop_fraud_zip, ccfraud_onnx, sample_rows

pytestmark = pytest.mark.integration

RECORDS = "application/json; format=pandas-records"


def _upload(stack, account: Account, name: str, content: bytes, framework: str | None = None) -> None:
    response = requests.post(f"{stack.api}/models/upload_stream", files={"file": (name, content)},
                             data={"name": name, "workspace_id": account.workspace_id}
                             | ({"framework": framework} if framework else {}),
                             headers={"Authorization": f"Bearer {account.token}"}, timeout=60)
    assert response.status_code == 200, response.text


def _version(stack, account: Account, pipeline: str, models: list[str]) -> dict:
    """A version of `pipeline` with one ModelInference step per model."""
    response = post(stack, "pipelines/create", account.token, {
        "pipeline_id": pipeline, "workspace_id": account.workspace_id,
        "definition": {"steps": [{"ModelInference": {"models": [{"name": m}]}} for m in models]}})
    assert response.status_code == 200, response.text
    return response.json()


def _deploy(stack, account: Account, version: dict, deploy_id: str, replicas: int = 1):
    return post(stack, "pipelines/deploy", account.token, {
        "deploy_id": deploy_id, "pipeline_version_pk_id": version["pipeline_variant_pk_id"],
        "pipeline_id": version["pipeline_pk_id"], "engine_config": {"replica_count": replicas}})


def _infer(url: str, token: str) -> requests.Response:
    return requests.post(url, data=json.dumps([{"tensor": sample_rows(1)[0].tolist()}]), timeout=60,
                         headers={"Authorization": f"Bearer {token}", "Content-Type": RECORDS})


def _replica_pids(stack, deployment_id: int) -> dict[str, set[int]]:
    """The engine replica processes of deployment `deployment_id` running on this machine, by deployment name
    (each replica's spec file is under <data dir>/deployments/<name>/)."""
    folder = (stack.data_dir / "deployments").resolve()
    found: dict[str, set[int]] = {}
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if "services.engine.replica" not in cmdline or process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        spec = Path(cmdline[cmdline.index("services.engine.replica") + 1])
        if spec.parent.parent == folder and spec.parent.name.endswith(f"-{deployment_id}"):
            found.setdefault(spec.parent.name, set()).add(process.pid)
    return found


def test_a_redeploy_whose_replicas_fail_to_start_leaves_the_deployment_serving_as_it_was(stack, alice):
    """A redeploy under the same deploy_id whose new version's replicas fail used to mark the deployment inactive
    while its old replicas kept running and answering; under another deploy_id, it stopped both. Now both are a
    400 with the reason that changes nothing: same version, same name and URL, same replica processes, serving."""
    _upload(stack, alice, "lifeonnx", ccfraud_onnx())
    _upload(stack, alice, "lifebroken", byop_fraud_zip("numpy\nno-such-package-railyard==1.0\n"), "custom")
    working = _version(stack, alice, "life", ["lifeonnx"])
    deployed = _deploy(stack, alice, working, "life")
    assert deployed.status_code == 200, deployed.text
    deployment_id = deployed.json()["id"]
    name = f"life-{deployment_id}"
    url = post(stack, "admin/get_pipeline_external_url", alice.token,
               {"workspace_id": alice.workspace_id, "pipeline_name": "life"}).json()["url"]
    assert _infer(url, alice.token).status_code == 200
    serving = _replica_pids(stack, deployment_id)
    assert list(serving) == [name] and len(serving[name]) == 1

    broken = _version(stack, alice, "life", ["lifebroken"])
    for deploy_id in ("life", "liferenamed"):
        refused = _deploy(stack, alice, broken, deploy_id)
        assert refused.status_code == 400, refused.text
        assert "no-such-package-railyard" in refused.json()["msg"] and f"{name} still serves" in refused.json()["msg"]
        record = post(stack, "pipelines/get", alice.token, {"pipeline_id": working["pipeline_pk_id"]}).json()
        assert record["deployment"]["name"] == name
        assert record["deployment"]["pipeline_version_pk_id"] == working["pipeline_variant_pk_id"]
        status = post(stack, "status/get_deployment", alice.token, {"name": name}).json()
        assert status["status"] == "Running", status
        assert _replica_pids(stack, deployment_id) == serving  # the failed set is gone, the old one untouched
        assert _infer(url, alice.token).status_code == 200
    # what a user reads after the failed deploy: its replicas' logs and spec (under the name it was given) stay
    failed = stack.data_dir / "deployments" / f"liferenamed-{deployment_id}"
    assert list(failed.glob("replica-*.log")) and list(failed.glob("spec-*.json")), list(failed.iterdir())
    assert (failed / "kept.txt").exists(), list(failed.iterdir())  # marked kept: the folder sweep leaves it its time

    undeployed = post(stack, "pipelines/undeploy", alice.token,
                      {"pipeline_id": working["pipeline_pk_id"], "deployment_id": deployment_id})
    assert undeployed.status_code == 200, undeployed.text
    assert _replica_pids(stack, deployment_id) == {}
    assert _infer(url, alice.token).status_code == 404
    # the undeploy removes the deployment's folders, under both names (in the background: at once on an idle stack)
    folders = [stack.data_dir / top / f"{deploy_id}-{deployment_id}" for top in ("deployments", "engine-work")
               for deploy_id in ("life", "liferenamed")]
    deadline = time.monotonic() + 10
    while [folder for folder in folders if folder.exists()] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [folder for folder in folders if folder.exists()]


def _slow_loading_byop(seconds: float) -> bytes:
    """The test BYOP model, whose InferenceBuilder.create (run when a replica loads it, not by the upload's check)
    sleeps `seconds` first."""
    source = zipfile.ZipFile(io.BytesIO(byop_fraud_zip()))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for item in source.infolist():
            content = source.read(item)
            if item.filename.endswith("custom_inference.py"):
                content = content.replace(b"        inference = self.inference\n",
                                          f"        import time; time.sleep({seconds})\n"
                                          "        inference = self.inference\n".encode())
                assert b"time.sleep" in content
            archive.writestr(item, content)
    return buffer.getvalue()


def test_a_copy_with_deploy_whose_replicas_load_past_the_request_timeout_answers_once_they_serve(stack, alice):
    """The gateway waited the bus's request timeout (5 s) for pipelines/copy: a copy with `deploy` whose replicas
    took longer got a 504 while the deploy carried on. It now waits as long as a deploy may take
    (deployer.ready_timeout) and answers 200 with the deployment, Running."""
    _upload(stack, alice, "slowload", _slow_loading_byop(5.5), "custom")
    source = _version(stack, alice, "slowsource", ["slowload"])
    started = time.monotonic()
    copied = post(stack, "pipelines/copy", alice.token, {
        "name": "slowcopy", "workspace_id": alice.workspace_id, "source_pipeline": source["pipeline_pk_id"],
        "deploy": "slowcopy"})
    seconds = time.monotonic() - started
    assert copied.status_code == 200, (copied.text, seconds)
    assert seconds > stack.settings().nats.request_timeout  # it did take longer than a plain command may
    deployment = copied.json()["deployment"]
    status = post(stack, "status/get_deployment", alice.token, {"name": deployment["name"]}).json()
    assert status["status"] == "Running", status
    undeployed = post(stack, "pipelines/undeploy", alice.token,
                      {"pipeline_id": copied.json()["pipeline_pk_id"], "deployment_id": deployment["id"]})
    assert undeployed.status_code == 200 and _replica_pids(stack, deployment["id"]) == {}


def test_two_deploys_of_one_pipeline_at_once_end_with_one_set_of_the_last_ones_version(stack, alice):
    """Two deploys of one pipeline sent together (two versions, two deploy_ids, 1 and 2 replicas): commands run
    several at once, and the pipeline's lock in the deployer orders them. The end state is the one that answered
    last: its name, version and replica count, Running, and exactly its replica processes (none of the other's
    left); an undeploy then leaves none."""
    _upload(stack, alice, "overlapone", ccfraud_onnx())
    _upload(stack, alice, "overlaptwo", ccfraud_onnx())
    versions = {"one": _version(stack, alice, "overlap", ["overlapone"]),
                "two": _version(stack, alice, "overlap", ["overlaptwo"])}
    replicas = {"one": 1, "two": 2}
    together = threading.Barrier(2)
    answers: dict[str, tuple] = {}

    def deploy(key: str) -> None:
        together.wait()
        sent = time.monotonic()
        response = _deploy(stack, alice, versions[key], f"overlap{key}", replicas[key])
        answers[key] = (response, time.monotonic(), sent)

    threads = [threading.Thread(target=deploy, args=(key,)) for key in versions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert all(answer[0].status_code == 200 for answer in answers.values()), answers
    assert max(a[2] for a in answers.values()) < min(a[1] for a in answers.values())  # both were in flight at once
    assert answers["one"][0].json()["id"] == answers["two"][0].json()["id"]  # one deployment, redeployed
    last = max(answers, key=lambda key: answers[key][1])
    deployment_id = answers[last][0].json()["id"]
    name = f"overlap{last}-{deployment_id}"

    record = post(stack, "pipelines/get", alice.token, {"pipeline_id": versions[last]["pipeline_pk_id"]}).json()
    assert record["deployment"]["name"] == name
    assert record["deployment"]["pipeline_version_pk_id"] == versions[last]["pipeline_variant_pk_id"]
    status = post(stack, "status/get_deployment", alice.token, {"name": name}).json()
    assert status["status"] == "Running" and len(status["engines"]) == replicas[last], status
    assert _replica_pids(stack, deployment_id) == {name: {engine["pid"] for engine in status["engines"]}}
    url = post(stack, "admin/get_pipeline_external_url", alice.token,
               {"workspace_id": alice.workspace_id, "pipeline_name": "overlap"}).json()["url"]
    assert url.endswith(f"/{name}/overlap") and _infer(url, alice.token).status_code == 200

    undeployed = post(stack, "pipelines/undeploy", alice.token,
                      {"pipeline_id": versions[last]["pipeline_pk_id"], "deployment_id": deployment_id})
    assert undeployed.status_code == 200, undeployed.text
    assert _replica_pids(stack, deployment_id) == {}


def test_a_deployment_whose_replicas_keep_dying_at_their_start_answers_503_crash_loop_with_retry_after(stack, alice):
    """A deployment that served, whose replica then exits at every start (its model's stored bytes went bad: each
    replacement refuses the artifact by its sha256 and exits 2), is in a crash loop (CRASH_LOOP_AFTER exits in a
    row): an inference through the gateway answers 503 `deployment_crash_loop` with a Retry-After (the deployer's
    back-off) and, to a member of its workspace, why; the deployment's status says `Error` and why. Until the loop is
    told (the first exit is a restart, no loop yet) the inferences are 503 `unavailable` (starting): never a 200, a
    500 or a 504. (A model that never loads is no crash loop: its deploy is a 400, the first test above.)"""
    model = onnx.load_from_string(ccfraud_onnx())
    model.doc_string = "crash loop"  # an artifact of its own: no other test's replicas read its stored bytes
    content = model.SerializeToString()
    sha = hashlib.sha256(content).hexdigest()
    _upload(stack, alice, "crashloop", content)
    version = _version(stack, alice, "crashloop", ["crashloop"])
    deployed = _deploy(stack, alice, version, "crashloop")
    assert deployed.status_code == 200, deployed.text
    deployment_id = deployed.json()["id"]
    name = f"crashloop-{deployment_id}"
    url = post(stack, "admin/get_pipeline_external_url", alice.token,
               {"workspace_id": alice.workspace_id, "pipeline_name": "crashloop"}).json()["url"]
    assert _infer(url, alice.token).status_code == 200  # the gateway caches its route as Running
    http = urllib3.PoolManager()  # closed below: a client's own pool leaves its socket to the GC
    store, bucket = s3(stack, http), f"{stack.settings().s3.bucket_prefix}-{BUCKET_ARTIFACTS}"
    try:
        # the stored artifact goes bad and the replicas' cached copy is gone (the running replica loaded it before):
        # every replica started from now on downloads bytes that do not match their sha256, and exits at its start
        store.put_object(bucket, content_key(sha), io.BytesIO(b"not the model"), len(b"not the model"))
        (stack.data_dir / "engine-cache" / sha).unlink()
        [pid] = _replica_pids(stack, deployment_id)[name]
        os.kill(pid, signal.SIGKILL)  # the running replica dies (as out of memory): the supervisor replaces it
        # two replicas' starts and a 1 s back-off (~5-10 s); a bound for a loaded host, not a speed
        deadline = time.monotonic() + 60
        while True:
            answer = _infer(url, alice.token)
            assert answer.status_code == 503, answer.text
            if answer.json()["code"] == "deployment_crash_loop":
                break
            # starting again (or, before the deployer saw the exit, no engine): retry shortly
            assert answer.json()["code"] == "unavailable" and "retry shortly" in answer.json()["msg"], answer.text
            assert time.monotonic() < deadline, "the deployment's replicas exiting at their start was never told"
            time.sleep(0.2)
        retry_after = answer.headers.get("Retry-After", "")
        assert retry_after.isdigit() and 1 <= int(retry_after) <= 60, answer.headers  # crash_backoff_max: 60 s
        msg = answer.json()["msg"]
        assert "crash loop" in msg and "sha256" in msg and "refusing to load it" in msg, msg  # why, to a member
        # its status says why: the replica's CrashLoopBackOff reason (not in the instant between a replica's exit
        # and the supervisor's pass that backs it off, when the reason is its log's last line alone: read again)
        deadline = time.monotonic() + 10
        while True:
            status = post(stack, "status/get_deployment", alice.token, {"name": name}).json()
            assert status["status"] == "Error", status
            [engine] = status["engines"]
            assert engine["crashes"] >= 2 and f"artifact {sha[:12]} does not match its sha256" in engine["reason"], \
                engine
            if "CrashLoopBackOff" in engine["reason"]:
                break
            assert time.monotonic() < deadline, engine
            time.sleep(0.1)
        assert len(_replica_pids(stack, deployment_id).get(name, ())) <= 1  # one replica at a time, backed off
    finally:
        try:
            undeployed = post(stack, "pipelines/undeploy", alice.token,
                              {"pipeline_id": version["pipeline_pk_id"], "deployment_id": deployment_id})
        finally:  # the stored bytes as uploaded, also when the undeploy's request raised
            store.put_object(bucket, content_key(sha), io.BytesIO(content), len(content))
            http.clear()
    assert undeployed.status_code == 200, undeployed.text
    assert _replica_pids(stack, deployment_id) == {}
