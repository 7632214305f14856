"""The Kubernetes objects an engine replica set and a task run would get (services/deployer/kubernetes.py,
services/task_scheduler/kubernetes.py): rendering only, validated against the Kubernetes schemas offline. No backend
creates them on a cluster yet, and nothing here talks to an API server."""

from __future__ import annotations

import json
import os
from pathlib import Path

import kubernetes_validate
import pytest

from services.deployer.backend import replica_environment
from services.deployer.kubernetes import SPEC_DIR, SPEC_FILE, replica_objects
from services.task_scheduler import runner
from services.task_scheduler.kubernetes import run_objects
from shared.messages.engine import ReplicaDeployment, ReplicaSpec, ReplicaStep
from shared.messages.registry import ResolvedModel
from shared.settings import Settings, env_names

VERSIONS = ("1.30", kubernetes_validate.latest_version())
SECRET_VALUES = ("s3cr3t-bus", "s3cr3t-engine", "s3cr3t-db", "s3cr3t-key", "s3cr3t-s3", "eyJhbGciOi.token")
SHA = "ab" * 32


def a_spec(**engine_config) -> ReplicaSpec:
    model = ResolvedModel(model_id=1, name="ccfraud", model_version="v1", sha=SHA, runtime="onnx", framework="onnx")
    return ReplicaSpec(deployment=ReplicaDeployment(pipeline="fraud", pipeline_version="1", workspace_id=7, id=3,
                                                    name="Fraud_Demo-3"),
                       steps=[ReplicaStep(kind="ModelInference", models=[model])], engine_config=engine_config)


def a_plan(**changes) -> runner.RunPlan:
    env = runner.run_env(task_id="t-1", run_id="0b7c9a4e-1111-4222-8333-944455556666", orch_sha=SHA, owner_id="u-1",
                         workspace_id=7, gateway_url="http://gateway:18000", token=SECRET_VALUES[-1],
                         args={"epochs": 2})
    plan = runner.RunPlan(run_id="0b7c9a4e-1111-4222-8333-944455556666", workdir=Path("/unused"),
                          zip_path=Path("/unused.zip"), entrypoint="main.py", python="python", env_dir=None, env=env,
                          timeout=900, memory_bytes=2048 << 20, cpu_seconds=3600, disk_bytes=4096 << 20)
    for key, value in changes.items():
        setattr(plan, key, value)
    return plan


def _deployer_environ() -> dict[str, str]:
    """A deployer pod's environment (deploy/kubernetes/services.yaml), with real-looking secret values."""
    return {"RAILYARD_ENV": "production", "RAILYARD_LOG_LEVEL": "INFO", "RAILYARD_NATS__URL": "nats://nats:4222",
            "RAILYARD_NATS__USER": "deployer", "RAILYARD_NATS__PASSWORD": SECRET_VALUES[0],
            "RAILYARD_NATS__ENGINE_PASSWORD": SECRET_VALUES[1], "RAILYARD_DB_PASSWORD__DEPLOYER": SECRET_VALUES[2],
            "RAILYARD_POSTGRES__DSN": f"postgresql://railyard_deployer:{SECRET_VALUES[2]}@postgres:5432/railyard",
            "RAILYARD_AUTH__CLIENT_SECRET_KEY": SECRET_VALUES[3], "RAILYARD_S3__SECRET_KEY": SECRET_VALUES[4],
            "RAILYARD_S3__ENDPOINT": "minio:9000", "RAILYARD_PROBE_DIR": "/var/lib/railyard/probes",
            "RAILYARD_SANDBOX__MEMORY_MB": "2048", "RAILYARD_LOGS__ENGINE_FLUSH_MS": "15"}


def _validate(objects: list[dict]) -> None:
    for obj in objects:
        for version in VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{obj['kind']} for {version} at {'.'.join(map(str, exc.path))}: {exc.message}")


