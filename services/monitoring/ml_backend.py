"""Continuous training of a deployment backed by an ML backend (a `railyard-ml deploy railyard` package): knowing
one when set up, and the built-in orchestration that fits it.

- **Knowing one.** The deployment's model version is resolved with the caller's rights (registry); a `custom`
  version whose package holds `backend/railyard-ml.json` is an ML backend. Only the zip's index is read, by ranged
  reads of the stored artifact (never the whole package, never its code run: this service only lists names).
- **The built-in orchestration.** `railyard_ml.continuous_training.orchestration_zip()` (a `main.py` calling that
  module's `main`) is registered in the workspace like any uploaded orchestration, with the rights of the user
  setting continuous training up, once per workspace and release: an orchestration of that name and sha256 that is
  ready is reused. Its task runs `fit` in the task scheduler's sandbox (docs/monitoring.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
import zipfile
from collections.abc import AsyncIterator, Callable
from typing import Any

from services.monitoring import handlers
from shared import paging, subjects
from shared.authz import Principal
from shared.bus import request
from shared.errors import Conflict, NotFound, Unavailable
from shared.messages.monitoring import ModelVersionRef
from shared.messages.registry import ResolvedModel, ResolveModel
from shared.messages.tasks import ListOrchestrations, OrchestrationCreated, Orchestrations, UploadOrchestration
from shared.objectstore import BUCKET_ARTIFACTS, BUCKET_ORCHESTRATIONS, RangedFile, content_key
from shared.pipeline_pages import caller_pages
from shared.staging import staged_key

log = logging.getLogger("railyard.monitoring.ml_backend")

BACKEND_CONFIG = "backend/railyard-ml.json"  # where railyard_ml.railyard_step.package puts it
# seconds beyond the request timeout the built-in orchestration's upload waits (the task scheduler checks the zip), as
# the gateway's orchestration/upload does; the gateway's setup_continuous_training route waits for it
# (services/gateway/monitoring_continuous.py setup_answers)
REGISTER_EXTRA = 60.0


class PackageUnreadable(Unavailable):
    """The model version's stored package could not be read (the object store failed or did not answer): whether it
    is an ML backend is not known. A 503 (retry), not "not a package": set_model answered 400 model_inputs_unknown
    ("uploaded without input_schema") for an ML backend whose store read failed, and a continuous deployment's
    delivery failed with that reason."""


class _ReadFailed(Exception):
    """A ranged read's error, carried past zipfile (which turns an OSError of its index read into BadZipFile, the
    answer for a file that is not a zip). Not an OSError, so zipfile lets it through."""


def _holds_backend_config(read_range: Callable[[int, int], bytes], size: int, key: str = "") -> bool:
    """Whether the zip of `size` bytes read by `read_range` lists BACKEND_CONFIG; False for anything that is not a
    zip; PackageUnreadable when a read fails (`key`: the object, for the log)."""
    def read(offset: int, length: int) -> bytes:
        try:
            return read_range(offset, length)
        except Exception as exc:
            raise _ReadFailed() from exc

    try:
        with zipfile.ZipFile(RangedFile(read, size)) as archive:
            return BACKEND_CONFIG in archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    except _ReadFailed as failed:
        log.warning("reading model package %s's zip index failed: %r", key or "(unnamed)", failed.__cause__)
        raise PackageUnreadable("the model's stored package could not be read (the object store failed or did not "
                                "answer); retry shortly") from failed.__cause__


async def holds_backend_config(objects: Any, sha: str) -> bool:
    """Whether the stored artifact `sha` is an ML backend package (its zip lists BACKEND_CONFIG): False when it is
    not a zip or not stored; PackageUnreadable when the store fails."""
    key = content_key(sha)
    try:
        size = await objects.size(BUCKET_ARTIFACTS, key)
    except NotFound:
        return False
    except Exception as exc:
        log.warning("the size of model package %s could not be read: %r", key, exc)
        raise PackageUnreadable("the model's stored package could not be read (the object store failed or did not "
                                "answer); retry shortly") from exc
    return await asyncio.to_thread(_holds_backend_config, lambda offset, length: objects.read_range_sync(
        BUCKET_ARTIFACTS, key, offset, length), size, key)


async def is_backend(deps: handlers.MonitoringDeps, token: str | None, workspace_id: int,
                     model: ModelVersionRef) -> bool:
    """Whether `model` (the deployment's) is an ML backend package."""
    resolved = await request(deps.broker, subjects.REGISTRY_MODELS_RESOLVE, ResolveModel(
        workspace_id=workspace_id, name=model.name, version=model.version), token=token, timeout=deps.timeout,
        reply_model=ResolvedModel)
    if resolved.framework != "custom" or deps.objects is None:
        return False
    return await holds_backend_config(deps.objects, resolved.sha)


def _orchestration() -> tuple[str, bytes]:
    try:
        from railyard_ml.continuous_training import ORCHESTRATION_NAME, orchestration_zip
    except ImportError:
        raise Conflict("continuous training of an ML backend needs railyard-ml installed where Railyard runs "
                       "(pip install ./ml_backend), or give orchestration_id: your own training recipe") from None
    return ORCHESTRATION_NAME, orchestration_zip()


async def orchestration_pages(deps: handlers.MonitoringDeps, workspace_id: int,
                              token: str | None) -> AsyncIterator[Orchestrations]:
    """The workspace's orchestration/list a page at a time (MAX_PAGE each), asked as the caller: asked whole, a
    workspace whose orchestrations pass a bus reply answered 422 reply_too_large (bd86971 made the list pageable), and
    continuous training's set-up failed with it whatever it asked."""
    async for listed in caller_pages(deps.broker, subjects.TASKS_ORCHESTRATIONS_LIST, lambda cursor: ListOrchestrations(
            workspace_id=workspace_id, limit=paging.MAX_PAGE, cursor=cursor), Orchestrations, token, deps.timeout):
        yield listed


async def builtin_orchestration(deps: handlers.MonitoringDeps, token: str | None, workspace_id: int,
                                owner: Principal) -> uuid.UUID:
    """The workspace's built-in ML-backend training orchestration, registered with the caller's rights if needed
    (`owner`: the caller, whose user and token scope the task scheduler takes the staged upload from)."""
    name, archive = _orchestration()
    sha = hashlib.sha256(archive).hexdigest()
    async for listed in orchestration_pages(deps, workspace_id, token):
        for orchestration in listed.orchestrations:
            if orchestration.name == name and orchestration.sha == sha and orchestration.status == "ready":
                return orchestration.id
    staged = staged_key(owner)
    await deps.objects.put_bytes(BUCKET_ORCHESTRATIONS, staged, archive, content_type="application/zip")
    created = await request(deps.broker, subjects.TASKS_ORCHESTRATIONS_UPLOAD, UploadOrchestration(
        workspace_id=workspace_id, name=name, file_name="railyard-ml-continuous-training.zip", staged_key=staged),
        token=token, timeout=deps.timeout + REGISTER_EXTRA, reply_model=OrchestrationCreated)
    return created.id
