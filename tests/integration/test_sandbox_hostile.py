"""Users' code attacking the platform, through the public API as a non-admin user (issue 12): a Python step and a
bring-your-own-predict package that look for the platform's secrets (environment, /proc/1/environ, the
replica's /proc/<pid>/environ, the data directory, secrets.json), connect to every platform port, fork-bomb,
allocate 8 GB, spin forever and write 10 GB. Each attempt must come back empty or as a clear error, and the
platform must keep serving another tenant's deployment afterwards.

Each assertion compares with the real values (the stack's secrets file and ports as the test reads them on the
host), so on a tree where users' code ran inside the replica with its environment, these tests fail."""

from __future__ import annotations

import io
import json
import time
import zipfile

import pytest

from shared.sandbox import THREAD_VARIABLES
from tests.integration.conftest import make_account, post, undeploy_all
from tests.integration.test_pipelines import _deploy_definition, _upload_bytes, _upload_framework, infer
from tests.models import ccfraud_onnx, sample_rows
from tests.stack import NEEDS_GRPC, PORT_NAMES

ATTACK = '''
import json, os, socket, time

def attack(config):
    action = config["action"]
    if action == "spy":
        report = {"env": dict(os.environ), "proc": {}, "files": {}, "ports": {}}
        pids = {"1", str(os.getppid()), "self", *[str(p) for p in config["pids"]],
                *[p for p in os.listdir("/proc") if p.isdigit()]}
        for pid in sorted(pids):
            try:
                report["proc"][pid] = open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace")
            except OSError as exc:
                report["proc"][pid] = "error " + type(exc).__name__
        data = config["data_dir"]
        for path in [data, data + "/secrets.json", data + "/run/stack.json", data + "/engine-cache",
                     data + "/postgres"]:
            try:
                report["files"][path] = sorted(os.listdir(path)) if os.path.isdir(path) else open(path).read()
            except OSError as exc:
                report["files"][path] = "error " + type(exc).__name__
        for port in config["ports"]:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                report["ports"][str(port)] = "connected"
            except OSError as exc:
                report["ports"][str(port)] = "error " + type(exc).__name__
        return json.dumps(report)
    if action == "forkbomb":
        while True:
            os.fork()
    if action == "alloc":
        held = bytearray(8 << 30)
        return str(len(held))
    if action == "spin":
        while True:
            pass
    if action == "write":
        block = b"x" * (1 << 20)
        with open("big.bin", "wb") as handle:
            for _ in range(10 * 1024):
                handle.write(block)
    return "ok"
'''

STEP = ATTACK + '''
def wallaroo_json(data):
    return {"report": [attack(json.loads(data["config"][0]))]}
'''

BYOP = ATTACK + '''
from typing import Any, Set

import numpy as np

from mac.config.inference import CustomInferenceConfig
from mac.inference import Inference
from mac.inference.creation import InferenceBuilder
from mac.types import InferenceData


class AttackInference(Inference):
    @property
    def expected_model_types(self) -> Set[Any]:
        return {dict}

    @Inference.model.setter
    def model(self, model) -> None:
        self._model = model

    def _predict(self, input_data: InferenceData) -> InferenceData:
        return {"report": np.array([attack(json.loads(str(input_data["config"][0])))], dtype=object)}


class AttackBuilder(InferenceBuilder):
    @property
    def inference(self) -> AttackInference:
        return AttackInference()

    def create(self, config: CustomInferenceConfig) -> AttackInference:
        inference = self.inference
        inference.model = {}
        return inference
'''


def byop_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("attack/requirements.txt", "numpy\n")
        archive.writestr("attack/attack_inference.py", BYOP)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def deployments(stack, admin):
    """mallory's Python step and BYOP deployments, and another tenant's ONNX deployment that must keep serving."""
    mallory = make_account(stack, admin, "mallory")
    victim = make_account(stack, admin, "victim")
    _upload_framework(stack, mallory, "attackstep", STEP, "python")
    _upload_framework(stack, mallory, "attackbyop", byop_zip(), "custom")
    _upload_bytes(stack, victim, "victimmodel", ccfraud_onnx())
    urls = {}
    for account, name, model in ((mallory, "hostilestep", "attackstep"), (mallory, "hostilebyop", "attackbyop"),
                                 (victim, "victim", "victimmodel")):
        deployment, url, _ = _deploy_definition(
            stack, account, name, {"steps": [{"ModelInference": {"models": [{"name": model}]}}]})
        urls[name] = (deployment, url)
    yield {"mallory": mallory, "victim": victim, "urls": urls}
    for account in (mallory, victim):
        undeploy_all(stack, account)
        account.client.close()  # its HTTP connections, else left to the garbage collector (ResourceWarning)


