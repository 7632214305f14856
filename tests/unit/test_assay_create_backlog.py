"""assays/create refuses a scheduled assay that would start with more closed windows than `max_windows` (what one
run_interactive scores; the scheduler's catch-up pass): 400 naming the count and what to change, nothing stored.
Before, it was stored and the scheduler scored every window from window.start on, in order, a log store read each,
before the assay's first new window: window.start a month back with "1 seconds" windows (a typo for hours) was 2.6
million reads, about five hours at the 150 windows a second measured on the embedded stack, while run_interactive
refused the same configuration ("more than 1000 windows")."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from services.assay_runner import handlers
from shared.authz import Principal
from shared.errors import InvalidRequest
from shared.settings import AssaySettings

PRINCIPAL = Principal(subject=str(uuid.uuid4()), kind="user", admin=False, client_id="test", username="alice",
                      issued_at=0.0)


def config(start: datetime | None, width: str = "1 seconds", interval: str | None = None,
           run_until: datetime | None = None) -> handlers.AssayConfig:
    window: dict[str, Any] = {"pipeline": "p", "width": width, "interval": interval,
                              "start": start.isoformat() if start else None}
    return handlers.AssayConfig.model_validate({
        "name": "a", "pipeline_id": 1, "pipeline_name": "p", "iopath": "output dense_1 0",
        "baseline": {"Static": {"values": [0.0, 1.0, 2.0, 3.0]}}, "window": window,
        "summarizer": {"num_bins": 2, "bin_mode": "Equal"}, "alert_threshold": 100.0, "workspace_id": 1,
        "run_until": run_until.isoformat() if run_until else None})


class Pool:
    def acquire(self):
        return self

    def transaction(self):
        return self

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        return None


@pytest.fixture
def stored(monkeypatch) -> list[Any]:
    kept: list[Any] = []

    async def nothing(*args: Any) -> None:
        return None

    async def baseline(deps, token, p):
        return {"counts": [1, 1]}, np.asarray([0.0, 1.5, 3.0]), None

    async def create(conn, *args: Any) -> int:
        kept.append(args)
        return 7

    monkeypatch.setattr(handlers, "_check_pipeline", nothing)
    monkeypatch.setattr(handlers, "_baseline", baseline)
    monkeypatch.setattr(handlers.store, "create", create)
    monkeypatch.setattr(handlers.store, "add_event", nothing)
    monkeypatch.setattr(handlers.store, "named", nothing)  # no assay of that name yet
    monkeypatch.setattr(handlers.store, "lock_name", nothing)
    return kept


def deps(max_windows: int) -> handlers.Deps:
    return handlers.Deps(pool=Pool(), settings=AssaySettings(max_windows=max_windows), membership=None,  # type: ignore[arg-type]
                         read_field=None, pipeline_of=None, log_page=None, outbox=None)  # type: ignore[arg-type]


async def test_a_month_of_one_second_windows_is_refused_and_nothing_stored(stored):
    month_ago = datetime.now(UTC) - timedelta(days=30)
    with pytest.raises(InvalidRequest) as caught:
        await handlers.create(deps(1000), PRINCIPAL, "token", config(month_ago))
    message = str(caught.value)
    assert "windows of 1 seconds already closed, more than the 1000 a scheduled assay may start with" in message
    assert int(message.split(" leaves ")[1].split()[0]) >= 30 * 86400 - 1
    assert stored == []


async def test_the_bound_counts_closed_windows_by_interval(stored):
    now = datetime.now(UTC)
    # ten 1-hour windows every hour have ended (the tenth a minute ago): at the bound, stored
    assert (await handlers.create(deps(10), PRINCIPAL, "t", config(now - timedelta(hours=10, minutes=1),
                                                                    "1 hours"))).assay_id == 7
    # an eleventh: refused
    with pytest.raises(InvalidRequest, match="leaves 11 windows of 1 hours"):
        await handlers.create(deps(10), PRINCIPAL, "t", config(now - timedelta(hours=11, minutes=1), "1 hours"))
    # the same span with a 2-hour interval: six windows, stored
    assert (await handlers.create(deps(10), PRINCIPAL, "t", config(now - timedelta(hours=11, minutes=1), "1 hours",
                                                                    "2 hours"))).assay_id == 7
    # run_until ends the backlog: three windows before it, however far back the start
    assert (await handlers.create(deps(10), PRINCIPAL, "t", config(now - timedelta(days=300), "1 hours",
                                                                    run_until=now - timedelta(days=300) + timedelta(
                                                                        hours=3)))).assay_id == 7
    assert len(stored) == 3


async def test_a_start_now_or_in_the_future_has_no_backlog(stored):
    assert (await handlers.create(deps(1), PRINCIPAL, "t", config(None))).assay_id == 7
    assert (await handlers.create(deps(1), PRINCIPAL, "t", config(datetime.now(UTC) + timedelta(days=1)))).assay_id == 7
