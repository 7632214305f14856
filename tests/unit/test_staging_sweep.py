"""The sweep of staged uploads (shared/staging.py, `sweep_staged`, `StagedUploadSweep`): staged uploads that no command
consumed are deleted after a day from the bucket their consumer sweeps (the registry: the artifacts bucket's model
uploads; the task scheduler: the orchestrations bucket's zips; the monitoring service its staged images after an hour);
younger ones, stored objects and other buckets' objects are left alone. Each service names its bucket in its
ServiceSpec (`staged_bucket`) and the service runner starts and stops the sweep."""

from __future__ import annotations

import asyncio
import logging

import pytest

from services.auth import app as auth_app
from services.monitoring import app as monitoring_app
from services.registry import app as registry_app
from services.task_scheduler import app as scheduler_app
from shared.objectstore import BUCKET_ARTIFACTS, BUCKET_DATASETS, BUCKET_MONITORING, BUCKET_ORCHESTRATIONS, content_key
from shared.service import Runtime, start_staged_sweep, stop_staged_sweep
from shared.settings import Settings
from shared.staging import SWEEP_EVERY_SECONDS, StagedUploadSweep, staged_key_for, sweep_staged

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


def _runs_the_sweep_while_it_runs(spec, bucket: str, grace_seconds: float, every: float) -> None:
    """The runner (shared/service.py, `serve`) starts the sweep the spec names before the start hook and stops it
    after the drain; here its two steps are run on a runtime with an in-memory store, the sweep itself is real."""

    async def lifespan() -> None:
        runtime = Runtime(name=spec.name, settings=Settings(), objects=Objects())
        start_staged_sweep(spec, runtime)
        sweep = runtime.extras["staging_sweep"]
        assert isinstance(sweep, StagedUploadSweep) and sweep.bucket == bucket
        assert (sweep.grace_seconds, sweep.every) == (grace_seconds, every)
        assert sweep.objects is runtime.objects
        assert sweep._task is not None and not sweep._task.done()
        await stop_staged_sweep(runtime)
        assert sweep._task is None

    asyncio.run(lifespan())


def test_the_registry_service_sweeps_the_artifacts_bucket_while_it_runs():
    """Without it nothing ever deletes a staged model no command consumed."""
    _runs_the_sweep_while_it_runs(registry_app.SPEC, BUCKET_ARTIFACTS, DAY, SWEEP_EVERY_SECONDS)


def test_the_task_scheduler_sweeps_the_orchestrations_bucket_while_it_runs():
    """Before, nothing deleted a zip no tasks.orchestrations.upload consumed."""
    _runs_the_sweep_while_it_runs(scheduler_app.SPEC, BUCKET_ORCHESTRATIONS, DAY, SWEEP_EVERY_SECONDS)


def test_the_monitoring_service_sweeps_its_staged_images_hourly_every_ten_minutes():
    """Its staged images live for one request: an hour's grace, swept every ten minutes."""
    _runs_the_sweep_while_it_runs(monitoring_app.SPEC, BUCKET_MONITORING, 3600.0, 600.0)


def test_a_service_without_a_staged_bucket_runs_no_sweep():
    async def lifespan() -> None:
        runtime = Runtime(name="auth", settings=Settings(), objects=Objects())
        start_staged_sweep(auth_app.SPEC, runtime)
        assert "staging_sweep" not in runtime.extras
        await stop_staged_sweep(runtime)

    asyncio.run(lifespan())


def test_a_sweep_round_logs_what_it_deleted_once(caplog):
    """sweep_staged itself logs nothing: the sweep logs its round, the lineage service's object GC its collection
    (which counted the staged uploads in the same line a second time before)."""
    objects = Objects()
    objects.kept[BUCKET_DATASETS, staged_key_for("alice", None)] = 0.0
    with caplog.at_level(logging.INFO, logger="railyard.staging"):
        assert asyncio.run(sweep_staged(objects, BUCKET_DATASETS)) == 1
        assert caplog.records == []
        objects.kept[BUCKET_ARTIFACTS, staged_key_for("alice", None)] = 0.0
        assert asyncio.run(StagedUploadSweep(objects, BUCKET_ARTIFACTS).sweep()) == 1
    assert [r.getMessage() for r in caplog.records] == [
        f"deleted 1 staged upload(s) left behind in the {BUCKET_ARTIFACTS} bucket"]