def platform_ports(stack) -> list[int]:
    """Every port the embedded platform listens on: NATS (client, monitor), PostgreSQL, the S3 API, SeaweedFS's
    master, volume and filer (and their gRPC ports), the gateway."""
    ports = [int(stack.env[f"RAILYARD_STACK__{name}"]) for name in PORT_NAMES]
    ports += [int(stack.env[f"RAILYARD_STACK__{name}"]) + 10000 for name in NEEDS_GRPC]
    return ports + [int(stack.env["RAILYARD_GATEWAY__PORT"])]


def secret_values(stack) -> list[str]:
    values = [v for v in stack.secrets().values() if isinstance(v, str) and len(v) >= 8]
    assert len(values) >= 5  # passwords, keys, the client secret
    return values


def replica_pids(stack, account, deployment: str) -> list[int]:
    engines = post(stack, "status/get_deployment", account.token, {"name": deployment}).json()["engines"]
    return [engine["pid"] for engine in engines if engine.get("pid")]


def attack(stack, deployments, name: str, action: str):
    deployment, url = deployments["urls"][name]
    config = {"action": action, "ports": platform_ports(stack), "data_dir": str(stack.data_dir),
              "pids": replica_pids(stack, deployments["mallory"], deployment)}
    return infer(url, deployments["mallory"].token, [{"config": json.dumps(config)}])


def assert_platform_serves(stack, deployments, name: str) -> None:
    """The other tenant's ONNX deployment answers, and so does the attacker's own (its worker replaced)."""
    _, url = deployments["urls"]["victim"]
    rows = sample_rows(2)
    answer = infer(url, deployments["victim"].token, [{"tensor": r.tolist()} for r in rows])
    assert answer.status_code == 200, answer.text
    deadline = time.monotonic() + 30
    while True:
        again = attack(stack, deployments, name, "ok")
        if again.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert again.status_code == 200, again.text
    assert again.json()[0]["out"]["report"] == "ok"


@pytest.mark.parametrize("name", ["hostilestep", "hostilebyop"])
def test_users_code_finds_no_secret_and_reaches_no_platform_port(stack, deployments, name):
    response = attack(stack, deployments, name, "spy")
    assert response.status_code == 200, response.text
    text = response.json()[0]["out"]["report"]
    report = json.loads(text)
    leaked = [value[:4] + "…" for value in secret_values(stack) if value in text]
    assert not leaked, f"secrets reached users' code: {leaked}"
    assert not [key for key in report["env"] if key.startswith("RAILYARD_")], report["env"]
    assert set(report["env"]) <= {"PATH", "LANG", "HOME", "PYTHONDONTWRITEBYTECODE", *THREAD_VARIABLES,
                                  "NUMEXPR_MAX_THREADS", "MALLOC_ARENA_MAX"}, sorted(report["env"])
    for pid in ("1", *[str(p) for p in replica_pids(stack, deployments["mallory"], deployments["urls"][name][0])]):
        assert "RAILYARD_" not in report["proc"].get(pid, ""), (pid, report["proc"].get(pid, "")[:200])
    files = report["files"]
    data = str(stack.data_dir)
    assert files[f"{data}/secrets.json"].startswith("error"), "secrets.json was readable"
    assert files[f"{data}/run/stack.json"].startswith("error")
    assert files[f"{data}/postgres"].startswith("error")
    assert "secrets.json" not in json.dumps(files[data])
    connected = [port for port, outcome in report["ports"].items() if outcome == "connected"]
    assert not connected, f"users' code connected to platform ports {connected}"
    assert len(report["ports"]) == len(platform_ports(stack))


@pytest.mark.parametrize("name", ["hostilestep", "hostilebyop"])
@pytest.mark.parametrize(("action", "status", "words"), [
    ("forkbomb", 400, "process limit"),
    ("alloc", 400, "memory limit"),
    ("spin", 504, "time limit"),
    ("write", 400, "file size limit"),
])
def test_resource_attacks_fail_clearly_and_the_platform_keeps_serving(stack, deployments, name, action, status,
                                                                       words):
    started = time.monotonic()
    response = attack(stack, deployments, name, action)
    assert response.status_code == status, response.text
    message = response.json()["msg"]
    assert words in message, message
    assert len(message) < 1000
    assert time.monotonic() - started < 20
    assert_platform_serves(stack, deployments, name)
