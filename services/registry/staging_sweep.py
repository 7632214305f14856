"""The sweep of staged model uploads: the gateway (models/upload_and_convert, upload_stream) and the registry's
upload_from_registry stage a file at `staging/<user id>/<uuid>` in the artifacts bucket (shared/staging.py) and the
registry deletes it once `registry.models.upload` has consumed it, whatever the outcome. One is left behind when no
command ever names it (the gateway died or its bus request failed after the upload, or a client staged and never
sent the command) or when that delete failed. Every SWEEP_EVERY_SECONDS the registry deletes staged objects older
than GRACE_SECONDS, the same age rule as the datasets bucket's staged uploads (services/workflow_lineage/object_gc.py):
far longer than any upload and its command may take. The registry sweeps because it consumes them; several replicas
may sweep at once (deleting an object twice is harmless)."""

from __future__ import annotations

import logging
import time
from typing import Any

from shared.background import Sweeper
from shared.objectstore import BUCKET_ARTIFACTS
from shared.staging import STAGING_PREFIX

log = logging.getLogger("railyard.registry.staging_sweep")

SWEEP_EVERY_SECONDS = 3600.0
GRACE_SECONDS = 24 * 3600.0


async def sweep(objects: Any, grace_seconds: float = GRACE_SECONDS, now: float | None = None) -> int:
    """Delete the artifacts bucket's staged uploads older than `grace_seconds`; how many were deleted."""
    cutoff = (time.time() if now is None else now) - grace_seconds
    stale = [key for key, modified in await objects.list_keys(BUCKET_ARTIFACTS, STAGING_PREFIX)
             if modified <= cutoff]
    for key in stale:
        await objects.delete(BUCKET_ARTIFACTS, key)
    if stale:
        log.info("deleted %d staged model upload(s) left behind", len(stale))
    return len(stale)


class StagedUploadSweep(Sweeper):
    """Runs `sweep` every SWEEP_EVERY_SECONDS (storage away for a moment: the next round tries again)."""

    task_name = "staged-upload-sweep"
    every, log, failure = SWEEP_EVERY_SECONDS, log, "staged upload sweep failed"

    def __init__(self, objects: Any) -> None:
        self.objects = objects

    async def sweep(self) -> int:
        return await sweep(self.objects)
