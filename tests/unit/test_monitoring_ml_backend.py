"""Knowing an ML backend package by its zip index alone (services/monitoring/ml_backend.py): ranged reads of the
stored object find `backend/railyard-ml.json` without reading the members' bytes; anything else is not a backend;
a read that fails is PackageUnreadable (503), not "not a backend"."""

from __future__ import annotations

import asyncio
import io
import os
import zipfile

import pytest

from services.monitoring.ml_backend import PackageUnreadable, _holds_backend_config, holds_backend_config
from shared.errors import NotFound
from shared.objectstore import content_key


def archive(names: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zipped:
        for name, data in names.items():
            zipped.writestr(name, data)
    return buffer.getvalue()


def reader(data: bytes, reads: list[int]):
    def read_range(offset: int, length: int) -> bytes:
        reads.append(length)
        return data[offset:offset + length]
    return read_range


def test_a_backend_package_is_known_from_its_index_only():
    state = os.urandom(4 << 20)  # 4 MiB of run files the check never reads
    package = archive({"backend/requirements.txt": b"railyard-ml\n", "backend/railyard-ml.json": b"{}",
                       "backend/railyard_state/run/model.pkl": state})
    reads: list[int] = []
    assert _holds_backend_config(reader(package, reads), len(package))
    assert sum(reads) < 64 * 1024, reads


def test_other_packages_and_non_zips_are_not_backends():
    byop = archive({"requirements.txt": b"", "model.py": b"class X: pass", "railyard-ml.json": b"{}"})
    assert not _holds_backend_config(reader(byop, []), len(byop))
    garbage = b"not a zip at all" * 100
    assert not _holds_backend_config(reader(garbage, []), len(garbage))
    assert not _holds_backend_config(reader(b"", []), 0)


def test_a_failed_read_is_unreadable_not_a_non_package():
    """A ranged read that fails (the object store down or timing out) is PackageUnreadable, a 503 to retry, not
    "not a backend": zipfile turned the OSError of its index read into BadZipFile, which read as a non-package."""
    package = archive({"backend/railyard-ml.json": b"{}"})

    def failing(exc: Exception):
        def read_range(offset: int, length: int) -> bytes:
            raise exc
        return read_range

    for exc in (TimeoutError("read timed out"), ConnectionResetError(), RuntimeError("S3Error: InternalError")):
        with pytest.raises(PackageUnreadable) as unreadable:
            _holds_backend_config(failing(exc), len(package))
        assert unreadable.value.status == 503 and unreadable.value.__cause__ is exc
    # a store that answers with fewer bytes than the size said (a truncated object) is still not a package
    assert not _holds_backend_config(reader(package[:10], []), len(package))


def test_the_stored_artifact_is_looked_up_by_its_sha():
    package = archive({"backend/railyard-ml.json": b"{}"})
    byop = archive({"model.py": b""})

    class Objects:
        def __init__(self, stored: dict[str, bytes], fail: Exception | None = None) -> None:
            self.stored, self.fail = stored, fail

        async def size(self, bucket: str, key: str) -> int:
            if self.fail is not None:
                raise self.fail
            if key not in self.stored:
                raise NotFound("object not found")
            return len(self.stored[key])

        def read_range_sync(self, bucket: str, key: str, offset: int, length: int) -> bytes:
            return self.stored[key][offset:offset + length]

    stored = Objects({content_key("a" * 64): package, content_key("b" * 64): byop})
    assert asyncio.run(holds_backend_config(stored, "a" * 64))
    assert not asyncio.run(holds_backend_config(stored, "b" * 64))
    assert not asyncio.run(holds_backend_config(stored, "c" * 64))  # not stored: not a package
    with pytest.raises(PackageUnreadable):
        asyncio.run(holds_backend_config(Objects({}, fail=OSError("connection refused")), "a" * 64))


def test_a_failed_read_is_logged_with_the_object_and_its_cause(caplog):
    """The operator's log names which package could not be read and why (the 503 the caller gets does not)."""
    class Objects:
        async def size(self, bucket: str, key: str) -> int:
            return 4096

        def read_range_sync(self, bucket: str, key: str, offset: int, length: int) -> bytes:
            raise TimeoutError("read timed out")

    with caplog.at_level("WARNING", logger="railyard.monitoring.ml_backend"), pytest.raises(PackageUnreadable):
        asyncio.run(holds_backend_config(Objects(), "d" * 64))
    assert content_key("d" * 64) in caplog.text and "read timed out" in caplog.text
