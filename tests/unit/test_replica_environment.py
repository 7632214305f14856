"""An engine replica's environment from both deployer backends (services/deployer/backend.py's
replica_environment for local processes, services/deployer/kubernetes.py's container env): the memory settings a
replica starts with unless the operator set their own (docs/performance.md, "Memory"), and none of the deployer's
database or bus secrets."""

from __future__ import annotations

import pytest

from services.deployer.backend import REPLICA_MEMORY_DEFAULTS, replica_environment
from services.deployer.kubernetes import replica_objects
from shared.messages.engine import ReplicaDeployment, ReplicaSpec, ReplicaStep
from shared.messages.registry import ResolvedModel
from shared.settings import Settings

# what docs/performance.md measured and says replicas run with: changing one is a decision, not a refactor
DOCUMENTED = {"ARROW_DEFAULT_MEMORY_POOL": "system", "MALLOC_ARENA_MAX": "1"}
OPERATOR = {"ARROW_DEFAULT_MEMORY_POOL": "mimalloc", "MALLOC_ARENA_MAX": "4"}
DEPLOYER = {"RAILYARD_NATS__URL": "nats://nats:4222", "RAILYARD_NATS__USER": "deployer",
            "RAILYARD_NATS__PASSWORD": "deployer-bus-secret", "RAILYARD_NATS__ENGINE_PASSWORD": "engine-bus-secret",
            "RAILYARD_POSTGRES__DSN": "postgresql://railyard_deployer:db-secret@postgres:5432/railyard",
            "RAILYARD_POSTGRES__POOL_MAX": "5", "RAILYARD_DB_PASSWORD__DEPLOYER": "db-secret",
            "RAILYARD_LOGS__ENGINE_SEGMENT_MS": "500", "PATH": "/usr/bin"}


def _spec() -> ReplicaSpec:
    model = ResolvedModel(model_id=1, name="ccfraud", model_version="v1", sha="ab" * 32, runtime="onnx",
                          framework="onnx")
    return ReplicaSpec(deployment=ReplicaDeployment(pipeline="fraud", pipeline_version="1", workspace_id=7, id=3,
                                                    name="fraud-3"),
                       steps=[ReplicaStep(kind="ModelInference", models=[model])])


def _pod_env(environ: dict[str, str]) -> dict[str, dict]:
    objects = replica_objects("fraud-3", _spec(), 1, settings=Settings(), environ=environ)
    (container,) = objects[1]["spec"]["template"]["spec"]["containers"]
    return {entry["name"]: entry for entry in container["env"]}


def _pod_values(environ: dict[str, str]) -> dict[str, str]:
    return {name: entry["value"] for name, entry in _pod_env(environ).items() if "value" in entry}


def test_the_memory_defaults_are_the_documented_ones():
    assert REPLICA_MEMORY_DEFAULTS == DOCUMENTED


@pytest.mark.parametrize("environ", [{}, DEPLOYER], ids=["empty", "deployer"])
def test_a_replica_gets_the_memory_defaults_from_both_backends(environ):
    local = replica_environment(environ)
    pod = _pod_values(environ)
    for name, value in REPLICA_MEMORY_DEFAULTS.items():
        assert local[name] == value, name
        assert pod[name] == value, name


def test_an_operators_own_memory_settings_win_in_both_backends():
    others = {name: f"operator-{name}" for name in REPLICA_MEMORY_DEFAULTS if name not in OPERATOR}
    environ = DEPLOYER | OPERATOR | others
    local = replica_environment(environ)
    pod = _pod_values(environ)
    for name in REPLICA_MEMORY_DEFAULTS:
        assert local[name] == environ[name], name
        assert pod[name] == environ[name], name


def test_the_local_replica_keeps_no_database_setting_and_connects_as_the_engine():
    env = replica_environment(DEPLOYER)
    assert not [name for name in env if name.startswith(("RAILYARD_POSTGRES__", "RAILYARD_DB_PASSWORD__"))]
    assert "RAILYARD_NATS__ENGINE_PASSWORD" not in env
    assert (env["RAILYARD_NATS__USER"], env["RAILYARD_NATS__PASSWORD"]) == ("engine", "engine-bus-secret")
    assert not [value for value in env.values() if "db-secret" in value or value == "deployer-bus-secret"]
    assert env["RAILYARD_LOGS__ENGINE_SEGMENT_MS"] == "500" and env["PATH"] == "/usr/bin"  # the rest passes


def test_the_replica_pod_keeps_no_database_setting_and_takes_the_engines_bus_secret():
    env = _pod_env(DEPLOYER)
    assert not [name for name in env if name.startswith(("RAILYARD_POSTGRES__", "RAILYARD_DB_PASSWORD__"))]
    assert "RAILYARD_NATS__ENGINE_PASSWORD" not in env
    assert env["RAILYARD_NATS__USER"]["value"] == "engine"
    assert env["RAILYARD_NATS__PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "engine"
    values = " ".join(str(entry) for entry in env.values())
    assert "db-secret" not in values and "bus-secret" not in values
    assert env["RAILYARD_LOGS__ENGINE_SEGMENT_MS"]["value"] == "500" and "PATH" not in env
