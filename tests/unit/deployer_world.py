"""The deployer's in-memory world for its unit tests (test_deployer_locks.py, test_deployer_precondition.py and the
others that import it, through test_deployer_locks or from here): the handlers run against an in-memory store and the
real LocalBackend's replica-set bookkeeping, whose replicas are stand-ins the test declares ready (or failed) when it
chooses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from services.deployer import handlers, store
from services.deployer.backend import LocalBackend, Replica, ReplicaSet
from shared.authz import Principal
from shared.messages.deployer import DeployPipeline
from shared.settings import DeployerSettings

PIPELINE, VERSION, WORKSPACE = 1, 10, 7
ALICE = Principal(subject=str(uuid.uuid4()), kind="user", admin=False, client_id="sdk", username="alice",
                  issued_at=0.0)


class MemoryStore:
    """The deployer's store functions the handlers call, over dicts."""

    def __init__(self) -> None:
        self.pipelines = {PIPELINE: {"id": PIPELINE, "workspace_id": WORKSPACE, "name": "p"}}
        self.versions = {VERSION: {"id": VERSION, "pipeline_id": PIPELINE, "version": uuid.uuid4(),
                                   "definition": json.dumps({"steps": [{"ModelInference": {"models": [
                                       {"name": "m"}]}}]})}}
        self.deployments: dict[int, dict[str, Any]] = {}
        self.events: list[tuple[str, Any]] = []  # the outbox's rows (subject, event), in the order written
        self.serving: list[Any] = []  # the events.pipeline.serving written at a start (handlers.announce_serving)

    async def add_event(self, conn, subject, event):
        self.events.append((subject, event))

    async def record_deployed(self, conn, event, *, if_pending=False):
        row = self.deployments[event.deployment_id]
        if if_pending and not (row.get("deployed_pending") and row["active"]):
            return False
        row.update(deployed_pending=False, announced=True, served=True)
        await self.add_event(conn, "events.pipeline.deployed", event)
        return True

    async def record_serving(self, conn, events, again_after):
        self.serving.extend(events)  # apart from `events`: the restore tests here are about the deployed event
        return events  # named again at every start (named_at is the store's: test_deployer_serving.py)

    async def mark_served(self, conn, deployment_id):
        row = self.deployments[deployment_id]
        if row["active"] and row.get("deployed_pending"):
            row["served"] = True

    async def pipeline(self, pool, pipeline_id):
        return self.pipelines.get(pipeline_id)

    async def version(self, pool, version_id):
        return self.versions.get(version_id)

    async def deployment(self, pool, deployment_id):
        row = self.deployments.get(deployment_id)
        return None if row is None else dict(row)

    async def deployment_active(self, conn, deployment_id):
        row = self.deployments.get(deployment_id)
        return None if row is None else row["active"]

    async def active_deployments(self, pool):
        return [dict(row) for row in self.deployments.values() if row["active"]]

    async def deactivate(self, pool, deployment_id, event=None, owed=None, *, serving=False, activation=None,
                         pipeline_id=None):
        if deployment_id is None:  # the row holding the activation (a first deploy's whose id was not answered)
            found = await self.activation_of(pool, activation)
            if found is None:
                return False
            deployment_id = found["id"]
        row = self.deployments[deployment_id]
        if activation is not None and row.get("activation") != activation:
            return False
        was, pending, told, served = row["active"], row.get("deployed_pending"), row.get("announced"), row.get("served")
        if was:
            row.update(active=False, deployed_pending=False, announced=False, served=False)
        if was and event is not None:
            if pending and owed is not None and (serving or served):
                self.events.append(("events.pipeline.deployed", store.told_before(owed, event)))
                told = True
            if told:
                self.events.append(("events.pipeline.undeployed", event))
        return was

    async def activation_of(self, pool, activation):
        return next(({"id": row["id"], "active": row["active"]} for row in self.deployments.values()
                     if row.get("activation") == activation), None)

    async def latest_version(self, pool, pipeline_id):
        return max((v for v in self.versions.values() if v["pipeline_id"] == pipeline_id), key=lambda v: v["id"])

    async def lock_pipeline_name(self, conn, workspace_id, name):
        pass

    async def pipeline_by_name(self, conn, workspace_id, name):
        return next((p for p in self.pipelines.values() if (p["workspace_id"], p["name"]) == (workspace_id, name)),
                    None)

    async def create_pipeline_version(self, conn, workspace_id, name, created_by, definition):
        pipeline_id, version_id = len(self.pipelines) + 1, len(self.versions) + 100
        self.pipelines[pipeline_id] = {"id": pipeline_id, "workspace_id": workspace_id, "name": name}
        self.versions[version_id] = {"id": version_id, "pipeline_id": pipeline_id, "version": uuid.uuid4(),
                                     "definition": json.dumps(definition)}
        return pipeline_id, version_id, self.versions[version_id]["version"], True

    async def pipeline_deployment(self, conn, pipeline_id):
        row = next(iter(self.deployments.values()), None)
        return {key: row[key] for key in ("id", "pipeline_version_id", "deploy_id", "engine_config", "spec",
                                          "active", "deployed_pending", "served", "activation")} if row else None

    async def activate_deployment(self, conn, existing, pipeline_id, version_id, deploy_id, engine_config, spec, *,
                                  activation=None):
        row = self.deployments[existing["id"]] if existing is not None else None
        if row is None:
            row = self.deployments[5] = {"id": 5, "pipeline_id": pipeline_id, "pipeline_name": "p",
                                         "workspace_id": WORKSPACE, "pipeline_version": "v", "announced": False}
        row.update(pipeline_version_id=version_id, deploy_id=deploy_id, active=True, deployed_pending=True,
                   served=False, engine_config=json.dumps(engine_config), spec=json.dumps(spec),
                   activation=activation or uuid.uuid4())
        return row["id"]


