"""Object storage behind a small Protocol, implemented with the `minio` SDK.

The SDK is blocking, so every call runs in a worker thread. It is loaded on a store's first object call: the
bucket checks of a service's start and of its health checks go through `shared.s3_light`, so a service that
stores nothing while idle does not hold the SDK (~7 MiB of RSS per process). Uploads stream from a file object or an
async iterator (spooled to a temporary file, so memory stays bounded whatever the size); downloads
stream in chunks. Content-addressed puts store bytes under `sha256/<hex>` once, however many
callers upload them.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from shared import s3_light
from shared.errors import NotFound
from shared.settings import S3Settings

if TYPE_CHECKING:
    from minio import Minio

log = logging.getLogger("railyard.objectstore")
CHUNK = 1024 * 1024
NOT_FOUND_CODES = ("NoSuchKey", "NoSuchBucket", "NoSuchObject", "ResourceNotFound")  # S3: "no such object"
MIN_PART_SIZE = 5 * 1024 * 1024  # S3's smallest multipart part
MAX_PARTS = 9000  # S3 allows 10,000 parts; keep a margin
SPOOL_IN_MEMORY = 1024 * 1024
LIGHT_PUT_BYTES = 64 * 1024 * 1024  # put_bytes sends up to this in one PUT of its own (the bytes are in memory)

# Buckets the platform uses; names are prefixed by settings.s3.bucket_prefix.
BUCKET_ARTIFACTS = "artifacts"
BUCKET_TABLES = "tables"
BUCKET_LOGS = "logs"
BUCKET_ORCHESTRATIONS = "orchestrations"
BUCKET_DATASETS = "datasets"
BUCKET_MONITORING = "monitoring"  # the images of seed-003 predictions, content-addressed: images/<sha256>
ALL_BUCKETS = (BUCKET_ARTIFACTS, BUCKET_TABLES, BUCKET_LOGS, BUCKET_ORCHESTRATIONS, BUCKET_DATASETS,
               BUCKET_MONITORING)


@dataclass(frozen=True)
class StoredObject:
    """Where an object is and how big it is."""

    bucket: str
    key: str
    size: int
    sha256: str | None = None
    created: bool = True


class ObjectStore(Protocol):
    """What services need of object storage."""

    async def ensure_buckets(self, names: Iterable[str]) -> None: ...
    async def put_stream(self, bucket: str, key: str, source: BinaryIO | AsyncIterator[bytes],
                         length: int = -1, content_type: str = "application/octet-stream") -> StoredObject: ...
    async def put_bytes(self, bucket: str, key: str, data: bytes | memoryview | Any,
                        content_type: str = "application/octet-stream") -> StoredObject: ...
    async def put_content_addressed(self, bucket: str, source: BinaryIO | AsyncIterator[bytes]) -> StoredObject: ...
    def get_stream(self, bucket: str, key: str, chunk_size: int = CHUNK) -> AsyncIterator[bytes]: ...
    async def get_bytes(self, bucket: str, key: str) -> bytes: ...
    async def exists(self, bucket: str, key: str) -> bool: ...
    async def delete(self, bucket: str, key: str) -> None: ...
    async def copy(self, bucket: str, source_key: str, target_key: str) -> None: ...
    async def download_to(self, bucket: str, key: str, target: Path) -> tuple[str, int]: ...
    async def ping(self) -> None: ...


def content_key(sha256_hex: str) -> str:
    """The key of content-addressed bytes."""
    return f"sha256/{sha256_hex[:2]}/{sha256_hex}"


class MinioObjectStore:
    """ObjectStore over any S3 API (SeaweedFS, MinIO, AWS) through the minio SDK."""

    def __init__(self, settings: S3Settings) -> None:
        self._prefix = settings.bucket_prefix
        self._settings = settings
        self._sdk: Minio | None = None

    @property
    def _client(self) -> Minio:
        """The SDK's client, made (and the SDK imported) on first use."""
        if self._sdk is None:
            from minio import Minio

            self._sdk = Minio(
                self._settings.endpoint,
                access_key=self._settings.access_key or None,
                secret_key=self._settings.secret_key or None,
                secure=self._settings.secure,
                region=self._settings.region,
            )
        return self._sdk

    def bucket(self, name: str) -> str:
        """The real bucket name of one of the platform's buckets."""
        return f"{self._prefix}-{name}"

    async def ensure_buckets(self, names: Iterable[str] = ALL_BUCKETS) -> None:
        for name in names:
            real = self.bucket(name)
            try:
                exists = await s3_light.bucket_exists(self._settings, real)
                if exists or (exists is False and await s3_light.make_bucket(self._settings, real)):
                    continue
            except (OSError, TimeoutError):  # S3 not reachable yet: the SDK, which retries, tries again
                pass
            # an answer the light client does not read: the SDK asks again and raises S3's error if there is one
            if not await asyncio.to_thread(self._client.bucket_exists, real):
                from minio.error import S3Error

                try:
                    await asyncio.to_thread(self._client.make_bucket, real)
                except S3Error as exc:
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise

    async def ping(self) -> None:
        # one immediate retry (a dropped connection), not the SDK's six attempts: a health check answers within 3 s
        if await s3_light.bucket_exists(self._settings, self.bucket(BUCKET_ARTIFACTS), retries=1) is None:
            await asyncio.to_thread(self._client.bucket_exists, self.bucket(BUCKET_ARTIFACTS))

    async def put_stream(self, bucket: str, key: str, source: BinaryIO | AsyncIterator[bytes],
                         length: int = -1, content_type: str = "application/octet-stream") -> StoredObject:
        if hasattr(source, "read"):
            return await self._put_file(bucket, key, source, length, content_type)  # type: ignore[arg-type]
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
            size = 0
            async for chunk in source:  # type: ignore[union-attr]
                await asyncio.to_thread(spool.write, chunk)
                size += len(chunk)
            spool.seek(0)
            return await self._put_file(bucket, key, spool, size, content_type)

    async def put_bytes(self, bucket: str, key: str, data: bytes | memoryview | Any,
                        content_type: str = "application/octet-stream") -> StoredObject:
        """Bytes up to LIGHT_PUT_BYTES go in one PUT of `shared.s3_light` (no SDK, no thread, no multipart above
        5 MiB; inference log segments); larger ones, and any answer that PUT does not expect, through the SDK.
        `data`: any object with the buffer protocol and a length (bytes, a memoryview, a pyarrow Buffer: the engine
        hands its Parquet segment over without copying it into bytes)."""
        if len(data) <= LIGHT_PUT_BYTES:
            try:
                if await s3_light.put_object(self._settings, self.bucket(bucket), key, data, content_type):
                    return StoredObject(bucket=bucket, key=key, size=len(data))
                log.warning("S3 refused a PUT of %s/%s without the SDK; sending it through the SDK", bucket, key)
            except (OSError, TimeoutError):  # unreachable after the retries: the SDK tries again and raises
                pass
        return await self._put_file(bucket, key, io.BytesIO(data), len(data), content_type)

    async def _put_file(self, bucket: str, key: str, source: BinaryIO, length: int, content_type: str,
                        sha256: str | None = None) -> StoredObject:
        # One part in memory at a time: the SDK's parallel uploads queue every part without back-pressure,
        # which holds the whole object in memory, so parts are sent one after another.
        part_size = max(MIN_PART_SIZE, -(-length // MAX_PARTS)) if length > 0 else MIN_PART_SIZE
        result = await asyncio.to_thread(
            self._client.put_object,
            self.bucket(bucket),
            key,
            source,
            length,
            content_type=content_type,
            part_size=part_size,
            num_parallel_uploads=1,
        )
        size = length if length >= 0 else (await self._stat_size(bucket, key))
        return StoredObject(bucket=bucket, key=result.object_name, size=size, sha256=sha256)

    async def put_content_addressed(self, bucket: str, source: BinaryIO | AsyncIterator[bytes]) -> StoredObject:
        """Store bytes under their sha256 once; a second upload of the same bytes stores nothing."""
        digest = hashlib.sha256()
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
            size = 0
            if hasattr(source, "read"):
                while chunk := await asyncio.to_thread(source.read, CHUNK):  # type: ignore[union-attr]
                    digest.update(chunk)
                    await asyncio.to_thread(spool.write, chunk)
                    size += len(chunk)
            else:
                async for chunk in source:  # type: ignore[union-attr]
                    digest.update(chunk)
                    await asyncio.to_thread(spool.write, chunk)
                    size += len(chunk)
            sha = digest.hexdigest()
            key = content_key(sha)
            if await self.exists(bucket, key):
                return StoredObject(bucket=bucket, key=key, size=size, sha256=sha, created=False)
            spool.seek(0)
            return await self._put_file(bucket, key, spool, size, "application/octet-stream", sha256=sha)

    async def _object_call(self, call: Callable, bucket: str, key: str) -> Any:
        """`call(real bucket, key)` of the SDK in a worker thread; S3's "no such object" answers as NotFound."""
        from minio.error import S3Error

        try:
            return await asyncio.to_thread(call, self.bucket(bucket), key)
        except S3Error as exc:
            if exc.code in NOT_FOUND_CODES:
                raise NotFound("object not found") from None
            raise

    async def get_stream(self, bucket: str, key: str, chunk_size: int = CHUNK) -> AsyncIterator[bytes]:
        response = await self._object_call(self._client.get_object, bucket, key)
        try:
            while chunk := await asyncio.to_thread(response.read, chunk_size):
                yield chunk
        finally:
            response.close()
            response.release_conn()

    async def get_bytes(self, bucket: str, key: str) -> bytes:
        parts = [chunk async for chunk in self.get_stream(bucket, key)]
        return b"".join(parts)

    async def _stat_size(self, bucket: str, key: str) -> int:
        stat = await self._object_call(self._client.stat_object, bucket, key)
        return int(stat.size or 0)

    async def size(self, bucket: str, key: str) -> int:
        """The object's size in bytes (with read_range_sync: read a part of a large object, e.g. a zip's index)."""
        return await self._stat_size(bucket, key)

    async def exists(self, bucket: str, key: str) -> bool:
        try:
            await self._object_call(self._client.stat_object, bucket, key)
        except NotFound:
            return False
        return True

    async def delete(self, bucket: str, key: str) -> None:
        await asyncio.to_thread(self._client.remove_object, self.bucket(bucket), key)

    def read_range_sync(self, bucket: str, key: str, offset: int, length: int) -> bytes:
        """`length` bytes at `offset` (blocking: for code already running in a worker thread)."""
        response = self._client.get_object(self.bucket(bucket), key, offset=offset, length=length)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    async def list_keys(self, bucket: str, prefix: str = "") -> list[tuple[str, float]]:
        """(key, last modified as a UNIX time) of every object under `prefix`."""

        def listing() -> list[tuple[str, float]]:
            return [(o.object_name, o.last_modified.timestamp() if o.last_modified else 0.0)
                    for o in self._client.list_objects(self.bucket(bucket), prefix=prefix, recursive=True)]

        return await asyncio.to_thread(listing)

    async def list_keys_between(self, bucket: str, prefix: str, first: str, last: str) -> list[tuple[str, float]]:
        """(key, last modified) of the objects under `prefix` whose name after it sorts from `first` (included)
        up to the names that begin with `last` (included): one ranged listing (`start-after`), stopped at the
        first key past `last`, so a time-ordered folder costs what the range holds, not the whole folder."""

        def listing() -> list[tuple[str, float]]:
            found, end = [], prefix + last
            for o in self._client.list_objects(self.bucket(bucket), prefix=prefix, recursive=True,
                                               start_after=prefix + first if first else None):
                if o.object_name[:len(end)] > end:
                    break
                if o.object_name >= prefix + first:
                    found.append((o.object_name, o.last_modified.timestamp() if o.last_modified else 0.0))
            return found

        return await asyncio.to_thread(listing)

    async def copy(self, bucket: str, source_key: str, target_key: str) -> None:
        """Server-side copy within a bucket (no bytes pass through this process)."""
        from minio.commonconfig import CopySource

        real = self.bucket(bucket)
        await asyncio.to_thread(self._client.copy_object, real, target_key, CopySource(real, source_key))

    async def download_to(self, bucket: str, key: str, target: Path) -> tuple[str, int]:
        """Stream an object to a local file; returns its sha256 and size."""
        digest = hashlib.sha256()
        size = 0
        with target.open("wb") as handle:
            async for chunk in self.get_stream(bucket, key):
                digest.update(chunk)
                size += len(chunk)
                await asyncio.to_thread(handle.write, chunk)
        return digest.hexdigest(), size


class RangedFile:
    """A read-only, seekable file over one stored object whose reads are ranged GETs (`read_range(offset, length)`),
    for readers that need only part of an object: a Parquet footer and some column chunks (the log store), a zip's
    index (monitoring). `blocks` holds ranges fetched ahead, (start, bytes); a read inside one is served from it."""

    def __init__(self, read_range: Callable[[int, int], bytes], size: int, prefetch_tail: int = 0) -> None:
        self.read_range, self.size = read_range, size
        self.position = 0
        self.closed = False
        self.blocks: list[tuple[int, bytes]] = []
        if prefetch_tail:
            start = max(0, size - prefetch_tail)
            self.blocks.append((start, read_range(start, size - start)))

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.position, 2: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self.position
        n = max(0, min(n, self.size - self.position))
        if n == 0:
            return b""
        start = self.position
        for block_start, block in self.blocks:
            if block_start <= start and start + n <= block_start + len(block):
                data = block[start - block_start:start - block_start + n]
                break
        else:
            data = self.read_range(start, n)
        self.position += len(data)
        return data

    def close(self) -> None:
        self.closed = True
