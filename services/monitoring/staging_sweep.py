"""The sweep of staged images: an image the gateway staged for predict/monitor (`staging/<user id>/<uuid>` in the
monitoring bucket) is deleted by the monitoring service once read and by the gateway once the command answered, so
one is left behind only when a process died in between. Every SWEEP_EVERY_SECONDS, staged objects older than
GRACE_SECONDS (far longer than any request may take) are deleted. Several replicas may sweep at once: deleting an
object twice is harmless."""

from __future__ import annotations

import logging
import time
from typing import Any

from shared.background import Sweeper
from shared.messages.monitoring_predictions import STAGED_IMAGE_PREFIX
from shared.objectstore import BUCKET_MONITORING

log = logging.getLogger("railyard.monitoring.staging_sweep")

SWEEP_EVERY_SECONDS = 600.0
GRACE_SECONDS = 3600.0


async def sweep(objects: Any, grace_seconds: float = GRACE_SECONDS, now: float | None = None) -> int:
    """Delete the staged images older than `grace_seconds`; how many were deleted."""
    cutoff = (time.time() if now is None else now) - grace_seconds
    stale = [key for key, modified in await objects.list_keys(BUCKET_MONITORING, STAGED_IMAGE_PREFIX)
             if modified <= cutoff]
    for key in stale:
        await objects.delete(BUCKET_MONITORING, key)
    if stale:
        log.info("deleted %d staged image(s) left behind", len(stale))
    return len(stale)


class StagedImageSweep(Sweeper):
    """Runs `sweep` every SWEEP_EVERY_SECONDS (storage away for a moment: the next round tries again)."""

    task_name = "staged-image-sweep"
    every, log, failure = SWEEP_EVERY_SECONDS, log, "staged image sweep failed"

    def __init__(self, objects: Any) -> None:
        self.objects = objects

    async def sweep(self) -> int:
        return await sweep(self.objects)
