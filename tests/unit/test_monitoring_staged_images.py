"""Staged images (services/monitoring/predictions.py `_image`, services/monitoring/staging_sweep.py): a staged image
is read only for the user whose id its key holds (anyone else's key is neither read nor deleted), at most
max_image_bytes, and deleted however the command ends; the sweep deletes staged images left behind, old ones only."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from services.monitoring import staging_sweep
from services.monitoring.handlers import MonitoringDeps
from services.monitoring.predictions import _image
from shared.authz import Principal
from shared.errors import Forbidden, InvalidRequest, NotFound, PayloadTooLarge
from shared.messages.monitoring_predictions import PredictImage, staged_image_key
from shared.objectstore import BUCKET_MONITORING

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


def test_the_sweep_deletes_staged_images_left_behind_and_nothing_else():
    objects = Objects()
    old, young = staged_image_key("u1"), staged_image_key("u2")
    objects.kept[BUCKET_MONITORING, old] = (PNG, 1000.0)
    objects.kept[BUCKET_MONITORING, young] = (PNG, 5000.0)
    objects.kept[BUCKET_MONITORING, "images/abc"] = (PNG, 0.0)
    assert asyncio.run(staging_sweep.sweep(objects, grace_seconds=3600, now=5000.0)) == 1
    assert set(key for _, key in objects.kept) == {young, "images/abc"}
