"""Model uploads and reads over HTTP, as the seed sends them (requests, multipart), with the bad inputs
that must leave the store unchanged: no version, no model, no object left in storage."""

from __future__ import annotations

import io
import json
import time
import uuid
import zipfile

import numpy as np
import onnxruntime as ort
import psutil
import pytest
import requests
import urllib3
from minio import Minio

from shared.objectstore import content_key
from shared.sealed import sealed_request
from tests.integration.conftest import Account
from tests.models import (
    ccfraud_onnx,
    ccfraud_pickle,
    sample_rows,
    sklearn_predict_proba,
    xgboost_json,
    xgboost_pickle,
    xgboost_predict_proba,
)

pytestmark = pytest.mark.integration

PYTHON_STEP = b"import pandas as pd\n\ndef wallaroo_json(data: pd.DataFrame):\n    return data\n"


def upload(stack, account: Account, name: str, content: bytes, framework: str = "onnx", *,
           workspace_id: int | None = None, extra: dict | None = None, file_name: str | None = None):
    metadata = {"name": name, "visibility": "public",
                "workspace_id": account.workspace_id if workspace_id is None else workspace_id,
                "conversion": {"framework": framework, "python_version": "3.8", "requirements": []}, **(extra or {})}
    files = {"metadata": (None, json.dumps(metadata), "application/json"),
             "file": (file_name or name, content, "application/octet-stream")}
    return requests.post(f"{stack.api}/models/upload_and_convert", files=files,
                         headers={"Authorization": f"Bearer {account.token}"}, timeout=120)


def api(stack, account: Account, path: str, body: dict):
    return requests.post(f"{stack.api}/{path}", json=body, headers={"Authorization": f"Bearer {account.token}"},
                         timeout=60)


def model_id_of(response) -> int:
    assert response.status_code == 200, response.text
    return response.json()["insert_models"]["returning"][0]["models"][0]["id"]


def s3(stack, http: urllib3.PoolManager | None = None) -> Minio:
    settings = stack.settings().s3
    return Minio(settings.endpoint, settings.access_key, settings.secret_key, secure=False, http_client=http)


def artifact_keys(stack) -> set[str]:
    with urllib3.PoolManager() as http:  # closed here: a client's own pool leaves its socket to the GC
        return {o.object_name for o in s3(stack, http).list_objects("railyard-artifacts", recursive=True)}