def _settings_from(container: dict, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in [n for n in os.environ if n.startswith("RAILYARD_")]:
        monkeypatch.delenv(name)
    for entry in container["env"]:
        monkeypatch.setenv(entry["name"], entry.get("value", "from-a-secret"))
    return Settings()


def test_a_replica_set_renders_valid_objects_with_no_secret_value(monkeypatch):
    environ = _deployer_environ()
    monkeypatch.setattr(os, "environ", dict(environ))
    settings = Settings()
    objects = replica_objects("Fraud_Demo-3", a_spec(cpus=0.5, memory="1Gi"), 3, settings=settings, environ=environ)
    _validate(objects)
    assert [o["kind"] for o in objects] == ["ConfigMap", "Deployment"]
    text = json.dumps(objects)
    assert not [v for v in SECRET_VALUES if v in text]
    config_map, deployment = objects
    assert ReplicaSpec.model_validate_json(config_map["data"][SPEC_FILE]) == a_spec(cpus=0.5, memory="1Gi")
    name = deployment["metadata"]["name"]
    assert name.startswith("engine-fraud-demo-3-") and len(name) <= 52
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0  # new replicas before old go
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "services.engine.replica", f"{SPEC_DIR}/{SPEC_FILE}", "$(POD_NAME)"]
    assert container["resources"]["limits"] == {"cpu": "500m", "memory": "1Gi"}
    assert pod["volumes"][0]["configMap"]["name"] == config_map["metadata"]["name"]
    assert pod["hostUsers"] is False and pod["automountServiceAccountToken"] is False
    replica = _settings_from(container, monkeypatch)
    # as the local backend's replica_environment: the engine identity, no database, the deployer's engine settings
    local = replica_environment(environ)
    assert (replica.nats.user, local["RAILYARD_NATS__USER"]) == ("engine", "engine")
    assert {e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"]
            if e["name"] == "RAILYARD_NATS__PASSWORD"} == {"engine"}
    assert not [e for e in container["env"] if e["name"].startswith(("RAILYARD_POSTGRES", "RAILYARD_DB_PASSWORD"))]
    assert replica.sandbox.memory_mb == 2048 and replica.logs.engine_flush_ms == 15
    assert replica.s3.endpoint == "minio:9000" and replica.env == "production"
    assert str(replica.probe_dir) == "/var/lib/railyard/probes"
    railyard = {e["name"] for e in container["env"] if e["name"].startswith("RAILYARD_")}
    assert railyard <= env_names(), "a rendered variable no setting reads"


def test_a_redeploy_is_a_rolling_update_to_a_new_spec_and_autoscaling_an_hpa():
    settings, environ = Settings(), {}
    first = replica_objects("demo-1", a_spec(), 1, settings=settings, environ=environ)
    second = replica_objects("demo-1", a_spec(cpus=2), 1, (1, 4), 70.0, settings=settings, environ=environ)
    _validate(second)
    assert first[1]["metadata"]["name"] == second[1]["metadata"]["name"]  # the same Deployment, updated
    assert first[0]["metadata"]["name"] != second[0]["metadata"]["name"]  # pointing at a new spec
    hpa = second[2]
    assert hpa["kind"] == "HorizontalPodAutoscaler"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 4)
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageValue"] == "700m"  # 70 % of one core


def test_a_spec_above_a_configmaps_limit_is_refused():
    big = a_spec(padding="x" * (1024 * 1024))
    with pytest.raises(ValueError, match="1 MiB"):
        replica_objects("demo-1", big, 1, settings=Settings(), environ={})


def test_the_local_replica_environment_drops_the_deployers_database_and_probe_folder():
    env = replica_environment(_deployer_environ())
    assert env["RAILYARD_NATS__USER"] == "engine" and env["RAILYARD_NATS__PASSWORD"] == SECRET_VALUES[1]
    assert not {k for k in env if k.startswith(("RAILYARD_POSTGRES", "RAILYARD_DB_PASSWORD"))}
    assert "RAILYARD_PROBE_DIR" not in env and "RAILYARD_NATS__ENGINE_PASSWORD" not in env


