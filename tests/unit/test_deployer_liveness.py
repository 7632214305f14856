"""Liveness (services/deployer/backend.py, LIVENESS_PROBE_WAIT; docs/deployment.md, "Liveness: a hung replica is
replaced"): a replica that answered before and whose status probes then go unanswered for liveness_timeout seconds
and liveness_probes probes in a row is killed (SIGTERM, SIGKILL after the grace) and replaced as one that exited.
Before 2026-12-05 only an exited replica was replaced: a hung one stayed in the deployment's queue group, taking a
share of the requests (each re-sent after 3 s, a 504 after 30 s with one replica) until a redeploy. The supervisor
probes the replicas itself, so a replica nobody reads the status of is noticed. The bus and the processes are
stand-ins; the real replica (SIGSTOP) is tests/integration/test_deploy_busy_status.py's."""

from __future__ import annotations

import asyncio
import logging
import signal
from types import SimpleNamespace

import nats.errors
import pytest

import services.deployer.backend as backend_module
from services.deployer.backend import LIVENESS_PROBE_WAIT, LocalBackend, Replica, ReplicaSet
from tests.unit.test_deployer_replica_status import RUNNING, Bus

TIMEOUT, PROBES = 60.0, 6


class Process:
    """A replica's process that exits on SIGKILL only (a stopped or hung one: SIGTERM stays pending)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.returncode, self.signals = pid, None, []
        self._exited = asyncio.Event()

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)

    def kill(self) -> None:
        self.signals.append(signal.SIGKILL)
        self.returncode = -9
        self._exited.set()

    async def wait(self) -> int:
        await self._exited.wait()
        return self.returncode


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(backend_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    return now


def _world(tmp_path, monkeypatch, *, liveness_timeout: float = TIMEOUT, epoch: list | None = None,
           ready_timeout: float = 10) -> tuple[LocalBackend, Bus, ReplicaSet]:
    bus = Bus()
    probes: list[float] = []

    async def request(subject: str, payload: bytes, wait: float) -> bytes:
        probes.append(wait)
        return await bus.request(subject, payload, wait)

    backend = LocalBackend(tmp_path, request, scale_down_after=60, ready_timeout=ready_timeout, stop_timeout=0.05,
                           liveness_timeout=liveness_timeout, liveness_probes=PROBES,
                           bus_epoch=(lambda: epoch[0]) if epoch is not None else (lambda: 0))
    backend.probes = probes
    replica_set = ReplicaSet(name="d-1", spec_path=tmp_path / "spec.json", ready=True, replicas=[
        Replica(replica_id="0", process=Process(100), started_at=backend_module.time.monotonic())])
    backend.sets["d-1"] = replica_set
    spawned = iter(range(101, 200))

    async def spawn(replica_set: ReplicaSet, replica_id: str) -> Replica:
        return Replica(replica_id=replica_id, process=Process(next(spawned)),
                       started_at=backend_module.time.monotonic())

    monkeypatch.setattr(backend, "_spawn", spawn)
    return backend, bus, replica_set


async def _pass(backend: LocalBackend) -> None:
    """One supervisor pass, its probes answered (or timed out) and its kills done."""
    await backend._supervise_pass()
    await asyncio.gather(*backend._probes)
    await asyncio.gather(*backend._retiring)


async def _run_for(backend: LocalBackend, clock: list[float], seconds: float, step: float = 1.0) -> None:
    end = clock[0] + seconds
    while clock[0] < end:
        clock[0] += step
        await _pass(backend)


async def test_a_hung_replica_nobody_asks_about_is_killed_and_replaced(tmp_path, monkeypatch, clock, caplog):
    backend, bus, replica_set = _world(tmp_path, monkeypatch)
    bus.answers["0"] = RUNNING
    await _pass(backend)  # the supervisor's own probe: nobody reads the status
    assert backend.probes == [LIVENESS_PROBE_WAIT]
    [hung] = replica_set.replicas
    bus.answers["0"] = nats.errors.TimeoutError()  # subscribed, answering nothing: hung
    caplog.set_level(logging.WARNING, logger="railyard.deployer.backend")
    await _run_for(backend, clock, TIMEOUT - 5)
    assert replica_set.replicas == [hung] and not hung.process.signals  # within the bound: kept
    # about one probe every TIMEOUT / PROBES seconds, not one a pass
    assert PROBES - 1 <= len(backend.probes) - 1 <= PROBES + 1, backend.probes
    await _run_for(backend, clock, 5 + TIMEOUT / PROBES + LIVENESS_PROBE_WAIT)
    [fresh] = replica_set.replicas
    assert fresh is not hung and fresh.process.pid == 101 and fresh.restarts == 1
    assert hung.process.signals == [signal.SIGTERM, signal.SIGKILL]  # SIGTERM, and SIGKILL after the grace
    assert fresh.last_restart.startswith("hung: it answered no status probe for"), fresh.last_restart
    warned = [r for r in caplog.records if "killing and replacing it" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING and "pid 100" in warned[0].getMessage()
    bus.answers[fresh.replica_id] = RUNNING  # the new replica answers: the deployment is Running, and tells why
    [engine] = await backend.status("d-1")
    assert engine["status"] == "Running" and engine["restarts"] == 1 and engine["pid"] == 101
    assert engine["last_restart"] == fresh.last_restart


async def test_a_busy_replica_that_answers_now_and_then_is_kept(tmp_path, monkeypatch, clock):
    backend, bus, replica_set = _world(tmp_path, monkeypatch)
    bus.answers["0"] = RUNNING
    await _pass(backend)
    [busy] = replica_set.replicas
    for _ in range(4):  # silent for most of the bound, then one answer: counted afresh
        bus.answers["0"] = nats.errors.TimeoutError()
        await _run_for(backend, clock, TIMEOUT - 2 * TIMEOUT / PROBES)
        bus.answers["0"] = RUNNING
        await _run_for(backend, clock, TIMEOUT / PROBES + 1)
    assert replica_set.replicas == [busy] and not busy.process.signals


async def test_time_alone_or_probes_alone_are_not_enough(tmp_path, monkeypatch, clock):
    """Many unanswered probes within the bound (status reads) do not kill it, nor does one old unanswered probe."""
    backend, bus, replica_set = _world(tmp_path, monkeypatch)
    bus.answers["0"] = RUNNING
    await _pass(backend)
    [replica] = replica_set.replicas
    bus.answers["0"] = nats.errors.TimeoutError()
    for _ in range(PROBES * 3):  # status reads: many probes, within TIMEOUT
        clock[0] += 1
        await backend.status("d-1")
        await _pass(backend)
    assert replica_set.replicas == [replica]
    replica.live_silent_since, replica.live_silent_probes = clock[0] - 10 * TIMEOUT, 1  # long silent, one probe
    assert backend._hung(replica) is None


async def test_probes_timed_out_while_the_deployers_bus_was_down_do_not_count(tmp_path, monkeypatch, clock):
    """A NATS outage is not every replica hanging: a probe that timed out while the deployer's connection was down,
    or across its reconnect, counts for nothing."""
    epoch = [0]
    backend, bus, replica_set = _world(tmp_path, monkeypatch, epoch=epoch)
    bus.answers["0"] = RUNNING
    await _pass(backend)
    [replica] = replica_set.replicas
    bus.answers["0"] = nats.errors.TimeoutError()
    epoch[0] = None  # down
    await _run_for(backend, clock, 3 * TIMEOUT)
    assert replica_set.replicas == [replica] and replica.live_silent_probes == 0

    async def reconnecting(subject: str, payload: bytes, wait: float) -> bytes:
        epoch[0] = (epoch[0] or 0) + 1  # it reconnected while the probe waited
        raise nats.errors.TimeoutError()

    backend.request = reconnecting
    await _run_for(backend, clock, 3 * TIMEOUT)
    assert replica_set.replicas == [replica] and replica.live_silent_probes == 0


async def test_liveness_off_and_a_replica_that_never_answered(tmp_path, monkeypatch, clock):
    backend, bus, replica_set = _world(tmp_path, monkeypatch, liveness_timeout=0)  # 0: never (a debugger)
    bus.answers["0"] = RUNNING
    await backend.status("d-1")
    [replica] = replica_set.replicas
    bus.answers["0"] = nats.errors.TimeoutError()
    for _ in range(PROBES * 2):
        clock[0] += TIMEOUT
        await backend.status("d-1")
        await _pass(backend)
    assert replica_set.replicas == [replica] and len(backend.probes) == 1 + PROBES * 2  # status reads only

    # never answered (loading): ready_timeout's matter (test_deployer_start_bound.py), not hung
    backend, bus, replica_set = _world(tmp_path, monkeypatch, ready_timeout=4 * TIMEOUT)
    bus.answers["0"] = nats.errors.TimeoutError()
    await _run_for(backend, clock, 3 * TIMEOUT, step=5.0)
    assert [r.process.pid for r in replica_set.replicas] == [100]


async def test_status_reads_timing_out_neither_count_nor_defer_the_supervisors_probe(tmp_path, monkeypatch, clock):
    """A replica short of CPU answers the supervisor's 2 s probe but not a status read's 0.5 s one (load ~19). The
    gateway reads the status every ROUTE_MAX_AGE, and on every request once the deployment says Starting: those
    timed-out reads counted as liveness misses and deferred the supervisor's probe, so the busy replica was killed."""
    backend, bus, replica_set = _world(tmp_path, monkeypatch)
    bus.answers["0"] = RUNNING
    await _pass(backend)
    [busy] = replica_set.replicas

    async def slow(subject: str, payload: bytes, wait: float) -> bytes:  # answers in 1 s
        backend.probes.append(wait)
        if wait < 1.0:
            raise nats.errors.TimeoutError()
        return await bus.request(subject, payload, wait)

    backend.request = slow
    for _ in range(int(3 * TIMEOUT)):  # a status read every second, for three times the bound
        clock[0] += 1
        await backend.status("d-1")
        await _pass(backend)
    assert replica_set.replicas == [busy] and not busy.process.signals
    assert backend.probes.count(LIVENESS_PROBE_WAIT) >= 3 * PROBES, "the supervisor's probes were deferred"


