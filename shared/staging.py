"""Staged uploads bound to their uploader: bytes put in object storage by one party (the gateway for a multipart
upload, the monitoring service for a file it writes on a user's behalf) and consumed by the service a command
names them to, which keeps them under their sha256 and deletes the staged copy.

A staged key is `staging/<uploader's user id>/<uuid>`, or `staging/<user id>/ws-<workspace id>/<uuid>` when the
uploader's token is scoped to one workspace (a task run's). The consumer takes it only from that user's command
with the same token scope (`check_staged`): anyone else who learns the key gets 403, and so does the same user with
another scope (`out_of_scope`: a run's token may not take what its owner staged from a session reaching all their
workspaces, nor a session what a run staged); either way the object is neither read nor deleted, so a command that
fails its other checks (membership, the bytes) deletes only the caller's own upload. The monitoring service's staged
images have the same keys (shared/messages/monitoring_predictions.py names these under its own names) and the same
check, worded for images (`StagedWording`).

A staged upload no command ever consumed (the stager died or its bus request failed after the upload, a client
staged and never sent the command, the consumer's final delete failed) is deleted by its consumer's
`StagedUploadSweep` once older than its grace (STAGED_GRACE_SECONDS unless given), which the service runner starts and
stops for a service whose `ServiceSpec.staged_bucket` names one (`StagedBucket`): the registry sweeps the artifacts
bucket, the task scheduler the orchestrations bucket, the monitoring service the monitoring bucket (its staged images,
with an hour's grace every ten minutes: they live for one request); the lineage service's object GC runs the same
`sweep_staged` on the datasets bucket as part of each collection (with the collection's grace, never less than
STAGED_GRACE_SECONDS; a dry run only counts them)."""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from shared.authz import Principal, scoped_workspace
from shared.background import Sweeper
from shared.errors import Forbidden, InvalidRequest

log = logging.getLogger("railyard.staging")

STAGING_PREFIX = "staging/"
SWEEP_EVERY_SECONDS = 3600.0
# The datasets bucket's rule (services/workflow_lineage/object_gc.py): far longer than any upload and its command.
STAGED_GRACE_SECONDS = 24 * 3600.0
STAGED_KEY = re.compile(r"^staging/(?P<owner>[A-Za-z0-9_.@:-]{1,100})/(?:ws-(?P<workspace>[1-9][0-9]{0,18})/)?"
                        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def staged_key_for(user_id: str, workspace_scope: int | None = None) -> str:
    """A fresh key to stage one upload under for a token of `user_id` scoped to `workspace_scope` (None: unscoped).
    For a stager that holds such a token but not its principal (a token it minted); otherwise use `staged_key`."""
    scope = "" if workspace_scope is None else f"ws-{workspace_scope}/"
    return f"{STAGING_PREFIX}{user_id}/{scope}{uuid.uuid4()}"


def staged_key(principal: Principal) -> str:
    """A fresh key to stage one upload under for this caller: their user id and, for a token scoped to one workspace
    (a task run's), that workspace; the consumer takes it only from a token of the same user and scope."""
    return staged_key_for(principal.user_id, scoped_workspace(principal))


@dataclass(frozen=True)
class StagedWording:
    """The messages `check_staged` refuses a key with: a key the stager did not make (400), another user's upload
    (403), one staged with another workspace scope (403 out_of_scope). UPLOAD_WORDING unless a consumer words its
    uploads otherwise (the monitoring service's staged images)."""

    malformed: str
    other_user: str
    other_scope: str


UPLOAD_WORDING = StagedWording(
    malformed="staged_key must name an upload staged by the HTTP API (upload the file through it)",
    other_user="the staged upload was made by another user",
    other_scope="the staged upload was made with a token of another workspace scope (a task run's token takes only "
                "uploads staged with it, a session only its own): upload the file with this token")


def check_staged(key: str, principal: Principal, wording: StagedWording = UPLOAD_WORDING) -> None:
    """May this caller consume the staged upload at `key`? InvalidRequest for a key the stager did not make,
    Forbidden for another user's upload, and Forbidden `out_of_scope` for one the same user staged with a token of
    another workspace scope (in both cases the caller must then neither read nor delete it); messages from
    `wording`."""
    match = STAGED_KEY.match(key)
    if match is None:
        raise InvalidRequest(wording.malformed)
    if match["owner"] != principal.user_id:
        raise Forbidden(wording.other_user)
    staged_scope = int(match["workspace"]) if match["workspace"] else None
    if staged_scope != scoped_workspace(principal):
        raise Forbidden(wording.other_scope, code="out_of_scope")


async def sweep_staged(objects: Any, bucket: str, grace_seconds: float = STAGED_GRACE_SECONDS,
                       now: float | None = None, *, dry_run: bool = False) -> int:
    """Delete `bucket`'s staged uploads (under STAGING_PREFIX) older than `grace_seconds`; how many were deleted
    (with `dry_run`, how many would be, none deleted). Other keys of the bucket and other buckets are left alone;
    deleting an object twice is harmless, so several replicas may sweep at once."""
    cutoff = (time.time() if now is None else now) - grace_seconds
    stale = [key for key, modified in await objects.list_keys(bucket, STAGING_PREFIX) if modified <= cutoff]
    if dry_run:
        return len(stale)
    for key in stale:
        await objects.delete(bucket, key)
    return len(stale)


@dataclass(frozen=True)
class StagedBucket:
    """The bucket whose staged uploads a service consumes, and how often and after how long its sweep deletes the
    ones left behind (`ServiceSpec.staged_bucket`: the service runner runs its `StagedUploadSweep`)."""

    bucket: str
    grace_seconds: float = STAGED_GRACE_SECONDS
    every: float = SWEEP_EVERY_SECONDS


class StagedUploadSweep(Sweeper):
    """Runs `sweep_staged` on one bucket with `grace_seconds` every `every` seconds (storage away for a moment: the
    next round tries again). The service that consumes the bucket's staged uploads starts it with its lifespan and
    stops it."""

    task_name = "staged-upload-sweep"
    log, failure = log, "staged upload sweep failed"

    def __init__(self, objects: Any, bucket: str, grace_seconds: float = STAGED_GRACE_SECONDS,
                 every: float = SWEEP_EVERY_SECONDS) -> None:
        self.objects, self.bucket, self.grace_seconds, self.every = objects, bucket, grace_seconds, every

    async def sweep(self) -> int:
        deleted = await sweep_staged(self.objects, self.bucket, self.grace_seconds)
        if deleted:  # logged here, not in sweep_staged: the lineage service's object GC logs its own collection
            log.info("deleted %d staged upload(s) left behind in the %s bucket", deleted, self.bucket)
        return deleted
