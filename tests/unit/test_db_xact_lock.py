"""shared.db.xact_lock: the text it hashes is the one the SQL concatenations it replaced gave, so lock keys stay the
same across the change and across processes still running the old code (tests/integration/test_bus_concurrency.py
computes the deployer's keys in SQL and waits on them)."""

from __future__ import annotations

import asyncio

from shared.db import lock_text, xact_lock


class RecordingConn:
    def __init__(self) -> None:
        self.executed: list[tuple] = []

    async def execute(self, sql: str, *args) -> None:
        self.executed.append((sql, *args))


def test_lock_text_is_the_old_sql_concatenation():
    # 'deployer.pipeline:' || $1::bigint ; 'auth.workspace:' || $1::bigint
    assert lock_text("deployer.pipeline", 7) == "deployer.pipeline:7"
    assert lock_text("auth.workspace", 12345678901) == "auth.workspace:12345678901"
    assert lock_text("deployer.pipeline", -3) == "deployer.pipeline:-3"
    # 'deployer.pipeline_name:' || $1::bigint || ':' || $2::text (a name may hold ':' and non-ASCII text)
    assert lock_text("deployer.pipeline_name", 7, "a:b-é") == "deployer.pipeline_name:7:a:b-é"


def test_xact_lock_takes_a_transaction_lock_on_the_hash_of_that_text():
    conn = RecordingConn()
    asyncio.run(xact_lock(conn, "deployer.pipeline_name", 7, "p"))
    assert conn.executed == [("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))",
                              "deployer.pipeline_name:7:p")]