class MemoryPool:
    @contextlib.asynccontextmanager
    async def acquire(self):
        yield SimpleNamespace(transaction=contextlib.nullcontext)


class HeldBackend(LocalBackend):
    """LocalBackend's own start/stop/sets, with stand-in replicas: each start waits in `waiting` until the test
    answers it (None: ready; an exception: failed), unless `hold` is off."""

    def __init__(self, work_dir: Path) -> None:
        defaults = DeployerSettings()
        super().__init__(work_dir, nats_request=None, scale_down_after=defaults.scale_down_after,
                         ready_timeout=defaults.ready_timeout, stop_timeout=defaults.stop_timeout)
        self.hold = True
        self.waiting: list[tuple[ReplicaSet, asyncio.Future]] = []
        self.started: list[ReplicaSet] = []

    async def _spawn(self, replica_set: ReplicaSet, replica_id: str) -> Replica:
        if replica_set not in self.started:
            self.started.append(replica_set)
        return Replica(replica_id=replica_id, process=SimpleNamespace(returncode=None, pid=0), started_at=0.0)

    async def _wait_ready(self, replica_set: ReplicaSet) -> None:
        if self.hold:
            answer = asyncio.get_running_loop().create_future()
            self.waiting.append((replica_set, answer))
            await answer

    async def _stop_set(self, replica_set: ReplicaSet) -> None:
        replica_set.stopping = True

    def untracked(self) -> list[str]:
        """Names of replica sets running that the backend no longer knows of."""
        return [s.name for s in self.started if not s.stopping and self.sets.get(s.name) is not s]


def make_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """The handlers over a new MemoryStore (`store`), models resolved as themselves, every caller an owner, and a
    HeldBackend (`backend`) working in `tmp_path`; `deps` are the handlers' deps."""
    store = MemoryStore()
    monkeypatch.setattr(handlers, "store", store)

    async def resolve(deps, token, workspace_id, name, version, sha):
        return {"model_id": 1, "name": name, "model_version": "v1", "sha": "0" * 64, "runtime": "onnx",
                "framework": "onnx"}

    monkeypatch.setattr(handlers, "_resolve", resolve)

    async def member(user_id, workspace_id):
        return "owner"

    backend = HeldBackend(tmp_path)
    deps = handlers.DeployerDeps(pool=MemoryPool(), broker=None, backend=backend,
                                 membership=lambda token: member, public_url="http://x", timeout=5.0)
    return SimpleNamespace(store=store, backend=backend, deps=deps)


@pytest.fixture
def world(tmp_path, monkeypatch) -> SimpleNamespace:
    """make_world's world (a test file imports it, or defines its own `world` from make_world)."""
    return make_world(tmp_path, monkeypatch)


async def _until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"never: {what}")


def _lock_waiters(deps: handlers.DeployerDeps) -> int:
    return deps.pipeline_lock(PIPELINE).waiting


def _deploy(world, deploy_id: str, version: int = VERSION, only_if_serving: int | None = None) -> asyncio.Task:
    """Alice's pipelines/deploy of the pipeline's `version` as `deploy_id`, started as a task."""
    return asyncio.create_task(handlers.deploy(world.deps, ALICE, "t", DeployPipeline(
        deploy_id=deploy_id, pipeline_version_pk_id=version, pipeline_id=PIPELINE, only_if_serving=only_if_serving)))


async def _deployed_as(world, deploy_id: str) -> None:
    """Deployment 5 of the pipeline, running as `<deploy_id>-5`."""
    world.backend.hold = False
    await _deploy(world, deploy_id)
    world.backend.hold = True


