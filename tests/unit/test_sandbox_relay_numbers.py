"""A task run's relay reaches a loopback gateway from an address of its owner's own, and since 2026-12-05 no two owners
share one: the task scheduler gives each owner a number once (store.relay_number, its relay_sources table) and
shared.sandbox.relay_source maps it to 127.1.0.0 + n, past a trusted proxy's addresses, never 127.0.0.0/16 nor
127.255.255.255. Before, the address was 24 bits of a digest of the owner's id: two owners could get the same one
(a 3 % chance among 1,000 owners) and share the gateway's per-address limits (one tenant's runs spending another's
token bucket, or locking a user out by failing that user's password from the shared address). The SQL runs on
PostgreSQL in tests/integration/test_sandbox_gateway_relay.py."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import shutil
import uuid
from types import SimpleNamespace

import asyncpg
import pytest

from services.task_scheduler import runner, scheduler, store
from shared import sandbox
from shared.sandbox import RELAY_NUMBERS, relay_numbered_address, relay_source
from shared.settings import Settings, TaskSettings

LOOPBACK_16 = ipaddress.ip_network("127.0.0.0/16")


def networks(*names: str) -> list:
    return [ipaddress.ip_network(name, strict=False) for name in names]


def colliding_keys() -> tuple[str, str]:
    """Two owner ids whose digest addresses (relay_source without a number) are the same: the case numbers mend."""
    seen: dict[str, str] = {}
    for i in range(200_000):
        key = f"owner-{i}"
        address = relay_source("127.0.0.1", key, [])
        if address in seen:
            return seen[address], key
        seen[address] = key
    raise AssertionError("no two of 200,000 ids met (24 bits: a pair is expected within ~5,000)")


def test_distinct_numbers_give_distinct_addresses_in_order_outside_the_hosts():
    assert relay_source("127.0.0.1", "anyone", [], 0) == "127.1.0.0"
    assert relay_source("127.0.0.1", "anyone", [], 1) == "127.1.0.1"
    assert relay_source("127.0.0.1", "anyone", [], 65_536) == "127.2.0.0"
    last = relay_source("127.0.0.1", "anyone", [], RELAY_NUMBERS - 1)
    assert last == "127.255.255.254"  # the last one: 127.255.255.255 (the broadcast) is never one
    numbers = [*range(0, 3000), *range(RELAY_NUMBERS - 3000, RELAY_NUMBERS), *range(0, RELAY_NUMBERS, 4099)]
    addresses = {n: relay_source("127.0.0.1", f"owner-{n}", [], n) for n in numbers}
    assert len(set(addresses.values())) == len(addresses)  # no two numbers share an address
    for address in addresses.values():
        ip = ipaddress.ip_address(address)
        assert ip.is_loopback and ip not in LOOPBACK_16 and address != "127.255.255.255", address


def test_two_owners_whose_digests_meet_get_their_own_addresses():
    first, second = colliding_keys()
    assert relay_source("127.0.0.1", first, []) == relay_source("127.0.0.1", second, [])  # before: shared
    assert relay_source("127.0.0.1", first, [], 0) != relay_source("127.0.0.1", second, [], 1)
    # the key does not matter once numbered: the number alone is the address
    assert relay_source("127.0.0.1", first, [], 7) == relay_source("127.0.0.1", second, [], 7)


def test_a_trusted_proxys_addresses_are_skipped_and_the_numbers_stay_distinct():
    trusted = ["127.1.0.0/30", "127.1.0.5", "127.1.0.4/31", "127.0.0.5", "::1", "10.0.0.0/8", "127.3.0.0/16"]
    nets = networks(*trusted)
    assert [relay_source("127.0.0.1", "o", trusted, n) for n in range(4)] == [
        "127.1.0.6", "127.1.0.7", "127.1.0.8", "127.1.0.9"]  # 127.1.0.0-3 and the overlapping 4-5 skipped
    # around the /16: 127.1.0.0-127.2.255.255 less the six above, then 127.4.0.0 on
    before = 2 * 65_536 - 6
    assert relay_source("127.0.0.1", "o", trusted, before - 1) == "127.2.255.255"
    assert relay_source("127.0.0.1", "o", trusted, before) == "127.4.0.0"
    numbers = [*range(0, 200), *range(before - 100, before + 100)]
    addresses = [relay_numbered_address(n, nets) for n in numbers]
    assert len(set(addresses)) == len(addresses) and None not in addresses
    for address in addresses:
        assert not any(ipaddress.ip_address(address) in net for net in nets), address
    # the addresses left are fewer: the last number is one less than without the trusted ones
    left = RELAY_NUMBERS - 6 - 65_536
    assert relay_numbered_address(left - 1, nets) == "127.255.255.254"
    assert relay_numbered_address(left, nets) is None


def test_past_the_numbered_addresses_the_digest_is_taken_and_said(caplog):
    with caplog.at_level(logging.WARNING, logger="railyard.sandbox"):
        assert relay_source("127.0.0.1", "owner", [], RELAY_NUMBERS) == relay_source("127.0.0.1", "owner", [])
    assert any("past the" in r.getMessage() and "digest" in r.getMessage() for r in caplog.records), caplog.text
    assert relay_numbered_address(-1, []) is None


def test_the_exclusions_and_fallbacks_hold_for_numbered_owners():
    assert relay_source("127.0.0.1", "owner", ["127.0.0.0/8"], 3) is None  # every address trusted: the system's choice
    assert relay_source("10.1.2.3", "owner", [], 3) is None and relay_source("::1", "owner", [], 3) is None
    assert relay_source("gateway.railyard.svc", "owner", [], 3) is None
    assert relay_source("localhost", "owner", [], 3) == "127.1.0.3"
    assert relay_source("127.0.0.1", "owner", ["127.0.0.0/9"], 3) == "127.128.0.3"  # the first half trusted


def test_the_relay_connects_from_the_numbers_address(tmp_path):
    """_gateway_relay with an owner's number: the gateway (a local server) sees the number's address, and two owners
    whose digests meet are seen apart."""
    first, second = colliding_keys()

    async def main() -> list[str]:
        peers: list[str] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peers.append(writer.get_extra_info("peername")[0])
            writer.close()

        gateway = await asyncio.start_server(serve, "127.0.0.1", 0)
        settings = Settings(stack={"data_dir": tmp_path / "data"},
                            gateway={"host": "127.0.0.1", "port": gateway.sockets[0].getsockname()[1]})
        try:
            for key, number in ((first, 41), (second, 42)):
                server, folder = await sandbox._gateway_relay(settings, key, number)
                try:
                    reader, writer = await asyncio.open_unix_connection(str(folder / "gateway.sock"))
                    await asyncio.wait_for(reader.read(), 10)
                    writer.close()
                finally:
                    server.close()
                    shutil.rmtree(folder, ignore_errors=True)
        finally:
            gateway.close()
        return peers

    assert asyncio.run(main()) == ["127.1.0.41", "127.1.0.42"]


def run_planned(tmp_path, monkeypatch, relay_number) -> list[runner.RunPlan]:
    """Scheduler._run of one run of owner "owner-1", store.relay_number being `relay_number`: the plans it ran."""
    async def task(pool, task_id):
        return {"id": task_id, "orch_id": 1, "owner_id": "owner-1", "workspace_id": 1, "timeout_seconds": 20,
                "args": {}}

    async def orchestration(pool, orch_id):
        return {"sha": "s", "requirements_sha": None, "entrypoint": "main.py"}

    plans: list[runner.RunPlan] = []

    async def execute(plan, writer, kill):
        plans.append(plan)
        return runner.RunOutcome("success", 0, None)

    async def mint(*args):
        return "token"

    async def local_zip(self, sha):
        return tmp_path / "o.zip"

    async def beat_runs(pool, run_ids, supervisor):  # still this process's as main.py starts (Scheduler._still_claimed)
        return {r: False for r in run_ids}

    monkeypatch.setattr(store, "task", task)
    monkeypatch.setattr(store, "orchestration", orchestration)
    monkeypatch.setattr(store, "relay_number", relay_number)
    monkeypatch.setattr(store, "beat_runs", beat_runs)
    monkeypatch.setattr(runner, "execute", execute)
    monkeypatch.setattr(runner, "cleanup", lambda workdir: None)
    monkeypatch.setattr(scheduler.Scheduler, "_local_zip", local_zip)
    deps = SimpleNamespace(pool="the pool", settings=TaskSettings(), work_root=tmp_path)
    run_id = uuid.uuid4()

    async def main():
        sched = scheduler.Scheduler(deps=deps, mint=mint, gateway_url="http://127.0.0.1:1")
        sched.kills[run_id] = asyncio.Event()
        return await sched._run({"id": run_id, "task_id": 7})

    assert asyncio.run(main()).status == "success"
    return plans


def test_the_scheduler_runs_each_run_with_its_owners_number(tmp_path, monkeypatch):
    asked = []

    async def relay_number(pool, owner_id):
        asked.append((pool, owner_id))
        return 12

    plans = run_planned(tmp_path, monkeypatch, relay_number)
    assert asked == [("the pool", "owner-1")]
    assert [plan.owner_number for plan in plans] == [12]
    spec = runner.sandbox_spec(plans[0])
    assert spec.source_key == "owner-1" and spec.source_number == 12


@pytest.mark.parametrize(("error", "traceback"), [
    (asyncpg.exceptions.UndefinedTableError("no relay_sources"), True),
    (OSError("refused"), True),  # not raised by asyncpg: not the database's
    (asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"), False)])
def test_a_number_the_database_does_not_give_leaves_the_run_on_the_digest(tmp_path, monkeypatch, caplog, error,
                                                                          traceback):
    """A database that refuses or fails the number's read or write: the run still runs, from its owner's digest
    address (as before 2026-12-05), and the log says so: with the error's traceback unless the database could not
    answer (shared/data_errors.py is_database_unavailable; session 40: before, a WARNING line for any error)."""
    async def relay_number(pool, owner_id):
        raise error

    with caplog.at_level(logging.WARNING, logger="railyard.task_scheduler.scheduler"):
        plans = run_planned(tmp_path, monkeypatch, relay_number)
    assert [plan.owner_number for plan in plans] == [None]
    assert runner.sandbox_spec(plans[0]).source_number is None
    [record] = [r for r in caplog.records if "relay number" in r.getMessage()]
    assert (record.levelname, bool(record.exc_info)) == ("WARNING", traceback)