def byop_zip(*, requirements=True, classes=("Inference", "InferenceBuilder"), extra: dict | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        body = "from mac.inference import Inference\nfrom mac.inference.creation import InferenceBuilder\n"
        for i, base in enumerate(classes):
            body += f"\nclass Custom{i}({base}):\n    pass\n"
        archive.writestr("model/main.py", body)
        if requirements:
            archive.writestr("model/requirements.txt", "numpy\n")
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_onnx_upload_and_reads_as_in_the_seed(stack, alice):
    name = f"ccfraud-{uuid.uuid4().hex[:6]}"
    model_id = model_id_of(upload(stack, alice, name, ccfraud_onnx()))
    models = api(stack, alice, "models/list", {"workspace_id": alice.workspace_id}).json()["models"]
    assert [m for m in models if m["id"] == model_id][0]["name"] == name
    details = api(stack, alice, "models/get_by_id", {"id": model_id}).json()
    assert details["workspace_id"] == alice.workspace_id and details["name"] == name
    assert details["owner_id"] == alice.user_id and details["model_config"] is None
    versions = api(stack, alice, "models/list_versions", {"model_id": name, "models_pk_id": model_id}).json()
    assert isinstance(versions, list) and len(versions) == 1
    version = versions[0]
    assert version["sha"] == __import__("hashlib").sha256(ccfraud_onnx()).hexdigest()
    assert version["models_pk_id"] == model_id and version["model_id"] == name and version["status"] == "ready"
    assert uuid.UUID(version["model_version"]) and version["file_name"] == name and version["image_path"] is None
    # the seed's row (MLOps API guide, "List model versions") and Railyard's three additions; no upload-answer field
    # such as `created` (projects/list_versions of workflow lineage carries one)
    assert set(version) == {"sha", "models_pk_id", "model_version", "owner_id", "model_id", "id", "file_name",
                            "image_path", "status"} | {"framework", "runtime", "error"}, sorted(version)
    assert api(stack, alice, "models/get_config_by_id", {"model_id": model_id}).json() == {"model_config": None}
    full = api(stack, alice, "models/get", {"id": model_id}).json()
    assert full["id"] == model_id and [v["model_version"] for v in full["models"]] == [version["model_version"]]
    workspaces = alice.client.post("workspaces/list", {})["workspaces"]
    deadline = time.monotonic() + 10
    while model_id not in next(w for w in workspaces if w["id"] == alice.workspace_id)["models"]:
        assert time.monotonic() < deadline, "workspaces/list never showed the model"
        time.sleep(0.2)
        workspaces = alice.client.post("workspaces/list", {})["workspaces"]


def test_same_name_adds_a_version_and_same_bytes_are_stored_once(stack, alice):
    name = f"versioned-{uuid.uuid4().hex[:6]}"
    first = model_id_of(upload(stack, alice, name, ccfraud_onnx()))
    second = model_id_of(upload(stack, alice, name, ccfraud_onnx()))
    assert first == second
    versions = api(stack, alice, "models/list_versions", {"models_pk_id": first}).json()
    assert len(versions) == 2 and versions[0]["model_version"] != versions[1]["model_version"]
    assert versions[0]["sha"] == versions[1]["sha"]
    shared = [k for k in artifact_keys(stack) if k == content_key(versions[0]["sha"])]
    assert len(shared) == 1


def test_upload_stream_as_in_the_seed(stack, alice):
    name = f"stream-{uuid.uuid4().hex[:6]}"
    response = requests.post(
        f"{stack.api}/models/upload_stream",
        files={"file": (name, ccfraud_onnx())},
        data={"name": name, "filename": "ccfraud.onnx", "visibility": "public", "workspace_id": alice.workspace_id},
        headers={"Authorization": f"Bearer {alice.token}", "contentType": "application/octet-stream"}, timeout=60)
    model_id = model_id_of(response)
    version = api(stack, alice, "models/list_versions", {"models_pk_id": model_id}).json()[0]
    assert version["file_name"] == "ccfraud.onnx" and version["runtime"] == "onnx"


def test_upload_stream_fields_sent_to_upload_and_convert_as_the_seeds_example_does(stack, alice):
    # seed 001 lines 871-888: the stream example builds api_request for upload_stream but posts to `apiRequest`,
    # the upload_and_convert URL of an earlier cell, with form fields and no metadata part, and shows the model
    # inserted; a script copied from it got 400 "needs a 'metadata' part"
    name = f"streamed-{uuid.uuid4().hex[:6]}"
    response = requests.post(
        f"{stack.api}/models/upload_and_convert", files={"file": (name, ccfraud_onnx())},
        data={"name": name, "filename": "./models/ccfraud.onnx", "visibility": "public",
              "workspace_id": alice.workspace_id},
        headers={"Authorization": f"Bearer {alice.token}", "contentType": "application/octet-stream"}, timeout=60)
    model_id = model_id_of(response)
    version = api(stack, alice, "models/list_versions", {"models_pk_id": model_id}).json()[0]
    assert version["model_id"] == name and version["runtime"] == "onnx" and version["status"] == "ready"
    # the fields are checked as upload_stream checks them: nothing is stored for a bad one
    before_keys = artifact_keys(stack)
    refused = requests.post(
        f"{stack.api}/models/upload_and_convert", files={"file": (name, ccfraud_onnx())},
        data={"name": name, "workspace_id": "abc"}, headers={"Authorization": f"Bearer {alice.token}"}, timeout=60)
    assert refused.status_code == 400 and "workspace_id" in refused.json()["msg"], refused.text
    assert artifact_keys(stack) == before_keys


def test_sklearn_pickle_becomes_an_onnx_version_matching_sklearn(stack, alice):
    name = f"sk-{uuid.uuid4().hex[:6]}"
    model_id = model_id_of(upload(stack, alice, name, ccfraud_pickle(), "sklearn"))
    deadline = time.monotonic() + 60
    while True:
        version = api(stack, alice, "models/list_versions", {"models_pk_id": model_id}).json()[0]
        if version["status"] != "converting":
            break
        assert time.monotonic() < deadline, "conversion never finished"
        time.sleep(0.2)
    assert version["status"] == "ready" and version["runtime"] == "onnx" and version["framework"] == "sklearn", version
    data = s3(stack).get_object("railyard-artifacts", content_key(version["sha"])).read()
    session = ort.InferenceSession(data)
    rows = sample_rows(64, seed=9)
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"tensor": rows}), strict=True))
    probabilities = next(v for k, v in outputs.items() if "prob" in k)
    assert np.allclose(probabilities[:, 1:2], sklearn_predict_proba(rows), atol=1e-5)


