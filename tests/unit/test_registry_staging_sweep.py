"""The registry's sweep of staged model uploads (services/registry/staging_sweep.py): staged uploads in the artifacts
bucket that no `registry.models.upload` consumed are deleted after a day; younger ones, the stored artifacts and
other buckets' objects are left alone."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from services.registry import app, staging_sweep
from shared.objectstore import BUCKET_ARTIFACTS, BUCKET_DATASETS, content_key
from shared.service import Runtime
from shared.settings import Settings
from shared.staging import staged_key

DAY = 24 * 3600.0


class Objects:
    """An in-memory object store: (bucket, key) -> last modified."""

    def __init__(self) -> None:
        self.kept: dict[tuple[str, str], float] = {}

    async def delete(self, bucket: str, key: str) -> None:
        self.kept.pop((bucket, key), None)

    async def list_keys(self, bucket: str, prefix: str = "") -> list[tuple[str, float]]:
        return [(key, at) for (b, key), at in self.kept.items() if b == bucket and key.startswith(prefix)]


def test_staged_model_uploads_older_than_a_day_are_deleted_and_nothing_else():
    objects, now = Objects(), 10 * DAY
    old, young = staged_key("alice"), staged_key("bob")
    artifact = content_key("ab" * 32)
    objects.kept[BUCKET_ARTIFACTS, old] = now - DAY - 1
    objects.kept[BUCKET_ARTIFACTS, young] = now - DAY + 60  # a day less a minute: its command may still come
    objects.kept[BUCKET_ARTIFACTS, artifact] = 0.0  # a stored model: never the sweep's
    objects.kept[BUCKET_DATASETS, staged_key("alice")] = 0.0  # another bucket's: the lineage service's GC
    assert asyncio.run(staging_sweep.sweep(objects, now=now)) == 1
    assert (BUCKET_ARTIFACTS, old) not in objects.kept
    assert {(BUCKET_ARTIFACTS, young), (BUCKET_ARTIFACTS, artifact)} <= set(objects.kept) and len(objects.kept) == 3
    assert asyncio.run(staging_sweep.sweep(objects, now=now)) == 0


def test_the_registry_service_runs_the_sweep_while_it_runs(monkeypatch):
    """The registry's lifespan starts the sweep and stops it: without it nothing ever deletes a staged model no
    command consumed. (Only the lifespan's bus and database parts are stood in for; the sweep itself is real.)"""

    class Feed:
        async def start(self, connection) -> None: ...
        async def stop(self) -> None: ...

    async def no_conversions(deps) -> None: ...

    monkeypatch.setattr(app, "bus_verifier", lambda broker, auth, timeout: (object(), Feed()))
    monkeypatch.setattr(app, "SecretBox", lambda key: object())
    monkeypatch.setattr(app.handlers, "resume_conversions", no_conversions)
    broker = SimpleNamespace(config=SimpleNamespace(connection_state=SimpleNamespace(connection=None)))

    async def lifespan() -> None:
        runtime = Runtime(name=app.NAME, settings=Settings(), broker=broker, objects=Objects())
        await app.start(runtime)
        sweep = runtime.extras["staging_sweep"]
        assert isinstance(sweep, staging_sweep.StagedUploadSweep) and sweep.every <= DAY
        assert sweep._task is not None and not sweep._task.done()
        await app.stop(runtime)
        assert sweep._task is None

    asyncio.run(lifespan())
