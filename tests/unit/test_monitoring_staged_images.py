"""Staged images (services/monitoring/predictions.py `_image`, shared/staging.py `sweep_staged` on the monitoring
bucket): a staged image is read only for the user whose id its key holds (anyone else's key is neither read nor
deleted), at most max_image_bytes, and deleted however the command ends; the sweep deletes staged images left behind,
old ones only."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from services.monitoring.handlers import MonitoringDeps
from services.monitoring.predictions import _image
from shared.authz import Principal
from shared.errors import Forbidden, InvalidRequest, NotFound, PayloadTooLarge
from shared.messages.monitoring_predictions import PredictImage, staged_image_key
from shared.objectstore import BUCKET_MONITORING
from shared.staging import sweep_staged

PNG = b"\x89PNG\r\n\x1a\n" + b"x" * 100


class Objects:
    """An in-memory object store: (bucket, key) -> (bytes, modified)."""

    def __init__(self) -> None:
        self.kept: dict[tuple[str, str], tuple[bytes, float]] = {}

    async def size(self, bucket: str, key: str) -> int:
        if (bucket, key) not in self.kept:
            raise NotFound("object not found")
        return len(self.kept[bucket, key][0])

    async def get_bytes(self, bucket: str, key: str) -> bytes:
        return self.kept[bucket, key][0]

    async def delete(self, bucket: str, key: str) -> None:
        self.kept.pop((bucket, key), None)

    async def list_keys(self, bucket: str, prefix: str = "") -> list[tuple[str, float]]:
        return [(key, at) for (b, key), (_, at) in self.kept.items() if b == bucket and key.startswith(prefix)]


def user(subject: str) -> Principal:
    return Principal(subject=subject, kind="user", admin=False, client_id="c", username="u", issued_at=0.0)


def deps(objects: Objects, max_image_bytes: int = 1000) -> MonitoringDeps:
    return MonitoringDeps(pool=None, broker=None, membership=None, timeout=1.0, deploy_timeout=1.0,  # type: ignore
                          objects=objects, max_image_bytes=max_image_bytes)


async def read(objects: Objects, principal: Principal, key: str, fail: bool = False, limit: int = 1000) -> bytes:
    async with _image(deps(objects, limit), principal, PredictImage(deployment="d", staged_key=key)) as data:
        if fail:
            raise InvalidRequest("the deployment is unknown")
        return data


def test_a_staged_image_is_read_once_by_its_uploader_and_deleted_however_it_ends():
    objects, alice, bob = Objects(), str(uuid.uuid4()), str(uuid.uuid4())
    key = staged_image_key(alice)
    objects.kept[BUCKET_MONITORING, key] = (PNG, 0.0)
    with pytest.raises(Forbidden):
        asyncio.run(read(objects, user(bob), key))
    assert (BUCKET_MONITORING, key) in objects.kept  # someone else's: neither read nor deleted
    assert asyncio.run(read(objects, user(alice), key)) == PNG and not objects.kept
    with pytest.raises(InvalidRequest, match="not found"):  # consumed once
        asyncio.run(read(objects, user(alice), key))
    objects.kept[BUCKET_MONITORING, key] = (PNG, 0.0)
    with pytest.raises(InvalidRequest, match="unknown"):
        asyncio.run(read(objects, user(alice), key, fail=True))
    assert not objects.kept
    objects.kept[BUCKET_MONITORING, key] = (PNG, 0.0)
    with pytest.raises(PayloadTooLarge):
        asyncio.run(read(objects, user(alice), key, limit=len(PNG) - 1))
    assert not objects.kept
    for bad in ("staging/../x", f"staging/{alice}/not-a-uuid", f"images/{alice}/{uuid.uuid4()}", "staging/x"):
        with pytest.raises(InvalidRequest, match="staged_key"):
            asyncio.run(read(objects, user(alice), bad))


def run_token(subject: str, workspace_id: int) -> Principal:
    """A task run's token: the user's, scoped to the run's workspace (shared/authz.py)."""
    return Principal(subject=subject, kind="user", admin=False, client_id="c", username="u", issued_at=0.0,
                     workspace_id=workspace_id, scoped_task="task", scoped_run="run")


def test_a_staged_image_is_consumed_only_with_the_workspace_scope_it_was_staged_with():
    """A task run's token (alice's, scoped to workspace 2) may not take an image alice staged from a normal session
    (which may be another workspace's), nor one staged by a run of another workspace; a normal session may not take
    a run's either. Refused 403 out_of_scope, the object neither read nor deleted; the matching scope consumes it."""
    objects, alice = Objects(), str(uuid.uuid4())
    session_key, run_key, other_run_key = (staged_image_key(alice), staged_image_key(alice, 2),
                                           staged_image_key(alice, 3))
    assert run_key.startswith(f"staging/{alice}/ws-2/")
    for key in (session_key, run_key, other_run_key):
        objects.kept[BUCKET_MONITORING, key] = (PNG, 0.0)
    for principal, key in ((run_token(alice, 2), session_key), (run_token(alice, 2), other_run_key),
                           (user(alice), run_key)):
        with pytest.raises(Forbidden) as refused:
            asyncio.run(read(objects, principal, key))
        assert refused.value.code == "out_of_scope"
        assert (BUCKET_MONITORING, key) in objects.kept
    assert asyncio.run(read(objects, run_token(alice, 2), run_key)) == PNG
    assert asyncio.run(read(objects, user(alice), session_key)) == PNG
    assert set(objects.kept) == {(BUCKET_MONITORING, other_run_key)}
    with pytest.raises(Forbidden):  # another user's run key stays another user's
        asyncio.run(read(objects, run_token(str(uuid.uuid4()), 3), other_run_key))
    for bad in (f"staging/{alice}/ws-0/{uuid.uuid4()}", f"staging/{alice}/ws-x/{uuid.uuid4()}",
                f"staging/{alice}/ws-2/ws-2/{uuid.uuid4()}"):
        with pytest.raises(InvalidRequest, match="staged_key"):
            asyncio.run(read(objects, run_token(alice, 2), bad))


def test_the_sweep_deletes_staged_images_left_behind_and_nothing_else():
    objects = Objects()
    old, young, old_of_a_run = staged_image_key("u1"), staged_image_key("u2"), staged_image_key("u1", 7)
    objects.kept[BUCKET_MONITORING, old] = (PNG, 1000.0)
    objects.kept[BUCKET_MONITORING, young] = (PNG, 5000.0)
    objects.kept[BUCKET_MONITORING, old_of_a_run] = (PNG, 1000.0)
    objects.kept[BUCKET_MONITORING, "images/abc"] = (PNG, 0.0)
    assert asyncio.run(sweep_staged(objects, BUCKET_MONITORING, grace_seconds=3600, now=5000.0)) == 2
    assert set(key for _, key in objects.kept) == {young, "images/abc"}
