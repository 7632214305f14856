"""The sweep of staged uploads (shared/staging.py, `sweep_staged`, `StagedUploadSweep`): staged uploads that no command
consumed are deleted after a day from the bucket their consumer sweeps (the registry: the artifacts bucket's model
uploads; the task scheduler: the orchestrations bucket's zips); younger ones, stored objects and other buckets'
objects are left alone."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from services.registry import app as registry_app
from services.task_scheduler import app as scheduler_app
from shared.objectstore import BUCKET_ARTIFACTS, BUCKET_DATASETS, BUCKET_ORCHESTRATIONS, content_key
from shared.service import Runtime
from shared.settings import Settings
from shared.staging import StagedUploadSweep, staged_key_for, sweep_staged

DAY = 24 * 3600.0


class Objects:
    """An in-memory object store: (bucket, key) -> last modified."""

    def __init__(self) -> None:
        self.kept: dict[tuple[str, str], float] = {}

    async def delete(self, bucket: str, key: str) -> None:
        self.kept.pop((bucket, key), None)

    async def list_keys(self, bucket: str, prefix: str = "") -> list[tuple[str, float]]:
        return [(key, at) for (b, key), at in self.kept.items() if b == bucket and key.startswith(prefix)]


@pytest.mark.parametrize("bucket", [BUCKET_ARTIFACTS, BUCKET_ORCHESTRATIONS])
def test_staged_uploads_older_than_a_day_are_deleted_from_the_swept_bucket_and_nothing_else(bucket):
    objects, now = Objects(), 10 * DAY
    old, young = staged_key_for("alice", None), staged_key_for("bob", 7)
    stored = content_key("ab" * 32)
    other = BUCKET_ORCHESTRATIONS if bucket == BUCKET_ARTIFACTS else BUCKET_ARTIFACTS
    objects.kept[bucket, old] = now - DAY - 1
    objects.kept[bucket, young] = now - DAY + 60  # a day less a minute: its command may still come
    objects.kept[bucket, stored] = 0.0  # a stored model or zip: never the sweep's
    objects.kept[other, staged_key_for("alice", None)] = 0.0  # the other consumer's
    objects.kept[BUCKET_DATASETS, staged_key_for("alice", None)] = 0.0  # the lineage service's GC
    assert asyncio.run(sweep_staged(objects, bucket, now=now)) == 1
    assert (bucket, old) not in objects.kept
    assert {(bucket, young), (bucket, stored)} <= set(objects.kept) and len(objects.kept) == 4
    assert asyncio.run(sweep_staged(objects, bucket, now=now)) == 0


def test_a_dry_run_counts_the_stale_staged_uploads_and_deletes_nothing():
    """The lineage service's object GC sweeps the datasets bucket with sweep_staged; its dry run (the CLI's
    --dry-run) reports how many it would delete."""
    objects, now = Objects(), 10 * DAY
    objects.kept[BUCKET_DATASETS, staged_key_for("alice", None)] = now - DAY - 1
    objects.kept[BUCKET_DATASETS, staged_key_for("alice", 3)] = now - 2 * DAY
    objects.kept[BUCKET_DATASETS, staged_key_for("bob", None)] = now - 60
    before = dict(objects.kept)
    assert asyncio.run(sweep_staged(objects, BUCKET_DATASETS, now=now, dry_run=True)) == 2
    assert objects.kept == before
    assert asyncio.run(sweep_staged(objects, BUCKET_DATASETS, now=now)) == 2
    assert len(objects.kept) == 1


class Feed:
    async def start(self, connection) -> None: ...
    async def stop(self) -> None: ...


BROKER = SimpleNamespace(config=SimpleNamespace(connection_state=SimpleNamespace(connection=None)))


def _runs_the_sweep_while_it_runs(app, bucket: str, settings: Settings) -> None:
    async def lifespan() -> None:
        runtime = Runtime(name=app.NAME, settings=settings, broker=BROKER, objects=Objects())
        await app.start(runtime)
        sweep = runtime.extras["staging_sweep"]
        assert isinstance(sweep, StagedUploadSweep) and sweep.bucket == bucket and sweep.every <= DAY
        assert sweep.objects is runtime.objects
        assert sweep._task is not None and not sweep._task.done()
        await app.stop(runtime)
        assert sweep._task is None

    asyncio.run(lifespan())


def test_the_registry_service_sweeps_the_artifacts_bucket_while_it_runs(monkeypatch):
    """The registry's lifespan starts the sweep and stops it: without it nothing ever deletes a staged model no
    command consumed. (Only the lifespan's bus and database parts are stood in for; the sweep itself is real.)"""

    async def no_conversions(deps) -> None: ...

    monkeypatch.setattr(registry_app, "bus_verifier", lambda broker, auth, timeout: (object(), Feed()))
    monkeypatch.setattr(registry_app, "SecretBox", lambda key: object())
    monkeypatch.setattr(registry_app.handlers, "resume_conversions", no_conversions)
    _runs_the_sweep_while_it_runs(registry_app, BUCKET_ARTIFACTS, Settings())


def test_the_task_scheduler_sweeps_the_orchestrations_bucket_while_it_runs(monkeypatch, tmp_path):
    """The task scheduler's lifespan starts the sweep of staged orchestration zips and stops it: before, nothing
    deleted a zip no tasks.orchestrations.upload consumed. (The bus verifier and the scheduler loop are stood in
    for; the sweep itself is real.)"""

    class Scheduler:
        identity = "test"

        def __init__(self, **kwargs) -> None: ...
        def start(self) -> None: ...
        async def stop(self) -> None: ...

    monkeypatch.setattr(scheduler_app, "bus_verifier", lambda broker, auth, timeout: (object(), Feed()))
    monkeypatch.setattr(scheduler_app, "Scheduler", Scheduler)
    settings = Settings()
    settings.tasks.work_dir = tmp_path / "tasks"
    _runs_the_sweep_while_it_runs(scheduler_app, BUCKET_ORCHESTRATIONS, settings)