async def test_a_probe_timed_out_late_is_the_deployers_stall_not_the_replicas(tmp_path, monkeypatch, clock):
    """The deployer's loop stalled (a blocking call, a long GC): the timeout fires late and the answer may be in the
    socket, unread. Such a probe is not counted; one that timed out on time is."""
    backend, bus, replica_set = _world(tmp_path, monkeypatch)
    bus.answers["0"] = RUNNING
    await _pass(backend)
    [replica] = replica_set.replicas
    stall = [5.0]

    async def stalled(subject: str, payload: bytes, wait: float) -> bytes:
        clock[0] += wait + stall[0]  # the timer fired this late
        raise nats.errors.TimeoutError()

    backend.request = stalled
    await _run_for(backend, clock, 3 * TIMEOUT)
    assert replica_set.replicas == [replica] and replica.live_silent_probes == 0
    stall[0] = 0.0  # on time: the replica's silence, counted
    await _run_for(backend, clock, 2 * TIMEOUT)
    assert replica_set.replicas != [replica] and replica.process.signals[0] == signal.SIGTERM


@pytest.mark.parametrize("end", ["_kill_hung", "_stop_replica"])
async def test_a_replica_that_stays_stopped_is_killed_a_running_or_continued_one_gets_its_sigterm(
        tmp_path, monkeypatch, end):
    """A replica being ended (killed as hung: LIVENESS_KILL_GRACE; stopped by an undeploy or a scale-down:
    stop_timeout) that is stopped (SIGSTOP; a debugger's trace stop) cannot take SIGTERM: it stayed pending while the
    grace ran out, then SIGKILL (5 s, 20 s by default). Now one found stopped at two looks in a row (STOPPED_LOOK)
    is sent SIGKILL then; one that runs gets SIGTERM and its grace (its own exit by it, no SIGKILL), and so does one
    stopped for a moment, continued after the first look (2eff55c2 sent a hung one SIGKILL at once: -9, its drain
    and its held log records lost; _stop_replica waited its 20 s for a stopped one). Real processes; the grace and
    stop_timeout are made an hour, so a wait for either fails here."""
    monkeypatch.setattr(backend_module, "LIVENESS_KILL_GRACE", 3600.0)
    monkeypatch.setattr(backend_module, "STOPPED_LOOK", 0.05)
    backend = LocalBackend(tmp_path, None, scale_down_after=60, ready_timeout=10, stop_timeout=3600)
    for case, ended_by in (("stopped", signal.SIGKILL), ("running", signal.SIGTERM), ("continued", signal.SIGTERM)):
        process = await asyncio.create_subprocess_exec("sleep", "600")
        try:
            if case != "running":
                process.send_signal(signal.SIGSTOP)
                for _ in range(500):  # the stop is the kernel's, a moment after the signal
                    if backend_module._stop_mark(process.pid) is not None:
                        break
                    await asyncio.sleep(0.01)
            assert (backend_module._stop_mark(process.pid) is not None) == (case != "running"), case
            replica = Replica(replica_id=case, process=process, started_at=0.0, answered=RUNNING)
            async with asyncio.timeout(20):
                ending = asyncio.create_task(getattr(backend, end)(replica, "d-1"))
                await asyncio.sleep(0)  # its first step: SIGTERM sent, its first look taken
                if case == "continued":
                    process.send_signal(signal.SIGCONT)
                await ending
            assert process.returncode == -ended_by, (case, process.returncode)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