@pytest.mark.parametrize("kind", ["pickle", "json"])
def test_xgboost_model_becomes_an_onnx_version_matching_xgboost(stack, alice, kind):
    content = xgboost_pickle() if kind == "pickle" else xgboost_json()
    model_id = model_id_of(upload(stack, alice, f"xgb-{kind}-{uuid.uuid4().hex[:6]}", content, "xgboost"))
    deadline = time.monotonic() + 60
    while (version := api(stack, alice, "models/list_versions", {"models_pk_id": model_id}).json()[0])["status"] \
            == "converting":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert version["status"] == "ready" and version["runtime"] == "onnx", version
    session = ort.InferenceSession(s3(stack).get_object("railyard-artifacts", content_key(version["sha"])).read())
    rows = sample_rows(32, seed=4)
    probabilities = session.run(["probabilities"], {"tensor": rows})[0]
    assert np.allclose(probabilities[:, 1:2], xgboost_predict_proba(rows), atol=1e-5)


def test_bad_pickle_ends_in_error_with_the_reason(stack, alice):
    model_id = model_id_of(upload(stack, alice, f"badpkl-{uuid.uuid4().hex[:6]}", b"not a pickle", "sklearn"))
    deadline = time.monotonic() + 60
    while (version := api(stack, alice, "models/list_versions", {"models_pk_id": model_id}).json()[0])["status"] \
            == "converting":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert version["status"] == "error" and "unpickle" in version["error"] and version["sha"] is None


def test_python_step_and_byop_zip_are_accepted(stack, alice):
    step = model_id_of(upload(stack, alice, f"step-{uuid.uuid4().hex[:6]}", PYTHON_STEP, "python"))
    assert api(stack, alice, "models/list_versions", {"models_pk_id": step}).json()[0]["runtime"] == "python"
    custom = model_id_of(upload(stack, alice, f"byop-{uuid.uuid4().hex[:6]}", byop_zip(), "custom"))
    assert api(stack, alice, "models/list_versions", {"models_pk_id": custom}).json()[0]["runtime"] == "custom"


def _zip_slip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("requirements.txt", "numpy\n")
        archive.writestr("../../etc/evil.py", "class A(Inference): pass\nclass B(InferenceBuilder): pass\n")
    return buffer.getvalue()


def _onnx_variant(*, external: str | None = None, opset: int | None = None) -> bytes:
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [1], [2.0])
    if external is not None:
        weight.ClearField("float_data")
        weight.data_location = TensorProto.EXTERNAL
        weight.external_data.add(key="location", value=external)
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset or 17)], ir_version=8)
    return model.SerializeToString()


BAD_UPLOADS = {
    "external data leaving the folder": (dict(content=_onnx_variant(external="../../etc/passwd")),
                                         "outside the model's folder"),
    "external data file": (dict(content=_onnx_variant(external="weights.bin")), "external file"),
    "opset newer than supported": (dict(content=_onnx_variant(opset=99)), "opset 99"),
    "non-ONNX bytes": (dict(content=b"\x00\x01garbage bytes"), "not an ONNX model"),
    "empty file": (dict(content=b""), "empty"),
    "bad name": (dict(content=ccfraud_onnx(), name="bad_name.v1"), "DNS"),
    "unknown framework": (dict(content=ccfraud_onnx(), framework="tensorflow-lite"), "not supported"),
    "bad input schema": (dict(content=PYTHON_STEP, framework="python", extra={"input_schema": "!!!"}),
                         "input_schema"),
    "python step without entry point": (dict(content=b"def predict(x):\n    return x\n", framework="python"),
                                        "wallaroo_json"),
    "python syntax error": (dict(content=b"def wallaroo_json(:\n", framework="python"), "syntax error"),
    "zip-slip zip": (dict(content=_zip_slip(), framework="custom"), "outside the model's folder"),
    "zip without requirements": (dict(content=byop_zip(requirements=False), framework="custom"), "requirements.txt"),
    "zip without entry classes": (dict(content=byop_zip(classes=("object",)), framework="custom"), "Inference"),
    "not a zip": (dict(content=b"PK but not really", framework="custom"), "not a zip"),
}


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_bad_uploads_are_400_and_leave_nothing(stack, alice, case):
    kwargs, message = BAD_UPLOADS[case]
    before_models = api(stack, alice, "models/list", {"workspace_id": alice.workspace_id}).json()["models"]
    before_keys = artifact_keys(stack)
    name = kwargs.pop("name", f"bad-{uuid.uuid4().hex[:6]}")
    response = upload(stack, alice, name, **kwargs)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_request" and message in response.json()["msg"], response.text
    assert api(stack, alice, "models/list", {"workspace_id": alice.workspace_id}).json()["models"] == before_models
    assert artifact_keys(stack) - before_keys == set(), "a rejected upload left objects behind"


