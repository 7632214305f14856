"""Knowing an ML backend package by its zip index alone (services/monitoring/ml_backend.py): ranged reads of the
stored object find `backend/railyard-ml.json` without reading the members' bytes; anything else is not a backend."""

from __future__ import annotations

import io
import os
import zipfile

from services.monitoring.ml_backend import _holds_backend_config


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
