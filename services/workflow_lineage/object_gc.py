"""Garbage collection of the `datasets` bucket: content-addressed objects (`sha256/<hex>`) that no dataset's rows,
dataset file, workspace file or project version's manifest refers to any more are deleted, and so are staged
uploads (`staging/<user id>/<uuid>`, shared/staging.py) left behind for longer than STAGED_GRACE_SECONDS.

What is never deleted: an object something refers to (checked twice: once for all objects, then again for each
candidate under the per-hash lock uploads take, right before the delete); an object younger than the grace period
(its upload may still be on its way to a reference); an object an upload holds (`object_holds`, for HOLD_SECONDS).
Deleting a project or a dataset deletes no object (versions and other projects share them): this collector does,
on request (`maintenance/collect_objects`, administrators) and every COLLECT_EVERY_SECONDS in the service."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from services.workflow_lineage import manifest, store
from shared.authz import Principal, require_admin
from shared.background import Sweeper
from shared.messages.lineage import CollectObjects, ObjectsCollected
from shared.objectstore import BUCKET_DATASETS, content_key
from shared.staging import STAGED_GRACE_SECONDS, sweep_staged

log = logging.getLogger("railyard.workflow_lineage.object_gc")

CONTENT_PREFIX = "sha256/"
HOLD_SECONDS = 3600.0
DEFAULT_GRACE_SECONDS = 3600.0
COLLECT_EVERY_SECONDS = 6 * 3600.0


async def collect_objects(deps: Any, principal: Principal, cmd: CollectObjects) -> ObjectsCollected:
    """The maintenance route: administrators only (objects are shared by every workspace)."""
    require_admin(principal, "collect unreferenced objects")
    return await collect(deps, cmd.grace_seconds, cmd.dry_run)


async def collect(deps: Any, grace_seconds: float, dry_run: bool = False) -> ObjectsCollected:
    """Delete (or with `dry_run` only list) the unreferenced objects older than `grace_seconds`."""
    listed = await deps.objects.list_keys(BUCKET_DATASETS, CONTENT_PREFIX)
    async with deps.pool.acquire() as conn:
        referenced, manifests = await store.referenced_objects(conn, HOLD_SECONDS)
    for text in manifests:
        referenced.update(sha for _, sha in manifest.objects(json.loads(text)))
    cutoff = time.time() - grace_seconds
    young = 0
    candidates = []
    for key, modified in listed:
        sha = key.rsplit("/", 1)[-1]  # sha256/<2 hex>/<hex>
        if content_key(sha) != key:
            continue  # not a content-addressed object: not ours to judge
        if sha in referenced:
            continue
        if modified > cutoff:
            young += 1
            continue
        candidates.append(sha)
    deleted = []
    for sha in candidates:
        async with deps.pool.acquire() as conn, conn.transaction():
            await store.lock_object(conn, sha)
            if await store.object_referenced(conn, sha, HOLD_SECONDS):
                continue
            if not dry_run:
                await deps.objects.delete(BUCKET_DATASETS, content_key(sha))
        deleted.append(sha)
    # the shared sweep of staged uploads, never with less than their own grace (a collection's may be an hour)
    staged = await sweep_staged(deps.objects, BUCKET_DATASETS, max(grace_seconds, STAGED_GRACE_SECONDS),
                                dry_run=dry_run)
    if not dry_run:
        async with deps.pool.acquire() as conn:
            await store.drop_old_holds(conn, HOLD_SECONDS)
    if deleted or staged:
        log.info("object collection%s: %d unreferenced object(s), %d staged upload(s)",
                 " (dry run)" if dry_run else "", len(deleted), staged)
    return ObjectsCollected(objects=len(listed), referenced=len(listed) - len(candidates) - young,
                            young=young, deleted=deleted, staged_deleted=staged, dry_run=dry_run)


class PeriodicCollection(Sweeper):
    """Runs `collect` every COLLECT_EVERY_SECONDS (several replicas may: the per-hash lock keeps them apart)."""

    task_name = "object-gc"
    # storage or database away for a moment: the next round tries again
    every, log, failure = COLLECT_EVERY_SECONDS, log, "object collection failed"

    def __init__(self, deps: Any) -> None:
        self.deps = deps

    async def sweep(self) -> None:
        await collect(self.deps, DEFAULT_GRACE_SECONDS)