@pytest.mark.parametrize("files, message", [
    ({"file": ("m", b"x")}, "metadata"),
    ({"metadata": (None, "{not json")}, "not valid JSON"),
    ({"metadata": (None, json.dumps({"name": "x", "workspace_id": 1, "conversion": {"framework": "onnx"}}))}, "file"),
])
def test_malformed_multipart_is_400(stack, alice, files, message):
    before_keys = artifact_keys(stack)
    response = requests.post(f"{stack.api}/models/upload_and_convert", files=files,
                             headers={"Authorization": f"Bearer {alice.token}"}, timeout=60)
    assert response.status_code == 400 and message in response.json()["msg"], response.text
    assert artifact_keys(stack) == before_keys


def test_missing_metadata_fields_are_400_and_leave_nothing(stack, alice):
    before_keys = artifact_keys(stack)
    files = {"metadata": (None, json.dumps({"name": "x"})), "file": ("m", ccfraud_onnx())}
    response = requests.post(f"{stack.api}/models/upload_and_convert", files=files,
                             headers={"Authorization": f"Bearer {alice.token}"}, timeout=60)
    assert response.status_code == 400, response.text  # validation_message's words, said once (no "metadata ")
    assert response.json()["msg"] == "workspace_id: Field required; conversion: Field required", response.text
    assert artifact_keys(stack) == before_keys


async def test_a_staged_model_is_consumed_by_its_uploader_only(stack, alice, bob):
    """A staged model file's key holds its uploader's id (`staging/<user id>/<uuid>`, shared/staging.py) and the
    registry takes it from that user only: bob, naming alice's key on the bus, gets 403 whichever workspace he names
    (his own, or alice's, which he is no member of: that failed check used to delete her upload) and the object
    stays; an unbound key is 400; alice's own command then consumes it."""
    import nats

    key, data = f"staging/{alice.user_id}/{uuid.uuid4()}", ccfraud_onnx()
    s3(stack).put_object("railyard-artifacts", key, io.BytesIO(data), len(data))
    nc = await nats.connect(stack.nats_url("client"), inbox_prefix="_INBOX.client")

    async def register(account: Account, workspace_id: int, staged_key: str = key) -> dict:
        command = {"workspace_id": workspace_id, "name": "staged", "file_name": "m.onnx", "staged_key": staged_key,
                   "conversion": {"framework": "onnx"}}
        reply = await sealed_request(nc, "registry.models.upload", json.dumps(command).encode(),
                                     headers={"authorization": f"Bearer {account.token}"}, timeout=60)
        return json.loads(reply.data)

    try:
        for workspace_id in (alice.workspace_id, bob.workspace_id):
            refused = await register(bob, workspace_id)
            assert not refused["ok"] and refused["status"] == 403, refused
            assert refused["error"]["msg"] == "the staged upload was made by another user"
            assert s3(stack).get_object("railyard-artifacts", key).read() == data  # neither consumed nor deleted
        unbound = await register(alice, alice.workspace_id, f"staging/{uuid.uuid4()}")
        assert not unbound["ok"] and unbound["status"] == 400, unbound
        assert api(stack, bob, "models/list", {"workspace_id": bob.workspace_id}).json()["models"] == []
        created = await register(alice, alice.workspace_id)
        assert created["ok"], created
        assert key not in artifact_keys(stack)  # consumed
    finally:
        await nc.close()


def test_oversized_upload_is_413(stack, alice):
    limit = int(stack.env["RAILYARD_GATEWAY__MAX_UPLOAD_BYTES"])
    before_keys = artifact_keys(stack)
    response = upload(stack, alice, "toolarge", b"\x00" * (limit + 1024), "custom")
    assert response.status_code == 413 and response.json()["code"] == "payload_too_large"
    assert artifact_keys(stack) == before_keys


