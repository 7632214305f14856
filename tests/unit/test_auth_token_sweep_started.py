"""The auth service starts its auth state sweep (refresh tokens, sign-in claims, failed-login counts) with the
service and stops it with the service
(services/auth/app.py's start/stop hooks). The sweep's SQL is tested on the real database
(tests/integration/test_auth.py::test_the_sweep_deletes_dead_refresh_tokens_and_keeps_live_ones); here only the
wiring: the hooks run with the bootstrap and the revocation feed replaced (they need the database and the bus), the
sweep itself is the real one, its pool a fake that records the DELETE statements it is sent."""

from __future__ import annotations

import asyncio

from services.auth import app, token_sweep
from shared.service import Runtime
from shared.settings import Settings
from tests.unit.auth_start import Broker, start_without_database_or_bus


class RecordingPool:
    """Answers every statement as a DELETE of no row, and keeps them."""

    def __init__(self) -> None:
        self.statements: list[str] = []
        self.sent = asyncio.Event()

    async def execute(self, sql: str, *args) -> str:
        self.statements.append(sql)
        if "login_failures" in sql:  # the round's last statement
            self.sent.set()
        return "DELETE 0"


class IdleFeed:
    """The revocation feed's face (it subscribes on the bus)."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    async def start(self, nats_client) -> None:
        pass

    async def stop(self) -> None:
        pass


def test_the_auth_service_starts_its_auth_state_sweep_and_stops_it(monkeypatch):
    start_without_database_or_bus(monkeypatch, IdleFeed)
    monkeypatch.setattr(token_sweep.AuthStateSweep, "every", 0.01)  # its first round within 10 ms, not an hour

    async def scenario() -> None:
        pool = RecordingPool()
        runtime = Runtime(name="auth", settings=Settings(), broker=Broker(), db=pool)  # type: ignore[arg-type]
        await app.start(runtime)
        sweep = runtime.extras["auth_state_sweep"]
        try:
            await asyncio.wait_for(pool.sent.wait(), 5)
        except TimeoutError:
            raise AssertionError("no auth state sweep ran a round through login_failures") from None
        finally:
            await app.stop(runtime)
        assert [table for sql in pool.statements[:3] for table in ("refresh_tokens", "login_attempts", "login_failures")
                if f"DELETE FROM {table}" in sql] == ["refresh_tokens", "login_attempts", "login_failures"]
        assert sweep._task is None  # stopped, awaited
        rounds = len(pool.statements)
        await asyncio.sleep(0.05)
        assert len(pool.statements) == rounds  # nothing sweeps after the service stopped

    asyncio.run(scenario())
