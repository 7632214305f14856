"""Object storage through the minio SDK against the embedded S3 server, and PostgreSQL migrations."""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
import tracemalloc
import uuid

import asyncpg
import pytest

from shared.db import Migration, MigrationError, apply_migrations
from shared.objectstore import BUCKET_TABLES, MinioObjectStore, content_key

pytestmark = pytest.mark.integration

SIZE = 50 * 1024 * 1024


class GeneratedFile(io.RawIOBase):
    """A 'file' of `size` pseudo-random bytes produced 64 KiB at a time as it is read, never held whole."""

    BLOCK = 65536

    def __init__(self, size: int, seed: bytes) -> None:
        self.remaining = size
        self.pattern = bytearray(hashlib.sha256(seed).digest() * (self.BLOCK // 32))
        self.counter = 0
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.remaining, self.BLOCK)
        if n == 0:
            return 0
        self.counter += 1
        self.pattern[:8] = self.counter.to_bytes(8, "big")
        view = memoryview(self.pattern)[:n]
        buffer[:n] = view
        self.digest.update(view)
        self.remaining -= n
        return n


@pytest.fixture
async def store(stack):
    store = MinioObjectStore(stack.settings().s3)
    await store.ensure_buckets([BUCKET_TABLES])
    return store


async def test_put_and_get_50mb_without_holding_it_in_memory(store):
    key = f"test/{uuid.uuid4()}"
    source = GeneratedFile(SIZE, b"fifty")
    # the SDK loads on a store's first object call (shared/objectstore.py): load it before measuring, so the
    # peaks are the transfer's, not the import's (~0.3 MiB of it counted, and the upload's peak sat at 16.1 MiB)
    assert not await store.exists(BUCKET_TABLES, key)
    tracemalloc.start()
    try:
        stored = await store.put_stream(BUCKET_TABLES, key, io.BufferedReader(source, 1024 * 1024), length=SIZE)
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        digest = hashlib.sha256()
        total = 0
        async for chunk in store.get_stream(BUCKET_TABLES, key):
            digest.update(chunk)
            total += len(chunk)
        _, get_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stored.size == SIZE and total == SIZE
    assert digest.hexdigest() == source.digest.hexdigest()
    # a multipart upload holds one 5 MiB part (and its copy while read) at a time, a download one chunk
    assert put_peak < 16 * 1024 * 1024, f"upload peak {put_peak / 2**20:.1f} MiB"
    assert get_peak < 8 * 1024 * 1024, f"download peak {get_peak / 2**20:.1f} MiB"
    await store.delete(BUCKET_TABLES, key)
    assert not await store.exists(BUCKET_TABLES, key)


async def test_content_addressed_put_stores_the_same_bytes_once(store):
    data = uuid.uuid4().bytes * 1000

    async def chunks():
        for i in range(0, len(data), 4096):
            yield data[i:i + 4096]

    first = await store.put_content_addressed(BUCKET_TABLES, chunks())
    second = await store.put_content_addressed(BUCKET_TABLES, io.BytesIO(data))
    assert first.sha256 == second.sha256 == hashlib.sha256(data).hexdigest()
    assert first.key == second.key == content_key(first.sha256)
    assert first.created and not second.created
    assert await store.get_bytes(BUCKET_TABLES, first.key) == data


async def test_missing_object_is_not_found(store):
    from shared.errors import NotFound

    with pytest.raises(NotFound):
        await store.get_bytes(BUCKET_TABLES, f"missing/{uuid.uuid4()}")


async def test_a_ranged_listing_returns_the_keys_between_two_names_as_s3_lists_them(store):
    """`list_keys_between` (the log store's orphan sweep) lists one folder from a name (`start-after`) and stops at
    the first key past the last one: against the real S3 server, with keys before, inside and after the range and
    in a neighbouring folder whose names sort inside it."""
    from shared.log_segments import key_time, segment_key

    base = 1_790_000_000.0
    folder = f"t-{uuid.uuid4().hex}/"
    keys = [folder + segment_key(1, "p", now=base + n).split("/", 2)[2] for n in range(8)]
    neighbour = f"{folder[:-1]}x/" + keys[3][len(folder):]
    for key in [*keys, neighbour]:
        await store.put_bytes(BUCKET_TABLES, key, b"x")
    day_folder = folder + keys[0][len(folder):].rsplit("/", 1)[0] + "/"
    listed = await store.list_keys_between(BUCKET_TABLES, day_folder, key_time(base + 2), key_time(base + 5))
    assert [key for key, _ in listed] == keys[2:6]
    assert all(abs(modified - time.time()) < 600 for _, modified in listed)
    assert await store.list_keys_between(BUCKET_TABLES, day_folder, key_time(base + 9), key_time(base + 20)) == []


@pytest.fixture
async def conn(stack):
    connection = await asyncpg.connect(stack.settings().postgres.dsn)
    yield connection
    await connection.close()


MIGRATIONS = [
    Migration(1, "things", "CREATE TABLE things (id serial PRIMARY KEY, name text NOT NULL)"),
    Migration(2, "thing_index", "CREATE UNIQUE INDEX things_name ON things (name)"),
]


async def test_migrations_applied_twice_are_a_no_op(conn):
    schema = f"mig_{uuid.uuid4().hex[:12]}"
    assert await apply_migrations(conn, schema, MIGRATIONS) == [1, 2]
    await conn.execute(f"INSERT INTO {schema}.things (name) VALUES ('a')")
    assert await apply_migrations(conn, schema, MIGRATIONS) == []
    assert await conn.fetchval(f"SELECT count(*) FROM {schema}.things") == 1
    assert await conn.fetchval(f"SELECT count(*) FROM {schema}.schema_migrations") == 2


async def test_replicas_starting_together_apply_each_migration_once(stack):
    schema = f"mig_{uuid.uuid4().hex[:12]}"
    dsn = stack.settings().postgres.dsn
    conns = [await asyncpg.connect(dsn) for _ in range(4)]
    try:
        results = await asyncio.gather(*(apply_migrations(c, schema, MIGRATIONS) for c in conns))
        assert sorted(results, key=len) == [[], [], [], [1, 2]]
    finally:
        for c in conns:
            await c.close()


async def test_changed_migration_is_refused(conn):
    schema = f"mig_{uuid.uuid4().hex[:12]}"
    await apply_migrations(conn, schema, MIGRATIONS[:1])
    edited = [Migration(1, "things", "CREATE TABLE things (id bigserial PRIMARY KEY)")]
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await apply_migrations(conn, schema, edited)


async def test_failing_migration_leaves_nothing_behind(conn):
    schema = f"mig_{uuid.uuid4().hex[:12]}"
    broken = [MIGRATIONS[0], Migration(2, "broken", "CREATE TABLE nope (")]
    with pytest.raises(asyncpg.PostgresSyntaxError):
        await apply_migrations(conn, schema, broken)
    assert await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema) == 0


async def test_an_idle_pool_holds_no_backend(stack):
    """pool_min 0 (the default): migrations and health checks leave no connection open, a start's connections are
    closed by close_idle, and the pool opens one again on the next query (docs/performance.md, "Memory")."""
    from shared.db import close_idle, create_pool, migrate, ping

    settings = stack.settings().postgres
    schema = f"mig_{uuid.uuid4().hex[:12]}"
    assert settings.pool_min == 0
    assert await migrate(settings, schema, MIGRATIONS) == [1, 2]
    pool = await create_pool(settings, schema)
    try:
        assert pool.get_size() == 0
        await ping(pool, settings)  # on a connection of its own
        assert pool.get_size() == 0
        await asyncio.gather(*(pool.fetchval("SELECT pg_sleep(0.05)") for _ in range(3)))
        assert pool.get_size() == 3
        assert close_idle(pool) == 3 and pool.get_size() == 0
        assert await pool.fetchval("SELECT count(*) FROM things") == 0
        assert pool.get_size() == 1
        await ping(pool, settings)  # on the idle pooled connection
        assert pool.get_size() == 1
    finally:
        await pool.close()