def test_large_upload_keeps_gateway_and_registry_memory_flat(stack, alice):
    size = 200 * 1024 * 1024
    state = stack.state()["components"]
    processes = {name: psutil.Process(state[name]["pid"]) for name in ("gateway", "registry")}
    before = {name: p.memory_info().rss for name, p in processes.items()}
    chunk = np.random.default_rng(3).bytes(1024 * 1024)

    class Body(io.RawIOBase):
        def __init__(self):
            self.left = size

        def readable(self):
            return True

        def readinto(self, buffer):
            n = min(len(buffer), self.left, len(chunk))
            buffer[:n] = chunk[:n]
            self.left -= n
            return n

    response = requests.post(
        f"{stack.api}/models/upload_stream",
        files={"file": ("big.onnx", io.BufferedReader(Body(), 1024 * 1024))},
        data={"name": "bigmodel", "workspace_id": alice.workspace_id},
        headers={"Authorization": f"Bearer {alice.token}"}, timeout=300)
    assert response.status_code == 400 and "not an ONNX model" in response.json()["msg"], response.text
    growth = {name: (p.memory_info().rss - before[name]) / 2**20 for name, p in processes.items()}
    print(f"RSS growth for a {size >> 20} MiB upload: {growth}")
    assert all(g < 60 for g in growth.values()), growth


async def test_the_same_bytes_are_checked_once_and_answer_the_same(stack, alice, bob):
    """The registry keeps its sandboxed check's answer by the bytes' sha256 (handlers.CheckCache). A check is a
    process the registry starts and reaps, so its children's CPU grows by one for bytes it has not seen, and not
    for the same bytes again, from another user in another workspace too, which get the same schemas. The same bad
    bytes again are the same 400 and leave nothing behind."""
    import nats
    import onnx

    registry = psutil.Process(stack.state()["components"]["registry"]["pid"])

    def checks_cpu() -> float:
        times = registry.cpu_times()
        return times.children_user + times.children_system

    def cpu_of(send):
        before = checks_cpu()
        response = send()
        return response, checks_cpu() - before

    model = onnx.load_from_string(_onnx_variant())
    model.doc_string = uuid.uuid4().hex  # bytes this registry has never checked
    content, name = model.SerializeToString(), f"cached-{uuid.uuid4().hex[:6]}"
    first, fresh = cpu_of(lambda: upload(stack, alice, name, content))
    second, again = cpu_of(lambda: upload(stack, bob, name, content))
    model_id_of(first), model_id_of(second)
    assert fresh > 0.05, f"a check took only {fresh:.3f} s of the registry's children's CPU"
    assert again < fresh / 2, f"the same bytes were checked again ({again:.3f} s of CPU after {fresh:.3f} s)"

    nc = await nats.connect(stack.nats_url("ops"))
    try:
        schemas = []
        for account in (alice, bob):
            reply = json.loads((await nc.request(
                "registry.models.resolve", json.dumps({"workspace_id": account.workspace_id, "name": name}).encode(),
                headers={"authorization": f"Bearer {account.token}"}, timeout=30)).data)
            assert reply["ok"], reply
            schemas.append((reply["data"]["input_schema"], reply["data"]["output_schema"]))
    finally:
        await nc.close()
    assert schemas[0] == schemas[1] and schemas[0][0] and schemas[0][1]

    model = onnx.load_from_string(_onnx_variant(opset=99))
    model.doc_string = uuid.uuid4().hex
    bad = model.SerializeToString()
    before_keys = artifact_keys(stack)
    before_models = api(stack, alice, "models/list", {"workspace_id": alice.workspace_id}).json()["models"]
    refused, fresh = cpu_of(lambda: upload(stack, alice, f"bad-{uuid.uuid4().hex[:6]}", bad))
    refused_again, again = cpu_of(lambda: upload(stack, alice, f"bad-{uuid.uuid4().hex[:6]}", bad))
    assert refused.status_code == refused_again.status_code == 400, (refused.text, refused_again.text)
    assert refused.json() == refused_again.json() and "opset 99" in refused.json()["msg"], refused.text
    assert fresh > 0.05 and again < fresh / 2, (fresh, again)
    assert artifact_keys(stack) - before_keys == set(), "a rejected upload left objects behind"
    assert api(stack, alice, "models/list", {"workspace_id": alice.workspace_id}).json()["models"] == before_models