def test_a_task_run_renders_a_job_whose_pod_is_its_sandbox():
    settings = Settings()
    secret, job = run_objects(a_plan(), settings=settings)
    _validate([secret, job])
    assert secret["kind"] == "Secret" and secret["stringData"] == {"token": SECRET_VALUES[-1]}
    assert SECRET_VALUES[-1] not in json.dumps(job)  # the token lives in the Secret only
    spec = job["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"]) == (0, 900)
    pod = spec["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    assert pod["restartPolicy"] == "Never"
    (fetch,), (run,) = pod["initContainers"], pod["containers"]
    assert fetch["command"][:3] == ["python", "-m", "services.task_scheduler.fetch_orchestration"]
    assert fetch["command"][3] == SHA
    # the run gets exactly runner.run_env's variables (its token from the Secret) and a HOME in its working folder
    names = [e["name"] for e in run["env"]]
    assert set(names) == set(a_plan().env) | {"HOME"} and len(names) == len(set(names))
    assert not [e for e in run["env"] if "secretKeyRef" in e.get("valueFrom", {})
                and e["valueFrom"]["secretKeyRef"]["name"] != secret["metadata"]["name"]]
    assert not [e for e in run["env"] if e["name"].startswith("RAILYARD_") and not e["name"].startswith(
        "RAILYARD_CLIENT_")], "no platform setting reaches users' code"
    assert run["command"][:4] == ["python", "-u", "-c", runner._BOOTSTRAP]
    assert run["resources"]["limits"]["memory"] == "2048Mi"
    security = run["securityContext"]
    assert security["readOnlyRootFilesystem"] and security["capabilities"] == {"drop": ["ALL"]}
    assert "seccompProfile" not in security  # the pod's RuntimeDefault: no sandbox is built inside this pod
    assert {m["mountPath"]: m.get("readOnly", False) for m in run["volumeMounts"]}["/run/orchestration"] is True
    labels = spec["template"]["metadata"]["labels"]
    assert labels["railyard.io/task-run"] == "true" and labels["railyard.io/reaches-gateway"] == "true"
    assert "railyard.io/bus" not in labels and "railyard.io/database" not in labels


def test_a_run_with_its_own_requirements_is_not_rendered():
    with pytest.raises(ValueError, match="requirements"):
        run_objects(a_plan(env_dir=Path("/envs/abc")), settings=Settings())


def test_the_fetch_step_refuses_what_is_not_a_sha256():
    from services.task_scheduler.fetch_orchestration import main

    assert main(["../../etc/passwd", "x.zip"]) == 2
    assert main([SHA]) == 2


def test_a_sandboxed_run_is_handed_the_relay_not_a_host_name_it_cannot_resolve(monkeypatch):
    """docker-compose and Kubernetes set RAILYARD_GATEWAY__HOST=gateway for the scheduler's relay; a run in the
    sandbox has loopback only, where the relay listens on the gateway's port."""
    from services.task_scheduler.app import gateway_url
    from shared.service import Runtime

    for name in [n for n in os.environ if n.startswith("RAILYARD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("RAILYARD_GATEWAY__HOST", "gateway")
    monkeypatch.setenv("RAILYARD_GATEWAY__PORT", "18000")
    assert gateway_url(Runtime(name="task_scheduler", settings=Settings())) == "http://127.0.0.1:18000"
    monkeypatch.setenv("RAILYARD_SANDBOX__MODE", "off-for-single-user")  # no sandbox: the real address
    assert gateway_url(Runtime(name="task_scheduler", settings=Settings())) == "http://gateway:18000"
    monkeypatch.setenv("RAILYARD_GATEWAY__HOST", "0.0.0.0")
    assert gateway_url(Runtime(name="task_scheduler", settings=Settings())) == "http://127.0.0.1:18000"
